"""`mtsc import MODEL.prototxt -o MODEL.mtl`: turn a Caffe network into a readable .mtl file.

Building the written file gives the same backbone as building the prototxt itself.
(The module name ends in `_` because `import` is a Python keyword.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mtsc.errors import MtscError
from mtsc.fsutil import write_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a Caffe .prototxt network to a .mtl model")
    p.add_argument("model", help="a .prototxt file")
    p.add_argument("-o", "--out", help="the .mtl file to write (default: print it)")
    p.add_argument(
        "--output", metavar="BLOB", help="end the backbone at this blob, dropping what follows"
    )
    p.add_argument(
        "--force", action="store_true", help="replace an -o file that holds something else"
    )


def run(args: argparse.Namespace) -> int:
    from mtsc.codegen.mtl_emit import emit_mtl
    from mtsc.driver import model_suffix
    from mtsc.grammar.prototxt import import_prototxt

    path = Path(args.model)
    if model_suffix(path) != ".prototxt":
        raise MtscError(None, f"{path}: mtsc import reads .prototxt files")
    if args.out is not None and _same_file(Path(args.out), path):
        raise MtscError(
            None,
            f"-o {args.out} would overwrite the model file {path}; write the .mtl to another "
            f"file (such as {path.with_suffix('.mtl').name})",
        )
    imported = import_prototxt(path, output=args.output)
    for warning in imported.warnings:
        print(warning.render(), file=sys.stderr)
    header = (
        f"{imported.graph.name}: imported by `mtsc import` from {path.name}.",
        *imported.notes,
    )
    text = emit_mtl(imported.graph, header=header).text
    if args.out is None:
        sys.stdout.write(text)
    else:
        _refuse_other_text(Path(args.out), text, args.force)
        write_atomic(Path(args.out), text)
        print(f"wrote {args.out}")
    return 0


def _refuse_other_text(out: Path, text: str, force: bool) -> None:
    """An imported .mtl is the file one goes on to edit (adding its tasks section): importing
    again over it would lose that work, unless asked to."""
    if force or not out.exists():
        return
    try:
        same = out.read_text() == text
    except (OSError, UnicodeDecodeError):
        same = False
    if not same:
        raise MtscError(
            None,
            f"{out} exists and differs from this import (edited since?); give --force to "
            "replace it, or -o another file",
        )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two names reach one file: another spelling, a symlink or a hard link."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False
