"""The one sample format every dataset reader produces, whatever its files look like.

A `Sample` holds numpy arrays in mtsc's conventions:

- image: float32 [3, H, W], RGB in [0, 1] (normalised later, by the torch dataset);
- segment: int64 [H, W], classes 0..C-1, `IGNORE_INDEX` (255) where unlabelled;
- depth: float32 [1, H, W], > 0 where valid, 0 where unknown;
- normal: float32 [3, H, W], (x, y, z) with x pointing right in the image, zero vector
  where unknown.

`valid[task]` is False when the sample has no label file for that task at all; its target is
then filled with the "unknown" value above, so per-pixel masking already ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# The channels of the dense regression targets (segment's are class indices, one map).
TARGET_CHANNELS = {"depth": 1, "normal": 3}
IGNORE_INDEX = 255
# ImageNet statistics: what pretrained backbones expect.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# How depth reacts when a scale augmentation zooms in by s: metric depth shrinks (d / s),
# disparity (inverse depth, as in the CityScapes files of MTAN) grows (d * s).
DEPTH_KINDS = ("depth", "disparity")


@dataclass(frozen=True)
class DatasetInfo:
    """What a training loop needs to know about a dataset."""

    name: str
    tasks: tuple[str, ...]
    num_classes: int
    depth_kind: str = "depth"
    class_names: tuple[str, ...] | None = None
    ignore_index: int = IGNORE_INDEX


@dataclass
class Sample:
    image: np.ndarray
    targets: dict[str, np.ndarray]
    valid: dict[str, bool]


def unknown_target(task: str, height: int, width: int) -> np.ndarray:
    """The target of a sample that has no label for `task`: every pixel ignored."""
    if task == "segment":
        return np.full((height, width), IGNORE_INDEX, np.int64)
    return np.zeros((TARGET_CHANNELS[task], height, width), np.float32)


class SampleSource(Protocol):
    """Anything that reads samples by index: file layouts, in-memory `shapes` splits."""

    info: DatasetInfo
    description: str  # where the samples come from and how many, for logs

    def __len__(self) -> int: ...

    def read(self, index: int) -> Sample: ...
