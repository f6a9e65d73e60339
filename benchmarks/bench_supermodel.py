"""Speed and memory of one search step: the generated supermodel against task-by-task.

One search step is a forward over all tasks in search mode (Gumbel-softmax mixing, fixed
noise, batchnorm in training mode), a loss summed over tasks, and its backward. Two ways to
run the same network with the same weights on the same batch:

- supermodel: the generated `Supermodel`, all tasks in one forward (task-stacked batch,
  shared ops once over it, task-specific copies as grouped calls, one mixture per routed op);
- task-by-task: AutoMTL's way, one forward per task, each computing the three candidates of
  every routed op (the shared op, this task's copy, this task's skip) and mixing them with
  this task's weights. It is built here from the generated modules: shared modules and heads
  are the supermodel's own, each per-task layer is split into T single-task layers holding
  task t's slice of its weights.

Each model is measured in fresh processes: one checks that the two variants agree (float64:
every output and the gradient of every parameter), one times them with their steps
interleaved (so that other load on the machine hits both alike; the first step of each is
a warm-up), and one per variant measures peak memory over two steps: on the CPU the peak
resident set size (`ru_maxrss`) and its growth over the resident size before the steps, on
CUDA `torch.cuda.max_memory_allocated` and its growth over what was allocated before. On the
CPU a third step counts the storages that ops create and free (a dispatch mode): the most the
step's tensors hold at once, which RSS blurs with what the C allocator keeps or fragments.

Each process sets the C allocator as `mtsc search` does (`runtime/cpu_memory.py`: freed
blocks stay in the heap, so that large activations are not faulted in afresh each step);
`MTSC_MALLOC=system` measures with glibc's defaults instead.

`--heads conv1x1` swaps the examples' heads (ASPP for ResNet-34, whose four dilated 1024-wide
branches per task outweigh the backbone at small inputs) for 1x1 read-outs, so that the
routed backbone, where the two variants differ, dominates the step.

The supermodel mixes as `mtsc search` does by default (`--mixing auto`): its candidates'
weights on a CPU, their outputs (the fused `mix3` kernel) on CUDA.

Run: `python benchmarks/bench_supermodel.py [--models resnet34 mobilenetv2 resnet_tiny] [--steps 5]
[--heads conv1x1] [--threads N] [--profile] [--device cuda] [--cudnn-benchmark]
[--mixing auto|outputs|weights]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mtsc.runtime.config import MIXING_CHOICES, resolve_mixing

ROOT = Path(__file__).resolve().parent.parent
# model: (example file, default batch, default input size for a CPU run)
MODELS = {
    "resnet34": ("resnet34.mtl", 2, 128),
    "mobilenetv2": ("mobilenetv2.mtl", 4, 160),
    # the demo's search step: shapes' 64x64 images, the demo's batch of 16
    "resnet_tiny": ("resnet_tiny.mtl", 16, 64),
}
VARIANTS = ("supermodel", "task-by-task")
HEADS = ("as-declared", "conv1x1")
SEED = 0
TAU = 1.0
CHOICE_COUNT = 3
MEMORY_STEPS = 2


# ---------------------------------------------------------------- the task-by-task network


def split_task_module(module, tasks: int) -> list:
    """T single-task layers holding task t's part of a per-task layer's weights and stats."""
    import torch
    from torch import nn

    kind = type(module).__name__
    layers = []
    for t in range(tasks):
        if kind == "TaskConv2d":
            out = module.out_channels // tasks
            layer = nn.Conv2d(
                module.in_channels // tasks,
                out,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups // tasks,
                bias=module.bias is not None,
            )
            rows = slice(t * out, (t + 1) * out)
        elif kind == "TaskBatchNorm2d":
            channels = module.num_features // tasks
            layer = nn.BatchNorm2d(channels, eps=module.eps, momentum=module.momentum)
            rows = slice(t * channels, (t + 1) * channels)
        elif kind == "TaskPReLU":
            slopes = module.num_parameters // tasks
            layer = nn.PReLU(slopes)
            rows = slice(t * slopes, (t + 1) * slopes)
        elif kind == "TaskLinear":
            out, features = module.weight.shape[1:]
            layer = nn.Linear(features, out, bias=module.bias is not None)
            rows = t
        else:
            raise TypeError(f"not a per-task layer: {kind}")
        with torch.no_grad():
            for name, value in [*layer.named_parameters(), *layer.named_buffers()]:
                source = getattr(module, name)
                value.copy_(source if source.dim() == 0 else source[rows])
        layers.append(layer)
    return layers


def gather_task_grads(module, layers: list):
    """The gradients of T single-task layers laid out as the per-task layer's parameters."""
    import torch

    stack = torch.stack if type(module).__name__ == "TaskLinear" else torch.cat
    return {
        name: stack([getattr(layer, name).grad for layer in layers])
        for name, _ in module.named_parameters()
    }


