"""`mtsc demo --out DIR [--quick]`: the whole pipeline on built-in data (see mtsc.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtsc.runtime.config import seed_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build, search, prune, retrain and compare on shapes")
    p.add_argument("--out", default="runs/demo", help="report folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="short stages (about a minute)")
    p.add_argument("--seed", type=seed_argument, default=0, help="random seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from mtsc.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0
