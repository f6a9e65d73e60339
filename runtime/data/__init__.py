"""Datasets: the built-in `shapes` benchmark and readers for NYUv2 and CityScapes.

`open_dataset(spec, split, **options)` is the entry point (see `dataset.py` for the item
format and the options; `sample.py` for the label conventions; `layouts.py` for the file
layouts understood; `shapes.py` for the benchmark). The torch-free parts (`shapes`,
`render`, `png`, `preview`) can be used without importing torch: the names below that need
torch are imported on first use.
"""

from __future__ import annotations

import importlib

from mtsc.runtime.data.options import TASKS
from mtsc.runtime.data.sample import IGNORE_INDEX, IMAGE_MEAN, IMAGE_STD, DatasetInfo

# Public names living in modules that import torch, loaded lazily (PEP 562).
_TORCH_NAMES = {
    "open_dataset": "mtsc.runtime.data.dataset",
    "MultiTaskDataset": "mtsc.runtime.data.dataset",
    "denormalize_image": "mtsc.runtime.data.dataset",
    "Augmentation": "mtsc.runtime.data.augment",
    "apply_augmentation": "mtsc.runtime.data.augment",
    "sample_augmentation": "mtsc.runtime.data.augment",
}

__all__ = ["IGNORE_INDEX", "IMAGE_MEAN", "IMAGE_STD", "TASKS", "DatasetInfo", *_TORCH_NAMES]


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
