"""`mtsc search MODEL --data SPEC --out DIR`: the three-stage policy search.

mtsc search examples/resnet_tiny.mtl --data shapes --out runs/tiny --quick
mtsc search examples/resnet34.mtl --data nyuv2:/data/nyuv2 --out runs/r34 --config s.toml
torchrun --nproc_per_node=4 -m mtsc search ... --out runs/r34
mtsc search ... --resume runs/r34
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtsc.runtime.config import MIXING_CHOICES, seed_argument

# What a search writes into its run folder (and TensorBoard events when installed).
SEARCH_FILES = ("supermodel.py", "policy.json", "policy.txt", "last.pt", "metrics.jsonl")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search the sharing policy of a model's supermodel")
    p.add_argument("model", help="a .mtl (or .prototxt) model with a tasks section")
    add_data_option(p)
    p.add_argument("--out", help="run folder (policy.json, last.pt, metrics.jsonl)")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR after a crash, with the settings it was started with",
    )
    p.add_argument("--config", help="TOML file of SearchConfig values")
    p.add_argument("--quick", action="store_true", help="a short but complete search")
    p.add_argument("--budget", type=float, help="target size, a fraction of all-specific")
    p.add_argument("--derive", choices=("argmax", "sample"), help="how to derive the policy")
    p.add_argument(
        "--seed",
        type=seed_argument,
        help="random seed, also of --derive sample (runs are deterministic on CPU)",
    )
    p.add_argument(
        "--amp", choices=("bf16", "fp16"), help="mixed precision (autocast; fp16 with loss scaling)"
    )
    p.add_argument(
        "--mixing",
        choices=MIXING_CHOICES,
        help="how routed ops mix their candidates: outputs (mix3, the fused kernel), weights "
        "(one grouped call with mixed weights: the same search, about half the conv work) or "
        "auto (the default: weights on a CPU, outputs on a GPU)",
    )
    # default None: a resumed run tells "not given" (the run's own) from "given"
    p.add_argument(
        "--share-bn", action="store_true", default=None, help="share batchnorm across tasks"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_set_option(p, "warmup_steps=100")


def add_data_option(p: argparse.ArgumentParser) -> None:
    # default None, meaning shapes: a resumed run tells "not given" (the run's own) from "given"
    p.add_argument("--data", help="shapes (the default) | nyuv2:PATH | cityscapes:PATH")


def add_set_option(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"any config value, e.g. --set {example} (repeatable)",
    )


def parse_sets(items: list[str]) -> dict:
    import tomllib

    from mtsc.errors import MtscError

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise MtscError(None, f"--set needs KEY=VALUE, got {item!r}")
        if "\n" in raw or "\r" in raw:  # a TOML document would set other keys unseen
            raise MtscError(None, f"--set {key.strip()}: the value must be on one line")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
        except (ValueError, RecursionError) as err:  # a number too long, nesting too deep
            raise MtscError(None, f"--set {key.strip()}: cannot read the value: {err}") from None
    return values


def run_folder(args: argparse.Namespace) -> Path:
    """The run folder, `--out DIR` or `--resume DIR`: checked before anything is written in it
    (a resumed run must have its checkpoint; a new one takes no other command's folder)."""
    from mtsc.commands import refuse_another_commands_folder
    from mtsc.errors import MtscError
    from mtsc.fsutil import check_output_folder
    from mtsc.runtime.trainer import CHECKPOINT

    if not (args.resume or args.out):
        raise MtscError(None, "give the run folder: --out DIR (or --resume DIR)")
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise MtscError(
            None,
            f"--out {args.out} with --resume {args.resume}: a run is resumed in its own folder; "
            "drop --out",
        )
    run_dir = Path(args.resume or args.out)
    if args.resume and run_dir.is_file():
        raise MtscError(
            None, f"--resume takes the run's folder, not a file: --resume {run_dir.parent}"
        )
    if args.resume and not (run_dir / CHECKPOINT).is_file():
        raise MtscError(None, f"nothing to resume: {run_dir / CHECKPOINT} does not exist")
    check_output_folder(run_dir)
    if not args.resume:  # a resumed run's checkpoint says whose it is (run_settings)
        refuse_another_commands_folder(run_dir, args.command)
    return run_dir


# The settings of a run outside its config, saved in its checkpoint as "command"; None is
# "not given" (a fresh run takes these defaults, a resumed one its own).
COMMAND_DEFAULTS = {"data": "shapes", "share_bn": False}
COMMAND_OPTIONS = {"data": "--data", "share_bn": "--share-bn"}


def run_settings(
    cls: type, args: argparse.Namespace, overrides: dict, command: dict
) -> tuple[object, dict]:
    """The run's config and command settings (`COMMAND_DEFAULTS`' keys). A fresh run takes
    them from the command line; a resumed one keeps those it was started with, saved in its
    checkpoint, and a value given again must be the same. None is allowed to differ: a
    setting that cannot change the results (num_workers, say) would still be one more rule
    to learn, and a resume that continues exactly the run it says is the simple one."""
    from mtsc.errors import MtscError
    from mtsc.runtime.config import given_values, make_config, resumed_config
    from mtsc.runtime.trainer import CHECKPOINT, load_resumable

    given_command = {k: v for k, v in command.items() if v is not None}
    if "data" in given_command:
        given_command["data"] = absolute_data_spec(given_command["data"])
    if not args.resume:
        command = {**COMMAND_DEFAULTS, **given_command}
        config = make_config(
            cls, args.config, overrides, quick=args.quick, data_spec=command["data"]
        )
        return config, command
    given = given_values(cls, args.config, overrides, quick=args.quick)
    path = Path(args.resume) / CHECKPOINT
    # The run loads its weights itself, later; the kind is checked before the settings.
    state = load_resumable(path, args.command, mmap=True)
    recorded = state.get("command") or {}
    if "data" not in recorded and "data" not in given_command:
        raise MtscError(
            None,
            f"{path} does not record the run's data (a run started from Python, or by an older "
            "mtsc): give --data as the run was started with",
        )
    # what the checkpoint does not record: the command line's, or defaults
    saved_command = {**COMMAND_DEFAULTS, **given_command, **recorded}
    for key, value in saved_command.items():
        if key not in COMMAND_DEFAULTS or type(value) is not type(COMMAND_DEFAULTS[key]):
            raise MtscError(None, f"{path} is damaged: its command setting {key}={value!r}")
    saved = resumed_config(
        cls,
        given,
        state,
        path,
        saved_extra={COMMAND_OPTIONS[k]: v for k, v in saved_command.items()},
        given_extra={COMMAND_OPTIONS[k]: v for k, v in given_command.items()},
    )
    return saved, saved_command


def absolute_data_spec(spec: str) -> str:
    """`--data` with its folder made absolute (`shapes:sd` -> `shapes:/home/me/sd`): the run
    records it, and a resume from another directory must find the same data."""
    import os

    kind, colon, path = spec.partition(":")
    if not path:
        return spec
    return f"{kind}{colon}{os.path.abspath(os.path.expanduser(path))}"


def undone_unless_resumable(run_dir: Path, resume: bool):
    """A fresh run that fails before its first checkpoint leaves nothing in its folder (a
    retry would find a half run there); a resumed one, or one with a checkpoint, stays."""
    import contextlib
    import os

    from mtsc.fsutil import undone_on_failure
    from mtsc.runtime.trainer import CHECKPOINT

    # Under torchrun (RANK set, the process group maybe not yet joined) rank 0 alone undoes.
    if resume or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return undone_on_failure(run_dir, unless=CHECKPOINT)


def run(args: argparse.Namespace) -> int:
    from mtsc.api import import_generated, write_supermodel
    from mtsc.driver import load
    from mtsc.fsutil import check_output_files
    from mtsc.model_fit import check_model_fits_data
    from mtsc.runtime.checkpoint import seed_everything
    from mtsc.runtime.config import SearchConfig
    from mtsc.runtime.data import open_dataset
    from mtsc.runtime.search import policy_table
    from mtsc.runtime.search import search as run_search
    from mtsc.runtime.trainer import barrier, dist_info, init_distributed, refuse_existing_run

    run_dir = run_folder(args)
    overrides = {
        "seed": args.seed,
        # `--derive sample --seed N`: the seed also draws the policy unless set on its own.
        "derive_seed": args.seed,
        "budget": args.budget,
        "derive": args.derive,
        "amp": args.amp,
        "mixing": args.mixing,
        **parse_sets(args.set),
    }
    config, command = run_settings(
        SearchConfig, args, overrides, {"data": args.data, "share_bn": args.share_bn}
    )
    init_distributed()
    rank, _ = dist_info()
    check_output_files(run_dir / name for name in SEARCH_FILES)
    data = dict(config.data)
    train_set = open_dataset(command["data"], "train", **data)
    val_set = open_dataset(command["data"], "val", **data)
    print_data(train_set, val_set)
    # before the run folder is touched: a model that cannot take the data fails here, located
    model = load(args.model)
    check_model_fits_data(
        model,
        val_set[0][0].shape,
        train_set.info,
        command["data"],
        batch_size=config.batch_size,
    )
    # before supermodel.py is written: the run already there must stay resumable
    refuse_existing_run(run_dir, bool(args.resume))
    with undone_unless_resumable(run_dir, bool(args.resume)):
        path = run_dir / "supermodel.py"
        if rank == 0:
            path = write_supermodel(
                model, run_dir, share_bn=command["share_bn"], check_existing=bool(args.resume)
            )
        barrier()
        seed_everything(config.seed)  # torch's default seed is random: the weights need one
        supermodel = import_generated(path, "mtsc_run_supermodel").Supermodel()
        result = run_search(
            supermodel,
            train_set,
            val_set,
            config,
            run_dir,
            resume=bool(args.resume),
            progress=not args.no_progress,
            command=command,
        )
    if dist_info()[0] == 0:
        print(policy_table(supermodel, result.policy), end="")
        print_written(run_dir, SEARCH_FILES)
    return 0


def print_data(train_set, val_set) -> None:
    """Which data the run reads: the layout found, the sample counts, unlabelled samples."""
    from mtsc.runtime.trainer import dist_info

    if dist_info()[0] == 0:
        print(f"train data: {train_set.description}\nval data:   {val_set.description}")


def print_written(run_dir: Path, names: tuple[str, ...]) -> None:
    """The "wrote ..." line: each of `names` the run left in its folder (some are optional)."""
    written = [run_dir / name for name in names if (run_dir / name).exists()]
    print(f"wrote {', '.join(map(str, written))}")
