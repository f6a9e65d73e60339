"""Training a deployed (pruned) multi-task model: all tasks' losses, SGD with momentum and a
cosine learning-rate schedule, the same resumable checkpoints and logs as the search."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from mtsc.errors import MtscError
from mtsc.runtime.checkpoint import rng_state, set_rng_state
from mtsc.runtime.config import TrainConfig
from mtsc.runtime.trainer import (
    CHECKPOINT,
    BatchStream,
    RunLogger,
    TaskObjective,
    batch_loss,
    evaluate,
    grad_scaler,
    load_resumable,
    loss_logs,
    optimizer_step,
    refuse_existing_run,
    restore_optimizer,
    restore_scaler,
    restoring,
    run_steps,
    sgd_groups,
    start_run,
    validate,
    write_checkpoint,
)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class _Train:
    model: torch.nn.Module
    forward: Any
    config: TrainConfig
    objective: TaskObjective
    stream: BatchStream
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # fp16's loss scale; a pass-through otherwise
    device: torch.device
    logger: RunLogger
    run_dir: Path
    val_set: Any
    stage: str = "train"
    step: int = 0
    last_metrics: dict = field(default_factory=dict)
    command: dict = field(default_factory=dict)  # the settings outside the config (--data)


STAGES = ("train", "done")


def train(
    model: torch.nn.Module,
    train_set,
    val_set,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: dict | None = None,
) -> TrainResult:
    """Train every weight of `model` (a generated MultiTaskModel) on all its tasks.
    `command`: the command's settings outside `config`, saved in the checkpoint."""
    run_dir = Path(run_dir)
    device, rank, world = start_run(model, config.seed, config.amp)
    forward = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(
        sgd_groups(model.parameters(), model, config.weight_decay),
        lr=config.lr,
        momentum=config.momentum,
    )
    steps = max(1, config.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    run = _Train(
        model,
        forward,
        config,
        TaskObjective(model.TASK_SPECS, train_set.info),
        BatchStream(
            train_set,
            list(range(len(train_set))),
            config.batch_size,
            config.seed,
            num_workers=config.num_workers,
            rank=rank,
            world=world,
        ),
        optimizer,
        schedule,
        grad_scaler(config.amp, device),
        device,
        RunLogger(run_dir, enabled=rank == 0),
        run_dir,
        val_set,
        command=dict(command or {}),
    )
    refuse_existing_run(run_dir, resume)
    if resume:
        _restore(run, run_dir / CHECKPOINT)
        run.logger.rewind(STAGES, run.stage, run.step)
    else:
        run.logger.start_afresh()
    try:
        run_steps(run, config.steps, _step, _checkpoint, progress=progress)
        if config.steps == 0 and config.eval_every:  # nothing to train: validate the start
            validate(run)
    finally:
        run.logger.close()
    run.stage = "done"
    _checkpoint(run)
    return TrainResult(run_dir, run.last_metrics)


def _step(run: _Train) -> dict[str, float]:
    run.model.train()
    loss, losses = batch_loss(run, run.stream)
    run.optimizer.zero_grad(set_to_none=True)
    if optimizer_step(run, loss, run.optimizer):
        run.schedule.step()
    return {**loss_logs(loss, losses), "lr": run.schedule.get_last_lr()[0]}


def evaluate_split(model, test_set, config: TrainConfig, device=None) -> dict:
    """Metrics over a whole split (for the final report)."""
    objective = TaskObjective(model.TASK_SPECS, test_set.info)
    return evaluate(
        model,
        test_set,
        objective,
        batch_size=config.batch_size,
        device=device or next(model.parameters()).device,
    )


def _checkpoint(run: _Train) -> None:
    write_checkpoint(
        run.run_dir,
        lambda: {
            "model": run.model.state_dict(),
            "tasks": list(run.model.TASKS),
            "optimizer": run.optimizer.state_dict(),
            "schedule": run.schedule.state_dict(),
            "scaler": run.scaler.state_dict(),
            "stage": run.stage,
            "step": run.step,
            "stream": run.stream.state(),
            "rng": rng_state(),
            "config": run.config.to_dict(),
            "command": run.command,
            "metrics": run.last_metrics,
        },
    )


def _restore(run: _Train, path: Path) -> None:
    if not path.exists():
        raise MtscError(None, f"nothing to resume: {path} does not exist")
    state = load_resumable(path, "train")
    ours = run.model.state_dict()
    if state["tasks"] != list(run.model.TASKS) or set(state["model"]) != set(ours):
        raise MtscError(None, f"{path} is a run of a different model")
    stage = state.get("stage", "train")
    with restoring(path, stage, STAGES):
        run.model.load_state_dict(state["model"])
        restore_optimizer(run.optimizer, state["optimizer"], path)
        run.schedule.load_state_dict(state["schedule"])
        restore_scaler(run, state)
        run.stage, run.step = stage, state["step"]
        run.stream.restore(state["stream"])
        run.last_metrics = state.get("metrics", {})
        set_rng_state(state["rng"])
