"""The machinery shared by search and retraining: task objectives, resumable batch streams,
evaluation, logging, distributed set-up and mixed precision."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from mtsc.errors import MtscError
from mtsc.fsutil import json_text
from mtsc.runtime.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    write_text_atomic,
)
from mtsc.runtime.cpu_memory import keep_freed_memory
from mtsc.runtime.losses import make_loss
from mtsc.runtime.metrics import Metric, check_metric_options, make_metric
from mtsc.runtime.objectives import (
    LOSS_OPTIONS,
    SEGMENTATION_METRICS,
    default_loss,
    default_metric,
    scored_classes,
)

# ---------------------------------------------------------------------- tasks


class TaskObjective:
    """Losses, loss weights and metrics of each task, built from the model's TASK_SPECS."""

    def __init__(self, task_specs: Mapping[str, Mapping[str, Any]], dataset_info: Any) -> None:
        self.tasks = tuple(task_specs)
        missing = [t for t in self.tasks if t not in dataset_info.tasks]
        if missing:
            raise MtscError(
                None,
                f"the data has no targets for task(s) {', '.join(missing)}: it provides "
                f"{', '.join(dataset_info.tasks)}; the model's tasks are {', '.join(self.tasks)}",
            )
        self.losses = {}
        self.weights = {}
        self.metric_specs = {}
        for task, spec in task_specs.items():
            loss = spec.get("loss") or (default_loss(task), {})
            if loss[0] is None:
                raise MtscError(None, f"task {task!r} has no loss= in the tasks section")
            options = dict(loss[1])
            if "ignore" in LOSS_OPTIONS.get(loss[0], ()):  # the data's unlabelled value
                options.setdefault("ignore", dataset_info.ignore_index)
            try:
                self.losses[task] = make_loss(loss[0], **options)
            except ValueError as err:
                raise MtscError(None, f"task {task!r}: {err}") from None
            self.weights[task] = float(spec.get("weight", 1.0))
            metric = spec.get("metric") or (default_metric(task), {})
            if metric[0] is not None:
                options = dict(metric[1])
                if metric[0] in SEGMENTATION_METRICS:
                    classes = scored_classes(options, spec["head"][1], dataset_info.num_classes)
                    options["num_classes"] = classes
                    options.setdefault("ignore", dataset_info.ignore_index)
                try:  # the metrics are made for each evaluation: a bad option shows now
                    check_metric_options(metric[0], options)
                except ValueError as err:
                    raise MtscError(None, f"task {task!r}: {err}") from None
                self.metric_specs[task] = (metric[0], options)

    def task_losses(self, outputs: Mapping[str, torch.Tensor], targets: Mapping) -> dict:
        valid = targets.get("valid", {})
        return {t: self.losses[t](outputs[t].float(), targets[t], valid.get(t)) for t in self.tasks}

    def total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[t] * losses[t] for t in self.tasks)

    def make_metrics(self) -> dict[str, Metric]:
        return {t: make_metric(name, **opts) for t, (name, opts) in self.metric_specs.items()}


def check_finite(losses: Mapping[str, torch.Tensor], step: int) -> None:
    bad = [t for t, v in losses.items() if not math.isfinite(float(v.detach()))]
    if bad:
        raise MtscError(
            None,
            f"the loss of task(s) {', '.join(bad)} is not finite at step {step}; stopped, the "
            "last checkpoint written, if any, is kept (lower the learning rate or check the data)",
        )


# ---------------------------------------------------------------------- data


def collate(items: list) -> tuple[torch.Tensor, dict]:
    shapes = sorted({tuple(image.shape) for image, _ in items})
    if len(shapes) > 1:  # torch.stack would fail with the sizes alone
        listed = ", ".join("x".join(map(str, shape)) for shape in shapes[:3])
        raise MtscError(
            None,
            f"a batch holds images of different sizes ({listed}): give the data one size "
            "(mtsc's readers take `size`: --set data.size=N)",
        )
    # A task that an item's `valid` leaves out is labelled there, as in an item with no `valid`.
    named = set().union(*(targets.get("valid", {}) for _, targets in items))
    if any(len(targets.get("valid", {})) != len(named) for _, targets in items):
        items = [
            (
                image,
                {**targets, "valid": {**dict.fromkeys(named, True), **targets.get("valid", {})}},
            )
            for image, targets in items
        ]
    return torch.utils.data.default_collate(items)


