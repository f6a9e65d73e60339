"""Per-task losses for dense prediction, a registry the DSL's `loss=` names, and task weighting.

Every loss takes `(pred, target, mask=None)` with `pred` shaped `[B, C, H, W]` and returns the
mean over the valid pixels of the whole batch (pixel-weighted, as `F.cross_entropy` does with an
ignore index). `mask` marks where a task's label exists: `[B]` per sample, or `[B, H, W]` /
`[B, 1, H, W]` per pixel, True = labelled. A batch without any valid pixel gives 0 that stays
attached to `pred`'s graph, so `backward()` works and yields zero gradients, never NaN.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtsc.runtime.objectives import check_loss

IGNORE_INDEX = 255  # NYUv2 convention; CityScapes files also use -1 (pass ignore=-1)

LossFn = Callable[..., Tensor]


def label_mask(mask: Tensor | None, batch: int, height: int, width: int) -> Tensor | None:
    """A per-sample `[B]` or per-pixel `[B, H, W]` / `[B, 1, H, W]` bool mask as `[B, H, W]`."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"label mask must be a bool tensor, got {mask.dtype}")
    if mask.shape == (batch,):
        return mask.view(batch, 1, 1).expand(batch, height, width)
    if mask.shape == (batch, 1, height, width):
        return mask[:, 0]
    if mask.shape == (batch, height, width):
        return mask
    raise ValueError(
        f"label mask has shape {tuple(mask.shape)}; expected ({batch},) per sample "
        f"or ({batch}, {height}, {width}) per pixel"
    )


def target_map(target: Tensor, pred: Tensor, what: str) -> Tensor:
    """`target` as `[B, H, W]` (dropping a channel of 1), checked against `pred` `[B, _, H, W]`."""
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    expected = (pred.shape[0], *pred.shape[2:])
    if pred.dim() != 4 or target.shape != expected:
        raise ValueError(
            f"{what}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
            "do not match; expected [B, C, H, W] and [B, H, W] "
            "(upsample the prediction to the label size)"
        )
    return target


def _masked_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    # `where`, not a product: invalid pixels must not leak inf/NaN into the value.
    total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    return total / valid.sum().clamp(min=1)


def cross_entropy_loss(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, *, ignore: int = IGNORE_INDEX
) -> Tensor:
    """Softmax cross-entropy of logits `[B, C, H, W]` against labels; skips `ignore` labels."""
    labels = target_map(target, pred, "cross_entropy")
    valid = labels != ignore
    pixel_mask = label_mask(mask, *labels.shape)
    if pixel_mask is not None:
        valid = valid & pixel_mask
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels)).long()
    per_pixel = F.cross_entropy(pred, safe_labels, reduction="none")
    return _masked_mean(per_pixel, valid)


def l1_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean |pred - target| for depth `[B, 1, H, W]` over pixels with target > 0."""
    if pred.dim() != 4 or pred.shape[1] != 1:
        raise ValueError(f"l1: prediction must be [B, 1, H, W], got {tuple(pred.shape)}")
    depth = target_map(target, pred, "l1")
    valid = depth > 0  # also False for NaN holes
    pixel_mask = label_mask(mask, *depth.shape)
    if pixel_mask is not None:
        valid = valid & pixel_mask
    # Invalid targets are replaced before the difference so their gradient is finite too.
    safe_depth = torch.where(valid, depth, torch.zeros_like(depth))
    return _masked_mean((pred[:, 0] - safe_depth).abs(), valid)


def cosine_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean 1 - cos(pred, target) for normals `[B, 3, H, W]`; both are normalised first.

    Pixels whose target is the zero vector carry no label. A zero prediction has cosine 0.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(
            f"cosine: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
            "must both be [B, C, H, W]"
        )
    valid = (target != 0).any(dim=1) & target.isfinite().all(dim=1)
    pixel_mask = label_mask(mask, pred.shape[0], *pred.shape[2:])
    if pixel_mask is not None:
        valid = valid & pixel_mask
    safe_target = torch.where(valid.unsqueeze(1), target, torch.zeros_like(target))
    cosine = (F.normalize(pred, dim=1) * F.normalize(safe_target, dim=1)).sum(dim=1)
    return _masked_mean(1 - cosine, valid)


LOSSES: Mapping[str, LossFn] = {
    "cross_entropy": cross_entropy_loss,
    "l1": l1_loss,
    "cosine": cosine_loss,
}


def check_required(what: str, fn: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Raise ValueError unless `options` give every required keyword-only parameter of `fn`."""
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in options:
            raise ValueError(f"{what} needs the option {p.name!r}")


def make_loss(name: str, **options: Any) -> LossFn:
    """The loss registered as `name` with keyword options bound: `make_loss("l1")`."""
    check_loss(name, options)
    fn = LOSSES[name]
    check_required(f"loss {name!r}", fn, options)
    return functools.partial(fn, **options)


def combine_task_losses(
    losses: Mapping[str, Tensor], weights: Mapping[str, float] | None = None
) -> Tensor:
    """Σ_t weight_t · loss_t; a task without a weight counts once (weight 1)."""
    if not losses:
        raise ValueError("combine_task_losses: no task losses given")
    weights = weights or {}
    unknown = sorted(set(weights) - set(losses))
    if unknown:
        raise ValueError(
            f"weights name tasks without a loss: {', '.join(unknown)}; "
            f"tasks: {', '.join(sorted(losses))}"
        )
    return sum(weights.get(task, 1.0) * losses[task] for task in sorted(losses))
