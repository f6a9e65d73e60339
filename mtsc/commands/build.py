"""`mtsc build MODEL -o DIR`: compile a model and write its PyTorch source and graphs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtsc.driver import build
from mtsc.fsutil import undone_on_failure
from mtsc.ir.passes.insert_routing import RoutingOptions
from mtsc.report import summary_json, summary_text, supermodel_info, supermodel_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="compile a model to PyTorch source and graphs")
    p.add_argument("model", help="a .mtl (or .prototxt) model file")
    p.add_argument("-o", "--out", default="out", help="output folder (default: out)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--output", metavar="BLOB", help="end a .prototxt backbone at this blob (drop the rest)"
    )
    p.add_argument("--no-svg", action="store_true", help="do not render the .svg graphs")
    p.add_argument(
        "--share-bn", action="store_true", help="share batchnorm across tasks in the supermodel"
    )


def run(args: argparse.Namespace) -> int:
    from mtsc.commands import refuse_another_commands_folder

    refuse_another_commands_folder(Path(args.out), "build")
    routing = RoutingOptions(share_bn=args.share_bn)
    with undone_on_failure(Path(args.out)):
        result = build(
            args.model, args.out, render=not args.no_svg, routing=routing, output=args.output
        )
    written = [str(p) for p in result.written]
    removed = [str(p) for p in result.removed]
    extra = {} if result.supermodel is None else {"supermodel": supermodel_info(result.supermodel)}
    if args.json:
        print(
            summary_json(
                result.summary, **extra, written=written, removed=removed, notes=result.notes
            )
        )
    else:
        print(summary_text(result.summary))
        if extra:
            print(supermodel_text(extra["supermodel"]))
        print(f"wrote {', '.join(written)}")
        if removed:
            print(f"removed {', '.join(removed)} of an earlier build")
        for note in result.notes:
            print(note)
    sys.stdout.flush()
    return 0