@dataclass(frozen=True)
class _Failure:
    """An MtscError met reading or batching items, carried out of a loader worker as data: the
    loader would re-raise it as a RuntimeError holding the worker's traceback as text."""

    span: Any
    message: str
    notes: tuple[str, ...]

    @classmethod
    def of(cls, err: MtscError) -> _Failure:
        return cls(err.span, err.message, err.notes)

    def error(self) -> MtscError:
        return MtscError(self.span, self.message, notes=self.notes)


class _ReportingItems(torch.utils.data.Dataset):
    """`dataset`'s items, or the _Failure of the one that cannot be read."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except MtscError as err:
            return _Failure.of(err)


def _reporting_collate(items: list):
    """The batch of `items`, or the _Failure of an item, or of the batching."""
    failed = next((item for item in items if isinstance(item, _Failure)), None)
    if failed is not None:
        return failed
    try:
        return collate(items)
    except MtscError as err:
        return _Failure.of(err)


class BatchStream:
    """An endless, resumable stream of batches: epoch `e` visits the samples in the order of
    a permutation seeded by (seed, e); under DDP each rank takes its share of every batch.
    `part` names the samples (`indices` of `dataset`) in messages."""

    def __init__(
        self,
        dataset,
        indices: list[int],
        batch_size: int,
        seed: int,
        *,
        num_workers: int = 0,
        rank: int = 0,
        world: int = 1,
        part: str = "the training split",
    ) -> None:
        if len(indices) < batch_size * world:
            raise MtscError(
                None,
                f"{part} has {len(indices)} samples, too few for batches of {batch_size} on "
                f"{world} process(es); use a smaller batch_size or more data",
            )
        self.dataset = dataset
        self.indices = indices
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.rank, self.world = rank, world
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._iter: Iterator | None = None

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + epoch)

    def _batches(self, epoch: int) -> list[list[int]]:
        g = self._epoch_generator(epoch)
        order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=g)]
        size = self.batch_size * self.world
        return [
            order[i : i + size][self.rank :: self.world]
            for i in range(0, len(order) - size + 1, size)
        ]

    def _start(self) -> None:
        batches = self._batches(self.epoch)[self.position :]
        # A private generator: a loader draws its workers' base seed when it starts, and from
        # the global RNG that would shift the Gumbel noise of a resumed run (it starts anew).
        loader = torch.utils.data.DataLoader(
            _ReportingItems(self.dataset),
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=_reporting_collate,
            generator=self._epoch_generator(self.epoch),
        )
        self._iter = iter(loader)

    def next(self) -> tuple[torch.Tensor, dict]:
        while True:
            if self._iter is None:
                self._start()
            try:
                batch = next(self._iter)
                if isinstance(batch, _Failure):
                    raise batch.error()
                self.position += 1
                return batch
            except StopIteration:
                self.epoch += 1
                self.position = 0
                self._iter = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iter = None


def to_device(batch: tuple, device: torch.device) -> tuple[torch.Tensor, dict]:
    images, targets = batch

    def move(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        # what is not a tensor (a dataset's own file names, say) stays as it is
        return v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v

    return images.to(device, non_blocking=True), move(targets)


# ---------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model, dataset, objective: TaskObjective, *, batch_size: int, device, max_batches: int = 0
) -> dict[str, dict[str, float]]:
    """Metrics of every task over the split (its first `max_batches` batches, if set),
    all-reduced across processes under DDP. Runs `model` itself, never its DDP wrapper: the
    ranks may get different numbers of batches, and a wrapper's forward may be a collective."""
    was_training = model.training
    model.eval()
    metrics = objective.make_metrics()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    rank, world = dist_info()
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        if i % world != rank:
            continue
        images, targets = to_device(batch, device)
        outputs = model(images)
        valid = targets.get("valid", {})
        for task, metric in metrics.items():
            metric.update(outputs[task].float(), targets[task], valid.get(task))
    results = {}
    for task, metric in metrics.items():
        metric.sync()
        results[task] = metric.compute()
    model.train(was_training)
    return results


