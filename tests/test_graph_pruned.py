"""`mtsc graph --stage pruned`: the deployed tree of a policy."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "examples" / "resnet_tiny.mtl"


def run(*args, cwd):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "mtsc", *args], cwd=cwd, capture_output=True, text=True
    )


def test_pruned_stage_draws_the_tree(tmp_path):
    out = tmp_path / "tree.dot"
    proc = run(
        "graph",
        str(TINY),
        "--stage",
        "pruned",
        "--policy",
        "specific",
        "-o",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.startswith('digraph "resnet_tiny"')
    # All-specific: every backbone op after the pinned stem belongs to one task's branch.
    assert "segment.layer1.0.conv1" in text and "depth.layer1.0.conv1" in text
    assert "out_0" in text and "out_2" in text


@pytest.mark.parametrize("stage", ["pruned"])
def test_pruned_stage_needs_a_policy(tmp_path, stage):
    proc = run("graph", str(TINY), "--stage", stage, "-o", str(tmp_path / "g.dot"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --stage pruned needs --policy (a policy.json, shared or specific)"
    )
    assert not (tmp_path / "g.dot").exists()