@dataclass(frozen=True)
class Step:
    nid: int
    op: object  # mtsc.ir.ops.Op
    attrs: dict
    inputs: tuple[int, ...]
    task: str | None
    per_task: bool  # the module is a list with one layer per task


def make_task_by_task(graph, supermodel, *, release: bool = False):
    """An nn.Module running `graph` one task at a time with `supermodel`'s weights. With
    `release`, each per-task layer of the supermodel is dropped once split, so that setting up
    never holds both copies of the weights."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mtsc.codegen.torch_supermodel import module_names
    from mtsc.ir.graph import Role
    from mtsc.ir.ops import Op

    tasks = supermodel.TASKS

    class TaskByTask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = supermodel.policy
            self.gumbel_noise = supermodel.gumbel_noise
            self.tau = supermodel.tau
            self.has_skip = {name: skip for name, skip, _ in supermodel.ROUTED}
            self.layers = nn.ModuleDict()
            self.sources: dict[str, object] = {}  # per-task layer key -> supermodel module
            attrs = module_names(graph)
            self.steps = []
            for nid in graph.topo_order():
                node = graph.node(nid)
                key = str(nid)
                per_task = False
                if nid in attrs and node.op is not Op.ROUTE:
                    module = supermodel.get_submodule(attrs[nid])
                    per_task = node.role in (Role.SPECIFIC, Role.SKIP) and type(
                        module
                    ).__name__.startswith("Task")
                    if per_task:
                        self.layers[key] = nn.ModuleList(split_task_module(module, len(tasks)))
                        self.sources[attrs[nid]] = self.layers[key]
                        if release:
                            parent, _, child = attrs[nid].rpartition(".")
                            setattr(supermodel.get_submodule(parent), child, None)
                    else:
                        self.layers[key] = module
                self.steps.append(
                    Step(nid, node.op, node.attrs, tuple(graph.inputs(nid)), node.task, per_task)
                )

        def mixture_weights(self, name: str, t: int) -> torch.Tensor:
            logits = self.policy[name.replace(".", "_")][t] + self.gumbel_noise[name][t]
            n = CHOICE_COUNT if self.has_skip[name] else CHOICE_COUNT - 1
            return F.softmax(logits[:n] / self.tau, dim=0)

        def forward_task(self, x: torch.Tensor, t: int) -> torch.Tensor:
            task = tasks[t]
            values: dict[int, torch.Tensor] = {}
            for step in self.steps:
                if step.task not in (None, task):
                    continue
                xs = [values[i] for i in step.inputs]
                values[step.nid] = self.run_step(step, xs, x, t)
            return values[graph.outputs[task]]

        def run_step(self, step: Step, xs: list, x: torch.Tensor, t: int) -> torch.Tensor:
            key = str(step.nid)
            if key in self.layers:
                layer = self.layers[key][t] if step.per_task else self.layers[key]
                return layer(xs[0])
            if step.op is Op.INPUT:
                return x
            if step.op in (Op.TASK_STACK, Op.TASK_SLICE):
                return xs[0]
            if step.op is Op.ROUTE:
                w = self.mixture_weights(step.attrs["op"], t)
                terms = [w[j] * c for j, c in enumerate(xs)]
                return sum(terms[1:], terms[0])
            if step.op is Op.ADD and step.attrs["coeffs"] is None:
                return sum(xs[1:], xs[0])
            if step.op is Op.CONCAT:
                return torch.cat(xs, dim=1)
            if step.op is Op.UPSAMPLE and len(xs) == 2:
                corners = False if step.attrs["mode"] == "bilinear" else None
                return F.interpolate(
                    xs[0], size=xs[1].shape[-2:], mode=step.attrs["mode"], align_corners=corners
                )
            raise NotImplementedError(f"task-by-task runner: no {step.op.value} here")

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {task: self.forward_task(x, t) for t, task in enumerate(tasks)}

    return TaskByTask()


# ---------------------------------------------------------------- one process per measurement


def load_variant(args: argparse.Namespace, variant: str, dtype: str = "float32"):
    """(supermodel, the module to run, input): seeded weights, Gumbel noise and input."""
    import torch

    from mtsc.api import import_generated
    from mtsc.driver import load_supermodel

    path = Path(args.folder) / "supermodel.py"
    generated = import_generated(path, "bench_supermodel_generated")
    torch.manual_seed(SEED)
    supermodel = generated.Supermodel().set_mode("search").set_mixing(args.mixing).train()
    supermodel.tau = TAU
    gen = torch.Generator().manual_seed(SEED)
    noise = {
        name: -torch.log(-torch.log(torch.rand(len(supermodel.TASKS), 3, generator=gen)))
        for name, _, _ in supermodel.ROUTED
    }
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    device, dtype = torch.device(args.device), getattr(torch, dtype)
    supermodel.to(device, dtype)
    supermodel.gumbel_noise = {k: v.to(device, dtype) for k, v in noise.items()}
    x = x.to(device, dtype)
    runner = supermodel
    if variant == "task-by-task":
        graph = load_supermodel(args.source)
        release = args.worker == "memory"  # nothing else needs the supermodel's own copies
        runner = make_task_by_task(graph, supermodel, release=release).to(device, dtype)
    return supermodel, runner, x


def search_step(runner, x) -> dict:
    runner.zero_grad(set_to_none=True)
    out = runner(x)
    loss = sum(v.float().square().mean() for v in out.values())
    loss.backward()
    return out


def max_relative_error(a, b) -> float:
    scale = b.abs().max().item() or 1.0
    return (a - b).abs().max().item() / scale


def check(args: argparse.Namespace) -> dict:
    """Outputs and the gradient of every supermodel parameter, both ways, in float64 (so that
    rounding cannot flip a ReLU) and eval mode (in training mode, batchnorm's batch statistics
    leave some gradients at rounding noise around zero); then the outputs again in training
    mode. Dropout stays off: its masks would differ."""
    import torch

    supermodel, runner, x = load_variant(args, "task-by-task", "float64")
    supermodel.eval()
    out_super = {k: v.detach() for k, v in search_step(supermodel, x).items()}
    grads_super = {n: p.grad.clone() for n, p in supermodel.named_parameters()}
    out_tasks = search_step(runner.eval(), x)
    grads_tasks = {}
    for name, param in supermodel.named_parameters():
        owner, leaf = name.rsplit(".", 1)
        if owner in runner.sources:
            module = supermodel.get_submodule(owner)
            grads_tasks[name] = gather_task_grads(module, runner.sources[owner])[leaf]
        else:
            grads_tasks[name] = param.grad
    output_error = max(max_relative_error(out_tasks[t], out_super[t]) for t in out_super)
    grad_errors = {n: max_relative_error(grads_tasks[n], grads_super[n]) for n in grads_super}
    worst = max(grad_errors, key=grad_errors.get)
    for module in (supermodel, runner):
        module.train()
        for layer in module.modules():
            if isinstance(layer, torch.nn.Dropout):
                layer.eval()
    with torch.no_grad():
        out_super, out_tasks = supermodel(x), runner(x)
    train_error = max(max_relative_error(out_tasks[t], out_super[t]) for t in out_super)
    return {
        "output_error": max(output_error, train_error),
        "grad_error": grad_errors[worst],
        "worst_grad": worst,
        "params_checked": len(grad_errors),
    }


def timed_step(runner, x) -> float:
    import torch

    start = time.perf_counter()
    search_step(runner, x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_both(args: argparse.Namespace) -> dict:
    """Steps of the two variants interleaved, alternating which goes first; the first step of
    each is a warm-up. The per-round ratio cancels load that lasts a round."""
    supermodel, runner, x = load_variant(args, "task-by-task")
    runs = {"supermodel": supermodel, "task-by-task": runner}
    for run in runs.values():
        timed_step(run, x)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.steps):
        for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            times[variant].append(timed_step(runs[variant], x))
    ratios = [tb / sm for sm, tb in zip(times["supermodel"], times["task-by-task"], strict=True)]
    result = {
        "median_s": {v: statistics.median(t) for v, t in times.items()},
        "min_s": {v: min(t) for v, t in times.items()},
        "ratio": statistics.median(ratios),
    }
    if args.profile:
        result["profile"] = {v: profile_step(run, x) for v, run in runs.items()}
    return result


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tensor_peak_mib(runner, x) -> float:
    """The most memory that tensors created during one step hold at once, counted storage by
    storage as ops create and free them: what the step needs, whatever the allocator does
    with it (RSS also counts the C library's free lists and fragmentation)."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class StorageCounter(TorchDispatchMode):
        def __init__(self, existing: set[int]) -> None:
            super().__init__()
            self.live = self.peak = 0
            self.counted: set[int] = set()
            self.existing = existing  # weights, buffers, input: views of them cost nothing

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self.count(leaf.untyped_storage())
            return out

        def count(self, storage) -> None:
            key, size = storage.data_ptr(), storage.nbytes()
            if key and key not in self.counted and key not in self.existing:
                self.counted.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self.release, key, size)

        def release(self, key: int, size: int) -> None:
            self.counted.discard(key)
            self.live -= size

    runner.zero_grad(set_to_none=True)
    tensors = [x, *runner.parameters(), *runner.buffers()]
    with StorageCounter({t.untyped_storage().data_ptr() for t in tensors}) as counter:
        search_step(runner, x)
    return counter.peak / 2**20


