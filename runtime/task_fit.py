"""Whether a model's task heads fit a dataset: checked before training, where a head with too
few channels would otherwise fail deep inside the loss (`Target 4 is out of bounds`).

Torch-free: it reads the model's `TASK_SPECS` and the dataset's `DatasetInfo`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtsc.errors import MtscError, Span
from mtsc.runtime.data.sample import TARGET_CHANNELS, DatasetInfo


def check_heads_fit_data(
    task_specs: Mapping[str, Mapping[str, Any]],
    info: DatasetInfo,
    data: str,
    *,
    locations: Mapping[str, Span | None] | None = None,
) -> None:
    """Raise MtscError for the first task whose head lacks the channels that `data` (the
    dataset spec, for the message) needs: segment one per class (more are harmless: those
    classes never come up), depth 1, normal 3. `locations`: each task's head in the model,
    where the error points."""
    locations = locations or {}
    for task, spec in task_specs.items():
        channels = spec["head"][1].get("classes")  # every built-in head has this option
        # Tasks the data lacks are named by the trainer; a custom head may not say `classes`.
        if task not in info.tasks or channels is None:
            continue
        if task == "segment" and channels < info.num_classes:
            need = f"{data} has {info.num_classes} classes"
            raise MtscError(
                locations.get(task), head_mismatch(task, channels, need, info.num_classes)
            )
        wanted = TARGET_CHANNELS.get(task)
        if wanted is not None and channels != wanted:
            need = f"{task} on {data} needs {count_channels(wanted)}"
            raise MtscError(locations.get(task), head_mismatch(task, channels, need, wanted))


def head_mismatch(task: str, channels: int, need: str, classes: int) -> str:
    return (
        f"{task}: the model's head gives {count_channels(channels)}, but {need} "
        f"(set classes={classes} in the tasks section)"
    )


def count_channels(n: int) -> str:
    return f"{n} channel" if n == 1 else f"{n} channels"
