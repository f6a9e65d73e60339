"""Tests of the routing mixture ``mtsc.runtime.routing.mix3``.

The torch path runs here. The Triton kernels run on the CPU through Triton's interpreter,
which only works when ``TRITON_INTERPRET=1`` is set before triton is imported (triton's own
``@jit`` helpers such as ``tl.sum`` are fixed then). So unless this process already runs
under the interpreter, ``test_kernels_under_the_interpreter`` reruns this file's kernel tests
(marked ``interpreter``) in a pytest subprocess with the variable set; here they are skipped.

Every result is compared with a float64 reference computed directly in this file.
"""

import ast
import importlib.util
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mtsc.runtime import routing

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

ROUTING_FILE = Path(routing.__file__)
REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_FLAG = "MTSC_ROUTING_TEST_SUBPROCESS"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Both rtol and atol: float32 arithmetic, then rounding to the output dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# gw is a float32 sum; its error is bounded relative to the sum of the terms' magnitudes.
GW_TOLERANCE = 1e-5


def _interpreted(fn: object) -> bool:
    return triton is not None and not isinstance(fn, triton.runtime.JITFunction)


INTERPRETING = (
    triton is not None and _interpreted(tl.sum) and _interpreted(routing._mix3_forward_kernel)
)


def interpreter_only(test: Callable) -> Callable:
    """A kernel test: marked for the interpreter subprocess to select, skipped elsewhere."""
    skip = pytest.mark.skipif(
        not INTERPRETING,
        reason="kernel test: runs in the TRITON_INTERPRET=1 subprocess of "
        "test_kernels_under_the_interpreter",
    )
    return pytest.mark.interpreter(skip(test))


needs_triton = pytest.mark.skipif(triton is None, reason="needs triton")
needs_cuda = pytest.mark.skipif(
    triton is None or not torch.cuda.is_available(), reason="needs a CUDA device and triton"
)


