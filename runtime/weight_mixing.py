"""The routing mixture folded into the weights: one grouped call per routed op.

A convolution and a linear layer are linear in their weights, so for task t

    w0 * S(x_t) + w1 * P_t(x_t) + w2 * x_t = conv(x_t, w0 * W_S + w1 * W_P[t] + w2 * I)

where `I` is the identity kernel (a one at the centre tap of each channel's own input), and
the biases mix the same way. A routed op then runs as one grouped call over the
task-stacked batch with per-task mixed weights: half the convolution work of mixing the
outputs (`mix3_stacked`), forward and backward, and no candidate outputs kept for the
backward. The policy gradient is the same: d/dw_j of the mixed call is the inner product of
the mixed weight's gradient with candidate j's weights.

A conv's skip projection is added with weight w2 after the call (with its batchnorm it is
not linear in its weights). A linear skip projection (no bias, no batchnorm) folds in.

This file is copied into every generated `supermodel.py` below the marker line.
"""

import torch
import torch.nn.functional as F
from torch import nn

# --- mtsc: inline below ---


def mix_in_weights(x, w, shared, specific, skip, identity):
    """Routed op `shared` / `specific` with its mixture `w` [T, 3] folded into the weights,
    over the task-stacked batch `x`; `skip` is the projection module or None, `identity`
    whether a None skip is the identity (else the op has no skip). None where the fold
    does not apply (an identity that no tap of the kernel can express)."""
    if isinstance(shared, nn.Linear):
        return _mixed_linear(x, w, shared, specific, skip, identity)
    return _mixed_conv(x, w, shared, specific, skip, identity)


def _mixed_conv(x, w, shared, specific, skip, identity):
    tasks = specific.tasks
    out_channels, in_per_group = shared.weight.shape[:2]
    diagonal = None
    if identity:
        tap = _identity_tap(shared, x.shape[2:])
        if tap is None:
            return None
        kh, kw = shared.kernel_size
        # out == in channels: the groups' square [out, in] blocks, at the tap
        diagonal = (shared.groups, in_per_group, kh * kw, tap[0] * kw + tap[1])

    # the tensors of this call: the backward's remaking must not read the modules again
    # (torch.func.functional_call swaps their parameters for the call only)
    shared_weight, task_weights = shared.weight, specific.weight

    def weight():
        return mix_weights(w, shared_weight, task_weights, None, diagonal).view(
            tasks * out_channels, *shared_weight.shape[1:]
        )

    bias = None
    if shared.bias is not None:
        bias = mix_weights(w, shared.bias, specific.bias, None, None).flatten()
    stacked = x.reshape(-1, tasks * shared.in_channels, *x.shape[2:])
    y = _recomputing_weight(
        weight,
        lambda mixed: F.conv2d(
            stacked, mixed, bias, shared.stride, shared.padding, shared.dilation, specific.groups
        ),
    )
    y = y.view(-1, out_channels, *y.shape[2:])
    if skip is None:
        return y
    projection = skip(x).to(y.dtype)
    per_task = (-1, tasks, *y.shape[1:])
    scale = w[:, 2].to(y.dtype).view(1, tasks, 1, 1, 1)
    return torch.addcmul(y.view(per_task), projection.view(per_task), scale).view(y.shape)


def _mixed_linear(x, w, shared, specific, skip, identity):
    tasks, features = specific.tasks, shared.out_features
    diagonal = (1, features, 1, 0) if identity else None
    projection = skip[0].weight if skip is not None else None
    shared_weight, task_weights = shared.weight, specific.weight  # this call's, as for convs

    def weight():
        mixed = mix_weights(w, shared_weight, task_weights, projection, diagonal)
        return mixed.view(tasks, features, -1)

    per_task = x.reshape(-1, tasks, x.shape[-1])
    y = _recomputing_weight(weight, lambda mixed: torch.einsum("btf,tof->bto", per_task, mixed))
    if shared.bias is not None:
        y = y + mix_weights(w, shared.bias, specific.bias, None, None).to(y.dtype)
    return y.reshape(-1, features)


