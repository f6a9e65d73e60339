"""Search steps per second, and the share of a step spent outside forward and backward.

For each model the generated supermodel is searched by the real loop (`mtsc.search`: the
warm-up stage, then the policy search; one search step is a weight step and a policy step) on
the built-in `shapes` data at the model's input size. Nothing in the library is changed: the
benchmark wraps, for the time of a run, the pieces a step is made of:

    data       BatchStream.next and to_device (the batch, from the dataset to the device)
    forward    the supermodel's forward
    loss       the task losses, their weighted sum, the regulariser, the finite check
    backward   Tensor.backward
    optimizer  zero_grad and step of SGD and Adam
    log        the metrics log (JSON lines)
    other      the rest: the step function's own Python, the progress bar, run_steps

A step lasts from the start of one step to the start of the next, so what `run_steps` does
between steps counts. The first `--skip` steps of each stage are not measured (Triton
compiles `mix3` there, cuDNN picks algorithms). Evaluation and checkpoints are periodic, not
part of a step, and are switched off.

Two passes per model: a plain one (steps per second, nothing wrapped), then an instrumented
one for the breakdown. On CUDA every wrapper synchronises the device before it reads the
clock, so phases do not overlap and a phase's time is the device's time for it; the plain
pass shows what that costs. "outside" is the share of the step that is neither the forward
(with its loss) nor the backward.

Run: `python benchmarks/bench_search.py [--models resnet_tiny resnet34 mobilenetv2]
[--steps 10] [--skip 3] [--batch N] [--size S] [--threads N] [--num-workers N]
[--mixing auto|outputs|weights]`. It runs on
CUDA when a device is there, else on the CPU; ResNet-34 and MobileNetV2 are measured only on
CUDA (on a CPU one of their steps takes minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

import mtsc.runtime.search as search_module
import mtsc.runtime.trainer as trainer_module
from mtsc.api import load_supermodel
from mtsc.runtime.config import MIXING_CHOICES, SearchConfig, resolve_mixing
from mtsc.runtime.data import open_dataset
from mtsc.runtime.trainer import BatchStream, RunLogger, TaskObjective

ROOT = Path(__file__).resolve().parent.parent
# model: (example file, batch, input size, needs CUDA)
MODELS = {
    "resnet_tiny": ("resnet_tiny.mtl", 8, 64, False),
    "resnet34": ("resnet34.mtl", 4, 321, True),
    "mobilenetv2": ("mobilenetv2.mtl", 8, 224, True),
}
PHASES = ("data", "forward", "loss", "backward", "optimizer", "log")
STAGES = ("warmup", "search")
SEED = 0


@dataclass
class Clock:
    """Time spent per phase; `sync` waits for the device (a no-op on the CPU)."""

    sync: Callable[[], None]
    spent: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    active: str | None = None

    def wrap(self, phase: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self.active is not None:  # already inside a timed phase: count it there
                return fn(*args, **kwargs)
            self.sync()
            self.active, start = phase, time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.spent[phase] += time.perf_counter() - start
                self.active = None

        return timed


@dataclass
class Steps:
    """Step start times and phase totals at each start, per stage."""

    starts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    phases: dict[str, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))

    def per_step(self, stage: str, skip: int) -> tuple[list[float], dict[str, list[float]]]:
        """Durations of the measured steps, and of each phase in them."""
        starts, snaps = self.starts[stage][skip:], self.phases[stage][skip:]
        durations = [b - a for a, b in itertools.pairwise(starts)]
        phases = {
            p: [b.get(p, 0.0) - a.get(p, 0.0) for a, b in itertools.pairwise(snaps)] for p in PHASES
        }
        return durations, phases


@contextlib.contextmanager
def patched(target: object, name: str, value: object) -> Iterator[None]:
    old = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, old)


def record_steps(steps: Steps, clock: Clock | None, sync: Callable[[], None]):
    """A `run_steps` that notes when each step starts (and the phase totals then)."""
    real_run_steps = search_module.run_steps

    def run_steps(run, total, step_fn, checkpoint, *, progress=True):
        def step(r):
            sync()
            steps.starts[r.stage].append(time.perf_counter())
            steps.phases[r.stage].append(dict(clock.spent) if clock else {})
            return step_fn(r)

        real_run_steps(run, total, step, checkpoint, progress=progress)
        sync()
        steps.starts[run.stage].append(time.perf_counter())  # the end of the last step
        steps.phases[run.stage].append(dict(clock.spent) if clock else {})

    return run_steps


def instrument(stack: contextlib.ExitStack, model, clock: Clock) -> None:
    """Wrap every piece of a step in `clock` (undone when `stack` closes)."""
    targets = [
        (BatchStream, "next", "data"),
        (trainer_module, "to_device", "data"),
        (model, "forward", "forward"),
        (TaskObjective, "task_losses", "loss"),
        (TaskObjective, "total", "loss"),
        (trainer_module, "check_finite", "loss"),
        (model, "policy_regularizer", "loss"),
        (model, "budget_regularizer", "loss"),
        (torch.Tensor, "backward", "backward"),
        (RunLogger, "log", "log"),
    ]
    for cls in (torch.optim.SGD, torch.optim.Adam):
        targets += [(cls, "step", "optimizer"), (cls, "zero_grad", "optimizer")]
    for target, name, phase in targets:
        stack.enter_context(patched(target, name, clock.wrap(phase, getattr(target, name))))


def run_search(name: str, args: argparse.Namespace, device: str, *, instrumented: bool) -> dict:
    """One search of `name`; per stage: steps per second and the phases' shares."""
    example, batch, size, _ = MODELS[name]
    batch, size = args.batch or batch, args.size or size
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = Clock(sync) if instrumented else None
    steps = Steps()
    n_train = max(64, 8 * batch)  # the held-out fifth must hold a batch
    data = {"size": size, "n_train": n_train, "n_val": batch, "n_test": batch}
    splits = [open_dataset("shapes", split, **data) for split in ("train", "val")]
    config = SearchConfig(seed=SEED, batch_size=batch, num_workers=args.num_workers,
                          warmup_steps=args.skip + args.steps,
                          search_steps=args.skip + args.steps, eval_every=0,
                          checkpoint_every=10**9, mixing=args.mixing)  # fmt: skip
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        model = load_supermodel(ROOT / "examples" / example, out_dir=tmp)
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                patched(search_module, "run_steps", record_steps(steps, clock, sync))
            )
            if clock is not None:
                instrument(stack, model, clock)
            search_module.search(model, *splits, config, Path(tmp) / "run", progress=False)
    results = {}
    for stage in STAGES:
        durations, phases = steps.per_step(stage, args.skip)
        step = statistics.fmean(durations)
        shares = {p: sum(v) / sum(durations) for p, v in phases.items()}
        results[stage] = {"step_s": step, "median_s": statistics.median(durations),
                          "batch": batch, "size": size, "shares": shares}  # fmt: skip
    return results