def load_routing_copy(name: str, *, interpret: bool, hide_triton: bool = False) -> ModuleType:
    """Load ``runtime/routing.py`` afresh as a standalone module, as generated code inlines it.

    Triton reads TRITON_INTERPRET when ``@triton.jit`` runs, so the copy's kernels follow
    ``interpret``; ``hide_triton`` makes ``import triton`` fail for it.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
        if hide_triton:
            patch.setitem(sys.modules, "triton", None)
            patch.setitem(sys.modules, "triton.language", None)
        spec = importlib.util.spec_from_file_location(name, ROUTING_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# Inputs in the layouts the supermodel produces, filled with standard normal values.


def randn(shape, dtype: torch.dtype, gen: torch.Generator, device: str = "cpu") -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def contiguous(shape, dtype, gen, device="cpu"):
    return randn(shape, dtype, gen, device)


def transposed(shape, dtype, gen, device="cpu"):
    """All dims reversed in memory."""
    order = tuple(reversed(range(len(shape))))
    return randn(shape[::-1], dtype, gen, device).permute(order)


def channels_last(shape, dtype, gen, device="cpu"):
    """The task-stacked ``[T*B, C, H, W]`` in channels_last, viewed as ``[T, B, C, H, W]``;
    for other ranks, dim 2 (or the last) innermost."""
    if len(shape) == 5:
        t, b, c, h, w = shape
        stacked = randn((t * b, c, h, w), dtype, gen, device)
        return stacked.contiguous(memory_format=torch.channels_last).view(shape)
    inner = min(2, len(shape) - 1)
    moved = shape[:inner] + shape[inner + 1 :] + shape[inner : inner + 1]
    return randn(moved, dtype, gen, device).movedim(-1, inner)


def grouped_slices(shape, dtype, gen, device="cpu", memory_format=torch.contiguous_format):
    """Per-task slices of a grouped conv output ``[B, T*C, H, W]`` permuted to ``[T, B, ...]``."""
    if len(shape) == 5:
        t, b, c, h, w = shape
        grouped = randn((b, t * c, h, w), dtype, gen, device)
        grouped = grouped.contiguous(memory_format=memory_format)
        return grouped.view(b, t, c, h, w).permute(1, 0, 2, 3, 4)
    if len(shape) == 1:
        return randn(shape, dtype, gen, device)
    return randn((shape[1], shape[0]) + shape[2:], dtype, gen, device).transpose(0, 1)


def grouped_slices_channels_last(shape, dtype, gen, device="cpu"):
    return grouped_slices(shape, dtype, gen, device, memory_format=torch.channels_last)


def gapped(shape, dtype, gen, device="cpu"):
    """Every other element of a longer last dim: no dim is dense."""
    return randn(shape[:-1] + (2 * shape[-1] + 1,), dtype, gen, device)[..., 1::2]


def broadcast(shape, dtype, gen, device="cpu"):
    """The last dim expanded from size 1 (stride 0)."""
    return randn(shape[:-1] + (1,), dtype, gen, device).expand(shape)


LAYOUTS: dict[str, Callable[..., torch.Tensor]] = {
    "contiguous": contiguous,
    "transposed": transposed,
    "channels_last": channels_last,
    "grouped_slices": grouped_slices,
    "grouped_slices_channels_last": grouped_slices_channels_last,
    "gapped": gapped,
    "broadcast": broadcast,
}
OUTPUT_LAYOUTS = ("contiguous", "transposed", "gapped")  # writable without overlap


def one_hot_weights(num_tasks: int, choice: list[int], scale: float = 1.0) -> torch.Tensor:
    w = torch.zeros(num_tasks, 3)
    w[torch.arange(num_tasks), torch.tensor(choice)] = scale
    return w


def random_weights(num_tasks: int, gen: torch.Generator) -> torch.Tensor:
    return torch.softmax(torch.randn(num_tasks, 3, generator=gen), dim=1)


def reference64(
    candidates: tuple[torch.Tensor | None, ...], w: torch.Tensor, gy: torch.Tensor, hard: bool
):
    """Float64 forward and backward of the mixture, straight from the definition.

    Hard mode: a zero weight removes its candidate for that task (treated as 0, never read).
    Returns y, the candidates' gradients, gw, and per-entry scales for gw's error bound.
    """
    like = next(c for c in candidates if c is not None)
    per_task = (like.shape[0],) + (1,) * (like.dim() - 1)
    gy64 = gy.double()
    y = torch.zeros(like.shape, dtype=torch.float64)
    grads = []
    gw = torch.zeros(like.shape[0], 3, dtype=torch.float64)
    gw_scale = torch.zeros_like(gw)
    for j, cand in enumerate(candidates):
        if cand is None:
            grads.append(None)
            continue
        weight = w[:, j].double().reshape(per_task)
        used = weight != 0 if hard else torch.ones_like(weight, dtype=torch.bool)
        value = torch.where(used, cand.double(), 0.0)
        y += weight * value
        grads.append(torch.where(used, weight * gy64, 0.0))
        terms = (gy64 * value).reshape(like.shape[0], -1)
        gw[:, j] = terms.sum(dim=1)
        gw_scale[:, j] = terms.abs().sum(dim=1)
    return y, grads, gw, gw_scale


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol)


def assert_gw_close(gw: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor) -> None:
    error = (gw.double() - expected).abs()
    bound = GW_TOLERANCE * scale + 1e-6
    assert torch.all(error <= bound), f"gw off by {error.max():.3g}:\n{gw}\nvs\n{expected}"


# ----------------------------------------------------------------------------------------------
# Kernel cases: (shape, layouts of s/p/k, output layout, dtype), T from 1 to 16.

NAMED_CASES = [
    ((1,), ("contiguous",) * 3, "contiguous", torch.float32),
    ((1, 1, 1, 1, 1), ("contiguous", "transposed", "gapped"), "contiguous", torch.float32),
    ((5,), ("gapped", "broadcast", "contiguous"), "gapped", torch.float16),
    ((3, 2, 8, 5, 6), ("contiguous",) * 3, "contiguous", torch.float32),
    ((3, 2, 8, 5, 6), ("channels_last",) * 3, "contiguous", torch.float32),
    ((3, 2, 8, 5, 6), ("grouped_slices",) * 3, "contiguous", torch.bfloat16),
    ((3, 2, 8, 5, 6), ("grouped_slices_channels_last",) * 3, "contiguous", torch.float16),
    (
        (2, 3, 8, 5, 7),
        ("grouped_slices", "channels_last", "contiguous"),
        "transposed",
        torch.float32,
    ),
    ((16, 2, 3, 5, 7), ("transposed", "contiguous", "gapped"), "contiguous", torch.float32),
    ((4, 1, 65, 3), ("transposed", "broadcast", "channels_last"), "gapped", torch.bfloat16),
    ((2, 3, 1, 9, 2), ("gapped", "grouped_slices", "transposed"), "contiguous", torch.float16),
]


def random_cases(count: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        rank = rng.randint(1, 5)
        shape = (rng.randint(1, 16),) + tuple(
            rng.choice((1, 2, 3, 5, 7, 8, 13)) for _ in range(rank - 1)
        )
        if torch.Size(shape).numel() > 3000:
            continue
        layouts = tuple(rng.choice(list(LAYOUTS)) for _ in range(3))
        cases.append((shape, layouts, rng.choice(OUTPUT_LAYOUTS), DTYPES[len(cases) % 3]))
    return cases


KERNEL_CASES = NAMED_CASES + random_cases(12, seed=5)


def case_id(case: tuple) -> str:
    shape, layouts, out, dtype = case
    return f"{'x'.join(map(str, shape))}-{'/'.join(layouts)}-out_{out}-{str(dtype)[6:]}"


def make_candidates(shape, layouts, dtype, gen, device="cpu"):
    return tuple(LAYOUTS[name](shape, dtype, gen, device) for name in layouts)


def poisoned(layout: str, like: torch.Tensor) -> torch.Tensor:
    """A NaN-filled buffer shaped like ``like`` in the given layout: unwritten elements show."""
    buffer = LAYOUTS[layout](tuple(like.shape), like.dtype, torch.Generator().manual_seed(0))
    return buffer.fill_(float("nan"))


# ----------------------------------------------------------------------------------------------
# The subprocess that runs the kernel tests under the interpreter.


@needs_triton
@pytest.mark.skipif(INTERPRETING, reason="this process runs the kernel tests itself")
def test_kernels_under_the_interpreter():
    if os.environ.get(CHILD_FLAG):
        pytest.fail("the subprocess does not run under the interpreter; it would recurse")
    env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD_FLAG: "1"})
    env.pop("MTSC_ROUTING", None)
    command = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        command + ["-m", "interpreter"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, output[-8000:]


# ----------------------------------------------------------------------------------------------
# Kernel tests (@interpreter_only): in the interpreter subprocess, or in this process when it ran
# under TRITON_INTERPRET=1 from the start.


@interpreter_only
@pytest.mark.parametrize("case", KERNEL_CASES, ids=case_id)
def test_interpreted_kernels_match_float64(case):
    # The launchers write into buffers they are given: NaN-filled, in various layouts.
    shape, layouts, out_layout, dtype = case
    gen = torch.Generator().manual_seed(len(shape) * 1000 + sum(shape))
    candidates = make_candidates(shape, layouts, dtype, gen)
    w = random_weights(shape[0], gen)
    gy = LAYOUTS[out_layout](shape, dtype, gen)
    y_ref, grads_ref, gw_ref, gw_scale = reference64(candidates, w, gy, hard=False)

    y = poisoned(out_layout, candidates[0])
    routing._forward_triton(y, *candidates, w, False)
    assert_close_to(y, y_ref, dtype)

    grads = tuple(poisoned(out_layout, c) for c in candidates)
    gw = routing._backward_triton(gy, candidates, w, False, grads, True)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert_close_to(grad, grad_ref, dtype)
    assert gw.dtype == w.dtype
    assert_gw_close(gw, gw_ref, gw_scale)


@interpreter_only
@pytest.mark.parametrize("case", NAMED_CASES[3:9], ids=case_id)
def test_interpreted_mix3_autograd_matches_float64(case, monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    shape, layouts, _, dtype = case
    gen = torch.Generator().manual_seed(7)
    candidates = tuple(c.requires_grad_() for c in make_candidates(shape, layouts, dtype, gen))
    w = random_weights(shape[0], gen).requires_grad_()
    gy = transposed(shape, dtype, gen)
    y_ref, grads_ref, gw_ref, gw_scale = reference64(candidates, w.detach(), gy, hard=False)

    y = routing.mix3(*candidates, w)
    assert y.is_contiguous() and y.dtype == dtype and y.shape == shape
    assert_close_to(y.detach(), y_ref, dtype)
    *grads, gw = torch.autograd.grad(y, (*candidates, w), gy)
    for cand, grad, grad_ref in zip(candidates, grads, grads_ref, strict=True):
        # A dense candidate's layout is kept (as torch.empty_like keeps it), others contiguous.
        assert grad.stride() == torch.empty_like(cand).stride()
        assert_close_to(grad, grad_ref, dtype)
    assert_gw_close(gw, gw_ref, gw_scale)


def stacked_candidate(layout: str, shape, dtype, gen) -> torch.Tensor:
    """A task-stacked ``[B * T, C, H, W]`` activation, as the supermodel's ops leave them."""
    if layout == "channels_last":
        return randn(shape, dtype, gen).contiguous(memory_format=torch.channels_last)
    return LAYOUTS[layout](shape, dtype, gen)


