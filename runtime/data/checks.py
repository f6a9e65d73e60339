"""Checks of a dataset of the user's own, handed to the Python API, before a run starts.

mtsc's readers give items in the format of `dataset.py` with the label conventions of
`sample.py`. A dataset of one's own may not: an image that is not a float tensor, a target of
another size, labels past the classes, negative depth. Caught at the first step, or at the
first validation after a whole warm-up, such a slip costs the run and reads as a torch error
(`Target 9 is out of bounds`); some (depth that is never > 0) train nothing, silently. The
first item of each split is checked here instead, against its own `info`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mtsc.errors import MtscError
from mtsc.runtime.data.sample import TARGET_CHANNELS

_INFO_FIELDS = ("name", "tasks", "num_classes", "ignore_index")


def check_datasets(train_set: Any, val_set: Any, tasks: Sequence[str]) -> None:
    """`check_dataset` of a run's training and validation sets."""
    check_dataset(train_set, tasks, "training")
    check_dataset(val_set, tasks, "validation")


def check_dataset(dataset: Any, tasks: Sequence[str], role: str) -> None:
    """Raise MtscError unless `dataset` (the `role` split: "training", "validation") has an
    `info` naming every task of `tasks`, and its first item is `(image, targets)` with a
    float image `[C, H, W]` and a target of the image's size for each task, within the
    conventions of `sample.py`."""
    info = getattr(dataset, "info", None)
    if info is None or not all(hasattr(info, field) for field in _INFO_FIELDS):
        raise MtscError(
            None,
            f"the {role} set has no `info`: give it one, "
            "mtsc.runtime.data.DatasetInfo(name, tasks, num_classes), naming its tasks and "
            "classes (as open_dataset's datasets have)",
        )
    missing = [t for t in tasks if t not in info.tasks]
    if missing:
        raise MtscError(
            None,
            f"the {role} set has no targets for task(s) {', '.join(missing)}: its info names "
            f"{', '.join(info.tasks) or 'none'}; the model's tasks are {', '.join(tasks)}",
        )
    if len(dataset) == 0:
        raise MtscError(None, f"the {role} set is empty")
    item = dataset[0]
    where = f"the {role} set's item 0"
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise MtscError(
            None, f"{where} is a {type(item).__name__}; items must be (image, targets) pairs"
        )
    image, targets = item
    if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() != 3:
        raise MtscError(
            None,
            f"{where}: the image is {_described(image)}; it must be a float tensor [C, H, W], "
            "normalised as open_dataset's images are",
        )
    if not isinstance(targets, Mapping):
        raise MtscError(
            None, f"{where}: the targets are a {type(targets).__name__}; give a dict task -> target"
        )
    for task in tasks:
        _check_target(task, targets.get(task), tuple(image.shape[1:]), info, where)
    valid = targets.get("valid", {})
    if not isinstance(valid, Mapping):
        raise MtscError(
            None,
            f"{where}: targets['valid'] is a {type(valid).__name__}; give a dict task -> bool "
            "(or a per-pixel bool tensor)",
        )


def _check_target(task: str, target: Any, size: tuple[int, int], info: Any, where: str) -> None:
    if not isinstance(target, torch.Tensor):
        got = "no target" if target is None else f"a {type(target).__name__}"
        raise MtscError(None, f"{where}: {task} has {got}; its target must be a tensor")
    channels = 1 if task == "segment" else TARGET_CHANNELS.get(task)
    if channels is None:  # a task mtsc has no loss for: the model check names it
        return
    shape = tuple(target.shape)
    maps = [(channels, *size)] + ([size] if channels == 1 else [])
    if shape not in maps:
        expected = " or ".join("x".join(map(str, m)) for m in maps)
        raise MtscError(
            None,
            f"{where}: the {task} target is {'x'.join(map(str, shape))}; it must be "
            f"{expected}, a map of the image's size"
            + (" of class indices" if task == "segment" else ""),
        )
    if task == "segment":
        _check_labels(target, info, where)
    elif task == "depth" and bool((target < 0).any()):
        raise MtscError(
            None,
            f"{where}: depth has negative values (down to {float(target.min()):g}); depth "
            "counts where it is > 0 and 0 marks unknown, so standardised or negated depth "
            "would train nothing: give positive depth (or disparity)",
        )


def _check_labels(target: torch.Tensor, info: Any, where: str) -> None:
    labels = target[target != info.ignore_index]
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise MtscError(
            None, f"{where}: segment labels must be class indices; some are not whole numbers"
        )
    outside = labels[(labels < 0) | (labels >= info.num_classes)]
    if outside.numel():
        shown = ", ".join(f"{v:g}" for v in sorted(set(outside.double().tolist()))[:5])
        raise MtscError(
            None,
            f"{where}: segment labels {shown} are outside 0..{info.num_classes - 1} "
            f"(info.num_classes={info.num_classes}; unlabelled pixels take "
            f"info.ignore_index={info.ignore_index})",
        )


def _described(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
