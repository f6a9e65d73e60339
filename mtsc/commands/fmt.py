"""`mtsc fmt MODEL...`: print the canonical formatting (`--write` rewrites the files in place)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtsc.errors import MtscError
from mtsc.fsutil import read_model, write_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fmt", help="print a .mtl file in canonical formatting")
    p.add_argument("model", nargs="+", help=".mtl files")
    # one or the other: a check that also rewrote would pass the next time for the wrong reason
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the files in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is not formatted")


def run(args: argparse.Namespace) -> int:
    unformatted = 0
    failed: list[MtscError] = []
    # printing several files, each under its name as `head` does: they do not make one model
    named = len(args.model) > 1
    for name in args.model:
        try:
            if not format_file(Path(name), check=args.check, write=args.write, named=named):
                unformatted += 1
        except MtscError as err:
            failed.append(err)  # one bad file does not keep the others from being formatted
    if failed:
        # Every bad file is reported; the last error goes to the CLI like any other (status 2).
        for err in failed[:-1]:
            print(err.render(), file=sys.stderr)
        raise failed[-1]
    return 1 if unformatted else 0


def format_file(path: Path, *, check: bool, write: bool, named: bool = False) -> bool:
    """Print (under a `==> path <==` line when `named`), check or rewrite one file; False
    when `check` finds it not formatted."""
    from mtsc.grammar.format import format_source

    if path.suffix != ".mtl":
        notes = ("`mtsc import` translates a .prototxt into .mtl",)
        raise MtscError(
            None,
            f"{path}: mtsc fmt formats .mtl files only",
            notes=notes if path.suffix == ".prototxt" else (),
        )
    text = read_model(path)
    formatted = format_source(text, str(path))
    if check:
        if formatted != text:
            print(f"{path}: not formatted", file=sys.stderr)
            return False
    elif write:
        if formatted != text:
            write_atomic(path, formatted)
    else:
        if named:
            sys.stdout.write(f"==> {path} <==\n")
        sys.stdout.write(formatted)
    return True
