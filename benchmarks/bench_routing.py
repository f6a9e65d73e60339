"""Benchmark of the fused routing mixture ``mix3`` against eager torch and ``torch.compile``.

Run on a CUDA machine:  python benchmarks/bench_routing.py [--host-only]
Without CUDA (or triton) it prints why and exits cleanly.

The mixture is pure memory traffic, so every time is also shown as achieved bandwidth: the
bytes that must move (see benchmarks/NOTES.md) divided by the median time, as a fraction of
the device's measured copy bandwidth.
"""

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mtsc.runtime import routing

try:
    import triton
    import triton.testing
except ImportError:
    triton = None

DEVICE = "cuda"
COPY_BYTES = 1 << 30  # large enough to stream through any L2
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, ...]  # [T, B, C, H, W]
    dtype: torch.dtype
    layout: str  # "contiguous", "channels_last" or "grouped"
    hard: bool = False


CASES = (
    Case("stage1 b8", (3, 8, 64, 80, 80), torch.float32, "contiguous"),
    Case("stage1 b8", (3, 8, 64, 80, 80), torch.float32, "channels_last"),
    Case("stage1 b8", (3, 8, 64, 80, 80), torch.float32, "grouped"),
    Case("stage3 b8", (3, 8, 256, 20, 20), torch.float32, "channels_last"),
    Case("256MiB/input", (4, 16, 64, 128, 128), torch.float32, "contiguous"),
    Case("256MiB/input", (4, 16, 128, 128, 128), torch.bfloat16, "contiguous"),
    Case("256MiB/input", (4, 16, 64, 128, 128), torch.float32, "grouped"),
    Case("256MiB/input", (4, 16, 64, 128, 128), torch.float32, "contiguous", hard=True),
)


def make_candidate(shape: tuple[int, ...], dtype: torch.dtype, layout: str) -> torch.Tensor:
    """A candidate ``[T, B, C, H, W]`` in a layout the supermodel produces."""
    t, b, c, h, w = shape
    if layout == "contiguous":
        return torch.randn(shape, device=DEVICE, dtype=dtype)
    if layout == "channels_last":
        stacked = torch.randn(t * b, c, h, w, device=DEVICE, dtype=dtype)
        return stacked.contiguous(memory_format=torch.channels_last).view(shape)
    if layout == "grouped":  # a grouped conv's output [B, T*C, H, W], per task
        grouped = torch.randn(b, t * c, h, w, device=DEVICE, dtype=dtype)
        return grouped.view(b, t, c, h, w).permute(1, 0, 2, 3, 4)
    raise ValueError(f"unknown layout {layout!r}")


def make_weights(num_tasks: int, hard: bool) -> torch.Tensor:
    if hard:
        return torch.eye(3, device=DEVICE)[torch.arange(num_tasks, device=DEVICE) % 3]
    return torch.softmax(torch.randn(num_tasks, 3, device=DEVICE), dim=1)


def eager_mix3(s, p, k, w):
    per_task = (w.shape[0],) + (1,) * (s.dim() - 1)
    w = w.to(s.dtype)
    return (
        w[:, 0].reshape(per_task) * s
        + w[:, 1].reshape(per_task) * p
        + w[:, 2].reshape(per_task) * k
    )


def fused_mix3(hard: bool) -> Callable:
    return lambda s, p, k, w: routing.mix3(s, p, k, w, hard=hard)


def bytes_moved(case: Case, numel: int, backward: bool) -> int:
    """Bytes the mixture must move at least; w and the gw partial sums are negligible.

    Soft forward reads 3 candidates and writes y; backward reads gy and the 3 candidates (for
    the gradient of w) and writes 3 gradients. Hard (one-hot w, frozen): the forward reads
    only the chosen candidate; backward reads gy and writes the 3 gradients (zeros included).
    """
    element = torch.empty((), dtype=case.dtype).element_size()
    forward = 2 if case.hard else 4
    reverse = 4 if case.hard else 7
    return numel * element * (forward + (reverse if backward else 0))


