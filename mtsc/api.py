"""mtsc from Python: build a supermodel from a model file, search it on your own data, and
train the pruned model of the policy found.

    from mtsc.api import load_supermodel, search, train
    model = load_supermodel("examples/resnet_tiny.mtl")          # a generated Supermodel
    result = search(model, train_set, val_set, "runs/tiny", warmup_steps=200)
    result.policy                                                 # also runs/tiny/policy.json
    done = train("examples/resnet_tiny.mtl", result.policy, train_set, val_set, "runs/final",
                 weights="runs/tiny/last.pt", steps=500)          # model.py, model.pt, ...

Datasets yield `(image [3, H, W], {task: target, "valid": {task: bool}})` and carry an
`info` (`mtsc.runtime.data.sample.DatasetInfo`) naming their tasks and classes; see
`mtsc.runtime.data.open_dataset` for the built-in ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

from mtsc.codegen.torch_supermodel import FINGERPRINT, GENERATED_BY, emit_supermodel
from mtsc.driver import load_supermodel as load_supermodel_graph
from mtsc.errors import MtscError
from mtsc.fsutil import write_atomic
from mtsc.ir.graph import Graph
from mtsc.ir.passes.insert_routing import RoutingOptions


def import_generated(path: Path, module_name: str) -> Any:
    """Import a file mtsc generated (never a file a user handed us) as a module."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    # No __pycache__ in the user's output folder: it would belong to no run and go stale.
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


def write_supermodel(
    model: str | Path | Graph,
    out_dir: str | Path,
    *,
    share_bn: bool = False,
    check_existing: bool = False,
) -> Path:
    """Generate `out_dir/supermodel.py` from a model file (or its Graph, loaded once); with
    `check_existing`, insist that a file already there is the same model (a run folder
    belongs to one model)."""
    text = supermodel_source(model, share_bn=share_bn)
    path = Path(out_dir) / "supermodel.py"
    if check_existing:
        _check_same_model(path, text, out_dir)
    write_atomic(path, text)
    return path


def supermodel_source(model: str | Path | Graph, *, share_bn: bool = False) -> str:
    """The text of `supermodel.py` for a model file (or its Graph)."""
    source = str(model.source if isinstance(model, Graph) else model)
    g = load_supermodel_graph(model, RoutingOptions(share_bn=share_bn))
    return emit_supermodel(g, source_name=source).text


_SUPERMODEL_API = ("TASK_SPECS", "ROUTED", "set_mode", "policy_parameters", "export_policy")


def _check_is_supermodel(model) -> None:
    """A search runs a supermodel: a pruned model or a network of one's own has no policy."""
    lacking = [name for name in _SUPERMODEL_API if not hasattr(model, name)]
    if lacking:
        raise MtscError(
            None,
            f"search takes a supermodel (mtsc.api.load_supermodel(MODEL)); this "
            f"{type(model).__name__} has no {', '.join(lacking)}",
        )


def _generated_source(model) -> str | None:
    """The source of a `Supermodel` mtsc generated; None for a model of the user's own."""
    try:
        source = inspect.getsourcefile(type(model))
    except TypeError:  # a class whose module is not imported as a file
        return None
    if type(model).__name__ != "Supermodel" or source is None:
        return None
    text = Path(source).read_text()
    return text if text.startswith(f"# {GENERATED_BY} ") else None


def _check_same_model(path: Path, text: str, run_dir: str | Path) -> None:
    """The run in `run_dir` is of the model `text` compiles: the same model fingerprint, or,
    for a run whose supermodel.py has none (an older mtsc wrote it), the same code."""
    if not path.exists():
        return
    kept = path.read_text()
    fingerprint = _fingerprint(kept)
    if fingerprint is not None and fingerprint != _fingerprint(text):
        raise MtscError(
            None,
            f"{run_dir} holds a run of another model (its supermodel.py has another model "
            "fingerprint)",
        )
    if fingerprint is None and _body(kept) != _body(text):
        raise MtscError(
            None,
            f"{run_dir} holds a run of another model, or one an earlier mtsc compiled (its "
            "supermodel.py differs): resume it with that mtsc, or start a new run",
        )


def _fingerprint(text: str) -> str | None:
    for line in text.split("\n"):
        if line.startswith(FINGERPRINT):
            return line.removeprefix(FINGERPRINT)
        if not line.startswith("#"):  # past the header comment
            return None
    return None


def _body(text: str) -> str:
    return text.split("\n", 1)[1]  # the first line names the source path, which may move


