"""The losses and metrics a task's `loss=` and `metric=` can name, with the options of each.

Torch-free, so the compiler checks a tasks section against the same table that `make_loss`
and `make_metric` check their arguments against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

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


def check_loss(name: str, options: Iterable[str]) -> None:
    """Raise ValueError unless `name` is a loss that takes every option in `options`."""
    _check("loss", "losses", LOSS_OPTIONS, name, options)


def check_metric(name: str, options: Iterable[str]) -> None:
    """Raise ValueError unless `name` is a metric that takes every option in `options`."""
    _check("metric", "metrics", METRIC_OPTIONS, name, options)


def _check(
    kind: str,
    plural: str,
    table: Mapping[str, tuple[str, ...]],
    name: str,
    options: Iterable[str],
) -> None:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known {plural}: {', '.join(sorted(table))}")
    known = table[name]
    for option in sorted(options):
        if option not in known:
            listed = ", ".join(sorted(known)) if known else "none"
            raise ValueError(f"{kind} {name!r} has no option {option!r}; its options: {listed}")


# What each target can be trained and scored with, the default first: segment's targets are
# class labels, depth's a one-channel map, normal's three-channel directions.
TASK_LOSSES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"segment": ("cross_entropy",), "depth": ("l1",), "normal": ("cosine", "l1")}
)
TASK_METRICS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"segment": ("miou", "segmentation"), "depth": ("depth",), "normal": ("normal",)}
)
