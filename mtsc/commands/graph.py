"""`mtsc graph MODEL [--stage backbone|supermodel|pruned] [--policy FILE] -o FILE`: a model's
graph as .svg, .png, .pdf or .dot."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtsc.errors import MtscError
from mtsc.fsutil import write_atomic

STAGES = ("backbone", "supermodel", "pruned")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("graph", help="draw a model's graph with graphviz")
    p.add_argument("model", help="a .mtl (or .prototxt) model file")
    p.add_argument(
        "--stage",
        choices=STAGES,
        default="supermodel",
        help="which graph to draw (default: %(default)s)",
    )
    p.add_argument(
        "--policy", help="policy.json (or `shared` / `specific`) to show each task's choices"
    )
    p.add_argument("--share-bn", action="store_true", help="share batchnorm across tasks")
    p.add_argument(
        "--output", metavar="BLOB", help="end a .prototxt backbone at this blob (drop the rest)"
    )
    p.add_argument("-o", "--out", required=True, help="output file: .svg, .png, .pdf or .dot")


def run(args: argparse.Namespace) -> int:
    from mtsc.codegen.dot import emit_dot, emit_supermodel_dot
    from mtsc.driver import BACKBONE_PIPELINE, load, run_pipeline, supermodel_pipeline
    from mtsc.ir.passes.insert_routing import RoutingOptions, no_tasks_notes
    from mtsc.policy import read_policy
    from mtsc.render import dot_available, graph_format, how_to_render, render

    out = Path(args.out)
    fmt = graph_format(out)  # before the model is compiled: a bad name fails fast
    model = load(args.model, output=args.output)
    if args.stage != "backbone" and not model.tasks:
        drawing = "supermodel" if args.stage == "supermodel" else "pruned model"
        raise MtscError(
            None,
            f"{args.model}: no tasks section, so no {drawing} to draw",
            notes=("`--stage backbone` draws the backbone", *no_tasks_notes(args.model)),
        )
    if args.stage == "backbone":
        given = [
            flag for flag, on in (("--policy", args.policy), ("--share-bn", args.share_bn)) if on
        ]
        if given:
            raise MtscError(
                None,
                f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to the "
                "supermodel stage and the pruned stage, not the backbone",
            )
        g = run_pipeline(model, BACKBONE_PIPELINE)
        text = emit_dot(g, title=f"{g.name} backbone")
    elif args.stage == "pruned":
        from mtsc.codegen.dot import emit_pruned_dot
        from mtsc.deploy import prune_model

        if not args.policy:
            raise MtscError(
                None, "--stage pruned needs --policy (a policy.json, shared or specific)"
            )
        routing = RoutingOptions(share_bn=args.share_bn)
        g = prune_model(model, args.policy, routing=routing).model
        text = emit_pruned_dot(g, title=f"{g.name} pruned ({Path(args.policy).name})")
    else:
        g = run_pipeline(model, supermodel_pipeline(RoutingOptions(share_bn=args.share_bn)))
        policy = read_policy(args.policy, g) if args.policy else None
        text = emit_supermodel_dot(g, title=f"{g.name} supermodel", policy=policy)
    if fmt != "dot" and not dot_available():
        dot_path = out.with_suffix(".dot")
        write_atomic(dot_path, text)
        print(how_to_render(dot_path, fmt=fmt))
        return 0
    render(text, out)
    print(f"wrote {out}")
    return 0
