"""The README's DSL tour is what a user copies first: it must compile as written."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_tour() -> str:
    """The first code block under the README's DSL tour heading."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A 5-minute tour of the DSL", 1)[1]
    return section.split("```", 2)[1]


def test_readme_tour_compiles(write_model, run_mtsc):
    model = write_model(readme_tour(), "tour.mtl")
    result = run_mtsc("check", model)
    assert result.returncode == 0, result.stderr
    assert "supermodel: tasks segment, normal, depth; 35 routed ops" in result.stdout
