"""The losses and metrics a task's `loss=` and `metric=` can name, with the options of each.

Torch-free, so the compiler checks a tasks section against the same table that `make_loss`
and `make_metric` check their arguments against.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

# name -> its keyword options; the keys of `losses.LOSSES` and `metrics.METRICS`.
LOSS_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"cross_entropy": ("ignore",), "l1": (), "cosine": ()}
)
METRIC_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "miou": ("device", "ignore", "num_classes"),
        "segmentation": ("device", "ignore", "num_classes"),
        "depth": ("device",),
        "normal": ("bin_width", "device"),
    }
)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The normal metric's histogram of angles has at most this many bins (the default 0.01
# degree bins make 18000).
MAX_ANGLE_BINS = 1_800_000


def angle_bins(bin_width: Any) -> int | None:
    """How many `bin_width`-degree bins make 180 degrees; None unless a whole number of them,
    at most MAX_ANGLE_BINS, does."""
    if isinstance(bin_width, bool) or not isinstance(bin_width, (int, float)):
        return None
    if not 180 / MAX_ANGLE_BINS <= bin_width <= 180:
        return None
    bins = 180.0 / bin_width
    return round(bins) if abs(bins - round(bins)) <= 1e-6 else None


# option -> (whether a value is one it takes, what it must be). A label index is compared
# with int64 labels; a device is where the metric's sums live ("cuda" under NCCL).
OPTION_VALUES: Mapping[str, tuple[Callable[[Any], bool], str]] = MappingProxyType(
    {
        "ignore": (lambda v: _int(v) and -(2**63) <= v < 2**63, "an integer label"),
        "num_classes": (lambda v: _int(v) and 1 <= v <= 2**16, "an integer in [1, 65536]"),
        "device": (
            lambda v: isinstance(v, str) and re.fullmatch(r"cpu|cuda(:\d{1,4})?", v) is not None,
            'a device: "cpu", "cuda" or "cuda:N"',
        ),
        "bin_width": (
            lambda v: angle_bins(v) is not None,
            f"a number of degrees that divides 180, at least {180 / MAX_ANGLE_BINS:g}",
        ),
    }
)


def check_loss(name: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError unless `name` is a loss that takes every option in `options`, each
    with a value it takes."""
    _check("loss", "losses", LOSS_OPTIONS, name, options)


def check_metric(name: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError unless `name` is a metric that takes every option in `options`, each
    with a value it takes."""
    _check("metric", "metrics", METRIC_OPTIONS, name, options)


def _check(
    kind: str,
    plural: str,
    table: Mapping[str, tuple[str, ...]],
    name: str,
    options: Mapping[str, Any],
) -> None:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known {plural}: {', '.join(sorted(table))}")
    known = table[name]
    for option in sorted(options):
        if option not in known:
            listed = ", ".join(sorted(known)) if known else "none"
            raise ValueError(f"{kind} {name!r} has no option {option!r}; its options: {listed}")
        takes, wording = OPTION_VALUES[option]
        if not takes(options[option]):
            value = options[option]
            shown = f'"{value}"' if isinstance(value, str) else repr(value)
            raise ValueError(f"{kind} {name!r}: {option} must be {wording}, got {shown}")


# What each target can be trained and scored with, the default first: segment's targets are
# class labels, depth's a one-channel map, normal's three-channel directions.
TASK_LOSSES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"segment": ("cross_entropy",), "depth": ("l1",), "normal": ("cosine", "l1")}
)
SEGMENTATION_METRICS = ("miou", "segmentation")


def scored_classes(
    metric_options: Mapping[str, Any], head_options: Mapping[str, Any], data_classes: int
) -> int:
    """How many classes a segmentation metric scores (the head channels it takes the argmax
    over): its `num_classes`, else the head's `classes`, else the data's."""
    return metric_options.get("num_classes", head_options.get("classes", data_classes))


TASK_METRICS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"segment": SEGMENTATION_METRICS, "depth": ("depth",), "normal": ("normal",)}
)


def default_loss(task: str) -> str | None:
    """The loss a task trains with when its line gives no `loss=`: by its name, else none."""
    return TASK_LOSSES.get(task, (None,))[0]


def default_metric(task: str) -> str | None:
    """The metric a task is scored with when its line gives no `metric=`."""
    return TASK_METRICS.get(task, (None,))[0]
