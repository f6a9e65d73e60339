"""The policy search of AutoMTL, as three stages over a generated `Supermodel`:

1. `warmup`: train all weights with equal mixture weights;
2. `policy_search`: alternate weight steps (SGD with momentum, training split) and policy
   steps (Adam on the policy logits, held-out part of the training split), Gumbel-softmax
   with an annealed temperature; loss = sum_t weight_t * L_t + the regulariser (depth-weighted
   sharing, or a parameter budget);
3. `derive_policy`: argmax, or a sample from the learned distribution.

Retraining the pruned model is `mtsc.runtime.train`. Everything is resumable from the run
folder's `last.pt` (written atomically), deterministic on CPU with a seed, and works under
torchrun (DDP; rank 0 writes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from mtsc.errors import MtscError
from mtsc.runtime.checkpoint import (
    check_searched_model,
    rng_state,
    set_rng_state,
    write_text_atomic,
)
from mtsc.runtime.config import SearchConfig, resolve_mixing
from mtsc.runtime.policy_format import CHOICES
from mtsc.runtime.routing import _use_triton
from mtsc.runtime.trainer import (
    CHECKPOINT,
    BatchStream,
    RunLogger,
    TaskObjective,
    batch_loss,
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
    write_checkpoint,
)

STAGES = ("warmup", "search", "done")


@dataclass
class SearchResult:
    policy: dict
    run_dir: Path
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class _Run:
    """Everything a stage needs, and everything a checkpoint saves."""

    model: torch.nn.Module  # the Supermodel itself
    forward: Callable  # the model, or its DDP wrapper
    config: SearchConfig
    objective: TaskObjective
    weights: BatchStream
    held_out: BatchStream
    weight_opt: torch.optim.Optimizer
    policy_opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16's loss scale; a pass-through otherwise
    device: torch.device
    logger: RunLogger
    run_dir: Path
    val_set: Any
    stage: str = "warmup"
    step: int = 0  # steps done in the current stage
    last_metrics: dict = field(default_factory=dict)
    command: dict = field(default_factory=dict)  # the settings outside the config (--data)


def check_routing_setting(device: torch.device) -> None:
    """MTSC_ROUTING, checked once before the run rather than at the first mixture (which may
    come late, or never when mixing weights): a value it cannot take is a user error."""
    try:
        _use_triton(torch.empty(0, device=device))  # the mixture's own reading of the setting
    except (ValueError, RuntimeError, TypeError) as err:  # a bad value, or triton where not
        raise MtscError(None, str(err)) from None


def tau_at(config: SearchConfig, step: int) -> float:
    return max(config.tau_min, config.tau_init * config.tau_decay ** (step / 100))


def search(
    model: torch.nn.Module,
    train_set,
    val_set,
    config: SearchConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: dict | None = None,
) -> SearchResult:
    """Run (or resume) the whole search; returns the derived policy (also in policy.json).
    `model` is left in hard mode running that policy, in `eval()`. `command`: the command's
    settings outside `config`, saved in the checkpoint."""
    run_dir = Path(run_dir)
    if not model.ROUTED:
        raise MtscError(
            None,
            "the supermodel routes no op (every conv and linear is pinned @shared or "
            "@specific): there is no policy to search; `mtsc train MODEL --policy shared` "
            "trains it as it is",
        )
    device, rank, world = start_run(model, config.seed, config.amp)
    check_routing_setting(device)
    model.set_mixing(resolve_mixing(config.mixing, device.type))
    objective = TaskObjective(model.TASK_SPECS, train_set.info)
    weight_idx, policy_idx = split_held_out(len(train_set), config.held_out, config.seed)
    forward = model
    if world > 1:
        forward = DistributedDataParallel(model, find_unused_parameters=True)
    run = _Run(
        model=model,
        forward=forward,
        config=config,
        objective=objective,
        weights=BatchStream(
            train_set,
            weight_idx,
            config.batch_size,
            config.seed,
            num_workers=config.num_workers,
            rank=rank,
            world=world,
            part=f"the training split less its held-out part (held_out={config.held_out})",
        ),
        held_out=BatchStream(
            train_set,
            policy_idx,
            config.batch_size,
            config.seed + 1,
            num_workers=config.num_workers,
            rank=rank,
            world=world,
            part=f"the held-out part of the training split (held_out={config.held_out})",
        ),
        weight_opt=torch.optim.SGD(
            sgd_groups(model.weight_parameters(), model, config.weight_decay),
            lr=config.weight_lr,
            momentum=config.momentum,
        ),
        policy_opt=torch.optim.Adam(model.policy_parameters(), lr=config.policy_lr),
        scaler=grad_scaler(config.amp, device),
        device=device,
        logger=RunLogger(run_dir, enabled=rank == 0),
        run_dir=run_dir,
        val_set=val_set,
        command=dict(command or {}),
    )
    refuse_existing_run(run_dir, resume)
    if resume:
        _restore(run, run_dir / CHECKPOINT)
        run.logger.rewind(STAGES, run.stage, run.step)
    else:
        run.logger.start_afresh()
    try:
        if run.stage == "warmup":
            warmup(run, progress=progress)
            run.stage, run.step = "search", 0
            _checkpoint(run)
        if run.stage == "search":
            policy_search(run, progress=progress)
            run.stage, run.step = "done", 0
            _checkpoint(run)
    finally:
        run.logger.close()
    policy = derive_policy(model, config.derive, config.derive_seed)
    if rank == 0:
        write_policy(run_dir, model, policy)
    _checkpoint(run, policy=policy)  # every rank: it ends in a barrier that all must join
    # The model comes back as the searched network: what `mtsc prune` emits for `policy`.
    model.set_mode("hard", policy=policy).eval()
    return SearchResult(policy, run_dir, run.last_metrics)


def split_held_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed split of the training indices: weights train on one part, the policy on the other."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, int(round(n * fraction)))
    return sorted(order[cut:]), sorted(order[:cut])


# ---------------------------------------------------------------------- stages


def warmup(run: _Run, *, progress: bool = True) -> None:
    """Stage 1: all weights with equal mixture weights."""
    run.model.set_mode("warmup")
    run_steps(run, run.config.warmup_steps, _weight_step, _checkpoint, progress=progress)


def policy_search(run: _Run, *, progress: bool = True) -> None:
    """Stage 2: weight steps and policy steps alternate; tau anneals."""
    run.model.set_mode("search")

    def step(r: _Run) -> dict[str, float]:
        r.model.tau = tau_at(r.config, r.step)
        logs = _weight_step(r)
        if (r.step + 1) % r.config.policy_every == 0:
            logs.update(_policy_step(r))
        logs["tau"] = r.model.tau
        return logs

    run_steps(run, run.config.search_steps, step, _checkpoint, progress=progress)


def _weight_step(run: _Run) -> dict[str, float]:
    run.model.train()
    loss, losses = batch_loss(run, run.weights)
    run.weight_opt.zero_grad(set_to_none=True)
    run.policy_opt.zero_grad(set_to_none=True)
    optimizer_step(run, loss, run.weight_opt)
    return loss_logs(loss, losses)


def _policy_step(run: _Run) -> dict[str, float]:
    task_loss, _ = batch_loss(run, run.held_out)
    if run.config.budget is not None:
        reg = run.config.budget_weight * run.model.budget_regularizer(run.config.budget)
    else:
        reg = run.config.reg_weight * run.model.policy_regularizer()
    loss = task_loss + reg
    run.weight_opt.zero_grad(set_to_none=True)
    run.policy_opt.zero_grad(set_to_none=True)
    optimizer_step(run, loss, run.policy_opt)
    return {"policy_loss": float(loss.detach()), "regularizer": float(reg.detach())}


# ---------------------------------------------------------------------- derive


def derive_policy(model: torch.nn.Module, how: str = "argmax", seed: int = 0) -> dict:
    """Stage 3: the discrete policy, by argmax of the logits or sampled from their softmax."""
    if how == "argmax":
        return model.export_policy()
    if how != "sample":
        raise ValueError(f"derive must be 'argmax' or 'sample', got {how!r}")
    g = torch.Generator().manual_seed(seed)
    choices = {}
    for name, _, _ in model.ROUTED:
        probs = torch.softmax(model.policy_logits(name).detach().float().cpu(), dim=1)
        picks = torch.multinomial(probs, 1, generator=g).squeeze(1).tolist()
        choices[name] = {t: CHOICES[c] for t, c in zip(model.TASKS, picks, strict=True)}
    return {"model": model.MODEL, "tasks": list(model.TASKS), "choices": choices}


def policy_table(model: torch.nn.Module, policy: dict) -> str:
    """op x task -> choice, with the probability the search gave it."""
    probs = model.policy_probabilities()
    width = max([len(n) for n, _, _ in model.ROUTED] + [2])
    head = f"{'op':<{width}}  " + "  ".join(f"{t:>18}" for t in model.TASKS)
    lines = [head, "-" * len(head)]
    for name, _, _ in model.ROUTED:
        cells = []
        for task in model.TASKS:
            choice = policy["choices"][name][task]
            cells.append(f"{choice:>12} {probs[name][task][choice]:5.2f}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines) + "\n"


def write_policy(run_dir: Path, model: torch.nn.Module, policy: dict) -> None:
    write_text_atomic(run_dir / "policy.json", json.dumps(policy, indent=2) + "\n")
    write_text_atomic(run_dir / "policy.txt", policy_table(model, policy))


# ---------------------------------------------------------------------- checkpoints


def _checkpoint(run: _Run, *, policy: dict | None = None) -> None:
    write_checkpoint(
        run.run_dir,
        lambda: {
            "model": run.model.state_dict(),
            "policy": policy or run.model.export_policy(),
            "model_name": run.model.MODEL,
            "tasks": list(run.model.TASKS),
            "weight_opt": run.weight_opt.state_dict(),
            "policy_opt": run.policy_opt.state_dict(),
            "scaler": run.scaler.state_dict(),
            "tau": float(run.model.tau),
            "stage": run.stage,
            "step": run.step,
            "streams": {"weights": run.weights.state(), "held_out": run.held_out.state()},
            "rng": rng_state(),
            "config": run.config.to_dict(),
            "command": run.command,
            "metrics": run.last_metrics,
        },
    )


def _restore(run: _Run, path: Path) -> None:
    if not path.exists():
        raise MtscError(None, f"nothing to resume: {path} does not exist")
    state = load_resumable(path, "search")
    check_searched_model(
        path, (state["model_name"], state["tasks"]), (run.model.MODEL, list(run.model.TASKS))
    )
    ours = run.model.state_dict()
    if set(state["model"]) != set(ours) or any(
        state["model"][k].shape != v.shape for k, v in ours.items()
    ):
        raise MtscError(None, f"{path} holds weights of a different network than this model")
    with restoring(path, state["stage"], STAGES):
        run.model.load_state_dict(state["model"])
        restore_optimizer(run.weight_opt, state["weight_opt"], path)
        restore_optimizer(run.policy_opt, state["policy_opt"], path)
        restore_scaler(run, state)
        run.model.tau = float(state["tau"])
        run.stage, run.step = state["stage"], state["step"]
        run.weights.restore(state["streams"]["weights"])
        run.held_out.restore(state["streams"]["held_out"])
        run.last_metrics = state.get("metrics", {})
        set_rng_state(state["rng"])