def print_table(rows: list[tuple[str, str, dict, dict]]) -> None:
    phases = " ".join(f"{p[:7]:>7}" for p in (*PHASES, "other"))
    head = (f"{'model':<12} {'device':<6} {'stage':<7} {'batch':>5} {'size':>5} {'steps/s':>8} "
            f"{'img/s':>7} {'ms/step':>8} {'instr.':>8} | {phases} | {'outside':>7}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for model, device, plain, timed in rows:
        for stage in STAGES:
            p, t = plain[stage], timed[stage]
            shares = dict(t["shares"])
            shares["other"] = max(0.0, 1 - sum(shares.values()))
            outside = 1 - shares["forward"] - shares["loss"] - shares["backward"]
            cells = " ".join(f"{100 * shares[k]:6.1f}%" for k in (*PHASES, "other"))
            print(f"{model:<12} {device:<6} {stage:<7} {p['batch']:>5} {p['size']:>5} "
                  f"{1 / p['step_s']:8.2f} {p['batch'] / p['step_s']:7.1f} "
                  f"{1000 * p['step_s']:8.1f} {1000 * t['step_s']:8.1f} | {cells} | "
                  f"{100 * outside:6.1f}%")  # fmt: skip
    print("steps/s, img/s, ms/step: the plain pass (a search step is a weight step and a policy "
          "step);\ninstr.: ms per step with every phase timed; shares are of the instrumented "
          "step; outside = 100% - forward - loss - backward.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--steps", type=int, default=10, help="measured steps per stage")
    parser.add_argument("--skip", type=int, default=3, help="unmeasured first steps per stage")
    parser.add_argument("--batch", type=int, help="batch size (default: per model)")
    parser.add_argument("--size", type=int, help="input size (default: the model's)")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader processes")
    parser.add_argument(
        "--mixing", choices=MIXING_CHOICES, default="auto", help="SearchConfig.mixing"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where `search` puts the model
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"mixing {resolve_mixing(args.mixing, device)}")  # fmt: skip
    rows = []
    for model in args.models:
        if MODELS[model][3] and device != "cuda":
            print(f"{model}: skipped, it is measured on CUDA only (no CUDA device here)")
            continue
        plain = run_search(model, args, device, instrumented=False)
        timed = run_search(model, args, device, instrumented=True)
        rows.append((model, device, plain, timed))
    if rows:
        print_table(rows)


if __name__ == "__main__":
    main()