def time_ms(fn: Callable[[], object]) -> float:
    """Median time in ms; do_bench flushes the L2 cache before every run."""
    return triton.testing.do_bench(fn, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy (read + write) of a large tensor."""
    source = torch.empty(COPY_BYTES // 4, device=DEVICE)
    target = torch.empty_like(source)
    return 2 * COPY_BYTES / (time_ms(lambda: target.copy_(source)) * 1e-3)


def forward_backward(op: Callable, inputs: tuple[torch.Tensor, ...], gy: torch.Tensor) -> Callable:
    wanted = tuple(x for x in inputs if x.requires_grad)

    def step():
        torch.autograd.grad(op(*inputs), wanted, gy)

    return step


def check_agreement(ops: dict[str, Callable], inputs, gy: torch.Tensor) -> None:
    """Every implementation gives y and gradients close to a float32 eager reference.

    Eager computes in the inputs' dtype, so the error bound scales with the largest value.
    """
    wanted = [i for i, x in enumerate(inputs) if x.requires_grad]
    upcast = tuple(x.detach().float().requires_grad_(x.requires_grad) for x in inputs)
    y = eager_mix3(*upcast)
    expected = (y, *torch.autograd.grad(y, [upcast[i] for i in wanted], gy.float()))
    tol = TOLERANCE[gy.dtype]
    for name, op in ops.items():
        y = op(*inputs)
        got = (y, *torch.autograd.grad(y, [inputs[i] for i in wanted], gy))
        for a, b in zip(got, expected, strict=True):
            bound = tol * b.abs().max().item()
            torch.testing.assert_close(a.float(), b, rtol=tol, atol=bound, msg=name)


def run_case(case: Case, copy_bw: float) -> list[str]:
    torch.manual_seed(0)
    candidates = [make_candidate(case.shape, case.dtype, case.layout) for _ in range(3)]
    w = make_weights(case.shape[0], case.hard)
    inputs = (*(c.requires_grad_() for c in candidates), w.requires_grad_(not case.hard))
    gy = torch.randn(case.shape, device=DEVICE, dtype=case.dtype)
    torch._dynamo.reset()  # a fresh compile per case, clear of the recompile limit
    ops = {
        "triton": fused_mix3(case.hard),
        "eager": eager_mix3,
        "compile": torch.compile(eager_mix3, dynamic=False),
    }
    check_agreement(ops, inputs, gy)
    numel = candidates[0].numel()
    rows = []
    for backward in (False, True):
        times = {
            name: time_ms(
                forward_backward(op, inputs, gy) if backward else lambda op=op: op(*inputs)
            )
            for name, op in ops.items()
        }
        moved = bytes_moved(case, numel, backward)
        achieved = moved / (times["triton"] * 1e-3)
        label = f"{case.name} {case.layout}{' hard' if case.hard else ''} {str(case.dtype)[6:]}"
        rows.append(
            f"{label:<36} {'fwd+bwd' if backward else 'fwd':<8}"
            f"{times['triton']:>9.3f}{times['eager']:>9.3f}{times['compile']:>9.3f}"
            f"{achieved / 1e9:>9.0f}{achieved / copy_bw:>8.0%}"
            f"{times['eager'] / times['triton']:>9.2f}x{times['compile'] / times['triton']:>10.2f}x"
        )
    return rows


HOST_CASE = Case("resnet34 layer1 b2", (3, 2, 64, 32, 32), torch.float32, "grouped")
HOST_CALLS = 300


def host_us(fn: Callable[[], object]) -> float:
    """Microseconds per call of ``fn`` issued back to back: on a small tensor the device
    finishes each launch before the host issues the next, so this is the host's cost."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(HOST_CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / HOST_CALLS * 1e6


def host_rows() -> list[str]:
    """Host time per call of the pieces of ``mix3`` on a small, launch-bound mixture."""
    torch.manual_seed(0)
    s, p, k = (make_candidate(HOST_CASE.shape, HOST_CASE.dtype, "grouped") for _ in range(3))
    w = make_weights(HOST_CASE.shape[0], hard=False)
    inputs = (s.requires_grad_(), p.requires_grad_(), k.requires_grad_(), w.requires_grad_())
    gy = torch.randn(HOST_CASE.shape, device=DEVICE)
    y = torch.empty(HOST_CASE.shape, device=DEVICE)
    strides = tuple(x.stride() for x in (y, s, p, k))
    grads = tuple(torch.empty_like(gy) for _ in range(3))
    with torch.no_grad():
        pieces = {
            "one torch kernel (y.add_(1))": lambda: y.add_(1),
            "tile plan, uncached": lambda: routing._plan_tiles.__wrapped__(y.shape, strides),
            "tile plan, cached": lambda: routing._plan_tiles(y.shape, strides),
            "plan + forward launch": lambda: routing._forward_triton(y, s, p, k, w, False),
            "plan + backward launch + gw sum": lambda: routing._backward_triton(
                gy, (s, p, k), w, False, grads, True
            ),
        }
        times = {name: host_us(fn) for name, fn in pieces.items()}
    # The supermodel's call: task-stacked [B * T, ...] tensors, views taken inside the node.
    stacked = tuple(c.detach().transpose(0, 1).reshape(-1, *c.shape[2:]) for c in (s, p, k))
    stacked_inputs = (*(c.requires_grad_() for c in stacked), w)
    ops = (
        ("triton", fused_mix3(False), inputs),
        ("eager", eager_mix3, inputs),
        ("triton, stacked", routing.mix3_stacked, stacked_inputs),
    )
    for name, op, args in ops:
        times[f"{name} forward (autograd on)"] = host_us(lambda op=op, args=args: op(*args))
        grad = gy.transpose(0, 1).reshape(stacked[0].shape) if args is stacked_inputs else gy
        times[f"{name} forward + backward"] = host_us(forward_backward(op, args, grad))
    return [f"{name:<40}{us:>9.1f}" for name, us in times.items()]


def main() -> int:
    host_only = "--host-only" in sys.argv[1:]  # just the host-cost table
    if not torch.cuda.is_available():
        print("bench_routing: no CUDA device here; nothing to measure (run it on a GPU machine).")
        return 0
    if triton is None:
        print("bench_routing: triton is not installed; the fused kernels cannot run.")
        return 0
    os.environ["MTSC_ROUTING"] = "triton"
    copy_bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"copy bandwidth (read + write): {copy_bw / 1e9:.0f} GB/s")
    print(
        "medians in ms; GB/s and %copy: the Triton op's bytes that must move / time; "
        "eager/T, compile/T: their time / the Triton op's time"
    )
    print(
        f"{'case':<36} {'pass':<8}{'triton':>9}{'eager':>9}{'compile':>9}"
        f"{'GB/s':>9}{'%copy':>8}{'eager/T':>10}{'compile/T':>11}"
    )
    for case in () if host_only else CASES:
        for row in run_case(case, copy_bw):
            print(row, flush=True)
        torch.cuda.empty_cache()
    print(f"\nhost time per call, {HOST_CASE.name} {list(HOST_CASE.shape)}, microseconds")
    for row in host_rows():
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
