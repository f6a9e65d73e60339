"""Inference speed of the deployed model (`model.py` from `mtsc prune`).

For each model and policy (all-shared, all-specific, one random policy), with the same
weights in all three: the median time of one all-task inference of

- the emitted `MultiTaskModel` (`model(x)`: every shared value computed once),
- the generated supermodel in hard mode with that policy (task-stacked batch, routing),
- the emitted model run task by task (`forward_task(x, t)` for each task: no sharing),

and the ratios of the last two to the first, with parameter counts (the deployed model's
and the whole supermodel's). Before timing, the three are checked to agree (1e-4). CPU by
default, at a CPU-friendly input size; the three take turns, so a busy machine slows all.

Run: `python benchmarks/bench_deploy.py [--repeats 9] [--threads N] [--device cuda]`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mtsc.api import import_generated
from mtsc.codegen.torch_pruned import emit_pruned
from mtsc.codegen.torch_supermodel import emit_supermodel
from mtsc.deploy import carry_weights, prune_model
from mtsc.driver import load_supermodel
from mtsc.policy import routed_ops
from mtsc.runtime.policy_format import CHOICES

ROOT = Path(__file__).resolve().parent.parent
# (model, input size, batch): sizes a CPU gets through in seconds.
CASES = (
    (ROOT / "examples" / "resnet_tiny.mtl", 64, 8),
    (ROOT / "examples" / "resnet34.mtl", 96, 1),
)
TOLERANCE = 1e-4


def random_policy(path: Path, seed: int) -> dict:
    sm = load_supermodel(path)
    tasks = [t.name for t in sm.tasks]
    rng = random.Random(seed)
    choices = {
        op: {t: rng.choice(CHOICES if has_skip else CHOICES[:2]) for t in tasks}
        for op, has_skip in routed_ops(sm).items()
    }
    return {"model": sm.name, "tasks": tasks, "choices": choices}


def randomize_batchnorm(net: nn.Module, seed: int) -> None:
    """Trained-looking statistics, so that the agreement check means something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def median_seconds(fns: dict, repeats: int, sync) -> dict[str, float]:
    """Median time of each function; the functions take turns, so that a slow spell of a
    shared machine hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def numel(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def bench_case(path: Path, size: int, batch: int, policy, folder: Path, args) -> dict:
    device = torch.device(args.device)
    pruned = prune_model(path, policy)
    sm_file = folder / f"{path.stem}_supermodel.py"
    sm_file.write_text(emit_supermodel(pruned.supermodel, source_name=path.name).text)
    torch.manual_seed(0)
    supermodel = import_generated(sm_file, f"bench_sm_{path.stem}").Supermodel()
    randomize_batchnorm(supermodel, 0)
    supermodel.load_policy(pruned.policy).set_mode("hard").eval()
    model_file = folder / f"{path.stem}_model.py"
    model_file.write_text(emit_pruned(pruned.model, source_name=path.name, policy_name="p").text)
    model = import_generated(model_file, f"bench_model_{path.stem}").MultiTaskModel()
    model.load_state_dict(carry_weights(pruned, supermodel.state_dict()), strict=True)
    model.eval().to(device)
    supermodel.to(device)
    tasks = list(model.TASKS)
    x = torch.randn(batch, 3, size, size, device=device)

    def per_task() -> dict:
        return {t: model.forward_task(x, t) for t in tasks}

    with torch.no_grad():
        # Checked in float32 proper: cuDNN's default TF32 rounds the three ways differently.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            want, got, alone = supermodel(x), model(x), per_task()
        error = max(
            max((got[t] - want[t]).abs().max().item(), (alone[t] - got[t]).abs().max().item())
            for t in tasks
        )
        if error > TOLERANCE:
            raise RuntimeError(f"{path.stem}: outputs differ by {error:.2e}; not timing")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        fns = {"model": lambda: model(x), "supermodel": lambda: supermodel(x), "per_task": per_task}
        times = median_seconds(fns, args.repeats, sync)
    sm_params = sum(p.numel() for p in supermodel.weight_parameters())
    return {"params": numel(model), "sm_params": sm_params, "error": error, **times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", help="run only the model whose file stem is this")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}; "
        f"median of {args.repeats} interleaved runs after a warm-up; same weights in all three"
    )
    head = (
        f"{'model':<12}{'input':>12}{'policy':>14}{'params':>13}{'sm params':>13}{'model.py':>11}"
        f"{'supermodel':>12}{'per task':>11}{'sm/model':>10}{'tasks/model':>13}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory(prefix="mtsc-bench-") as tmp:
        for path, size, batch in CASES:
            if args.only and path.stem != args.only:
                continue
            for name, policy in (
                ("all-shared", "shared"),
                ("all-specific", "specific"),
                ("random", random_policy(path, 0)),
            ):
                r = bench_case(path, size, batch, policy, Path(tmp), args)
                print(
                    f"{path.stem:<12}{f'{batch}x3x{size}x{size}':>12}{name:>14}"
                    f"{r['params']:>13,}{r['sm_params']:>13,}{r['model'] * 1e3:>9.1f}ms"
                    f"{r['supermodel'] * 1e3:>10.1f}ms{r['per_task'] * 1e3:>9.1f}ms"
                    f"{r['supermodel'] / r['model']:>9.2f}x{r['per_task'] / r['model']:>12.2f}x",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