def check_mix3_stacked(hard: bool, dtype: torch.dtype) -> None:
    """mix3_stacked equals the float64 mixture of the per-task views ``[T, B, ...]``, forward
    and backward, and hands y back task-stacked in the first candidate's layout."""
    tasks, batch = 3, 2
    shape = (batch * tasks, 4, 5, 6)
    gen = torch.Generator().manual_seed(17)
    layouts = ("channels_last", "contiguous", "gapped")
    candidates = tuple(
        stacked_candidate(lay, shape, dtype, gen).requires_grad_() for lay in layouts
    )
    w = one_hot_weights(tasks, [0, 1, 2]) if hard else random_weights(tasks, gen).requires_grad_()
    gy = randn(shape, dtype, gen)

    def per_task(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, tasks, *shape[1:]).transpose(0, 1)

    views = tuple(per_task(c.detach()) for c in candidates)
    y_ref, grads_ref, gw_ref, gw_scale = reference64(views, w.detach(), per_task(gy), hard)
    y = routing.mix3_stacked(*candidates, w, hard=hard)
    assert y.shape == shape and y.dtype == dtype
    assert y.stride() == candidates[0].stride()
    assert_close_to(per_task(y.detach()), y_ref, dtype)
    wanted = candidates if hard else (*candidates, w)  # hard mode: w is a fixed selection
    grads = torch.autograd.grad(y, wanted, gy)
    for grad, grad_ref in zip(grads, grads_ref, strict=False):
        assert_close_to(per_task(grad), grad_ref, dtype)
    if not hard:
        assert_gw_close(grads[-1], gw_ref, gw_scale)


