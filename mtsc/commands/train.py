"""`mtsc train MODEL --policy P --data SPEC --out DIR`: (re)train the pruned model a policy
gives — from fresh weights, or from the supermodel's with `--weights last.pt`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtsc.commands.search import (
    add_data_option,
    add_set_option,
    parse_sets,
    print_data,
    print_written,
    run_folder,
    run_settings,
    undone_unless_resumable,
)
from mtsc.runtime.config import seed_argument

# What a training writes into its run folder (and TensorBoard events when installed);
# metrics.jsonl only once it logs a step.
TRAIN_FILES = ("model.py", "model.pt", "last.pt", "metrics.jsonl", "eval.json", "policy.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the pruned multi-task model of a policy")
    p.add_argument("model", help="a .mtl (or .prototxt) model with a tasks section")
    p.add_argument(
        "--policy",
        help="policy.json, or `shared` / `specific` (a resumed run: its own policy.json)",
    )
    add_data_option(p)
    p.add_argument("--out", help="run folder (model.py, model.pt, last.pt, metrics.jsonl)")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR, with the settings it was started with",
    )
    p.add_argument("--weights", help="start from this supermodel checkpoint's weights")
    p.add_argument("--config", help="TOML file of TrainConfig values")
    p.add_argument("--quick", action="store_true", help="a short run, for smoke tests")
    p.add_argument("--seed", type=seed_argument, help="random seed")
    p.add_argument(
        "--amp", choices=("bf16", "fp16"), help="mixed precision (autocast; fp16 with loss scaling)"
    )
    # default None: a resumed run tells "not given" (the run's own) from "given"
    p.add_argument(
        "--share-bn", action="store_true", default=None, help="the supermodel shares batchnorm"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_set_option(p, "steps=100")


def run(args: argparse.Namespace) -> int:
    from mtsc.errors import MtscError
    from mtsc.fsutil import check_output_files
    from mtsc.runtime.config import TrainConfig
    from mtsc.runtime.trainer import dist_info, init_distributed, metrics_line

    if args.resume and args.weights:
        raise MtscError(
            None,
            f"--weights starts a run from a supermodel's weights; a resumed run continues from "
            f"{Path(args.resume) / 'last.pt'}: drop --weights",
        )
    run_dir = run_folder(args)
    config, command = run_settings(
        TrainConfig,
        args,
        {"seed": args.seed, "amp": args.amp, **parse_sets(args.set)},
        {"data": args.data, "share_bn": args.share_bn},
    )
    policy = args.policy
    if policy is None:
        if not args.resume:
            raise MtscError(
                None, "give the policy to train: --policy policy.json (or shared / specific)"
            )
        policy = str(run_dir / "policy.json")
        if not Path(policy).is_file():
            raise MtscError(None, f"{policy} does not exist: give the run's --policy")
    check_output_files(run_dir / name for name in TRAIN_FILES)
    init_distributed()  # under torchrun: rank 0 alone writes the run's files and says so
    with undone_unless_resumable(run_dir, bool(args.resume)):
        result = train_pruned(
            args.model,
            policy,
            command["data"],
            run_dir,
            config,
            weights=args.weights,
            share_bn=command["share_bn"],
            resume=bool(args.resume),
            progress=not args.no_progress,
            command=command,
        )
    if dist_info()[0] != 0:
        return 0
    if result["metrics"]:  # none with eval_every = 0: the run never validated
        print(f"validation: {metrics_line(result['metrics'])}")
    print_written(run_dir, TRAIN_FILES)
    return 0


def train_pruned(
    model_path,
    policy,
    data,
    run_dir: Path,
    config,
    *,
    weights=None,
    share_bn: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: dict | None = None,
) -> dict:
    """Prune, write model.py, train, write model.pt and eval.json; returns metrics and sizes.
    `data`: a dataset spec, opened with the config's `[data]` options, or the (training,
    validation) datasets themselves."""
    import io
    import json

    import torch

    from mtsc.api import import_generated
    from mtsc.codegen.torch_pruned import emit_pruned
    from mtsc.deploy import carry_weights, prune_model, read_checkpoint, size_report
    from mtsc.driver import load
    from mtsc.fsutil import json_text, write_atomic
    from mtsc.ir.passes.insert_routing import RoutingOptions
    from mtsc.model_fit import check_model_fits_data
    from mtsc.runtime.checkpoint import seed_everything
    from mtsc.runtime.data import open_dataset
    from mtsc.runtime.data.checks import check_datasets
    from mtsc.runtime.train import train
    from mtsc.runtime.trainer import barrier, dist_info, refuse_existing_run

    model = load(model_path)
    if isinstance(data, str):
        train_set, val_set = (
            open_dataset(data, split, **config.data) for split in ("train", "val")
        )
        print_data(train_set, val_set)
    else:  # datasets of the caller's own: their first items are checked as a search does
        train_set, val_set = data
        check_datasets(train_set, val_set, [task.name for task in model.tasks])
    check_model_fits_data(
        model,
        val_set[0][0].shape,
        train_set.info,
        data if isinstance(data, str) else train_set.info.name,
        batch_size=config.batch_size,
    )
    pruned = prune_model(model, policy, routing=RoutingOptions(share_bn=share_bn))
    name = policy if isinstance(policy, str) else "policy.json"
    source = emit_pruned(
        pruned.model, source_name=str(model_path), policy_name=str(name), command="mtsc train"
    ).text
    start = None  # the weights are read before anything is written: a bad file fails at once
    if weights is not None and not resume:
        start = carry_weights(pruned, read_checkpoint(weights, pruned))
    refuse_existing_run(run_dir, resume)  # before model.py is written over the run's
    if resume:
        check_same_policy(run_dir / "policy.json", pruned.policy, policy)
    rank = dist_info()[0]
    if rank == 0:
        write_atomic(run_dir / "model.py", source)
        write_atomic(run_dir / "policy.json", json.dumps(pruned.policy, indent=2) + "\n")
    barrier()
    module = import_generated(run_dir / "model.py", f"mtsc_pruned_{abs(hash(str(run_dir)))}")
    seed_everything(config.seed)  # torch's default seed is random: the initial weights need one
    net = module.MultiTaskModel()
    if start is not None:
        net.load_state_dict(start)
    result = train(
        net, train_set, val_set, config, run_dir, resume=resume, progress=progress, command=command
    )
    report = size_report(pruned.model)
    summary = {
        "metrics": result.metrics,
        "params": report.total_params,
        "macs": report.total_macs,
        "task_params": report.task_params,
    }
    if rank == 0:
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        write_atomic(run_dir / "model.pt", buffer.getvalue())
        write_atomic(run_dir / "eval.json", json_text(summary, indent=2) + "\n")
    return {**summary, "net": net, "pruned": pruned}


def check_same_policy(path: Path, policy: dict, given) -> None:
    """A resumed training keeps its policy: --policy, given again, must be the run's."""
    import json

    from mtsc.errors import MtscError

    if Path(str(given)).resolve() == path.resolve() or not path.is_file():
        return
    if json.loads(path.read_text()) != json.loads(json.dumps(policy)):
        raise MtscError(
            None, f"--resume keeps the run's policy; --policy {given} differs from {path}"
        )
