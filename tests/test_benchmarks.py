"""Every benchmark runs to its table at its smallest settings, so that none rots unnoticed
between the sessions that measure with them (bench_search once broke on a moved function)."""

from __future__ import annotations

import subprocess
import sys

import pytest

RUNS = {
    "bench_search.py": (
        ["--models", "resnet_tiny", "--steps", "1", "--skip", "1", "--batch", "2", "--size", "32"]
        + ["--mixing", "weights"],
        "steps/s",
    ),
    "bench_supermodel.py": (
        ["--models", "resnet_tiny", "--batch", "1", "--size", "32", "--steps", "1"]
        + ["--mixing", "weights"],
        "task-by-task / supermodel",
    ),
    "bench_stacking.py": (["--repeats", "1", "--batch", "1"], "per task / stacked"),
    "bench_deploy.py": (["--only", "resnet_tiny", "--repeats", "1"], "all-specific"),
    "bench_build.py": (["--runs", "1"], "10002"),
    "bench_routing.py": ([], "bench_routing"),  # on a machine without CUDA: says why, exits 0
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs(script, repo) -> None:
    options, expected = RUNS[script]
    done = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / script), *options],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout, done.stdout[-3000:]
