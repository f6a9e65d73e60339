"""`mtsc fmt MODEL`: print the canonical formatting (`--write` rewrites the file in place)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtsc.fsutil import read_model, write_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fmt", help="print a .mtl file in canonical formatting")
    p.add_argument("model", nargs="+", help=".mtl files")
    p.add_argument("--write", action="store_true", help="rewrite the files in place")
    p.add_argument("--check", action="store_true", help="exit 1 if a file is not formatted")


def run(args: argparse.Namespace) -> int:
    from mtsc.grammar.format import format_source

    unformatted = 0
    for name in args.model:
        path = Path(name)
        text = read_model(path)
        formatted = format_source(text, str(path))
        if args.check:
            if formatted != text:
                unformatted += 1
                print(f"{path}: not formatted", file=sys.stderr)
        elif args.write:
            if formatted != text:
                write_atomic(path, formatted)
        else:
            sys.stdout.write(formatted)
    return 1 if unformatted else 0