@interpreter_only
@pytest.mark.parametrize("hard", [False, True])
def test_interpreted_mix3_stacked_matches_float64(hard, monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    check_mix3_stacked(hard, torch.float32)


@pytest.mark.parametrize("hard", [False, True])
def test_torch_path_mix3_stacked_matches_float64(hard, monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "torch")
    check_mix3_stacked(hard, torch.float32)


@pytest.mark.parametrize(
    ("x", "w", "message"),
    [
        (
            torch.randn(5, 2),
            torch.rand(3, 3),
            r"3 tasks, which do not divide the candidates' first",
        ),
        (
            torch.randn(4, 2),
            torch.rand(0, 3),
            r"0 tasks, which do not divide the candidates' first",
        ),
        (
            torch.randn(2, 1, 1, 1, 1),
            torch.rand(2, 3),
            r"rank 1 to 4 \(\[B \* T, ...\]\), got rank 5",
        ),
    ],
)
def test_mix3_stacked_refuses_what_the_per_task_view_cannot_take(x, w, message):
    with pytest.raises(ValueError, match=message):
        routing.mix3_stacked(x, x, x, w)


@interpreter_only
def test_interpreted_backward_of_a_sum_takes_a_broadcast_gradient(monkeypatch):
    # y.sum() hands backward a gradient expanded from a scalar: all strides 0.
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    gen = torch.Generator().manual_seed(3)
    shape = (3, 2, 8, 5, 6)
    layouts = ("channels_last",) * 3
    candidates = tuple(
        c.requires_grad_() for c in make_candidates(shape, layouts, torch.float32, gen)
    )
    w = torch.full((3, 3), 1.0 / 3).requires_grad_()  # warm-up: equal weights
    routing.mix3(*candidates, w).sum().backward()
    _, grads_ref, gw_ref, gw_scale = reference64(candidates, w.detach(), torch.ones(shape), False)
    for cand, grad_ref in zip(candidates, grads_ref, strict=True):
        assert_close_to(cand.grad, grad_ref, torch.float32)
    assert_gw_close(w.grad, gw_ref, gw_scale)


@interpreter_only
def test_interpreted_gw_has_the_dtype_of_w():
    gen = torch.Generator().manual_seed(11)
    shape = (4, 3, 7, 5)
    layouts = ("contiguous", "transposed", "gapped")
    candidates = make_candidates(shape, layouts, torch.float16, gen)
    w = random_weights(4, gen).to(torch.bfloat16)[:, [2, 0, 1]]  # non-contiguous w too
    gy = randn(shape, torch.float16, gen)
    y_ref, _, gw_ref, _ = reference64(candidates, w, gy, hard=False)
    y = poisoned("contiguous", candidates[0])
    routing._forward_triton(y, *candidates, w, False)
    assert_close_to(y, y_ref, torch.float16)
    gw = routing._backward_triton(gy, candidates, w, False, (None, None, None), True)
    assert gw.dtype == torch.bfloat16
    assert_close_to(gw, gw_ref, torch.bfloat16)


def nan_outside_choice(candidates, choice):
    """Fill each candidate's slab with NaN for the tasks that do not choose it (a broadcast
    candidate cannot be written and is left as it is)."""
    for j, cand in enumerate(candidates):
        if any(st == 0 and n > 1 for st, n in zip(cand.stride(), cand.shape, strict=True)):
            continue
        for t, chosen in enumerate(choice):
            if chosen != j:
                cand.detach()[t] = float("nan")
    return candidates


@interpreter_only
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_interpreted_hard_mode_never_reads_unused_candidates(dtype):
    gen = torch.Generator().manual_seed(13)
    shape = (6, 2, 8, 3, 5)
    choice = [0, 1, 2, 0, 2, 1]
    layouts = ("grouped_slices", "channels_last", "contiguous")
    candidates = nan_outside_choice(make_candidates(shape, layouts, dtype, gen), choice)
    w = one_hot_weights(6, choice, scale=0.75)
    gy = randn(shape, dtype, gen)
    y_ref, grads_ref, gw_ref, gw_scale = reference64(candidates, w, gy, hard=True)

    y = poisoned("contiguous", candidates[0])
    routing._forward_triton(y, *candidates, w, True)
    assert not y.isnan().any()
    assert_close_to(y, y_ref, dtype)

    grads = tuple(poisoned("contiguous", c) for c in candidates)
    gw = routing._backward_triton(gy, candidates, w, True, grads, True)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert not grad.isnan().any()
        assert_close_to(grad, grad_ref, dtype)
    assert not gw.isnan().any()
    assert_gw_close(gw, gw_ref, gw_scale)


@interpreter_only
def test_interpreted_hard_mode_accepts_absent_candidates(monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    gen = torch.Generator().manual_seed(17)
    shape = (4, 2, 8, 5, 6)
    choice = [1, 0, 0, 1]  # nobody picks the skip candidate: it is not even computed
    s, p, _ = make_candidates(
        shape, ("contiguous", "grouped_slices", "contiguous"), torch.float32, gen
    )
    s, p = (c.requires_grad_() for c in nan_outside_choice((s, p), choice))
    w = one_hot_weights(4, choice).requires_grad_()
    gy = randn(shape, torch.float32, gen)
    y_ref, grads_ref, gw_ref, gw_scale = reference64((s, p, None), w.detach(), gy, hard=True)

    y = routing.mix3(s, p, None, w, hard=True)
    assert_close_to(y.detach(), y_ref, torch.float32)
    gs, gp, gw = torch.autograd.grad(y, (s, p, w), gy)
    assert_close_to(gs, grads_ref[0], torch.float32)
    assert_close_to(gp, grads_ref[1], torch.float32)
    assert_gw_close(gw, gw_ref, gw_scale)


@interpreter_only
def test_interpreted_hard_mode_with_soft_weights_equals_soft_mode():
    gen = torch.Generator().manual_seed(19)
    shape = (3, 5, 7)
    candidates = make_candidates(shape, ("contiguous", "transposed", "gapped"), torch.float32, gen)
    w = random_weights(3, gen)
    y_soft, y_hard = (poisoned("contiguous", candidates[0]) for _ in range(2))
    routing._forward_triton(y_soft, *candidates, w, False)
    routing._forward_triton(y_hard, *candidates, w, True)
    torch.testing.assert_close(y_hard, y_soft, rtol=0, atol=0)


@interpreter_only
def test_interpreted_empty_tensors(monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    candidates = tuple(torch.empty(3, 0, 4, requires_grad=True) for _ in range(3))
    w = torch.rand(3, 3, requires_grad=True)
    y = routing.mix3(*candidates, w)
    assert y.shape == (3, 0, 4)
    *grads, gw = torch.autograd.grad(y, (*candidates, w), torch.empty(3, 0, 4))
    assert all(g.shape == (3, 0, 4) for g in grads)
    torch.testing.assert_close(gw, torch.zeros(3, 3), rtol=0, atol=0)


@interpreter_only
def test_interpreted_forcing_triton_on_float64_is_refused(monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(
        TypeError, match="kernels take float32, float16 or bfloat16, got torch.float64"
    ):
        routing.mix3(x, x, x, torch.rand(2, 3))


@interpreter_only
@pytest.mark.parametrize("choice", ["triton", "torch", "auto"])
def test_interpreted_env_var_picks_the_path(choice, monkeypatch):
    calls = []
    launch = routing._forward_triton

    def counted_launch(*args):
        calls.append(args)
        launch(*args)

    monkeypatch.setattr(routing, "_forward_triton", counted_launch)
    monkeypatch.setenv("MTSC_ROUTING", choice)
    x = torch.randn(2, 3, 4)
    y = routing.mix3(x, x.mT.contiguous().mT, x, torch.rand(2, 3))
    # CPU tensors: auto takes the torch path, even though the kernels could be interpreted.
    assert len(calls) == (1 if choice == "triton" else 0)
    assert y.is_contiguous()


# ----------------------------------------------------------------------------------------------
# The torch path (mix3_reference) and what does not need triton.


def torch_path(monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "torch")


@pytest.mark.parametrize("hard", [False, True])
def test_torch_path_gradcheck_float64(hard, monkeypatch):
    torch_path(monkeypatch)
    gen = torch.Generator().manual_seed(23)
    shape = (3, 2, 4, 3, 5)
    candidates = tuple(
        c.requires_grad_()
        for c in make_candidates(
            shape, ("grouped_slices", "channels_last", "transposed"), torch.float64, gen
        )
    )
    if hard:  # the selection is a constant: only the candidates are differentiated
        w = one_hot_weights(3, [2, 0, 1], scale=0.6).double()
    else:
        w = random_weights(3, gen).double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s, p, k, w: routing.mix3(s, p, k, w, hard=hard), (*candidates, w)
    )


@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
def test_torch_path_matches_float64(dtype, monkeypatch):
    torch_path(monkeypatch)
    gen = torch.Generator().manual_seed(29)
    shape = (5, 3, 4, 7, 2)
    candidates = tuple(
        c.requires_grad_()
        for c in make_candidates(shape, ("channels_last", "gapped", "broadcast"), dtype, gen)
    )
    w = random_weights(5, gen).requires_grad_()
    gy = randn(shape, dtype, gen)
    y_ref, grads_ref, gw_ref, gw_scale = reference64(candidates, w.detach(), gy, hard=False)
    y = routing.mix3(*candidates, w)
    assert y.is_contiguous() and y.dtype == dtype
    assert_close_to(y.detach(), y_ref, dtype if dtype != torch.float64 else torch.float32)
    *grads, gw = torch.autograd.grad(y, (*candidates, w), gy)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert_close_to(grad, grad_ref, dtype if dtype != torch.float64 else torch.float32)
    assert_gw_close(gw, gw_ref, gw_scale)


@pytest.mark.parametrize("layouts", [("transposed",) * 3, ("grouped_slices",) * 3])
def test_torch_path_keeps_the_layout_of_dense_candidates(layouts, monkeypatch):
    """The supermodel's `[T, B, ...]` views: y in their layout (a view back costs nothing),
    each gradient in its candidate's layout, and the per-task dots split over many chunks."""
    torch_path(monkeypatch)
    gen = torch.Generator().manual_seed(37)
    shape = (3, 5, 16, 40, 41)  # rows of 26,240 elements: 9 per dot chunk, 15 rows
    candidates = tuple(
        c.requires_grad_() for c in make_candidates(shape, layouts, torch.float32, gen)
    )
    w = random_weights(3, gen).requires_grad_()
    gy = randn(shape, torch.float32, gen)
    y_ref, grads_ref, gw_ref, gw_scale = reference64(candidates, w.detach(), gy, hard=False)
    y = routing.mix3(*candidates, w, keep_layout=True)
    assert y.stride() == candidates[0].stride()
    assert_close_to(y.detach(), y_ref, torch.float32)
    *grads, gw = torch.autograd.grad(y, (*candidates, w), gy)
    for grad, grad_ref, c in zip(grads, grads_ref, candidates, strict=True):
        assert grad.stride() == c.stride()
        assert_close_to(grad, grad_ref, torch.float32)
    assert_gw_close(gw, gw_ref, gw_scale)


def test_torch_path_frozen_weights_and_constant_candidates(monkeypatch):
    torch_path(monkeypatch)
    gen = torch.Generator().manual_seed(41)
    shape = (2, 3, 4)
    s, p, k = make_candidates(shape, ("contiguous", "transposed", "gapped"), torch.float32, gen)
    p.requires_grad_()
    w = random_weights(2, gen)
    gy = randn(shape, torch.float32, gen)
    y_ref, grads_ref, _, _ = reference64((s, p, k), w, gy, hard=False)
    y = routing.mix3(s, p, k, w)
    (grad_p,) = torch.autograd.grad(y, (p,), gy)
    assert_close_to(y.detach(), y_ref, torch.float32)
    assert_close_to(grad_p, grads_ref[1], torch.float32)


def test_torch_path_empty_tensors(monkeypatch):
    torch_path(monkeypatch)
    candidates = [torch.zeros(3, 0, 4, requires_grad=True) for _ in range(3)]
    w = torch.full((3, 3), 1 / 3, requires_grad=True)
    y = routing.mix3(*candidates, w)
    assert y.shape == (3, 0, 4)
    *grads, gw = torch.autograd.grad(y, (*candidates, w), torch.zeros(3, 0, 4))
    assert all(g.shape == (3, 0, 4) for g in grads)
    assert torch.equal(gw, torch.zeros(3, 3))


def test_torch_path_hard_mode_never_uses_unused_candidates(monkeypatch):
    torch_path(monkeypatch)
    gen = torch.Generator().manual_seed(31)
    shape = (3, 4, 5)
    choice = [2, 0, 2]
    candidates = tuple(
        c.requires_grad_()
        for c in nan_outside_choice(
            make_candidates(shape, ("contiguous",) * 3, torch.float32, gen), choice
        )
    )
    w = one_hot_weights(3, choice, scale=1.5).requires_grad_()
    gy = randn(shape, torch.float32, gen)
    y_ref, grads_ref, gw_ref, gw_scale = reference64(candidates, w.detach(), gy, hard=True)
    y = routing.mix3(*candidates, w, hard=True)
    assert not y.isnan().any()
    assert_close_to(y.detach(), y_ref, torch.float32)
    *grads, gw = torch.autograd.grad(y, (*candidates, w), gy)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert_close_to(grad, grad_ref, torch.float32)
    assert_gw_close(gw, gw_ref, gw_scale)
    y_absent = routing.mix3(candidates[0], None, candidates[2], w.detach(), hard=True)
    assert_close_to(y_absent, y_ref, torch.float32)


def test_torch_path_rank_one(monkeypatch):
    torch_path(monkeypatch)
    s, p, k = torch.tensor([1.5, -2.0]), torch.tensor([0.25, 4.0]), torch.tensor([-1.0, 3.0])
    w = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    expected = torch.tensor([0.5 * 1.5 + 0.25 * 0.25 - 0.25, -0.2 + 0.8 + 2.1])
    torch.testing.assert_close(routing.mix3(s, p, k, w), expected)


def test_module_stays_inlinable():
    """Generated supermodels inline this file's text: only stdlib, torch and triton imports."""
    tree = ast.parse(ROUTING_FILE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module != "__future__", ast.unparse(node)
            roots = [node.module.split(".")[0]]
        elif isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        else:
            continue
        for root in roots:
            assert root in sys.stdlib_module_names or root in ("torch", "triton"), ast.unparse(node)


def test_works_without_triton(monkeypatch):
    module = load_routing_copy("routing_without_triton", interpret=False, hide_triton=True)
    assert module.triton is None
    gen = torch.Generator().manual_seed(37)
    candidates = make_candidates(
        (2, 3, 4), ("contiguous", "transposed", "gapped"), torch.float32, gen
    )
    w = random_weights(2, gen)
    y_ref, *_ = reference64(candidates, w, randn((2, 3, 4), torch.float32, gen), hard=False)
    monkeypatch.delenv("MTSC_ROUTING", raising=False)
    assert_close_to(module.mix3(*candidates, w), y_ref, torch.float32)
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    with pytest.raises(
        RuntimeError, match=r"MTSC_ROUTING=triton, but triton cannot be imported \("
    ):
        module.mix3(*candidates, w)


@needs_triton
def test_forcing_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    module = load_routing_copy("routing_compiled", interpret=False)
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    x = torch.randn(2, 3)
    with pytest.raises(
        RuntimeError, match="needs CUDA tensors, got cpu; .* set TRITON_INTERPRET=1"
    ):
        module.mix3(x, x, x, torch.rand(2, 3))


def test_unknown_routing_env_var_is_refused(monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "cuda")
    x = torch.randn(2, 3)
    with pytest.raises(
        ValueError, match="MTSC_ROUTING must be 'triton', 'torch' or 'auto', got 'cuda'"
    ):
        routing.mix3(x, x, x, torch.rand(2, 3))


def _bad_inputs():
    x = torch.randn(2, 3)
    w = torch.rand(2, 3)
    return [
        ((x, None, x, w), {}, ValueError, "candidate p is None; only hard=True accepts absent"),
        ((None, None, None, w), {"hard": True}, ValueError, "all three candidates are None"),
        ((x, torch.randn(2, 4), x, w), {}, ValueError, r"one shape, got s \[2, 3\] and p \[2, 4\]"),
        ((x, x, x.half(), w), {}, TypeError, "one dtype, got s torch.float32 and k torch.float16"),
        ((x.int(),) * 3 + (w,), {}, TypeError, "must be floating point, got torch.int32"),
        ((torch.randn(()),) * 3 + (w,), {}, ValueError, r"rank 1 to 5 \(\[T, ...\]\), got rank 0"),
        ((torch.randn(2, 1, 1, 1, 1, 1),) * 3 + (w,), {}, ValueError, "got rank 6"),
        ((x, x, x, torch.rand(2, 2)), {}, ValueError, r"w must have shape \[T, 3\], got \[2, 2\]"),
        ((x, x, x, torch.rand(3, 3)), {}, ValueError, "w has 3 tasks but the candidates have 2"),
        ((x, x, x, torch.ones(2, 3, dtype=torch.int64)), {}, TypeError, "w must be floating point"),
        (
            (x, x, x, torch.rand(2, 3, device="meta")),
            {},
            ValueError,
            r"one device, got \['cpu', 'meta'\]",
        ),
    ]


@pytest.mark.parametrize("args, kwargs, error, message", _bad_inputs())
def test_bad_inputs_are_refused(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        routing.mix3(*args, **kwargs)
    with pytest.raises(error, match=message):
        routing.mix3_reference(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Launch planning: how layouts map onto tiles.


def contiguous_strides(shape):
    return torch.empty(shape, device="meta").stride()


@needs_triton
def test_plan_collapses_contiguous_tensors_to_one_row():
    shape = (3, 8, 64, 80, 80)
    plan = routing._plan_tiles(tuple(shape), (contiguous_strides(shape),) * 4)
    assert plan.sizes == (3, 1, 1, 1, 8 * 64 * 80 * 80)
    assert plan.blocks == (1, 1, 4096)
    assert not plan.wide


@needs_triton
def test_plan_transposes_channels_last_into_contiguous():
    shape = (3, 8, 64, 20, 20)
    y = contiguous_strides(shape)
    cl = torch.empty(24, 64, 20, 20, device="meta", memory_format=torch.channels_last)
    cand = cl.view(shape).stride()
    plan = routing._plan_tiles(tuple(shape), (y, cand, cand, None))
    # [T, B, H*W, C]: C is innermost for most tensors (two candidates against y), so tiles
    # span H*W x C and transpose; the absent fourth tensor gets zero strides.
    assert plan.sizes == (3, 1, 8, 400, 64)
    assert plan.strides[0] == (8 * 64 * 400, 0, 64 * 400, 1, 400)
    assert plan.strides[1] == (8 * 400 * 64, 0, 400 * 64, 64, 1)
    assert plan.strides[3] == (0,) * 5
    assert plan.blocks == (1, 64, 64)


@needs_triton
def test_plan_switches_to_int64_offsets_past_int32():
    shape = (2, 3, 5)
    big = (2**31, 5, 1)
    assert routing._plan_tiles(tuple(shape), (contiguous_strides(shape), big)).wide
    assert not routing._plan_tiles(tuple(shape), (contiguous_strides(shape),) * 2).wide


# ----------------------------------------------------------------------------------------------
# On a CUDA device: the compiled kernels.


@pytest.fixture(scope="module")
def compiled_routing() -> ModuleType:
    return load_routing_copy("routing_cuda", interpret=False)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", NAMED_CASES, ids=case_id)
@pytest.mark.parametrize("hard", [False, True])
def test_cuda_kernels_match_float64(case, hard, compiled_routing, monkeypatch):
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    shape, layouts, _, dtype = case
    gen = torch.Generator().manual_seed(41)
    candidates = make_candidates(shape, layouts, dtype, gen, device="cuda")
    choice = [t % 3 for t in range(shape[0])]
    if hard:
        candidates = nan_outside_choice(candidates, choice)
        w = one_hot_weights(shape[0], choice).cuda()
    else:
        w = random_weights(shape[0], gen).cuda()
    gy = randn(shape, dtype, gen, device="cuda")
    y_ref, grads_ref, gw_ref, gw_scale = reference64(
        tuple(c.cpu() for c in candidates), w.cpu(), gy.cpu(), hard
    )
    candidates = tuple(c.requires_grad_() for c in candidates)
    w.requires_grad_()
    y = compiled_routing.mix3(*candidates, w, hard=hard)
    assert y.is_contiguous()
    assert_close_to(y.detach().cpu(), y_ref, dtype)
    *grads, gw = torch.autograd.grad(y, (*candidates, w), gy)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert_close_to(grad.cpu(), grad_ref, dtype)
    assert_gw_close(gw.cpu(), gw_ref, gw_scale)