def mix_weights(w, shared, per_task, skip, diagonal):
    """Per-task mixed weights [T, N]: w0[t] * shared + w1[t] * per_task[t] + w2[t] * skip[t],
    plus w2[t] on the identity's positions when `diagonal` is (groups, channels per group,
    kernel taps, the tap), the weights being [groups * channels, channels, taps]. Always in
    the weights' dtype: autocast would round the mixture of float32 weights to 16 bits."""
    tasks = w.shape[0]
    skip = skip.reshape(tasks, -1) if skip is not None else None
    with torch.autocast(w.device.type, enabled=False):
        return _MixWeights.apply(
            w.to(shared.dtype), shared.reshape(-1), per_task.reshape(tasks, -1), skip, diagonal
        )


class _MixWeights(torch.autograd.Function):
    """The mixture of weights with a backward of matrix-vector and row-wise dot products.
    Autograd's backward of broadcast multiplies makes a [T, N] temporary per term and then
    reduces it: several passes over T times the weights, as costly on a CPU as the
    convolutions saved. (`vecdot` here: an einsum's batched matrix product was 7x slower.)"""

    @staticmethod
    def forward(ctx, w, shared, per_task, skip, diagonal):
        mixed = per_task * w[:, 1:2]
        mixed.addcmul_(shared, w[:, 0:1])
        if skip is not None:
            mixed.addcmul_(skip, w[:, 2:3])
        if diagonal is not None:
            _identity_entries(mixed, diagonal).add_(w[:, 2].view(-1, 1, 1))
        ctx.save_for_backward(w, shared, per_task, skip)
        ctx.diagonal = diagonal
        return mixed

    @staticmethod
    def backward(ctx, grad):
        w, shared, per_task, skip = ctx.saved_tensors
        diagonal = ctx.diagonal
        need_w, need_shared, need_per_task, need_skip, _ = ctx.needs_input_grad
        grad_w = grad_shared = grad_per_task = grad_skip = None
        if need_w:
            grad_w = torch.zeros_like(w)
            grad_w[:, 0] = grad @ shared
            grad_w[:, 1] = torch.linalg.vecdot(grad, per_task)
            if skip is not None:
                grad_w[:, 2] = torch.linalg.vecdot(grad, skip)
            if diagonal is not None:
                grad_w[:, 2] = _identity_entries(grad, diagonal).sum((1, 2))
        if need_shared:
            grad_shared = w[:, 0] @ grad
        if need_per_task:
            grad_per_task = grad * w[:, 1:2]
        if need_skip:
            grad_skip = grad * w[:, 2:3]
        return grad_w, grad_shared, grad_per_task, grad_skip, None


def _identity_entries(mixed, diagonal):
    """The view [T, groups, channels] of `mixed` [T, N] holding the identity's entries: in
    each group's square block, input channel j of output channel j, at the tap."""
    groups, channels, taps, tap = diagonal
    blocks = mixed.view(mixed.shape[0], groups, channels, channels, taps)[..., tap]
    return torch.diagonal(blocks, dim1=2, dim2=3)


def _recomputing_weight(make_weight, call):
    """`call(make_weight())`, keeping for the backward not the mixed weight (T times the op's
    weights) but the recipe: the backward makes it again. The other tensors the call saves
    (under autocast, the weight's 16-bit copy too) are kept, with autograd's check that they
    were not changed in place since. These hooks are the innermost, so a caller's own
    saved-tensor hooks (`torch.utils.checkpoint`, `save_on_cpu`) do not see the call's
    tensors: the gradients stay right, but those tensors stay in memory."""
    weight = make_weight()
    storage, dtype = weight.untyped_storage().data_ptr(), weight.dtype

    def pack(saved):
        if saved.dtype == dtype and saved.untyped_storage().data_ptr() == storage:
            return None, (saved.shape, saved.stride(), saved.storage_offset())
        return saved, saved._version

    def unpack(packed):
        saved, check = packed  # (None, the weight's view) or (a tensor, its version)
        if saved is None:
            return make_weight().as_strided(*check)
        if saved._version != check:
            raise RuntimeError(
                "a tensor the mixed call saved for the backward was modified by an inplace "
                f"operation: it is at version {saved._version}; expected version {check}"
            )
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return call(weight)


def _identity_tap(conv, size):
    """The kernel tap (row, column) that reads each output pixel's own input pixel, if the
    conv keeps `size` and one tap does that for every pixel; else None."""
    tap = []
    for n, k, s, p, d in zip(
        size, conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
    ):
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        if out != n or p % d or p // d >= k or (s != 1 and n != 1):
            return None
        tap.append(p // d)
    return tap
