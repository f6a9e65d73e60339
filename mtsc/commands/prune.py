"""`mtsc prune MODEL --policy P [--weights last.pt] -o DIR`: the deployable multi-task model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# What a prune writes into its folder, in that order: model.pt only with --weights, model.svg
# only where graphviz's `dot` draws it.
PRUNE_FILES = ("model.py", "model.dot", "policy.json", "model.pt", "report.txt", "model.svg")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="cut the supermodel down to a policy's compact model")
    p.add_argument("model", help="a .mtl (or .prototxt) model file")
    p.add_argument("--policy", required=True, help="policy.json, or `shared` / `specific`")
    p.add_argument("--weights", help="supermodel checkpoint (last.pt) whose weights to carry over")
    p.add_argument("-o", "--out", default="deploy", help="output folder (default: deploy)")
    p.add_argument("--fold-bn", action="store_true", help="fold batchnorms into convs")
    p.add_argument("--share-bn", action="store_true", help="the supermodel shared batchnorm")
    p.add_argument("--no-svg", action="store_true", help="do not render model.svg")
    p.add_argument("--json", action="store_true", help="print the size report as JSON")


def run(args: argparse.Namespace) -> int:
    from mtsc.codegen.dot import emit_pruned_dot
    from mtsc.codegen.torch_pruned import emit_pruned
    from mtsc.commands import refuse_another_commands_folder
    from mtsc.deploy import (
        baselines_json,
        fold_summary,
        fold_text,
        prune_model,
        report_table,
        size_report,
        supermodel_baselines,
    )
    from mtsc.fsutil import (
        check_output_files,
        check_output_folder,
        remove_stale,
        undone_on_failure,
        write_atomic,
    )
    from mtsc.ir.passes.insert_routing import RoutingOptions
    from mtsc.render import dot_available, finish_render, how_to_render, start_render

    out = Path(args.out)
    skipped = {"model.pt": not args.weights, "model.svg": args.no_svg or not dot_available()}
    names = [name for name in PRUNE_FILES if not skipped.get(name)]
    written = [out / name for name in names]
    check_output_folder(out)  # before the work: an output that cannot be written fails at once
    check_output_files(written)
    refuse_another_commands_folder(out, "prune")
    routing = RoutingOptions(share_bn=args.share_bn)
    pruned = prune_model(args.model, args.policy, routing=routing, fold_bn=args.fold_bn)
    g = pruned.model
    policy_name = args.policy if args.policy in ("shared", "specific") else Path(args.policy).name
    files = {
        "model.py": emit_pruned(g, source_name=str(args.model), policy_name=policy_name).text,
        "model.dot": emit_pruned_dot(g, title=f"{g.name} pruned ({policy_name})"),
        "policy.json": json.dumps(pruned.policy, indent=2) + "\n",
    }
    if args.weights:
        files["model.pt"] = deployed_weights(pruned, args.weights)
    proc = start_render(files["model.dot"], "svg") if "model.svg" in names else None
    report = size_report(g)
    extremes = supermodel_baselines(pruned.supermodel, fold_bn=args.fold_bn)
    table = report_table(report, extremes)
    folds = fold_summary(g) if args.fold_bn else None
    if folds is not None:
        table += "\n" + fold_text(*folds)
    files["report.txt"] = table + "\n"
    if proc is not None:  # before the first file is written: a failed render replaces none
        files["model.svg"] = finish_render(proc, out / "model.svg")
    with undone_on_failure(out):  # the folder appears only with every file in it
        for name, data in files.items():
            write_atomic(out / name, data)
    # an earlier prune's weights or picture would not match this model
    removed = remove_stale(out, ("model.pt", "model.svg"), written)
    if args.json:
        listed = {"written": [str(p) for p in written], "removed": [str(p) for p in removed]}
        if folds is not None:
            listed["folded_batchnorms"], listed["unfolded_batchnorms"] = folds
        print(json.dumps({**report.__dict__, **baselines_json(extremes), **listed}, indent=2))
    else:
        print(table)
        print(f"wrote {', '.join(map(str, written))}")
        if not args.no_svg and proc is None:
            print(how_to_render(out / "model.dot"))
        if not args.weights:
            print("no --weights given: model.pt not written (the model starts from fresh weights)")
        for path in removed:
            print(f"removed {path} of an earlier prune ({why_not_written(path.name, args)})")
    return 0


def why_not_written(name: str, args: argparse.Namespace) -> str:
    """Why this prune did not write model.pt or model.svg."""
    if name == "model.pt":
        return "no --weights given"
    return "--no-svg given" if args.no_svg else "graphviz's `dot` is not installed"


def deployed_weights(pruned, checkpoint: str) -> bytes:
    """model.pt's bytes: the weights carried over from the supermodel checkpoint."""
    import io

    import torch

    from mtsc.deploy import carry_weights, read_checkpoint

    buffer = io.BytesIO()
    torch.save(carry_weights(pruned, read_checkpoint(checkpoint, pruned)), buffer)
    return buffer.getvalue()
