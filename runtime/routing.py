"""Routing mixture of the multi-task supermodel: ``y[t] = sum_j w[t, j] * candidate_j[t]``.

Every routed op mixes, per task ``t``, three candidate outputs: shared ``s``, task-specific
``p`` and skip ``k``. ``mix3(s, p, k, w)`` computes

    y[t] = w[t, 0] * s[t] + w[t, 1] * p[t] + w[t, 2] * k[t]

in one pass over memory, forward and backward. ``s``, ``p``, ``k`` share one shape ``[T, ...]``
(rank 1 to 5) and one dtype (float32, float16 or bfloat16; float64 on the torch path) but may
have any strides: channels_last, transposed, slices of a grouped-conv output, broadcast. The
kernels never copy them (the torch path copies a candidate only if its dims lie in another
order than those of ``s``, or not densely). ``y`` is contiguous and has their dtype; the
arithmetic is float32 (float64 for float64 inputs). The gradient of ``w`` is
``gw[t, j] = sum(gy[t] * candidate_j[t])``, accumulated in float32.

Hard mode (``hard=True``) is for a discrete policy: a candidate whose weight is zero for a task
is not read for that task, forward or backward, so NaN or garbage there cannot leak into ``y``.
A candidate that no task uses may be passed as ``None`` and need not be computed at all. The
selection is treated as fixed: the gradient of a zero weight is zero, not
``sum(gy * candidate)``. Straight-through estimators that need the gradient of zero weights use
``hard=False`` with the one-hot ``w``. Warm-up (equal weights) and soft search use ``hard=False``.

Backends: the Triton kernels run for CUDA tensors when triton is importable. Elsewhere soft
mixing of float32/float64 runs as one autograd node of a few torch calls in the candidates'
memory order (``_Mix3TorchFunction``), and hard mode and half precision run
``mix3_reference``, the mixture written as plain torch expressions. ``MTSC_ROUTING=triton`` or
``MTSC_ROUTING=torch`` forces one (``auto`` or unset: the default). With ``TRITON_INTERPRET=1``
the forced Triton path runs on CPU tensors too. Triton reads that variable when a
``@triton.jit`` decorator runs, and its own helpers (``tl.sum``, ``tl.zeros``) are decorated when
triton is imported, so it must be set before ``import triton``.

Layouts: the launcher drops size-1 dims, merges neighbouring dims that every tensor steps
through as one, and orders the rest (at most four) as ``[O, L, A, B]`` after the task dim.
``B`` is the dim most tensors hold innermost. ``A`` is the innermost dim of the other tensors
when some disagree (a transpose, e.g. channels_last candidates into a contiguous ``y``), else
the next dim out. Each program handles one ``BLOCK_L x BLOCK_A x BLOCK_B`` tile of one task and
one ``O`` index. So every tensor is read or written contiguously along one of the tile's axes,
and ``L`` fills the tile up when ``A`` and ``B`` are small. Offsets switch to int64 only when a
tensor spans more than 2**31 elements.

This file is copied verbatim into every generated ``supermodel.py``: it imports only the
standard library, torch and, if present, triton.
"""

import math
import os
from collections import Counter
from functools import lru_cache
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError as error:
    triton = None
    _TRITON_IMPORT_ERROR = str(error)
else:
    _TRITON_IMPORT_ERROR = ""

# --- mtsc: inline below ---

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_RANK = 5
_TILE_ELEMENTS = 4096
_TRANSPOSE_TILE_EDGE = 64
_INT32_LIMIT = 2**31 - 1


