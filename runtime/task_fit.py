"""Whether a model's tasks fit a dataset, checked before training: a head with too few
channels, a head that does not give the images' size, or a loss that cannot read the task's
targets would otherwise fail deep inside the loss (`Target 4 is out of bounds`), or train
silently on nonsense.

Torch-free: it reads the model's `TASK_SPECS`, the shapes its heads give at the data's image
size, and the dataset's `DatasetInfo`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtsc.errors import MtscError, Span
from mtsc.runtime.data.options import TASKS
from mtsc.runtime.data.sample import TARGET_CHANNELS, DatasetInfo
from mtsc.runtime.objectives import (
    SEGMENTATION_METRICS,
    TASK_LOSSES,
    TASK_METRICS,
    scored_classes,
)

# Where a task's parts are written in the model: "task", "head", "loss", "metric".
TaskLocations = Mapping[str, Span | None]


def check_heads_fit_data(
    task_specs: Mapping[str, Mapping[str, Any]],
    info: DatasetInfo,
    data: str,
    *,
    outputs: Mapping[str, tuple[int, ...]],
    image_size: tuple[int, int],
    locations: Mapping[str, TaskLocations] | None = None,
) -> None:
    """Raise MtscError for the first task that does not fit `data` (the dataset spec, for the
    message): one the data has no targets for; a loss or metric that cannot read its targets;
    a head output (`outputs`: per sample, at the data's `image_size`) that is not a map of
    the images' size with the channels the targets need: segment one per class (more are
    harmless: those classes never come up), depth 1, normal 3. `locations`: where each task's
    parts are written in the model, for the error."""
    locations = locations or {}
    for task, spec in task_specs.items():
        where = locations.get(task, {})
        if task not in info.tasks:
            hint = "" if task in TASKS else " (name the task after one of them)"
            raise MtscError(
                where.get("task"),
                f"task {task!r}: {data} has no targets for it; it provides "
                f"{', '.join(info.tasks)}{hint}",
            )
        if task not in TASKS:  # the data's own task: mtsc has no loss or metric for it
            raise MtscError(
                where.get("task"),
                f"task {task!r}: mtsc trains {', '.join(TASKS)} targets only; name the task, "
                "and its targets in the data, after the kind they are",
            )
        _check_objective(task, spec, "loss", TASK_LOSSES[task], data, where)
        _check_objective(task, spec, "metric", TASK_METRICS[task], data, where)
        _check_output(task, spec, outputs[task], info, data, image_size, where.get("head"))
        if task == "segment":
            _check_scored_classes(spec, outputs[task][0], info, data, where)


def _check_objective(
    task: str,
    spec: Mapping[str, Any],
    kind: str,
    fitting: tuple[str, ...],
    data: str,
    where: TaskLocations,
) -> None:
    given = spec.get(kind)
    if given is None or given[0] in fitting:
        return
    targets = {"segment": "class labels", "depth": "depth maps", "normal": "surface normals"}
    raise MtscError(
        where.get(kind) or where.get("task"),
        f"{task}: {kind}={given[0]} cannot read {targets[task]}, the {task} targets of {data}; "
        f"use {' or '.join(f'{kind}={name}' for name in fitting)}",
    )


def _check_output(
    task: str,
    spec: Mapping[str, Any],
    shape: tuple[int, ...],
    info: DatasetInfo,
    data: str,
    image_size: tuple[int, int],
    where: Span | None,
) -> None:
    height, width = image_size
    if len(shape) != 3 or shape[1:] != (height, width):
        gives = f"{shape[0]} features" if len(shape) == 1 else "x".join(map(str, shape))
        raise MtscError(
            where,
            f"{task}: the model's head gives {gives} on the {data} images ({height}x{width}); "
            f"{task} needs a map of the images' size (end the head with upsample(y, input))",
        )
    channels = shape[0]
    if task == "segment":
        if channels >= info.num_classes:
            return
        need, wanted = f"{data} has {info.num_classes} classes", info.num_classes
    else:
        wanted = TARGET_CHANNELS[task]
        if channels == wanted:
            return
        need = f"{task} on {data} needs {count_channels(wanted)}"
    classes = spec["head"][1].get("classes")
    if classes is None:
        hint = f"make the head give {count_channels(wanted)}"
    elif classes != channels:  # the head's block does not follow its option
        hint = f"its block ignores classes={classes}: make it give {count_channels(wanted)}"
    else:
        hint = f"set classes={wanted} in the tasks section"
    raise MtscError(
        where, f"{task}: the model's head gives {count_channels(channels)}, but {need} ({hint})"
    )


def _check_scored_classes(
    spec: Mapping[str, Any], channels: int, info: DatasetInfo, data: str, where: TaskLocations
) -> None:
    """The segmentation metric takes the argmax over exactly the channels it scores
    (`scored_classes`, as the trainer sets them)."""
    name, options = spec.get("metric") or (TASK_METRICS["segment"][0], {})
    if name not in SEGMENTATION_METRICS:
        return
    scored = scored_classes(options, spec["head"][1], info.num_classes)
    if scored == channels:
        return
    if "num_classes" in options:
        source = f"num_classes={scored}"
    elif "classes" in spec["head"][1]:
        source = f"the head's classes={scored}"
    else:
        source = f"the {scored} classes of {data}"
    raise MtscError(
        where.get("metric") or where.get("head"),
        f"segment: {name} scores {source}, but the head gives {count_channels(channels)} "
        f"(give the metric num_classes={channels}, or make the head give {scored})",
    )


def count_channels(n: int) -> str:
    return f"{n} channel" if n == 1 else f"{n} channels"
