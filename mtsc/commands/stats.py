"""`mtsc stats MODEL --policy P`: parameters and MACs per task and shared, as a table."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="size of the model a policy gives, per task and shared")
    p.add_argument("model", help="a .mtl (or .prototxt) model file")
    p.add_argument("--policy", required=True, help="policy.json, or `shared` / `specific`")
    p.add_argument("--share-bn", action="store_true", help="the supermodel shares batchnorm")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from mtsc.deploy import (
        baselines_json,
        prune_model,
        report_table,
        size_report,
        supermodel_baselines,
    )
    from mtsc.ir.passes.insert_routing import RoutingOptions

    pruned = prune_model(args.model, args.policy, routing=RoutingOptions(share_bn=args.share_bn))
    report = size_report(pruned.model)
    extremes = supermodel_baselines(pruned.supermodel)
    if args.json:
        print(json.dumps({**report.__dict__, **baselines_json(extremes)}, indent=2))
    else:
        print(report_table(report, extremes))
    return 0