if triton is not None:

    @triton.jit
    def _tile(
        size_o,
        size_l,
        size_a,
        size_b,
        tiles_l,
        tiles_a,
        tiles_b,
        BLOCK_L: tl.constexpr,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
        WIDE: tl.constexpr,
    ):
        # Programs walk B tiles fastest and tasks slowest, so that a task's programs are
        # contiguous in program id (the backward kernel relies on it for its gw partials).
        pid = tl.program_id(0)
        tile_b = pid % tiles_b
        rest = pid // tiles_b
        tile_a = rest % tiles_a
        rest = rest // tiles_a
        tile_l = rest % tiles_l
        rest = rest // tiles_l
        o = rest % size_o
        t = rest // size_o
        lanes = tile_l * BLOCK_L + tl.arange(0, BLOCK_L)
        rows = tile_a * BLOCK_A + tl.arange(0, BLOCK_A)
        cols = tile_b * BLOCK_B + tl.arange(0, BLOCK_B)
        mask = (
            (lanes[:, None, None] < size_l)
            & (rows[None, :, None] < size_a)
            & (cols[None, None, :] < size_b)
        )
        if WIDE:
            t = t.to(tl.int64)
            o = o.to(tl.int64)
            lanes = lanes.to(tl.int64)
            rows = rows.to(tl.int64)
            cols = cols.to(tl.int64)
        return t, o, lanes, rows, cols, mask

    @triton.jit
    def _offsets(t, o, lanes, rows, cols, stride_t, stride_o, stride_l, stride_a, stride_b):
        base = t * stride_t + o * stride_o
        return (
            base
            + lanes[:, None, None] * stride_l
            + rows[None, :, None] * stride_a
            + cols[None, None, :] * stride_b
        )

    @triton.jit
    def _weight(w_ptr, t, stride_wt, stride_wj, j: tl.constexpr):
        return tl.load(w_ptr + t * stride_wt + j * stride_wj).to(tl.float32)

    @triton.jit
    def _read_mask(mask, weight, HARD: tl.constexpr):
        # Hard mode: lanes of a zero-weight candidate issue no memory reads at all.
        if HARD:
            mask = tl.where(weight != 0, mask, False)
        return mask

    # Kernel parameters stay grouped one tensor per line, which the formatter would undo.
    # fmt: off
    @triton.jit
    def _mix3_forward_kernel(
        y_ptr, s_ptr, p_ptr, k_ptr, w_ptr,
        size_o, size_l, size_a, size_b, tiles_l, tiles_a, tiles_b,
        y_st_t, y_st_o, y_st_l, y_st_a, y_st_b,
        s_st_t, s_st_o, s_st_l, s_st_a, s_st_b,
        p_st_t, p_st_o, p_st_l, p_st_a, p_st_b,
        k_st_t, k_st_o, k_st_l, k_st_a, k_st_b,
        stride_wt, stride_wj,
        HAS_S: tl.constexpr, HAS_P: tl.constexpr, HAS_K: tl.constexpr, HARD: tl.constexpr,
        WIDE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        t, o, lanes, rows, cols, mask = _tile(
            size_o, size_l, size_a, size_b, tiles_l, tiles_a, tiles_b,
            BLOCK_L, BLOCK_A, BLOCK_B, WIDE,
        )
        acc = tl.zeros((BLOCK_L, BLOCK_A, BLOCK_B), dtype=tl.float32)
        if HAS_S:
            w0 = _weight(w_ptr, t, stride_wt, stride_wj, 0)
            s_off = _offsets(t, o, lanes, rows, cols, s_st_t, s_st_o, s_st_l, s_st_a, s_st_b)
            s = tl.load(s_ptr + s_off, mask=_read_mask(mask, w0, HARD), other=0.0)
            acc += w0 * s.to(tl.float32)
        if HAS_P:
            w1 = _weight(w_ptr, t, stride_wt, stride_wj, 1)
            p_off = _offsets(t, o, lanes, rows, cols, p_st_t, p_st_o, p_st_l, p_st_a, p_st_b)
            p = tl.load(p_ptr + p_off, mask=_read_mask(mask, w1, HARD), other=0.0)
            acc += w1 * p.to(tl.float32)
        if HAS_K:
            w2 = _weight(w_ptr, t, stride_wt, stride_wj, 2)
            k_off = _offsets(t, o, lanes, rows, cols, k_st_t, k_st_o, k_st_l, k_st_a, k_st_b)
            k = tl.load(k_ptr + k_off, mask=_read_mask(mask, w2, HARD), other=0.0)
            acc += w2 * k.to(tl.float32)
        y_off = _offsets(t, o, lanes, rows, cols, y_st_t, y_st_o, y_st_l, y_st_a, y_st_b)
        tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask)

    # fmt: on

    @triton.jit
    def _candidate_backward(
        gy,
        weight,
        mask,
        cand_ptr,
        cand_off,
        grad_ptr,
        grad_off,
        partial_ptr,
        READ: tl.constexpr,
        GRAD: tl.constexpr,
        GRAD_W: tl.constexpr,
        HARD: tl.constexpr,
    ):
        # One candidate's share of the backward pass: its gradient w * gy, and this tile's
        # partial sum of gy * candidate for the gradient of its weight.
        if GRAD:
            grad = weight * gy
            if HARD:
                grad = tl.where(weight != 0, grad, 0.0)
            tl.store(grad_ptr + grad_off, grad.to(grad_ptr.dtype.element_ty), mask=mask)
        if GRAD_W:
            if READ:
                cand = tl.load(cand_ptr + cand_off, mask=_read_mask(mask, weight, HARD), other=0.0)
                tl.store(partial_ptr, tl.sum(gy * cand.to(tl.float32)))
            else:
                tl.store(partial_ptr, 0.0)

    # fmt: off
    @triton.jit
    def _mix3_backward_kernel(
        gy_ptr, s_ptr, p_ptr, k_ptr, w_ptr, gs_ptr, gp_ptr, gk_ptr, partial_ptr,
        size_o, size_l, size_a, size_b, tiles_l, tiles_a, tiles_b,
        gy_st_t, gy_st_o, gy_st_l, gy_st_a, gy_st_b,
        s_st_t, s_st_o, s_st_l, s_st_a, s_st_b,
        p_st_t, p_st_o, p_st_l, p_st_a, p_st_b,
        k_st_t, k_st_o, k_st_l, k_st_a, k_st_b,
        gs_st_t, gs_st_o, gs_st_l, gs_st_a, gs_st_b,
        gp_st_t, gp_st_o, gp_st_l, gp_st_a, gp_st_b,
        gk_st_t, gk_st_o, gk_st_l, gk_st_a, gk_st_b,
        stride_wt, stride_wj,
        READ_S: tl.constexpr, READ_P: tl.constexpr, READ_K: tl.constexpr,
        GRAD_S: tl.constexpr, GRAD_P: tl.constexpr, GRAD_K: tl.constexpr, GRAD_W: tl.constexpr,
        HARD: tl.constexpr, WIDE: tl.constexpr,
        BLOCK_L: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        t, o, lanes, rows, cols, mask = _tile(
            size_o, size_l, size_a, size_b, tiles_l, tiles_a, tiles_b,
            BLOCK_L, BLOCK_A, BLOCK_B, WIDE,
        )
        gy_off = _offsets(t, o, lanes, rows, cols, gy_st_t, gy_st_o, gy_st_l, gy_st_a, gy_st_b)
        gy = tl.load(gy_ptr + gy_off, mask=mask, other=0.0).to(tl.float32)
        partials = partial_ptr + tl.program_id(0).to(tl.int64) * 3
        _candidate_backward(
            gy,
            _weight(w_ptr, t, stride_wt, stride_wj, 0),
            mask,
            s_ptr,
            _offsets(t, o, lanes, rows, cols, s_st_t, s_st_o, s_st_l, s_st_a, s_st_b),
            gs_ptr,
            _offsets(t, o, lanes, rows, cols, gs_st_t, gs_st_o, gs_st_l, gs_st_a, gs_st_b),
            partials,
            READ_S,
            GRAD_S,
            GRAD_W,
            HARD,
        )
        _candidate_backward(
            gy,
            _weight(w_ptr, t, stride_wt, stride_wj, 1),
            mask,
            p_ptr,
            _offsets(t, o, lanes, rows, cols, p_st_t, p_st_o, p_st_l, p_st_a, p_st_b),
            gp_ptr,
            _offsets(t, o, lanes, rows, cols, gp_st_t, gp_st_o, gp_st_l, gp_st_a, gp_st_b),
            partials + 1,
            READ_P,
            GRAD_P,
            GRAD_W,
            HARD,
        )
        _candidate_backward(
            gy,
            _weight(w_ptr, t, stride_wt, stride_wj, 2),
            mask,
            k_ptr,
            _offsets(t, o, lanes, rows, cols, k_st_t, k_st_o, k_st_l, k_st_a, k_st_b),
            gk_ptr,
            _offsets(t, o, lanes, rows, cols, gk_st_t, gk_st_o, gk_st_l, gk_st_a, gk_st_b),
            partials + 2,
            READ_K,
            GRAD_K,
            GRAD_W,
            HARD,
        )
    # fmt: on


class _TilePlan(NamedTuple):
    """How one launch walks its tensors: sizes ``[T, O, L, A, B]`` (tiles span ``L, A, B``),
    each tensor's strides in that order, the tile's edges, and whether offsets need int64."""

    sizes: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    blocks: tuple[int, int, int]
    wide: bool

    @property
    def tiles(self) -> tuple[int, int, int]:
        return tuple(
            -(-size // block) for size, block in zip(self.sizes[2:], self.blocks, strict=True)
        )

    @property
    def grid(self) -> int:
        tiles_l, tiles_a, tiles_b = self.tiles
        return self.sizes[0] * self.sizes[1] * tiles_l * tiles_a * tiles_b

    @property
    def num_warps(self) -> int:
        block_l, block_a, block_b = self.blocks
        return 8 if block_l * block_a * block_b >= _TILE_ELEMENTS else 4


_Dims = list[tuple[int, tuple[int, ...]]]


def _collapse_dims(sizes: tuple[int, ...], strides: list[tuple[int, ...]]) -> _Dims:
    """Drop size-1 dims and merge neighbours that every tensor steps through as one dim.

    Returns ``(size, strides of each tensor)`` per remaining dim.
    """
    dims: _Dims = []
    for d, size in enumerate(sizes):
        if size == 1:
            continue
        dim_strides = tuple(st[d] for st in strides)
        if dims and all(
            outer == inner * size for outer, inner in zip(dims[-1][1], dim_strides, strict=True)
        ):
            dims[-1] = (dims[-1][0] * size, dim_strides)
        else:
            dims.append((size, dim_strides))
    return dims


def _innermost_dim(dims: _Dims, tensor: int) -> int | None:
    """The dim a tensor holds innermost (smallest non-zero stride); None if it is broadcast."""
    moving = [(abs(st[tensor]), d) for d, (_, st) in enumerate(dims) if st[tensor] != 0]
    return min(moving)[1] if moving else None


def _order_dims(dims: _Dims, num_tensors: int) -> tuple[list[int | None], bool]:
    """Assign the collapsed dims to ``[O, L, A, B]`` (None: a unit dim); say if A-B transposes.

    B is the dim most tensors hold innermost; A is the innermost dim of the others when some
    hold another dim innermost (the tile then transposes), else B's nearest neighbour in
    memory; L is the nearest of the rest, O what is left.
    """
    inner = [_innermost_dim(dims, i) for i in range(num_tensors)]
    votes = Counter(d for d in inner if d is not None)
    remaining = list(range(len(dims)))
    if not remaining:
        return [None, None, None, None], False
    col = max(remaining, key=lambda d: (votes[d], d))
    remaining.remove(col)
    leader = inner.index(col) if col in inner else 0
    transposing = any(votes[d] for d in remaining)

    def take_nearest() -> int | None:
        if not remaining:
            return None
        nearest = min(remaining, key=lambda d: (abs(dims[d][1][leader]), -d))
        remaining.remove(nearest)
        return nearest

    if transposing:
        row = max(remaining, key=lambda d: (votes[d], d))
        remaining.remove(row)
    else:
        row = take_nearest()
    lane = take_nearest()
    return [take_nearest(), lane, row, col], transposing


def _block_shape(size_l: int, size_a: int, size_b: int, transposing: bool) -> tuple[int, int, int]:
    """Power-of-two tile edges: long rows when layouts agree, square ``A x B`` for transposes,
    and ``L`` filling the tile up when ``A`` and ``B`` are small."""

    def fit(size: int, room: int) -> int:
        return min(1 << (size - 1).bit_length(), room)

    block_b = fit(size_b, _TRANSPOSE_TILE_EDGE if transposing else _TILE_ELEMENTS)
    block_a = fit(size_a, _TILE_ELEMENTS // block_b)
    block_l = fit(size_l, _TILE_ELEMENTS // (block_a * block_b))
    return block_l, block_a, block_b


@lru_cache(maxsize=4096)
def _plan_tiles(shape: tuple[int, ...], strides: tuple[tuple[int, ...] | None, ...]) -> _TilePlan:
    """Plan a launch over tensors of one shape ``[T, ...]`` with the given strides.

    None stands for an absent tensor, which the kernel never touches: it gets zero strides.
    Cached: a network routes the same few shapes every step, and planning costs tens of
    microseconds of Python per call, as much as the launch itself.
    """
    present = [st for st in strides if st is not None]
    num = len(present)
    dims = _collapse_dims(tuple(shape[1:]), [st[1:] for st in present])
    order, transposing = _order_dims(dims, num)
    picked = [(1, (0,) * num) if d is None else dims[d] for d in order]
    sizes = (shape[0],) + tuple(size for size, _ in picked)
    ordered = [(present[i][0],) + tuple(st[i] for _, st in picked) for i in range(num)]
    blocks = _block_shape(*sizes[2:], transposing)
    # Masked lanes of the last tiles compute offsets too; they must not overflow either.
    padded = sizes[:2] + tuple(-(-n // b) * b for n, b in zip(sizes[2:], blocks, strict=True))
    reach = max(
        sum((n - 1) * abs(st) for n, st in zip(padded, sts, strict=True)) for sts in ordered
    )
    given = iter(ordered)
    per_tensor = tuple((0,) * 5 if st is None else next(given) for st in strides)
    return _TilePlan(sizes, per_tensor, blocks, reach > _INT32_LIMIT)


def _first_given(candidates: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    return next(c for c in candidates if c is not None)


def _forward_triton(
    y: torch.Tensor,
    s: torch.Tensor | None,
    p: torch.Tensor | None,
    k: torch.Tensor | None,
    w: torch.Tensor,
    hard: bool,
) -> None:
    """Write the mixture into ``y`` (any strides) with one Triton launch."""
    if y.numel() == 0:
        return
    tensors = (y, s, p, k)
    plan = _plan_tiles(y.shape, tuple(None if x is None else x.stride() for x in tensors))
    _mix3_forward_kernel[(plan.grid,)](
        *(y if x is None else x for x in tensors),
        w,
        *plan.sizes[1:],
        *plan.tiles,
        *(st for sts in plan.strides for st in sts),
        w.stride(0),
        w.stride(1),
        HAS_S=s is not None,
        HAS_P=p is not None,
        HAS_K=k is not None,
        HARD=hard,
        WIDE=plan.wide,
        BLOCK_L=plan.blocks[0],
        BLOCK_A=plan.blocks[1],
        BLOCK_B=plan.blocks[2],
        num_warps=plan.num_warps,
    )


def _backward_triton(
    gy: torch.Tensor,
    candidates: tuple[torch.Tensor | None, ...],
    w: torch.Tensor,
    hard: bool,
    grads: tuple[torch.Tensor | None, ...],
    grad_w: bool,
) -> torch.Tensor | None:
    """Write the candidates' gradients into ``grads`` (None: not wanted) with one Triton launch;
    return the gradient of ``w`` (float32 partial sums per tile, summed here) if ``grad_w``."""
    reads = tuple(c if grad_w else None for c in candidates)
    tensors = (gy, *reads, *grads)
    plan = _plan_tiles(gy.shape, tuple(None if x is None else x.stride() for x in tensors))
    partials = torch.empty((plan.grid, 3), dtype=torch.float32, device=gy.device)
    if plan.grid:
        _mix3_backward_kernel[(plan.grid,)](
            gy,
            *(gy if c is None else c for c in reads),
            w,
            *(gy if g is None else g for g in grads),
            partials,
            *plan.sizes[1:],
            *plan.tiles,
            *(st for sts in plan.strides for st in sts),
            w.stride(0),
            w.stride(1),
            READ_S=reads[0] is not None,
            READ_P=reads[1] is not None,
            READ_K=reads[2] is not None,
            GRAD_S=grads[0] is not None,
            GRAD_P=grads[1] is not None,
            GRAD_K=grads[2] is not None,
            GRAD_W=grad_w,
            HARD=hard,
            WIDE=plan.wide,
            BLOCK_L=plan.blocks[0],
            BLOCK_A=plan.blocks[1],
            BLOCK_B=plan.blocks[2],
            num_warps=plan.num_warps,
        )
    if not grad_w:
        return None
    return partials.view(gy.shape[0], -1, 3).sum(dim=1).to(w.dtype)


def _dense_strides(x: torch.Tensor) -> tuple[int, ...] | None:
    """``x``'s strides if they pack its elements densely without overlap (any dim order)."""
    expected = 1
    for stride, size in sorted(
        (st, n) for st, n in zip(x.stride(), x.shape, strict=True) if n != 1
    ):
        if stride != expected:
            return None
        expected *= size
    return x.stride()


def _new_grad(gy: torch.Tensor, strides: tuple[int, ...] | None) -> torch.Tensor:
    """A gradient buffer in its candidate's layout when that is dense, else contiguous.

    Keeping the layout lets the gradient flow back into, e.g., a grouped conv's output
    without a layout copy.
    """
    if strides is None:
        return torch.empty(gy.shape, dtype=gy.dtype, device=gy.device)
    return torch.empty_strided(gy.shape, strides, dtype=gy.dtype, device=gy.device)


def _task_view(x: torch.Tensor | None, tasks: int) -> torch.Tensor | None:
    """A task-stacked ``[B * T, ...]`` tensor as ``[T, B, ...]`` (a view); ``tasks`` 0: ``x``
    is ``[T, ...]`` already."""
    if x is None or not tasks:
        return x
    return x.view(-1, tasks, *x.shape[1:]).transpose(0, 1)


class _Mix3Function(torch.autograd.Function):
    """The Triton path of ``mix3`` as one autograd node: one forward and one backward launch.

    With ``tasks`` > 0 the tensors come and go in the task-stacked layout and the per-task
    views are taken in here, where autograd does not record them: a view outside costs an
    autograd node per candidate and step, as much host time as the launch."""

    @staticmethod
    def forward(ctx, w, hard, keep_layout, tasks, s, p, k):
        like = _first_given((s, p, k))
        y = _new_grad(like, _dense_strides(like) if keep_layout else None)
        per_task = (_task_view(x, tasks) for x in (y, s, p, k))
        _forward_triton(*per_task, w, hard)
        ctx.hard = hard
        ctx.tasks = tasks
        ctx.grad_strides = tuple(None if c is None else _dense_strides(c) for c in (s, p, k))
        # The candidates are only needed for the gradient of w; do not keep them alive otherwise.
        keep = ctx.needs_input_grad[0]
        ctx.save_for_backward(w, *(c if keep else None for c in (s, p, k)))
        return y

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiated
    def backward(ctx, gy):
        w, s, p, k = ctx.saved_tensors
        grad_w = ctx.needs_input_grad[0]
        candidates = (s, p, k) if grad_w else (None, None, None)
        grads = tuple(
            _new_grad(gy, strides) if need else None
            for strides, need in zip(ctx.grad_strides, ctx.needs_input_grad[4:], strict=True)
        )
        gw = _backward_triton(
            _task_view(gy, ctx.tasks),
            tuple(_task_view(c, ctx.tasks) for c in candidates),
            w,
            ctx.hard,
            tuple(_task_view(g, ctx.tasks) for g in grads),
            grad_w,
        )
        return (gw, None, None, None, *grads)


def _check_inputs(
    s: torch.Tensor | None,
    p: torch.Tensor | None,
    k: torch.Tensor | None,
    w: torch.Tensor,
    hard: bool,
    stacked: bool = False,
) -> torch.Tensor:
    """Validate the arguments of ``mix3`` (``mix3_stacked`` if ``stacked``); return the first
    given candidate."""
    named = {"s": s, "p": p, "k": k}
    missing = [name for name, c in named.items() if c is None]
    if missing and not hard:
        raise ValueError(
            f"mix3: candidate {', '.join(missing)} is None; "
            "only hard=True accepts absent candidates"
        )
    given = {name: c for name, c in named.items() if c is not None}
    if not given:
        raise ValueError("mix3: all three candidates are None; at least one is needed")
    (first_name, like), *others = given.items()
    for name, c in others:
        if c.shape != like.shape:
            raise ValueError(
                f"mix3: candidates must have one shape, got {first_name} {list(like.shape)} "
                f"and {name} {list(c.shape)}"
            )
        if c.dtype != like.dtype:
            raise TypeError(
                f"mix3: candidates must have one dtype, got {first_name} {like.dtype} "
                f"and {name} {c.dtype}"
            )
    if not like.is_floating_point():
        raise TypeError(f"mix3: candidates must be floating point, got {like.dtype}")
    if stacked and not 1 <= like.dim() < _MAX_RANK:  # the kernels see [T, B, ...]: one more
        raise ValueError(
            f"mix3_stacked: candidates must have rank 1 to {_MAX_RANK - 1} ([B * T, ...]), "
            f"got rank {like.dim()}"
        )
    if not 1 <= like.dim() <= _MAX_RANK:
        raise ValueError(
            f"mix3: candidates must have rank 1 to {_MAX_RANK} ([T, ...]), got rank {like.dim()}"
        )
    if w.dim() != 2 or w.shape[1] != 3:
        raise ValueError(f"mix3: w must have shape [T, 3], got {list(w.shape)}")
    if stacked and (w.shape[0] == 0 or like.shape[0] % w.shape[0]):
        raise ValueError(
            f"mix3_stacked: w has {w.shape[0]} tasks, which do not divide the candidates' "
            f"first dim {like.shape[0]} (batch * tasks)"
        )
    if not stacked and w.shape[0] != like.shape[0]:
        raise ValueError(
            f"mix3: w has {w.shape[0]} tasks but the candidates have {like.shape[0]} "
            f"(their first dim)"
        )
    if not w.is_floating_point():
        raise TypeError(f"mix3: w must be floating point, got {w.dtype}")
    devices = {str(x.device) for x in (*given.values(), w)}
    if len(devices) > 1:
        raise ValueError(f"mix3: all inputs must be on one device, got {sorted(devices)}")
    return like


def _use_triton(like: torch.Tensor) -> bool:
    """Decide the backend from ``MTSC_ROUTING`` and the candidates' device and dtype."""
    choice = os.environ.get("MTSC_ROUTING", "")
    if choice in ("", "auto"):
        return triton is not None and like.is_cuda and like.dtype in _TRITON_DTYPES
    if choice == "torch":
        return False
    if choice != "triton":
        raise ValueError(f"MTSC_ROUTING must be 'triton', 'torch' or 'auto', got {choice!r}")
    if triton is None:
        raise RuntimeError(
            f"MTSC_ROUTING=triton, but triton cannot be imported ({_TRITON_IMPORT_ERROR})"
        )
    interpreted = not isinstance(_mix3_forward_kernel, triton.runtime.JITFunction)
    if not like.is_cuda and not interpreted:
        raise RuntimeError(
            f"MTSC_ROUTING=triton needs CUDA tensors, got {like.device}; to run the kernels "
            "on the CPU, set TRITON_INTERPRET=1 before this module is imported"
        )
    if like.dtype not in _TRITON_DTYPES:
        raise TypeError(
            f"MTSC_ROUTING=triton: the kernels take float32, float16 or bfloat16, got {like.dtype}"
        )
    return True


def mix3_reference(
    s: torch.Tensor | None,
    p: torch.Tensor | None,
    k: torch.Tensor | None,
    w: torch.Tensor,
    *,
    hard: bool = False,
    keep_layout: bool = False,
) -> torch.Tensor:
    """The mixture in plain torch ops (autograd gives the gradients): the exact CPU path.

    Same contract as ``mix3``; computes in float32 (float64 for float64 inputs).
    """
    like = _check_inputs(s, p, k, w, hard)
    compute = torch.float64 if like.dtype == torch.float64 else torch.float32
    per_task = (like.shape[0],) + (1,) * (like.dim() - 1)
    weights = w.to(compute)
    y = None
    for j, cand in enumerate((s, p, k)):
        if cand is None:
            continue
        weight = weights[:, j].reshape(per_task)
        value = cand.to(compute)
        if hard:
            value = torch.where(weight != 0, value, 0.0)
        term = weight * value
        y = term if y is None else y + term
    y = y.to(like.dtype)
    if keep_layout and _dense_strides(like) is not None:
        # Element-wise results follow their inputs' layout; copy only if it is not `like`'s.
        return y if y.stride() == like.stride() else torch.empty_like(like).copy_(y)
    return y.contiguous()


_TORCH_FUSED_DTYPES = (torch.float32, torch.float64)


def _memory_order(x: torch.Tensor) -> list[int]:
    """``x``'s dims from outermost to innermost in memory."""
    return sorted(range(x.dim()), key=lambda d: (-x.stride(d), d))


def _dense_in(x: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``x`` permuted to ``order``, copied only if that is not already contiguous."""
    x = x.permute(order)
    return x if x.is_contiguous() else x.contiguous()


class _Mix3TorchFunction(torch.autograd.Function):
    """Soft mixing with torch calls as one autograd node, for CPUs and GPUs without triton.

    Everything runs in the memory order of ``s`` (the supermodel's ``[T, B, ...]`` views are
    plain ``[B, T, ...]`` tensors there), so each call streams contiguous memory: ``y`` is one
    buffer built by a multiply and two fused multiply-adds, and ``gw`` comes from per-task dot
    products instead of candidate-sized products. Plain autograd on the expression would
    make five candidate-sized temporaries forward and six more backward.
    """

    @staticmethod
    def forward(ctx, w, keep_layout, s, p, k):
        order = _memory_order(s)
        candidates = [_dense_in(c, order) for c in (s, p, k)]
        weights = _weights_along(w, order)
        y = torch.mul(candidates[0], weights[0])
        y.addcmul_(candidates[1], weights[1])
        y.addcmul_(candidates[2], weights[2])
        ctx.order = order
        keep = ctx.needs_input_grad[0]  # the candidates only serve the gradient of w
        ctx.save_for_backward(w, *(c if keep else None for c in candidates))
        y = y.permute(_inverse(order))
        return y if keep_layout and _dense_strides(s) is not None else y.contiguous()

    @staticmethod
    @once_differentiable  # its copies of the candidates carry no graph: second order is refused
    def backward(ctx, gy):
        w, *candidates = ctx.saved_tensors
        order, inverse = ctx.order, _inverse(ctx.order)
        gy = _dense_in(gy, order)
        tasks = w.shape[0]
        weights = _weights_along(w, order)
        grads = [
            (gy * weights[j]).permute(inverse) if ctx.needs_input_grad[2 + j] else None
            for j in range(3)
        ]
        gw = None
        if ctx.needs_input_grad[0]:
            # Rows of [outer, T, inner]: dims outside the task dim, the task dim, dims inside.
            inner = math.prod(gy.shape[order.index(0) + 1 :])
            gw = torch.stack([_task_dots(gy, c, tasks, inner) for c in candidates], dim=1)
        return (gw, None, *grads)


_CPU_DOT_CHUNK = 1 << 18  # elements: keeps the products' temporaries in cache-sized pieces


def _task_dots(a: torch.Tensor, b: torch.Tensor, tasks: int, inner: int) -> torch.Tensor:
    """``sum(a[t] * b[t])`` per task for contiguous ``a``, ``b`` whose task dim has ``inner``
    elements inside it. On the CPU in chunks, never with a temporary the size of ``a``: a
    fresh allocation that large costs more in page faults than the arithmetic. GPUs reuse
    cached blocks, and there one call beats many small launches."""
    if a.numel() == 0:
        return a.new_zeros(tasks)
    rows_a, rows_b = a.view(-1, inner), b.view(-1, inner)
    chunk = _CPU_DOT_CHUNK if a.device.type == "cpu" else a.numel()
    per = max(1, chunk // inner)
    pairs = zip(rows_a.split(per), rows_b.split(per), strict=True)
    dots = [torch.linalg.vecdot(x, y) for x, y in pairs]
    return torch.cat(dots).view(-1, tasks).sum(0)


def _weights_along(w: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``w`` as ``[3, ...]``: per candidate, the tasks' weights along the task dim of tensors
    permuted to ``order``, size 1 elsewhere (they broadcast)."""
    return w.t().reshape(3, *(w.shape[0] if d == 0 else 1 for d in order))


def _inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


def mix3(
    s: torch.Tensor | None,
    p: torch.Tensor | None,
    k: torch.Tensor | None,
    w: torch.Tensor,
    *,
    hard: bool = False,
    keep_layout: bool = False,
) -> torch.Tensor:
    """``y[t] = w[t, 0] * s[t] + w[t, 1] * p[t] + w[t, 2] * k[t]``, contiguous, dtype of ``s``.

    ``s``, ``p``, ``k``: candidates of one shape ``[T, ...]`` (rank 1 to 5), any strides.
    ``w``: mixture weights ``[T, 3]``. ``hard=True``: zero weights skip their candidate (which
    may then be None); see the module docstring. ``keep_layout=True``: ``y`` takes the strides
    of the first given candidate when that is dense (the supermodel's transposed views), so
    viewing it back costs no copy. Differentiable in all four inputs.
    """
    like = _check_inputs(s, p, k, w, hard)
    if _use_triton(like):
        return _Mix3Function.apply(w, hard, keep_layout, 0, s, p, k)
    return _mix3_torch(s, p, k, w, hard, keep_layout, like.dtype)


def _mix3_torch(s, p, k, w, hard: bool, keep_layout: bool, dtype: torch.dtype) -> torch.Tensor:
    """The torch paths of ``mix3``, for checked ``[T, ...]`` candidates of ``dtype``."""
    if hard or dtype not in _TORCH_FUSED_DTYPES:
        return mix3_reference(s, p, k, w, hard=hard, keep_layout=keep_layout)
    return _Mix3TorchFunction.apply(w.to(dtype), keep_layout, s, p, k)


def mix3_stacked(
    s: torch.Tensor | None,
    p: torch.Tensor | None,
    k: torch.Tensor | None,
    w: torch.Tensor,
    *,
    hard: bool = False,
) -> torch.Tensor:
    """``mix3`` for candidates in the supermodel's task-stacked layout ``[B * T, ...]`` (task
    ``t``'s samples at rows ``t, T + t, ...``), with ``T = w.shape[0]``. ``y`` comes back in
    that layout, with the strides of the first given candidate when that is dense."""
    like = _check_inputs(s, p, k, w, hard, stacked=True)
    tasks = w.shape[0]
    if _use_triton(like):
        return _Mix3Function.apply(w, hard, True, tasks, s, p, k)
    per_task = (_task_view(c, tasks) for c in (s, p, k))
    y = _mix3_torch(*per_task, w, hard, True, like.dtype)  # checked above: not again per view
    return y.transpose(0, 1).reshape(like.shape)
