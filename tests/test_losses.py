"""Losses against direct numpy formulas, the all-invalid batch, the registry and task weights."""

import inspect

import numpy as np
import pytest
import torch

from mtsc.runtime.losses import (
    LOSSES,
    combine_task_losses,
    cosine_loss,
    cross_entropy_loss,
    l1_loss,
    label_mask,
    make_loss,
)
from mtsc.runtime.metrics import METRICS
from mtsc.runtime.objectives import LOSS_OPTIONS, METRIC_OPTIONS

B, C, H, W = 3, 5, 4, 6


def pixel_mask_np(mask, shape):
    """A numpy reference for the per-sample / per-pixel label mask, as `[B, H, W]`."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = mask.numpy()
    return np.broadcast_to(mask.reshape(shape[0], 1, 1), shape) if mask.ndim == 1 else mask


def cross_entropy_np(logits, labels, ignore, mask=None):
    logits = logits.detach().double().numpy()
    labels = labels.numpy()
    valid = (labels != ignore) & pixel_mask_np(mask, labels.shape)
    total, count = 0.0, 0
    for b, h, w in zip(*np.nonzero(valid), strict=True):
        z = logits[b, :, h, w]
        log_norm = np.log(np.exp(z - z.max()).sum()) + z.max()
        total += log_norm - z[labels[b, h, w]]
        count += 1
    return total / count


def random_labels(seed, ignore=255):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (B, H, W), generator=gen)
    labels[torch.rand(B, H, W, generator=gen) < 0.3] = ignore
    return labels


@pytest.mark.parametrize("ignore", [255, -1])
def test_cross_entropy_matches_numpy_with_ignored_pixels(ignore):
    logits = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0))
    labels = random_labels(1, ignore)
    loss = make_loss("cross_entropy", ignore=ignore)(logits, labels)
    assert loss.item() == pytest.approx(cross_entropy_np(logits, labels, ignore), rel=1e-5)


def test_cross_entropy_accepts_channel_dim_and_masks():
    logits = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(2))
    labels = random_labels(3)
    sample_mask = torch.tensor([True, False, True])
    pixel = torch.rand(B, H, W, generator=torch.Generator().manual_seed(4)) < 0.6
    for mask in (sample_mask, pixel, pixel.unsqueeze(1)):
        loss = cross_entropy_loss(logits, labels.unsqueeze(1), mask)
        reference = cross_entropy_np(
            logits, labels, 255, mask.view(B, H, W) if mask.dim() == 4 else mask
        )
        assert loss.item() == pytest.approx(reference, rel=1e-5)


def test_l1_matches_numpy_over_valid_depth():
    gen = torch.Generator().manual_seed(5)
    pred = torch.randn(B, 1, H, W, generator=gen)
    depth = torch.rand(B, 1, H, W, generator=gen) * 10
    depth[torch.rand(B, 1, H, W, generator=gen) < 0.3] = 0.0
    depth[0, 0, 0, :2] = float("nan")  # holes in raw depth maps
    depth[1, 0, 1, 1] = -1.0
    mask = torch.tensor([True, True, False])
    loss = l1_loss(pred, depth, mask)
    d, p = depth.numpy()[:, 0], pred.numpy()[:, 0]
    valid = (d > 0) & mask.numpy()[:, None, None]
    assert loss.item() == pytest.approx(np.abs(p[valid] - d[valid]).mean(), rel=1e-5)
    assert l1_loss(pred, depth[:, 0]).item() == pytest.approx(
        np.abs(p[d > 0] - d[d > 0]).mean(), rel=1e-5
    )


def test_cosine_matches_numpy_for_unnormalised_predictions():
    gen = torch.Generator().manual_seed(6)
    pred = torch.randn(B, 3, H, W, generator=gen) * 3
    pred[0, :, 0, 0] = 0.0  # a zero prediction has cosine 0
    normals = torch.randn(B, 3, H, W, generator=gen)
    normals[:, :, 2] = 0.0  # unlabelled rows
    mask = torch.rand(B, H, W, generator=gen) < 0.7
    loss = cosine_loss(pred, normals, mask)
    p = pred.double().numpy().transpose(0, 2, 3, 1)
    t = normals.double().numpy().transpose(0, 2, 3, 1)
    valid = (np.linalg.norm(t, axis=-1) > 0) & mask.numpy()
    p_norm = np.linalg.norm(p[valid], axis=-1)
    cosine = (p[valid] * t[valid]).sum(-1) / np.maximum(p_norm, 1e-12)
    cosine /= np.linalg.norm(t[valid], axis=-1)
    assert loss.item() == pytest.approx((1 - cosine).mean(), rel=1e-5)


def all_invalid_cases():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(B, C, H, W, generator=gen)
    depth = torch.rand(B, 1, H, W, generator=gen) + 0.5
    normals = torch.randn(B, 3, H, W, generator=gen)
    no_label = torch.zeros(B, dtype=torch.bool)
    nan_depth = torch.full((B, 1, H, W), float("nan"))
    return [
        ("cross_entropy", logits, torch.full((B, H, W), 255), None),
        ("cross_entropy", logits, torch.zeros(B, H, W, dtype=torch.long), no_label),
        ("l1", depth, torch.zeros(B, 1, H, W), None),
        ("l1", depth, nan_depth, None),
        ("l1", depth, depth + 1, no_label),
        ("cosine", normals, torch.zeros(B, 3, H, W), None),
        ("cosine", normals, normals.flip(1), no_label),
    ]


@pytest.mark.parametrize(("name", "pred", "target", "mask"), all_invalid_cases())
def test_all_invalid_batch_gives_zero_with_finite_gradient(name, pred, target, mask):
    pred = pred.clone().requires_grad_(True)
    loss = make_loss(name)(pred, target, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("name", ["cross_entropy", "l1", "cosine"])
def test_gradients_match_finite_differences(name):
    gen = torch.Generator().manual_seed(8)
    channels = {"cross_entropy": C, "l1": 1, "cosine": 3}[name]
    pred = torch.randn(2, channels, 3, 3, generator=gen, dtype=torch.float64)
    target = {
        "cross_entropy": torch.tensor([[[0, 1, 255], [2, 3, 4], [255, 0, 1]]] * 2),
        "l1": torch.rand(2, 1, 3, 3, generator=gen, dtype=torch.float64).where(
            torch.rand(2, 1, 3, 3, generator=gen) < 0.7, torch.tensor(0.0, dtype=torch.float64)
        ),
        "cosine": torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64),
    }[name]
    mask = torch.tensor([True, False])
    loss_fn = make_loss(name)
    assert torch.autograd.gradcheck(lambda p: loss_fn(p, target, mask), (pred.requires_grad_(),))


@pytest.mark.parametrize(
    ("registry", "table"),
    [(LOSSES, LOSS_OPTIONS), (METRICS, METRIC_OPTIONS)],
    ids=["loss", "metric"],
)
def test_the_compilers_table_matches_the_registry(registry, table):
    """The torch-free table the compiler checks `loss=`/`metric=` against names what exists."""
    assert set(registry) == set(table)
    for name, fn in registry.items():
        params = inspect.signature(fn).parameters.values()
        assert sorted(table[name]) == sorted(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def test_unknown_loss_names_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown loss 'huber'; known losses: cosine, cross_entropy, l1"
    ):
        make_loss("huber")


def test_unknown_loss_option_names_the_options():
    with pytest.raises(
        ValueError, match=r"loss 'cross_entropy' has no option 'ignore_index'; its options: ignore"
    ):
        make_loss("cross_entropy", ignore_index=255)
    with pytest.raises(ValueError, match=r"loss 'l1' has no option 'ignore'; its options: none"):
        make_loss("l1", ignore=255)


def test_label_mask_errors():
    with pytest.raises(ValueError, match=r"label mask must be a bool tensor, got torch.float32"):
        label_mask(torch.ones(B), B, H, W)
    with pytest.raises(
        ValueError, match=r"label mask has shape \(3, 4\); expected \(3,\) per sample"
    ):
        label_mask(torch.ones(B, H, dtype=torch.bool), B, H, W)


def test_shape_errors():
    logits = torch.randn(B, C, H, W)
    with pytest.raises(
        ValueError,
        match=r"cross_entropy: prediction \(3, 5, 4, 6\) and target \(3, 8, 8\) do not match",
    ):
        cross_entropy_loss(logits, torch.zeros(B, 8, 8, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"l1: prediction must be \[B, 1, H, W\], got \(3, 5, 4, 6\)"
    ):
        l1_loss(logits, torch.ones(B, H, W))
    with pytest.raises(
        ValueError, match=r"cosine: prediction \(3, 5, 4, 6\) and target \(3, 3, 4, 6\)"
    ):
        cosine_loss(logits, torch.ones(B, 3, H, W))


def test_combine_task_losses_weights_each_task():
    losses = {
        "segment": torch.tensor(2.0),
        "depth": torch.tensor(0.5),
        "normal": torch.tensor(0.25),
    }
    total = combine_task_losses(losses, {"segment": 0.5, "normal": 4.0})
    assert total.item() == pytest.approx(0.5 * 2.0 + 1.0 * 0.5 + 4.0 * 0.25)
    assert combine_task_losses(losses).item() == pytest.approx(2.75)


def test_combine_task_losses_errors():
    with pytest.raises(
        ValueError, match=r"weights name tasks without a loss: edges; tasks: depth, segment"
    ):
        combine_task_losses(
            {"segment": torch.tensor(1.0), "depth": torch.tensor(1.0)}, {"edges": 2.0}
        )
    with pytest.raises(ValueError, match=r"combine_task_losses: no task losses given"):
        combine_task_losses({})