def load_supermodel(
    model_path: str | Path,
    *,
    out_dir: str | Path | None = None,
    share_bn: bool = False,
    seed: int | None = 0,
):
    """A fresh `Supermodel` instance compiled from a .mtl / .prototxt file, its weights
    initialised from `seed` (None: from torch's current random state). Its `supermodel.py`
    goes into `out_dir`, or without one into mtsc's cache folder (`generated_cache()`), one
    file per distinct code. The module is named after a digest of the file's path and code, so
    a pickled model loads in another process once that process has loaded the same model into
    the same place."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    text = supermodel_source(model_path, share_bn=share_bn)
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    path = (Path(out_dir) if out_dir is not None else generated_cache() / digest) / "supermodel.py"
    write_atomic(path, text)
    # The same code in the same file is imported once, under a name every process gives it:
    # a pickle names its class by module and class name.
    where = hashlib.sha256(f"{path.resolve()}\n{text}".encode()).hexdigest()[:20]
    name = f"mtsc_supermodel_{where}"
    module = sys.modules.get(name) or import_generated(path, name)
    return module.Supermodel()


def generated_cache() -> Path:
    """Where `load_supermodel` keeps the code it generates without an `out_dir`:
    `$XDG_CACHE_HOME/mtsc/supermodels` (`~/.cache/mtsc/supermodels` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mtsc" / "supermodels"


def head_shapes(model, image) -> dict[str, tuple[int, ...]]:
    """What each task's head gives for one image (C x H x W), per sample: one forward in eval
    mode, without gradients and without drawing from the random generators."""
    import torch

    training = model.training
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with torch.no_grad():
                out = model.eval()(image.unsqueeze(0).to(device))
    except (RuntimeError, ValueError) as err:  # the images do not fit the model (channels, size)
        shape = "x".join(map(str, image.shape))
        first = str(err).splitlines()[0]
        raise MtscError(
            None, f"the model cannot run on the data's {shape} images: {first}"
        ) from None
    finally:
        model.train(training)
    return {task: tuple(value.shape[1:]) for task, value in out.items()}


def search(
    model,
    train_set,
    val_set,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    **config: Any,
):
    """Run the three-stage policy search; keyword arguments override `SearchConfig`. A resumed
    run keeps the config it was started with (a keyword argument may repeat a value of it)."""
    from mtsc.commands import refuse_another_commands_folder
    from mtsc.commands.search import undone_unless_resumable
    from mtsc.runtime.config import SearchConfig
    from mtsc.runtime.data.checks import check_datasets
    from mtsc.runtime.search import search as run_search
    from mtsc.runtime.task_fit import check_heads_fit_data
    from mtsc.runtime.trainer import refuse_existing_run

    _check_is_supermodel(model)
    cfg = _run_config(SearchConfig, "search", run_dir, resume, config)
    run_dir = Path(run_dir)
    # As `mtsc search`: the run folder keeps the model's source (supermodel.py), which resumes
    # the run and loads its last.pt; one already there must be this model's.
    source, kept = _generated_source(model), run_dir / "supermodel.py"
    if source is not None:
        _check_same_model(kept, source, run_dir)
    refuse_existing_run(run_dir, resume, how="resume=True")
    if not resume:
        refuse_another_commands_folder(run_dir, "search")
    check_datasets(train_set, val_set, list(model.TASK_SPECS))
    image = val_set[0][0]
    check_heads_fit_data(
        model.TASK_SPECS,
        train_set.info,
        train_set.info.name,
        outputs=head_shapes(model, image),
        image_size=tuple(image.shape[1:]),
    )
    # a fresh run that fails before its first checkpoint leaves nothing behind
    with undone_unless_resumable(run_dir, resume):
        if source is not None and not resume:
            write_atomic(kept, source)
        result = run_search(
            model, train_set, val_set, cfg, run_dir, resume=resume, progress=progress
        )
    if source is not None and not kept.exists():  # a resumed run of an older mtsc's API
        write_atomic(kept, source)
    return result


def train(
    model: str | Path,
    policy: str | dict,
    train_set,
    val_set,
    run_dir: str | Path,
    *,
    weights: str | Path | None = None,
    share_bn: bool = False,
    resume: bool = False,
    progress: bool = True,
    **config: Any,
) -> dict:
    """`mtsc train` on datasets of your own: prune `model` (a .mtl / .prototxt file) to
    `policy` (a dict, a policy.json, or "shared" / "specific"), start from the supermodel
    checkpoint `weights` if given, and train; keyword arguments override `TrainConfig`.
    `run_dir` gets model.py, model.pt, last.pt, metrics.jsonl, eval.json and policy.json.
    Returns the validation `metrics`, `params`, `macs`, `task_params` and the trained `net`."""
    from mtsc.commands import refuse_another_commands_folder
    from mtsc.commands.search import undone_unless_resumable
    from mtsc.commands.train import train_pruned
    from mtsc.runtime.config import TrainConfig
    from mtsc.runtime.trainer import refuse_existing_run

    if resume and weights is not None:
        raise MtscError(None, "a resumed run continues from its last.pt: drop weights=")
    cfg = _run_config(TrainConfig, "train", run_dir, resume, config)
    run_dir = Path(run_dir)
    refuse_existing_run(run_dir, resume, how="resume=True")
    if not resume:
        refuse_another_commands_folder(run_dir, "train")
    # train_pruned checks the datasets against the model's tasks once it has loaded it
    with undone_unless_resumable(run_dir, resume):
        return train_pruned(
            model,
            policy,
            (train_set, val_set),
            run_dir,
            cfg,
            weights=weights,
            share_bn=share_bn,
            resume=resume,
            progress=progress,
            command={"share_bn": share_bn},
        )


def _run_config(cls: type, kind: str, run_dir: str | Path, resume: bool, config: dict):
    """The config of an API run: `config=` (a whole config), else the keyword arguments over
    the defaults, or, resuming, over the run's own (a keyword argument may repeat its value)."""
    from mtsc.runtime.config import given_values, make_config, resumed_config
    from mtsc.runtime.trainer import CHECKPOINT, load_resumable

    if "data" in config:  # the commands' --data options; here the datasets are given
        raise MtscError(
            None,
            f"{kind} takes datasets, not data options: open them with "
            "mtsc.runtime.data.open_dataset(spec, split, **options)",
        )
    whole = config.pop("config", None)
    if whole is not None:
        return whole
    checkpoint = Path(run_dir) / CHECKPOINT
    if resume and checkpoint.is_file():
        given = given_values(cls, None, config)
        # the run loads its weights itself; the kind is checked before the settings
        state = load_resumable(checkpoint, kind, mmap=True)
        return resumed_config(cls, given, state, checkpoint)
    return make_config(cls, None, config)