# ---------------------------------------------------------------------- runs

CHECKPOINT = "last.pt"


def sgd_groups(weights: Iterable[torch.nn.Parameter], model: torch.nn.Module, decay: float):
    """SGD parameter groups: `decay` for every weight but PReLU slopes, which take none (as
    in He et al. 2015 and Caffe's `decay_mult: 0`): decay would pull them to a plain ReLU."""
    slopes = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.PReLU)}
    weights = list(weights)
    groups = [{"params": [p for p in weights if id(p) not in slopes], "weight_decay": decay}]
    free = [p for p in weights if id(p) in slopes]
    return groups + ([{"params": free, "weight_decay": 0.0}] if free else [])


def start_run(
    model: torch.nn.Module, seed: int, amp: str | None = None
) -> tuple[torch.device, int, int]:
    """Join the process group (under torchrun), seed every stream, move the model to its
    device; keep freed CPU memory for the next step. Returns (device, rank, world size)."""
    keep_freed_memory()
    device = init_distributed()
    seed_everything(seed)
    model.to(device)
    rank, world = dist_info()
    if amp == "fp16" and device.type == "cpu" and rank == 0:
        print(
            "warning: fp16 autocast is slow on a CPU; bf16 is the CPU's mixed precision",
            file=sys.stderr,
        )
    return device, rank, world


def refuse_existing_run(run_dir: Path, resume: bool, how: str = "--resume") -> None:
    """A run folder holds one run: continuing it takes `how` (--resume), never an overwrite."""
    if not resume and dist_info()[0] == 0 and (Path(run_dir) / CHECKPOINT).exists():
        raise MtscError(None, f"{run_dir} already holds a run; use {how} to continue it")


# What a resumable checkpoint holds, by the kind of run that wrote it, and the fields older
# checkpoints may lack. A field of the wrong type (a damaged or hand-edited file) is named,
# rather than failing somewhere in the restore.
_RUN_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "search": {
        "model": dict, "model_name": str, "tasks": list, "weight_opt": dict, "policy_opt": dict,
        "tau": (int, float), "stage": str, "step": int, "streams": dict, "rng": dict,
    },
    "train": {
        "model": dict, "tasks": list, "optimizer": dict, "schedule": dict, "step": int,
        "stream": dict, "rng": dict,
    },
}  # fmt: skip
_OPTIONAL_FIELDS = {"config": dict, "command": dict, "metrics": dict, "scaler": dict, "stage": str}


def load_resumable(path: Path, kind: str, *, mmap: bool = False) -> dict[str, Any]:
    """The run state in a checkpoint, to resume a run of `kind` ("search" or "train") with.
    A checkpoint of the other kind is named as such; a missing field, or one of the wrong
    type, is an error saying which."""
    state = load_checkpoint(path, mmap=mmap)
    if not isinstance(state, dict):
        raise MtscError(None, f"{path} is not a checkpoint of an mtsc run")
    _check_run_kind(state, path, kind)
    for key, want in {**_OPTIONAL_FIELDS, **_RUN_FIELDS[kind]}.items():
        if state.get(key) is None:  # an optional field may also be saved as None
            if key in _RUN_FIELDS[kind]:
                raise MtscError(None, f"{path} is damaged: it has no {key!r}; start a new run")
            continue
        value = state[key]
        if not isinstance(value, want) or isinstance(value, bool):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise MtscError(
                None,
                f"{path} is damaged: its {key!r} should be {names}, not {type(value).__name__}",
            )
    if state["step"] < 0 or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise MtscError(None, f"{path} is damaged: its step or model weights are not valid")
    return state


