"""`mtsc check MODEL`: everything `build` does except writing files."""

from __future__ import annotations

import argparse

from mtsc.driver import build
from mtsc.report import summary_json, summary_text, supermodel_info, supermodel_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="parse, lower and check a model without writing files")
    p.add_argument("model", help="a .mtl (or .prototxt) model file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--output", metavar="BLOB", help="end a .prototxt backbone at this blob (drop the rest)"
    )


def run(args: argparse.Namespace) -> int:
    result = build(args.model, None, output=args.output)
    extra = {} if result.supermodel is None else {"supermodel": supermodel_info(result.supermodel)}
    if args.json:
        print(summary_json(result.summary, **extra))
    else:
        print(summary_text(result.summary))
        if extra:
            print(supermodel_text(extra["supermodel"]))
    return 0
