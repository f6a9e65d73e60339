"""What a user installs: the wheel built from the repository holds every file of the package
directories, and mtsc installed from it (not from the editable checkout) builds a model with
task heads, which needs the heads prelude `grammar/heads.mtl`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest


def package_dirs(repo) -> dict[str, str]:
    config = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["package-dir"]


@pytest.fixture(scope="module")
def wheel(repo, tmp_path_factory):
    """A wheel built from a copy of the sources (setuptools writes build files beside them),
    offline: the build backend is the dev extra's setuptools."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (repo / name).exists():
            shutil.copy(repo / name, source / name)
    for folder in set(package_dirs(repo).values()):
        shutil.copytree(
            repo / folder,
            source / folder,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(source), "-w", str(out)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("mtsc-*.whl")
    return built


def test_wheel_holds_every_package_file(repo, wheel) -> None:
    expected = set()
    for package, folder in package_dirs(repo).items():
        for path in (repo / folder).iterdir():
            if path.is_file() and path.suffix != ".pyc":
                expected.add(package.replace(".", "/") + "/" + path.name)
    with zipfile.ZipFile(wheel) as archive:
        held = set(archive.namelist())
    assert sorted(expected - held) == []


def test_installed_wheel_builds_a_model_with_heads(repo, wheel, tmp_path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # Run from a folder outside the checkout, with the installed copy first on the path.
    env = {**os.environ, "PYTHONPATH": str(site)}
    model = repo / "examples" / "resnet_tiny.mtl"
    proc = subprocess.run(
        [sys.executable, "-c", "import mtsc, sys; print(mtsc.__file__); from mtsc.cli import main;"
         f" sys.exit(main(['build', {str(model)!r}, '-o', 'out', '--no-svg']))"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(site))
    assert "class Supermodel" in (tmp_path / "out" / "supermodel.py").read_text()