def memory(args: argparse.Namespace) -> dict:
    """Peak memory of `MEMORY_STEPS` steps of one variant, in a process of its own."""
    import torch

    supermodel, runner, x = load_variant(args, args.variant)
    del supermodel  # task-by-task keeps what it uses: shared layers, heads, its own copies
    gc.collect()
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before, setup_peak = current_rss_mib(), peak_rss_mib()
    for _ in range(MEMORY_STEPS):
        timed_step(runner, x)
    peak = torch.cuda.max_memory_allocated() / 2**20 if x.is_cuda else peak_rss_mib()
    result = {"peak_mib": peak, "growth_mib": peak - before, "tensor_peak_mib": peak - before}
    if not x.is_cuda:
        if peak <= setup_peak:
            result["note"] = "setting up took more memory than the steps"
        result["tensor_peak_mib"] = tensor_peak_mib(runner, x)
    return result


def profile_step(runner, x) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with profile(activities=activities) as prof:
        search_step(runner, x)
    table = prof.key_averages().table
    if not x.is_cuda:
        return table(sort_by="self_cpu_time_total", row_limit=15)
    # On a GPU the host can be the bound: its view shows launches, copies and synchronisations.
    return table(sort_by="self_cuda_time_total", row_limit=15) + table(
        sort_by="self_cpu_time_total", row_limit=25
    )


