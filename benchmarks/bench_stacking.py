"""Is one call over the task-stacked batch faster than one call per task? Layer by layer.

The supermodel's speed-up over running tasks one by one rests on fewer, larger calls. This
measures that premise on single layers, forward and backward, with T tasks:

- conv, stacked: one conv over the `[B*T, ...]` batch, against T calls of the same conv on `[B]`;
- conv, grouped: one per-task grouped conv (the supermodel's `TaskConv2d`) against T separate
  convs;
- mixture: `mix3` on the supermodel's `[T, B, ...]` views of `[B, T, ...]` memory, against T
  task-by-task mixtures `w0 * s + w1 * p + w2 * k` with scalar weights.

Each row checks that both sides compute the same thing, then gives the median time of
`--repeats` runs after two warm-ups and the ratio (per-task time over stacked time: above 1.00x
means stacking wins). On a CPU the results depend on the C allocator (see NOTES.md); compare
with `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295`.

Run: `python benchmarks/bench_stacking.py [--tasks 3] [--batch 4] [--threads 2] [--device cpu]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from mtsc.runtime.routing import mix3

# (label, in channels, out channels, kernel, stride, groups, input size): MobileNetV2 and
# ResNet layers at the sizes the search benchmark runs them.
CONVS = [
    ("depthwise 3x3, 96 ch, 80x80", 96, 96, 3, 1, 96, 80),
    ("depthwise 3x3 /2, 144 ch, 80x80", 144, 144, 3, 2, 144, 80),
    ("1x1, 16 -> 96 ch, 80x80", 16, 96, 1, 1, 1, 80),
    ("1x1, 96 -> 24 ch, 40x40", 96, 24, 1, 1, 1, 40),
    ("3x3, 64 -> 64 ch, 32x32", 64, 64, 3, 1, 1, 32),
    ("3x3, 256 -> 256 ch, 16x16", 256, 256, 3, 1, 1, 16),
]
MIXTURES = [(96, 80), (144, 40), (64, 64), (512, 16)]  # (channels, size)


def median_ms(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    def timed() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(), timed()
    return statistics.median(timed() for _ in range(repeats)) * 1e3


def forward_backward(module: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> None:
    # autograd.grad, not backward: nothing accumulates into .grad between repeats
    torch.autograd.grad(module(x), (x, *module.parameters()), gy)


def each_task(layers: list[nn.Module], inputs: list[torch.Tensor], grads: list[torch.Tensor]):
    for layer, x, gy in zip(layers, inputs, grads, strict=True):
        forward_backward(layer, x, gy)


def task_mixture(candidates: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    s, p, k = candidates
    return w[0] * s + w[1] * p + w[2] * k


def stacked_mixture(memory: list[torch.Tensor], w: torch.Tensor, gy: torch.Tensor) -> None:
    views = [m.transpose(0, 1) for m in memory]  # [T, B, ...], as the supermodel passes them
    torch.autograd.grad(mix3(*views, w, keep_layout=True), (*memory, w), gy)


def each_task_mixture(candidates: list, weights: list, grads: list) -> None:
    for task_candidates, w, gy in zip(candidates, weights, grads, strict=True):
        torch.autograd.grad(task_mixture(task_candidates, w), (*task_candidates, w), gy)


def conv_rows(args: argparse.Namespace, device: torch.device) -> list[tuple[str, float, float]]:
    tasks, batch = args.tasks, args.batch
    rows = []
    for label, cin, cout, k, stride, groups, size in CONVS:
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
        conv = conv.to(device)
        grouped = nn.Conv2d(
            tasks * cin, tasks * cout, k, stride, k // 2, groups=tasks * groups, bias=False
        ).to(device)
        x = torch.randn(batch, tasks, cin, size, size, device=device, requires_grad=True)
        out = conv(x.detach().flatten(0, 1))
        gy = torch.randn(batch, tasks, *out.shape[1:], device=device)
        # Stacked vs per task, one shared conv; the per-task inputs are contiguous copies.
        per_task = [x.detach()[:, t].contiguous().requires_grad_() for t in range(tasks)]
        per_task_gy = [gy[:, t].contiguous() for t in range(tasks)]
        torch.testing.assert_close(
            conv(x.flatten(0, 1)).view_as(gy)[:, 1], conv(per_task[1]), rtol=1e-4, atol=1e-4
        )
        stacked_input = x.detach().flatten(0, 1).requires_grad_()
        stacked = partial(forward_backward, conv, stacked_input, gy.flatten(0, 1))
        rows.append(
            (
                f"conv stacked: {label}",
                median_ms(stacked, args.repeats, device),
                median_ms(
                    partial(each_task, [conv] * tasks, per_task, per_task_gy), args.repeats, device
                ),
            )
        )
        separate = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False).to(device)
            for _ in range(tasks)
        ]
        with torch.no_grad():
            for t, layer in enumerate(separate):
                layer.weight.copy_(grouped.weight[t * cout : (t + 1) * cout])
        grouped_input = x.detach().flatten(1, 2).requires_grad_()
        # Checked in float32 proper: cuDNN's default TF32 rounds the two ways differently.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            torch.testing.assert_close(
                grouped(grouped_input).view_as(gy)[:, 1],
                separate[1](per_task[1]),
                rtol=1e-4,
                atol=1e-4,
            )
        rows.append(
            (
                f"conv grouped: {label}",
                median_ms(
                    partial(forward_backward, grouped, grouped_input, gy.flatten(1, 2)),
                    args.repeats,
                    device,
                ),
                median_ms(
                    partial(each_task, separate, per_task, per_task_gy), args.repeats, device
                ),
            )
        )
    return rows


def mixture_rows(args: argparse.Namespace, device: torch.device) -> list[tuple[str, float, float]]:
    tasks, batch = args.tasks, args.batch
    rows = []
    for channels, size in MIXTURES:
        shape = (batch, tasks, channels, size, size)
        memory = [torch.randn(shape, device=device, requires_grad=True) for _ in range(3)]
        views = [m.transpose(0, 1) for m in memory]
        w = torch.softmax(torch.randn(tasks, 3, device=device), dim=1).requires_grad_()
        gy = torch.randn(shape, device=device).transpose(0, 1)
        per_task = [
            [m.detach()[:, t].contiguous().requires_grad_() for m in memory] for t in range(tasks)
        ]
        per_task_w = [w.detach()[t].clone().requires_grad_() for t in range(tasks)]
        per_task_gy = [gy[t].contiguous() for t in range(tasks)]
        torch.testing.assert_close(
            mix3(*views, w)[1], task_mixture(per_task[1], per_task_w[1]), rtol=1e-5, atol=1e-5
        )
        rows.append(
            (
                f"mixture: {channels} ch, {size}x{size}",
                median_ms(partial(stacked_mixture, memory, w, gy), args.repeats, device),
                median_ms(
                    partial(each_task_mixture, per_task, per_task_w, per_task_gy),
                    args.repeats,
                    device,
                ),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = conv_rows(args, device) + mixture_rows(args, device)
    print(
        f"forward + backward, {args.tasks} tasks, batch {args.batch}, median of {args.repeats}, "
        f"device {device}, {torch.get_num_threads()} torch threads"
    )
    print("| layer | stacked (ms) | per task (ms) | per task / stacked |")
    print("|---|---|---|---|")
    for label, stacked_ms, per_task_ms in rows:
        print(
            f"| {label} | {stacked_ms:.2f} | {per_task_ms:.2f} | {per_task_ms / stacked_ms:.2f}x |"
        )


if __name__ == "__main__":
    main()
