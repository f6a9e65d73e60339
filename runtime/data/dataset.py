"""Torch datasets for every source, and `open_dataset`, the one entry point.

An item is `(image, targets)`:

- image: float32 [3, H, W], RGB normalised with ImageNet mean and std;
- targets["segment"]: int64 [H, W], 255 (`IGNORE_INDEX`) where unlabelled;
- targets["depth"]: float32 [1, H, W], 0 where unknown (for CityScapes: disparity);
- targets["normal"]: float32 [3, H, W], camera-frame unit vectors, 0 where unknown;
- targets["valid"]: {task: bool tensor}, False where the sample has no label file for the
  task (its target is then all "unknown"). The default collate turns these into [B] masks.

Only the tasks of the dataset (or those asked for) appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mtsc.errors import MtscError
from mtsc.runtime.data.augment import (
    DEFAULT_SCALES,
    apply_augmentation,
    resize_sample,
    sample_augmentation,
)
from mtsc.runtime.data.layouts import open_cityscapes, open_nyuv2
from mtsc.runtime.data.options import (
    chosen_tasks,
    ill_formed_options,
    kind_problems,
    size_pair,
    spec_kind,
)
from mtsc.runtime.data.sample import (
    IMAGE_MEAN,
    IMAGE_STD,
    DatasetInfo,
    Sample,
    SampleSource,
)
from mtsc.runtime.data.shapes import (
    SHAPES_CLASSES,
    ShapesConfig,
    check_split,
    load_split,
    read_split,
)

SPEC_FORMS = "shapes, shapes:DIR, nyuv2:PATH or cityscapes:PATH"


class ShapesArrays:
    """A `shapes` split held in memory (arrays as written by `shapes.render_split`)."""

    def __init__(self, arrays: dict[str, np.ndarray], tasks: tuple[str, ...], where: str):
        self.arrays = arrays
        self.description = f"shapes {where}: {len(arrays['image'])} samples"
        self.info = DatasetInfo(
            name="shapes",
            tasks=tasks,
            num_classes=len(SHAPES_CLASSES),
            depth_kind="depth",
            class_names=SHAPES_CLASSES,
        )

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def read(self, index: int) -> Sample:
        arrays = self.arrays
        labels = {
            "segment": arrays["segment"][index].astype(np.int64),
            "depth": arrays["depth"][index][None].copy(),  # items never share memory
            "normal": np.moveaxis(arrays["normal"][index], -1, 0),
        }
        return Sample(
            image=np.moveaxis(arrays["image"][index], -1, 0).astype(np.float32) / 255,
            targets={task: labels[task] for task in self.info.tasks},
            valid={task: True for task in self.info.tasks},
        )


class MultiTaskDataset(torch.utils.data.Dataset):
    """Turns a source's samples into normalised tensors, augmenting them if asked."""

    def __init__(
        self,
        source: SampleSource,
        *,
        augment: bool = False,
        scales: Sequence[float] = DEFAULT_SCALES,
        flip: bool = True,
        size: tuple[int, int] | None = None,
    ):
        self.source = source
        self.info: DatasetInfo = source.info
        self.augment = augment
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip
        self.size = size
        self._mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGE_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def description(self) -> str:
        """The source's description and what this dataset does to its samples, for logs."""
        steps = [f"resized to {self.size[0]}x{self.size[1]}"] if self.size else []
        if self.augment:
            scales = ", ".join(f"{s:g}" for s in self.scales)
            steps.append(f"augmented (scales {scales}{', flips' if self.flip else ''})")
        return "; ".join([self.source.description, *steps])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.source.read(index)
        image = torch.from_numpy(np.ascontiguousarray(sample.image))
        targets = {t: torch.from_numpy(np.ascontiguousarray(a)) for t, a in sample.targets.items()}
        if self.size is not None:
            image, targets = resize_sample(image, targets, self.size)
        if self.augment:
            draw = sample_augmentation(*image.shape[-2:], scales=self.scales, flip=self.flip)
            image, targets = apply_augmentation(image, targets, draw, self.info.depth_kind)
        targets["valid"] = {task: torch.tensor(ok) for task, ok in sample.valid.items()}
        return (image - self._mean) / self._std, targets


def denormalize_image(image: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of [..., 3, H, W] images: RGB in [0, 1]."""
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    return image * std + mean


def _parse_spec(spec: str) -> tuple[str, str]:
    kind, _, path = spec.partition(":")
    if spec_kind(spec) is None:  # the kinds the options know
        raise MtscError(None, f"unknown dataset {spec!r} (use {SPEC_FORMS})")
    if kind != "shapes" and not path:
        raise MtscError(None, f"{kind} needs a path: {kind}:PATH")
    return kind, path


def _open_shapes(path: str, split: str, options: dict) -> ShapesArrays:
    """A shapes split: rendered (and cached) from options, or read from an `mtsc data` DIR."""
    tasks = chosen_tasks("shapes", options.pop("tasks", None))
    if path:
        check_split(split)
        file = Path(path).expanduser() / f"{split}.npz"
        return ShapesArrays(read_split(file), tasks, str(file))
    height, width = size_pair(options.pop("size", 64))
    cache_dir = options.pop("cache_dir", None)
    config = ShapesConfig(height=height, width=width, **options)
    arrays = load_split(config, split, Path(cache_dir) if cache_dir else None)
    return ShapesArrays(arrays, tasks, f"(rendered, {height}x{width}) [{split}]")


def open_dataset(spec: str, split: str, **options) -> MultiTaskDataset:
    """Open a dataset by spec: `shapes`, `shapes:DIR`, `nyuv2:PATH` or `cityscapes:PATH`.

    Options for all: tasks (default: all of the dataset's), augment (default: True for the
    real datasets' "train" split, False otherwise), scales, flip. For `shapes`: size (render
    resolution, int or (H, W)), objects, seed, n_train, n_val, n_test, cache_dir. For
    `nyuv2`/`cityscapes`: size (resize every sample to (H, W)); `cityscapes` also takes
    classes (2, 7 or 19).
    """
    kind, path = _parse_spec(spec)
    problems = ill_formed_options(options) + kind_problems(spec_kind(spec), options)
    if problems:
        raise MtscError(None, "; ".join(message for _, message in problems))
    options = dict(options)
    augment = options.pop("augment", None)
    scales = options.pop("scales", DEFAULT_SCALES)
    flip = options.pop("flip", True)
    resize = None
    if kind == "shapes":
        source = _open_shapes(path, split, options)
    else:
        if "size" in options:
            resize = size_pair(options.pop("size"))
        tasks = options.pop("tasks", None)
        if kind == "nyuv2":
            source = open_nyuv2(Path(path), split, tasks)
        else:
            source = open_cityscapes(Path(path), split, tasks, options.pop("classes", None))
    if augment is None:
        augment = kind != "shapes" and split == "train"
    return MultiTaskDataset(source, augment=augment, scales=scales, flip=flip, size=resize)