def worker(args: argparse.Namespace) -> None:
    import torch

    from mtsc.runtime.cpu_memory import keep_freed_memory

    result = {"malloc": "keep" if keep_freed_memory() else "system"}
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    roles = {"check": check, "time": time_both, "memory": memory}
    result |= roles[args.worker](args)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


def run_worker(args: argparse.Namespace, role: str, variant: str = "") -> dict:
    options = {
        "--worker": role,
        "--variant": variant,
        "--source": args.source,
        "--folder": args.folder,
        "--batch": args.batch,
        "--size": args.size,
        "--steps": args.steps,
        "--device": args.device,
        "--threads": args.threads,
        "--mixing": args.mixing,
    }
    cmd = [sys.executable, __file__] + [str(a) for item in options.items() for a in item]
    cmd += [flag for flag, on in (("--profile", args.profile),
            ("--cudnn-benchmark", args.cudnn_benchmark)) if on]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {role} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the table


def model_source(name: str, heads: str, tmp: Path) -> Path:
    """The example's path, or a copy whose task heads are 1x1 read-outs."""
    path = ROOT / "examples" / MODELS[name][0]
    if heads == "as-declared":
        return path
    folder = tmp / "sources"
    if not folder.exists():
        shutil.copytree(ROOT / "examples", folder)
    text = path.read_text()
    start = text.index("\ntasks {")
    tasks = re.sub(r"\b\w+\(classes=(\d+)[^)]*\)", r"conv1x1(classes=\1)", text[start:])
    copy = folder / path.name
    copy.write_text(text[:start] + tasks)
    return copy


def bench_model(args: argparse.Namespace, name: str, tmp: Path) -> list[str]:
    from mtsc.driver import build

    _, default_batch, default_size = MODELS[name]
    args.batch, args.size = args.batch_option or default_batch, args.size_option or default_size
    args.source = model_source(name, args.heads, tmp)
    args.folder = tmp / name
    build(args.source, args.folder, render=False)
    checked = run_worker(args, "check")
    print(
        f"{name}: the variants agree: outputs to {checked['output_error']:.1e}, gradients of "
        f"{checked['params_checked']} parameters to {checked['grad_error']:.1e} "
        f"(worst: {checked['worst_grad']}), relative to each tensor's largest value",
        flush=True,
    )
    if checked["output_error"] > args.tolerance or checked["grad_error"] > args.tolerance:
        raise SystemExit(f"{name}: the variants disagree beyond {args.tolerance}; not timing")
    timed = run_worker(args, "time")
    memory = {v: run_worker(args, "memory", v) for v in VARIANTS}
    args.threads_used, args.malloc = timed["threads"], timed["malloc"]
    shape = f"{args.batch}x3x{args.size}x{args.size}"
    rows = []
    for variant in VARIANTS:
        m = memory[variant]
        rows.append(
            f"| {name} | {shape} | {variant} | {timed['median_s'][variant]:.3f} | "
            f"{timed['min_s'][variant]:.3f} | {m['peak_mib']:.0f} | {m['growth_mib']:.0f} | "
            f"{m['tensor_peak_mib']:.0f} |"
        )
        if "note" in m:
            print(f"{name}, {variant}: {m['note']}")
        if args.profile:
            print(f"\n{name}, {variant}: top ops of one step\n{timed['profile'][variant]}")
    sm, tb = memory["supermodel"], memory["task-by-task"]
    rows.append(
        f"| {name} | {shape} | task-by-task / supermodel | {timed['ratio']:.2f}x (per round) | "
        f"{timed['min_s']['task-by-task'] / timed['min_s']['supermodel']:.2f}x | "
        f"{tb['peak_mib'] / sm['peak_mib']:.2f}x | "
        f"{tb['growth_mib'] / max(sm['growth_mib'], 1.0):.2f}x | "
        f"{tb['tensor_peak_mib'] / max(sm['tensor_peak_mib'], 1.0):.2f}x |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--batch", dest="batch_option", type=int, default=0)
    parser.add_argument("--size", dest="size_option", type=int, default=0, help="input H = W")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--heads", choices=HEADS, default="as-declared")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument(
        "--mixing",
        choices=MIXING_CHOICES,
        default="auto",
        help="the supermodel's mixing (SearchConfig.mixing; auto, as in mtsc search: weights "
        "on a CPU, outputs on CUDA); task-by-task mixes outputs",
    )
    parser.add_argument("--profile", action="store_true", help="print the top ops per variant")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms per shape"
    )
    for hidden in ("--worker", "--variant", "--source", "--folder"):
        parser.add_argument(hidden, default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.mixing = resolve_mixing(args.mixing, args.device.split(":")[0])
    if args.worker:
        args.batch, args.size = args.batch_option, args.size_option
        worker(args)
        return
    memory = "CUDA max allocated" if args.device.startswith("cuda") else "peak RSS"
    rows = [
        f"| model | input | variant | median step (s) | fastest step (s) | {memory} (MiB) "
        "| growth in steps (MiB) | tensors' peak in a step (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += bench_model(args, name, Path(tmp))
    print(
        f"\none search step (forward + backward, 3 tasks, search mode), heads {args.heads}, "
        f"{args.steps} timed steps each, device {args.device}, {args.threads_used} torch threads, "
        f"C allocator: {args.malloc}, the supermodel mixing {args.mixing}"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