def _check_run_kind(state: Mapping[str, Any], path: Path, kind: str) -> None:
    """A run is resumed by the command that started it (`kind`: "search" or "train"). The
    checkpoints tell: a search's holds its two optimizers ("weight_opt", "policy_opt"), a
    training's one ("optimizer"); one with neither is left to the checks that follow."""
    found = "search" if "policy_opt" in state else "train" if "optimizer" in state else kind
    if found != kind:
        raise MtscError(
            None,
            f"{path} is a {found} run, not a {kind} run; "
            f"`mtsc {found} MODEL --resume {Path(path).parent}` continues it",
        )


@contextlib.contextmanager
def restoring(path: Path, stage: str, stages: tuple[str, ...]) -> Iterator[None]:
    """Around restoring a run from its checkpoint: a value inside it that the restore cannot
    take (a damaged file) is the user's error, not a traceback."""
    if stage not in stages:
        raise MtscError(
            None, f"{path} is damaged: its stage {stage!r} is none of {', '.join(stages)}"
        )
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise MtscError(None, f"{path} is damaged ({type(err).__name__}: {err})") from None


def write_checkpoint(run_dir: Path, state: Callable[[], dict[str, Any]]) -> None:
    """Rank 0 writes `state()` to the run's checkpoint; every rank waits for it."""
    if dist_info()[0] == 0:
        save_checkpoint(Path(run_dir) / CHECKPOINT, state())
    barrier()


def batch_loss(run: Any, stream: BatchStream) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward the next batch of `stream` through `run.forward`: the weighted total loss and
    each task's loss, stopping on a non-finite one."""
    images, targets = to_device(stream.next(), run.device)
    with autocast(run.config.amp, run.device):
        outputs = run.forward(images)
    # Losses in float32 whatever the forward ran in: an fp16 sum over pixels overflows.
    losses = run.objective.task_losses({t: o.float() for t, o in outputs.items()}, targets)
    check_finite(losses, run.step)
    return run.objective.total(losses), losses


def loss_logs(loss: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {
        "loss": float(loss.detach()),
        **{f"loss_{t}": float(v.detach()) for t, v in losses.items()},
    }


# ---------------------------------------------------------------------- the loop


def run_steps(
    run: Any,
    total: int,
    step_fn: Callable[[Any], dict],
    checkpoint: Callable[[Any], None],
    *,
    progress: bool = True,
) -> None:
    """Steps `run.step` up to `total`: a progress bar with loss, tau and throughput, the
    metrics log, validation every `eval_every` steps and checkpoints every
    `checkpoint_every` steps. `run` carries model, forward, config, objective, device,
    logger, val_set, stage, step and last_metrics."""
    rank, _ = dist_info()
    bar = tqdm(
        total=total,
        initial=run.step,
        desc=run.stage,
        # None: tqdm draws only on a terminal, so a log file gets no carriage-return frames
        disable=True if not progress or rank != 0 else None,
        dynamic_ncols=True,
        leave=True,
    )
    start, samples = time.perf_counter(), 0
    while run.step < total:
        logs = step_fn(run)
        run.step += 1
        samples += run.config.batch_size
        bar.update(1)
        rate = samples / max(1e-9, time.perf_counter() - start)
        shown = {k: f"{v:.3g}" for k, v in logs.items() if k in ("loss", "tau")}
        bar.set_postfix({**shown, "img/s": f"{rate:.0f}"})
        if run.step % run.config.log_every == 0 or run.step == total:
            run.logger.log(run.step, run.stage, {**logs, "images_per_s": rate})
        if run.config.eval_every and (run.step % run.config.eval_every == 0 or run.step == total):
            validate(run, bar.write)
        if run.step % run.config.checkpoint_every == 0 and run.step < total:
            checkpoint(run)
    bar.close()


def validate(run: Any, write: Callable[[str], None] = print) -> None:
    """Validation metrics of `run.model` at `run.step`: kept in `run.last_metrics`, logged,
    and written out by rank 0."""
    run.last_metrics = evaluate(
        run.model,
        run.val_set,
        run.objective,
        batch_size=run.config.batch_size,
        device=run.device,
        max_batches=run.config.eval_batches,
    )
    run.logger.log(run.step, run.stage, {"val": run.last_metrics})
    if dist_info()[0] == 0:
        write(f"[{run.stage} {run.step}] " + metrics_line(run.last_metrics))


def metrics_line(metrics: Mapping[str, Mapping[str, float]]) -> str:
    parts = []
    for task, values in metrics.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in list(values.items())[:3])
        parts.append(f"{task}: {shown}")
    return " | ".join(parts)


