"""Build speed of mtsc.

1. Whole-process time of `mtsc build` on each example (median of several runs, SVG included
   when graphviz is installed), against the bare interpreter start measured in the same run.
2. In-process compile time (parse, lower, passes, codegen) of generated networks of about
   100, 1,000 and 10,000 ops, printing time per op so that growth is visibly linear.

Run: `python benchmarks/bench_build.py` (or `make bench`). Goal: ResNet-34 under 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.mtl") if p.stem != "resnet_blocks")
GOAL_S = 0.3


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_model(n_blocks: int) -> str:
    """A residual chain of `n_blocks` blocks of 5 ops (conv, bn, relu, add, plus conv/bn)."""
    return "\n".join(
        [
            "input image: 3x32x32",
            "block unit(x) {",
            "    y = conv(x, 16, k=3, p=1) | bn | relu | conv(16, k=3, p=1)",
            "    return x + y",
            "}",
            "backbone {",
            "    x = conv(image, 16, k=3, p=1) | bn",
            f"    x = repeat {n_blocks} unit(x)",
            "    return x",
            "}",
        ]
    )


def in_process_seconds(text: str, tmp: Path, runs: int) -> tuple[float, int]:
    from mtsc.driver import build

    path = tmp / "synthetic.mtl"
    path.write_text(text)
    times = []
    ops = 0
    for _ in range(runs):
        start = time.perf_counter()
        result = build(path, tmp / "out", render=False)
        times.append(time.perf_counter() - start)
        ops = result.summary.ops
    return statistics.median(times), ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median)")
    args = parser.parse_args()
    script = Path(sys.executable).parent / "mtsc"  # the console script users run
    mtsc = [str(script)] if script.exists() else [sys.executable, "-m", "mtsc"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        python_start = median_seconds([sys.executable, "-c", "pass"], args.runs)
        print(
            f"whole-process `mtsc build` (median of {args.runs}); python start-up alone: "
            f"{python_start * 1000:.0f} ms"
        )
        print(f"{'model':<14} {'time':>9} {'vs start-up':>12}  goal")
        for model in EXAMPLES:
            cmd = [*mtsc, "build", str(model), "-o", str(tmp / model.stem)]
            seconds = median_seconds(cmd, args.runs)
            goal = f"< {GOAL_S} s: {'met' if seconds < GOAL_S else 'MISSED'}"
            print(
                f"{model.stem:<14} {seconds * 1000:7.0f} ms {seconds / python_start:11.1f}x"
                f"  {goal if model.stem == 'resnet34' else ''}"
            )
        print()
        print("in-process compile (parse, lower, passes, backbone.py + .dot, no svg)")
        print(f"{'ops':>7} {'time':>10} {'per op':>10}")
        for n_blocks in (20, 200, 2000):
            seconds, ops = in_process_seconds(
                synthetic_model(n_blocks), tmp, max(3, args.runs // 2)
            )
            print(f"{ops:>7} {seconds * 1000:8.1f} ms {seconds / ops * 1e6:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
