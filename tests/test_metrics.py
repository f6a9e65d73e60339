"""Metrics against direct numpy computations, accumulation and sync, the registry, and Δm."""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from mtsc.runtime.metrics import (
    HIGHER_IS_BETTER,
    METRICS,
    DepthMetric,
    NormalMetric,
    SegmentationMetric,
    delta_m,
    make_metric,
)

B, H, W = 4, 6, 7
CLASSES = 6


def sample_mask_np(mask, shape):
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = mask.numpy()
    return np.broadcast_to(mask.reshape(shape[0], 1, 1), shape) if mask.ndim == 1 else mask


# ---- segmentation ------------------------------------------------------------------------


def segmentation_np(logits, labels, ignore=255, mask=None):
    guess = logits.numpy().argmax(axis=1)
    truth = labels.numpy()
    valid = (truth != ignore) & sample_mask_np(mask, truth.shape)
    truth, guess = truth[valid], guess[valid]
    ious = []
    for c in range(CLASSES):
        union = np.sum((truth == c) | (guess == c))
        if union:
            ious.append(np.sum((truth == c) & (guess == c)) / union)
    return {"miou": np.mean(ious), "pixel_acc": np.mean(truth == guess)}


def segmentation_data(seed, ignore=255):
    """Ground truth uses classes 0-3 only; predictions also say 4; class 5 never occurs."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (B, H, W), generator=gen)
    labels[torch.rand(B, H, W, generator=gen) < 0.2] = ignore
    labels[1] = ignore  # a fully invalid image
    logits = torch.randn(B, CLASSES, H, W, generator=gen)
    logits[:, 5] = -10.0
    logits[:, 0] += 0.5 * (labels == 0)  # better than chance, so IoUs are not all alike
    return logits, labels


@pytest.mark.parametrize("ignore", [255, -1])
def test_segmentation_matches_numpy(ignore):
    logits, labels = segmentation_data(0, ignore)
    metric = SegmentationMetric(num_classes=CLASSES, ignore=ignore)
    metric.update(logits, labels)
    expected = segmentation_np(logits, labels, ignore)
    assert metric.compute() == pytest.approx(expected, rel=1e-12)
    assert 4 in logits.argmax(1)[labels != ignore]  # a class only ever predicted is scored


def test_segmentation_label_map_and_masks():
    logits, labels = segmentation_data(1)
    for mask in (torch.tensor([True, False, True, True]), torch.rand(B, H, W) < 0.5):
        metric = SegmentationMetric(num_classes=CLASSES)
        metric.update(logits.argmax(dim=1), labels.unsqueeze(1), mask)
        assert metric.compute() == pytest.approx(segmentation_np(logits, labels, mask=mask))


def test_segmentation_accumulates_like_one_update():
    parts = [segmentation_data(seed) for seed in range(3)]
    split = SegmentationMetric(num_classes=CLASSES)
    for logits, labels in parts:
        split.update(logits, labels)
    whole = SegmentationMetric(num_classes=CLASSES)
    whole.update(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    assert split.compute() == whole.compute()
    for a, b in zip(split.state_tensors(), whole.state_tensors(), strict=True):
        assert torch.equal(a, b)


def test_segmentation_state_grows_with_the_classes_not_their_square():
    """65536 classes (the most a task may declare) take 3 x 65536 counts, not a 34 GB
    confusion matrix; labels far apart are scored as the numpy reference scores them."""
    n = 2**16
    metric = SegmentationMetric(num_classes=n)
    assert sum(t.numel() for t in metric.state_tensors()) == 3 * n
    truth = torch.tensor([[[0, n - 1, n - 1, 7]]])
    guess = torch.tensor([[[0, n - 1, 7, 7]]])
    metric.update(guess, truth)
    # IoU: class 0 1/1, class n-1 1/2, class 7 1/2
    assert metric.compute() == pytest.approx({"miou": 2 / 3, "pixel_acc": 3 / 4})


def test_segmentation_errors():
    metric = SegmentationMetric(num_classes=CLASSES)
    labels = torch.zeros(B, H, W, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits have 3 channels, expected 6"):
        metric.update(torch.randn(B, 3, H, W), labels)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"label \(ignore label is 255\) 7 is outside \[0, 6\)"):
        metric.update(torch.randn(B, CLASSES, H, W), labels)
    with pytest.raises(ValueError, match=r"predicted label -2 is outside \[0, 6\)"):
        metric.update(torch.full((B, H, W), -2), torch.zeros(B, H, W, dtype=torch.long))
    with pytest.raises(ValueError, match=r"needs num_classes >= 1, got 0"):
        SegmentationMetric(num_classes=0)
    with pytest.raises(ValueError, match=r"segmentation metric: prediction \(4, 1, 6, 7\)"):
        metric.update(torch.zeros(B, H, W, dtype=torch.long), torch.zeros(B, 3, 3))


# ---- depth -------------------------------------------------------------------------------


def depth_np(pred, depth, mask=None):
    p = pred.double().numpy()[:, 0]
    d = depth.double().numpy().reshape(p.shape)
    valid = (d > 0) & sample_mask_np(mask, d.shape)
    p, d = p[valid], d[valid]
    with np.errstate(divide="ignore"):
        ratio = np.where(p > 0, np.maximum(p / d, d / np.where(p > 0, p, 1)), np.inf)
    return {
        "abs_err": np.mean(np.abs(p - d)),
        "rel_err": np.mean(np.abs(p - d) / d),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
    }


def depth_data(seed):
    gen = torch.Generator().manual_seed(seed)
    depth = torch.rand(B, 1, H, W, generator=gen) * 9 + 0.5
    depth[torch.rand(B, 1, H, W, generator=gen) < 0.25] = 0.0
    depth[2] = 0.0  # a fully invalid image
    pred = depth * (1 + 0.5 * torch.randn(B, 1, H, W, generator=gen))  # some are negative
    return pred, depth


def test_depth_matches_numpy():
    pred, depth = depth_data(0)
    assert (pred[depth > 0] <= 0).any()
    metric = DepthMetric()
    metric.update(pred, depth)
    expected = depth_np(pred, depth)
    assert 0 < expected["delta1"] < expected["delta2"] < expected["delta3"] < 1
    assert metric.compute() == pytest.approx(expected, rel=1e-6)


def test_depth_masks_and_label_shape():
    pred, depth = depth_data(1)
    for mask in (torch.tensor([False, True, True, True]), torch.rand(B, 1, H, W) < 0.5):
        metric = DepthMetric()
        metric.update(pred, depth[:, 0], mask)
        reference_mask = mask[:, 0] if mask.dim() == 4 else mask
        assert metric.compute() == pytest.approx(depth_np(pred, depth, reference_mask), rel=1e-6)


def test_depth_is_pixel_weighted_over_updates():
    parts = [depth_data(seed) for seed in range(3)]
    split = DepthMetric()
    for pred, depth in parts:
        split.update(pred, depth)
    pred = torch.cat([p[0] for p in parts])
    depth = torch.cat([p[1] for p in parts])
    whole = DepthMetric()
    whole.update(pred, depth)
    assert split.compute() == pytest.approx(whole.compute(), rel=1e-12)
    assert split.compute() == pytest.approx(depth_np(pred, depth), rel=1e-6)


def test_depth_shape_error():
    with pytest.raises(
        ValueError, match=r"depth metric: prediction must be \[B, 1, H, W\], got \(4, 2, 6, 7\)"
    ):
        DepthMetric().update(torch.ones(B, 2, H, W), torch.ones(B, H, W))


# ---- normals -----------------------------------------------------------------------------


def normal_angles_np(pred, normals, mask=None):
    p = pred.double().numpy().transpose(0, 2, 3, 1)
    t = normals.double().numpy().transpose(0, 2, 3, 1)
    valid = (np.linalg.norm(t, axis=-1) > 0) & sample_mask_np(mask, t.shape[:3])
    p, t = p[valid], t[valid]
    p_norm = np.linalg.norm(p, axis=-1)
    cosine = (p * t).sum(-1) / np.where(p_norm > 0, p_norm, 1) / np.linalg.norm(t, axis=-1)
    return np.degrees(np.arccos(np.clip(cosine, -1, 1)))


def normal_np(pred, normals, mask=None):
    angles = normal_angles_np(pred, normals, mask)
    return {
        "mean_angle": angles.mean(),
        "median_angle": np.median(angles),
        "within_11_25": np.mean(angles < 11.25),
        "within_22_5": np.mean(angles < 22.5),
        "within_30": np.mean(angles < 30),
    }


def normal_data(seed, pixels_per_image=H * W):
    gen = torch.Generator().manual_seed(seed)
    normals = torch.randn(B, 3, H, W, generator=gen)
    normals[torch.rand(B, 1, H, W, generator=gen).expand(B, 3, H, W) < 0.2] = 0.0
    normals[3] = 0.0  # a fully invalid image
    noise = torch.randn(B, 3, H, W, generator=gen)
    scale = torch.rand(B, 1, H, W, generator=gen) * 2  # angles spread over [0, 180]
    pred = 2.5 * normals / normals.norm(dim=1, keepdim=True).clamp(min=1e-9) + scale * noise
    pred[0, :, 0, 0] = 0.0  # a zero prediction counts as 90 degrees
    return pred, normals


def assert_normal_close(got, expected, bin_width=0.01):
    assert got["median_angle"] == pytest.approx(expected["median_angle"], abs=bin_width / 2 + 1e-9)
    exact = {k: v for k, v in expected.items() if k != "median_angle"}
    assert {k: got[k] for k in exact} == pytest.approx(exact, rel=1e-9)


def test_normal_matches_numpy():
    pred, normals = normal_data(0)
    metric = NormalMetric()
    metric.update(pred, normals)
    expected = normal_np(pred, normals)
    assert 0 < expected["within_11_25"] < expected["within_22_5"] < expected["within_30"] < 1
    assert 90.0 in normal_angles_np(pred[:1, :, :1, :1], normals[:1, :, :1, :1])
    assert_normal_close(metric.compute(), expected)


@pytest.mark.parametrize("bin_width", [0.01, 0.5, 6.0])
def test_normal_median_is_within_half_a_bin(bin_width):
    for seed in range(3):
        pred, normals = normal_data(seed)
        metric = NormalMetric(bin_width=bin_width)
        metric.update(pred[: 1 + seed], normals[: 1 + seed])  # odd and even pixel counts
        expected = normal_np(pred[: 1 + seed], normals[: 1 + seed])
        assert_normal_close(metric.compute(), expected, bin_width)


def test_normal_masks():
    pred, normals = normal_data(1)
    for mask in (torch.tensor([True, True, False, True]), torch.rand(B, H, W) < 0.5):
        metric = NormalMetric()
        metric.update(pred, normals, mask)
        assert_normal_close(metric.compute(), normal_np(pred, normals, mask))


def test_normal_accumulates_like_one_update():
    parts = [normal_data(seed) for seed in range(3)]
    split = NormalMetric()
    for pred, normals in parts:
        split.update(pred, normals)
    whole = NormalMetric()
    whole.update(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    assert split.compute() == pytest.approx(whole.compute(), rel=1e-12)
    assert torch.equal(split._state["histogram"], whole._state["histogram"])


def test_normal_errors():
    with pytest.raises(
        ValueError, match=r"normal metric: prediction \(4, 1, 6, 7\) and target \(4, 3, 6, 7\)"
    ):
        NormalMetric().update(torch.ones(B, 1, H, W), torch.ones(B, 3, H, W))
    for width in (0.0, -1.0, 0.07, 200.0, 1e-300, float("nan")):
        wording = "a number of degrees that divides 180, at least 0.0001"
        with pytest.raises(ValueError, match=rf"bin_width must be {wording}, got {width}"):
            NormalMetric(bin_width=width)


# ---- shared behaviour --------------------------------------------------------------------


def all_metrics_with_data():
    return [
        (SegmentationMetric(num_classes=CLASSES), *segmentation_data(0)),
        (DepthMetric(), *depth_data(0)),
        (NormalMetric(), *normal_data(0)),
    ]


def fresh_like(metric):
    if isinstance(metric, SegmentationMetric):
        return SegmentationMetric(num_classes=metric.num_classes, ignore=metric.ignore)
    return type(metric)()


@pytest.mark.parametrize(("metric", "pred", "target"), all_metrics_with_data())
def test_empty_split_and_missing_labels_give_nan_then_reset(metric, pred, target):
    assert all(math.isnan(v) for v in metric.compute().values())
    metric.update(pred, target, torch.zeros(B, dtype=torch.bool))  # every label missing
    assert all(math.isnan(v) for v in metric.compute().values())
    metric.update(pred, target)
    assert not any(math.isnan(v) for v in metric.compute().values())
    metric.reset()
    assert all(math.isnan(v) for v in metric.compute().values())
    assert sorted(metric.compute()) == sorted(metric.KEYS)


@pytest.mark.parametrize(("metric", "pred", "target"), all_metrics_with_data())
def test_sync_sums_two_ranks(metric, pred, target):
    """Two ranks each see half the batch; an all-reduce of the state gives the whole split."""
    other, whole = fresh_like(metric), fresh_like(metric)
    metric.update(pred[:2], target[:2])
    other.update(pred[2:], target[2:])
    whole.update(pred, target)
    peers = {
        id(mine): theirs
        for mine, theirs in zip(metric.state_tensors(), other.state_tensors(), strict=True)
    }
    metric.sync(lambda tensor: tensor.add_(peers[id(tensor)]))
    assert metric.compute() == pytest.approx(whole.compute(), rel=1e-12)


def test_sync_uses_torch_distributed_when_initialised(tmp_path, monkeypatch):
    pred, depth = depth_data(0)
    metric = DepthMetric()
    metric.update(pred, depth)
    before = metric.compute()
    metric.sync()  # no process group: nothing to do
    assert metric.compute() == before
    reduced = []

    def spy(tensor):
        reduced.append(tensor)
        return real_all_reduce(tensor)

    real_all_reduce = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", spy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        metric.sync()
    finally:
        dist.destroy_process_group()
    assert [id(t) for t in reduced] == [id(t) for t in metric.state_tensors()]
    assert metric.compute() == before


def test_every_reported_metric_has_a_direction():
    for cls in set(METRICS.values()):
        assert set(cls.KEYS) <= set(HIGHER_IS_BETTER), cls


# ---- registry ----------------------------------------------------------------------------


def test_make_metric_by_name():
    assert isinstance(make_metric("miou", num_classes=3), SegmentationMetric)
    assert make_metric("segmentation", num_classes=3, ignore=-1).ignore == -1
    assert isinstance(make_metric("depth"), DepthMetric)
    assert make_metric("normal", bin_width=0.5).num_bins == 360


def test_make_metric_errors():
    with pytest.raises(
        ValueError, match=r"unknown metric 'iou'; known metrics: depth, miou, normal, segmentation"
    ):
        make_metric("iou")
    with pytest.raises(ValueError, match=r"metric 'miou' needs the option 'num_classes'"):
        make_metric("miou")
    with pytest.raises(
        ValueError, match=r"metric 'depth' has no option 'classes'; its options: device"
    ):
        make_metric("depth", classes=3)


# ---- delta m -----------------------------------------------------------------------------

STL = {
    "segment": {"miou": 0.40, "pixel_acc": 0.60},
    "depth": {"abs_err": 0.50, "rel_err": 0.20},
    "normal": {"mean_angle": 20.0},
}
MTL = {
    "segment": {"miou": 0.44, "pixel_acc": 0.57},
    "depth": {"abs_err": 0.45, "rel_err": 0.22},
    "normal": {"mean_angle": 19.0},
}


def test_delta_m_hand_computed_with_mixed_directions():
    # segment: +0.04/0.40 = +10%, -0.03/0.60 = -5%      -> task mean +2.5%
    # depth (lower is better): -(-0.05/0.50) = +10%, -(0.02/0.20) = -10% -> 0%
    # normal (lower is better): -(-1/20) = +5%
    assert delta_m(MTL, STL) == pytest.approx((2.5 + 0.0 + 5.0) / 3)
    assert delta_m(MTL, STL, average_tasks_first=False) == pytest.approx((10 - 5 + 10 - 10 + 5) / 5)
    assert delta_m(STL, STL) == 0.0


def test_delta_m_custom_directions():
    result = delta_m(
        {"edges": {"odsf": 0.8}}, {"edges": {"odsf": 0.5}}, higher_is_better={"odsf": True}
    )
    assert result == pytest.approx(60.0)


def test_delta_m_errors():
    with pytest.raises(
        ValueError,
        match=r"tasks differ: multi-task has \['depth'\], baseline has \['depth', 'normal'",
    ):
        delta_m({"depth": MTL["depth"]}, {"depth": STL["depth"], "normal": STL["normal"]})
    with pytest.raises(
        ValueError, match=r"task 'depth' metrics differ: multi-task has \['abs_err'\]"
    ):
        delta_m({"depth": {"abs_err": 1.0}}, {"depth": STL["depth"]})
    with pytest.raises(
        ValueError, match=r"direction of metric 'odsf' unknown; known: abs_err, delta1"
    ):
        delta_m({"edges": {"odsf": 0.8}}, {"edges": {"odsf": 0.5}})
    with pytest.raises(ValueError, match=r"baseline depth.abs_err is 0; Δm divides by it"):
        delta_m({"depth": {"abs_err": 1.0}}, {"depth": {"abs_err": 0.0}})
    with pytest.raises(ValueError, match=r"task 'depth' has no metrics"):
        delta_m({"depth": {}}, {"depth": {}})
    with pytest.raises(ValueError, match=r"no baseline results given"):
        delta_m({}, {})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("metric", "pred", "target"), all_metrics_with_data())
def test_cuda_batches_give_the_cpu_result(metric, pred, target):
    cpu = fresh_like(metric)
    cpu.update(pred, target)
    metric.update(pred.cuda(), target.cuda())
    assert all(t.is_cuda for t in metric.state_tensors())
    assert metric.compute() == pytest.approx(cpu.compute(), rel=1e-9)


def test_a_metric_on_a_device_the_machine_lacks_is_refused():
    with pytest.raises(ValueError, match=r"metric 'miou': this machine has no device 'cuda:9999'"):
        make_metric("miou", num_classes=3, device="cuda:9999")