# ---------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> torch.device:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    if (
        "WORLD_SIZE" in os.environ
        and int(os.environ["WORLD_SIZE"]) > 1
        and not dist.is_initialized()
    ):
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str | None, device: torch.device):
    """Mixed precision (bf16 or fp16) on the run's device: CUDA's autocast or the CPU's."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs the loss scaled up so that small gradients do not flush to zero; bf16 has
    float32's range, so for it (and for float32) the scaler passes everything through."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def optimizer_step(run: Any, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
    """Backward of `loss` and one step of `optimizer`, through the run's gradient scaler (a
    step whose scaled gradients overflowed is skipped, and the scale shrinks). Whether the
    optimizer stepped: a learning-rate schedule follows its steps, not the skipped ones."""
    scale = run.scaler.get_scale() if run.scaler.is_enabled() else None
    run.scaler.scale(loss).backward()
    run.scaler.step(optimizer)
    run.scaler.update()
    return scale is None or run.scaler.get_scale() >= scale


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: Mapping, path: Path) -> None:
    """An optimizer's state from a checkpoint; one that does not fit (another model, or a
    checkpoint of an mtsc with other parameter groups) is a clear error, not a traceback."""
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError) as err:
        raise MtscError(
            None, f"{path}: its optimizer state does not fit this run ({err}); start a new run"
        ) from None


def restore_scaler(run: Any, state: Mapping[str, Any]) -> None:
    """The loss scale of an fp16 run; an empty state is a run without one."""
    saved = state.get("scaler") or {}
    if saved and run.scaler.is_enabled():
        run.scaler.load_state_dict(saved)


# ---------------------------------------------------------------------- logging


@dataclass
class RunLogger:
    """Metrics as JSON lines in the run folder (and TensorBoard events when installed),
    written by rank 0 only."""

    run_dir: Path
    enabled: bool = True

    def __post_init__(self) -> None:
        self._tb = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, stage: str, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "stage": stage, "step": step, **values}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json_text(record, sort_keys=True) + "\n")
        if self._tb is not None:
            for key, value in _flatten(values).items():
                self._tb.add_scalar(f"{stage}/{key}", value, step)

    def start_afresh(self) -> None:
        """A fresh run logs from an empty file: one killed before its first checkpoint may
        have left its lines in the folder, which a new run is allowed into."""
        if self.enabled:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)

    def rewind(self, stages: tuple[str, ...], stage: str, step: int) -> None:
        """Drop the lines logged after step `step` of `stage` (`stages` in their order): a
        resumed run redoes those steps, and logs each of them once. A line the kill cut off
        goes too. TensorBoard's event files are left as they are."""
        path = self.run_dir / "metrics.jsonl"
        if not self.enabled or not path.exists():
            return
        order = {name: i for i, name in enumerate(stages)}
        at = (order[stage], step)
        kept = []
        for line in path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):  # the line a kill cut off
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (order.get(record.get("stage"), len(stages)), record.get("step", 0)) <= at:
                kept.append(line)
        write_text_atomic(path, "".join(kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat
