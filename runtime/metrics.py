"""Split-level metrics for dense tasks, a registry the DSL's `metric=` names, and Δm.

A metric accumulates sums over a whole split: `update(pred, target, mask=None)` per batch,
`compute() -> {name: value}` at the end, `reset()` before the next split. Every average is
pixel-weighted over the split (not a mean of per-image means). Ratios (mIoU, accuracies, δ,
"within") are fractions in [0, 1]; angles are in degrees. A split without any valid pixel
computes to NaN. `mask` marks which labels exist, as in `mtsc.runtime.losses.label_mask`.

Distributed evaluation: the accumulators are tensors listed by `state_tensors()`. After the
last `update` on every rank, call `sync()` once: it sums each of them across ranks with
`torch.distributed.all_reduce` when a process group is initialised (and does nothing
otherwise), so `compute()` then gives the result over the whole split on every rank.
`sync(all_reduce)` uses the given in-place reducer instead. Accumulators live on the device
of the first batch (or `device=`); with NCCL, a rank that saw no batch needs `device="cuda"`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor

from mtsc.runtime.losses import IGNORE_INDEX, check_required, label_mask, target_map
from mtsc.runtime.objectives import OPTION_VALUES, angle_bins, check_metric

# The direction of every metric name any metric here reports: True when higher is better.
HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType(
    {
        "miou": True,
        "pixel_acc": True,
        "abs_err": False,
        "rel_err": False,
        "delta1": True,
        "delta2": True,
        "delta3": True,
        "mean_angle": False,
        "median_angle": False,
        "within_11_25": True,
        "within_22_5": True,
        "within_30": True,
    }
)

DEPTH_DELTAS = (1.25, 1.25**2, 1.25**3)
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees


class Metric(ABC):
    """Base: named accumulator tensors, `reset`, `state_tensors` and `sync`."""

    KEYS: ClassVar[tuple[str, ...]] = ()  # the names `compute` reports

    def __init__(self, device: torch.device | str | None = None) -> None:
        self._device = torch.device("cpu" if device is None else device)
        self.reset()

    @abstractmethod
    def _zero_state(self, device: torch.device) -> dict[str, Tensor]: ...

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...

    def reset(self) -> None:
        self._state = self._zero_state(self._device)

    def state_tensors(self) -> list[Tensor]:
        """The accumulators, in a fixed order; summing them across ranks merges the splits."""
        return [self._state[name] for name in sorted(self._state)]

    def sync(self, all_reduce: Callable[[Tensor], object] | None = None) -> None:
        """Sum the accumulators across ranks in place; call once, after the last `update`."""
        if all_reduce is None:
            if not (dist.is_available() and dist.is_initialized()):
                return
            all_reduce = dist.all_reduce
        for tensor in self.state_tensors():
            all_reduce(tensor)

    def _follow(self, device: torch.device) -> None:
        # Sums stay on the device of the data, so no batch is copied to the host to be counted.
        if self._device != device:
            self._device = device
            self._state = {name: t.to(device) for name, t in self._state.items()}

    def _valid(self, valid: Tensor, mask: Tensor | None) -> Tensor:
        pixel_mask = label_mask(mask, *valid.shape)
        return valid if pixel_mask is None else valid & pixel_mask


class SegmentationMetric(Metric):
    """mIoU and pixel accuracy from per-class counts of hits, true and predicted pixels: the
    diagonal and the row and column sums of the confusion matrix, which is all they read, in
    3 x classes numbers instead of classes squared.

    mIoU averages IoU over every class that occurs, over the whole split, in the ground truth
    or in the prediction (at valid pixels): a class only ever predicted scores IoU 0, a class
    in neither is left out rather than counted as 0 or 1. Pixels labelled `ignore` are skipped.
    `pred` is logits `[B, C, H, W]` (argmax over C) or a label map `[B, H, W]`.
    """

    KEYS = ("miou", "pixel_acc")

    def __init__(
        self,
        *,
        num_classes: int,
        ignore: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"segmentation metric needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore = ignore
        super().__init__(device)

    def _zero_state(self, device: torch.device) -> dict[str, Tensor]:
        return {
            key: torch.zeros(self.num_classes, dtype=torch.int64, device=device)
            for key in ("hits", "truth", "guess")
        }

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        n = self.num_classes
        if pred.dim() == 4:
            if pred.shape[1] != n:
                raise ValueError(
                    f"segmentation metric: logits have {pred.shape[1]} channels, expected {n}"
                )
            labels_pred = pred.argmax(dim=1)
        else:
            labels_pred = pred
        labels = target_map(target, labels_pred.unsqueeze(1), "segmentation metric")
        valid = self._valid(labels != self.ignore, mask)
        truth, guess = labels[valid].long(), labels_pred[valid].long()
        _check_labels(truth, n, f"label (ignore label is {self.ignore})")
        _check_labels(guess, n, "predicted label")
        self._follow(pred.device)
        self._state["hits"] += torch.bincount(truth[truth == guess], minlength=n)
        self._state["truth"] += torch.bincount(truth, minlength=n)
        self._state["guess"] += torch.bincount(guess, minlength=n)

    def compute(self) -> dict[str, float]:
        hits, truth, guess = (self._state[key].double() for key in ("hits", "truth", "guess"))
        total = truth.sum()
        if total == 0:
            return {key: math.nan for key in self.KEYS}
        union = truth + guess - hits
        present = union > 0
        return {
            "miou": (hits[present] / union[present]).mean().item(),
            "pixel_acc": (hits.sum() / total).item(),
        }


def _check_labels(labels: Tensor, num_classes: int, what: str) -> None:
    # bincount would count an out-of-range label as a class of its own, or fail on a negative.
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.numel():
        raise ValueError(
            f"segmentation metric: {what} {outside[0].item()} is outside [0, {num_classes})"
        )


class DepthMetric(Metric):
    """Absolute and relative error and δ accuracies over pixels whose target depth is > 0.

    δ_i is the fraction of pixels with max(pred/target, target/pred) < 1.25^i; a prediction
    <= 0 is outside every δ threshold.
    """

    KEYS = ("abs_err", "rel_err", "delta1", "delta2", "delta3")

    def __init__(self, *, device: torch.device | str | None = None) -> None:
        super().__init__(device)

    def _zero_state(self, device: torch.device) -> dict[str, Tensor]:
        return {
            "abs_sum": torch.zeros((), dtype=torch.float64, device=device),
            "rel_sum": torch.zeros((), dtype=torch.float64, device=device),
            "pixels": torch.zeros((), dtype=torch.int64, device=device),
            "delta_hits": torch.zeros(len(DEPTH_DELTAS), dtype=torch.int64, device=device),
        }

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(
                f"depth metric: prediction must be [B, 1, H, W], got {tuple(pred.shape)}"
            )
        depth = target_map(target, pred, "depth metric")
        valid = self._valid(depth > 0, mask)
        guess, truth = pred[:, 0][valid].double(), depth[valid].double()
        error = (guess - truth).abs()
        ratio = torch.where(
            guess > 0, torch.maximum(guess / truth, truth / guess), torch.full_like(guess, math.inf)
        )
        self._follow(pred.device)
        self._state["abs_sum"] += error.sum()
        self._state["rel_sum"] += (error / truth).sum()
        self._state["pixels"] += truth.numel()
        thresholds = torch.tensor(DEPTH_DELTAS, dtype=torch.float64, device=ratio.device)
        self._state["delta_hits"] += (ratio.unsqueeze(1) < thresholds).sum(dim=0)

    def compute(self) -> dict[str, float]:
        pixels = self._state["pixels"].item()
        if pixels == 0:
            return {key: math.nan for key in self.KEYS}
        deltas = (self._state["delta_hits"].double() / pixels).tolist()
        return {
            "abs_err": self._state["abs_sum"].item() / pixels,
            "rel_err": self._state["rel_sum"].item() / pixels,
            "delta1": deltas[0],
            "delta2": deltas[1],
            "delta3": deltas[2],
        }


class NormalMetric(Metric):
    """Angle between predicted and true normals: mean, median, fraction within 11.25/22.5/30°.

    Pixels whose target is the zero vector carry no label; a zero prediction counts as 90°.
    The median over the split comes from a histogram of angles with `bin_width` degree bins
    over [0, 180] (18,000 bins at the default 0.01°), so memory stays bounded: it is exact to
    within half a bin (0.005° by default). The mean and the fractions are exact.
    """

    KEYS = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")

    def __init__(
        self, *, bin_width: float = 0.01, device: torch.device | str | None = None
    ) -> None:
        bins = angle_bins(bin_width)
        if bins is None:
            wording = OPTION_VALUES["bin_width"][1]
            raise ValueError(f"normal metric: bin_width must be {wording}, got {bin_width}")
        self.bin_width = bin_width
        self.num_bins = bins
        super().__init__(device)

    def _zero_state(self, device: torch.device) -> dict[str, Tensor]:
        return {
            "angle_sum": torch.zeros((), dtype=torch.float64, device=device),
            "pixels": torch.zeros((), dtype=torch.int64, device=device),
            "within_hits": torch.zeros(len(NORMAL_THRESHOLDS), dtype=torch.int64, device=device),
            "histogram": torch.zeros(self.num_bins, dtype=torch.int64, device=device),
        }

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"normal metric: prediction {tuple(pred.shape)} and target "
                f"{tuple(target.shape)} must both be [B, 3, H, W]"
            )
        labelled = (target != 0).any(dim=1) & target.isfinite().all(dim=1)
        valid = self._valid(labelled, mask)
        guess = pred.permute(0, 2, 3, 1)[valid].double()
        truth = target.permute(0, 2, 3, 1)[valid].double()
        angles = self._angles(guess, truth)
        self._follow(pred.device)
        self._state["angle_sum"] += angles.sum()
        self._state["pixels"] += angles.numel()
        thresholds = torch.tensor(NORMAL_THRESHOLDS, dtype=torch.float64, device=angles.device)
        self._state["within_hits"] += (angles.unsqueeze(1) < thresholds).sum(dim=0)
        bins = (angles / self.bin_width).long().clamp(0, self.num_bins - 1)
        self._state["histogram"] += torch.bincount(bins, minlength=self.num_bins)

    @staticmethod
    def _angles(guess: Tensor, truth: Tensor) -> Tensor:
        # atan2(|a x b|, a . b) stays accurate near 0° and 180°, where acos(a . b) does not.
        sine = torch.linalg.vector_norm(torch.linalg.cross(guess, truth, dim=1), dim=1)
        cosine = (guess * truth).sum(dim=1)
        radians = torch.atan2(sine, cosine)
        degenerate = torch.linalg.vector_norm(guess, dim=1) == 0
        return torch.where(degenerate, torch.full_like(radians, 90.0), torch.rad2deg(radians))

    def _median(self, pixels: int) -> float:
        # numpy's median: the mean of the two middle order statistics, each read as its bin centre.
        cumulative = self._state["histogram"].cumsum(dim=0)
        ranks = torch.tensor(
            [(pixels - 1) // 2 + 1, pixels // 2 + 1], dtype=torch.int64, device=cumulative.device
        )
        bins = torch.searchsorted(cumulative, ranks).double()
        return ((bins + 0.5) * self.bin_width).mean().item()

    def compute(self) -> dict[str, float]:
        pixels = self._state["pixels"].item()
        if pixels == 0:
            return {key: math.nan for key in self.KEYS}
        within = (self._state["within_hits"].double() / pixels).tolist()
        return {
            "mean_angle": self._state["angle_sum"].item() / pixels,
            "median_angle": self._median(pixels),
            "within_11_25": within[0],
            "within_22_5": within[1],
            "within_30": within[2],
        }


METRICS: Mapping[str, type[Metric]] = {
    "miou": SegmentationMetric,
    "segmentation": SegmentationMetric,
    "depth": DepthMetric,
    "normal": NormalMetric,
}


def make_metric(name: str, **options: Any) -> Metric:
    """A fresh metric registered as `name`, e.g. `make_metric("miou", num_classes=13)`."""
    check_metric_options(name, options)
    return METRICS[name](**options)


def check_metric_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError unless `make_metric(name, **options)` can make the metric here: its
    options, the required ones given, and its device on this machine. Allocates nothing."""
    check_metric(name, options)
    check_required(f"metric {name!r}", METRICS[name], options)
    device = options.get("device")
    if device is not None and not _device_present(torch.device(device)):
        raise ValueError(f"metric {name!r}: this machine has no device {device!r}")


def _device_present(device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()


def delta_m(
    mtl: Mapping[str, Mapping[str, float]],
    stl: Mapping[str, Mapping[str, float]],
    *,
    higher_is_better: Mapping[str, bool] = HIGHER_IS_BETTER,
    average_tasks_first: bool = True,
) -> float:
    """Δm in percent: the mean relative improvement of `mtl` over the single-task baselines `stl`.

    Each metric contributes (-1)^l (M_mtl - M_stl) / M_stl with l = 1 when lower is better.
    By default the contributions are averaged within each task and then over tasks, as
    LibMTL's `count_improvement` does (Maninis et al. 2019 have one metric per task);
    `average_tasks_first=False` averages over all metrics at once instead.
    Both dicts are `{task: {metric: value}}` and must name the same tasks and metrics.
    """
    if not stl:
        raise ValueError("delta_m: no baseline results given")
    if set(mtl) != set(stl):
        raise ValueError(
            f"delta_m: tasks differ: multi-task has {sorted(mtl)}, baseline has {sorted(stl)}"
        )
    per_task: list[list[float]] = []
    for task in sorted(stl):
        if set(mtl[task]) != set(stl[task]):
            raise ValueError(
                f"delta_m: task {task!r} metrics differ: multi-task has {sorted(mtl[task])}, "
                f"baseline has {sorted(stl[task])}"
            )
        if not stl[task]:
            raise ValueError(f"delta_m: task {task!r} has no metrics")
        gains = []
        for metric in sorted(stl[task]):
            if metric not in higher_is_better:
                raise ValueError(
                    f"delta_m: direction of metric {metric!r} unknown; "
                    f"known: {', '.join(sorted(higher_is_better))}"
                )
            base = stl[task][metric]
            if base == 0:
                raise ValueError(f"delta_m: baseline {task}.{metric} is 0; Δm divides by it")
            sign = 1.0 if higher_is_better[metric] else -1.0
            gains.append(sign * (mtl[task][metric] - base) / base)
        per_task.append(gains)
    if average_tasks_first:
        means = [sum(gains) / len(gains) for gains in per_task]
    else:
        means = [gain for gains in per_task for gain in gains]
    return 100.0 * sum(means) / len(means)
