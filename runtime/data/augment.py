"""Training augmentations of the field, applied to an image and all its labels alike.

Random scale-crop (after MTAN/LibMTL): pick s from `scales`, crop a window of (H/s, W/s) at
a random place and resize it back to (H, W). The image is resized bilinearly; labels take
the nearest pixel, so classes stay classes and unknown pixels stay unknown (MTAN resizes
normals bilinearly; nearest keeps them unit length). Zooming in by s brings the scene s
times closer, so metric depth is divided by s, as MTAN does, and disparity (inverse depth)
is multiplied by s. Then a horizontal flip with probability 1/2, which also negates the x
component of the normals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtsc.runtime.data.sample import DEPTH_KINDS

DEFAULT_SCALES = (1.0, 1.2, 1.5)


@dataclass(frozen=True)
class Augmentation:
    """One draw of the random choices, so that it can be applied (and tested) exactly."""

    scale: float
    top: int
    left: int
    flip: bool


def sample_augmentation(
    height: int,
    width: int,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> Augmentation:
    """Draw with torch's generator, so DataLoader workers get their own random streams."""
    scale = scales[int(torch.randint(len(scales), (1,), generator=generator))]
    crop_h, crop_w = crop_size(height, width, scale)
    top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
    left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
    flipped = flip and bool(torch.rand(1, generator=generator) < 0.5)
    return Augmentation(scale=scale, top=top, left=left, flip=flipped)


def crop_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(height / scale)), max(1, int(width / scale))


def nearest_indices(start: int, length: int, size: int) -> torch.Tensor:
    """Source index of each of `size` output pixels when `length` pixels are stretched."""
    return start + (torch.arange(size) * length) // size


def resize_labels(label: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling of [..., H, W] at the given source rows and columns."""
    return label[..., rows[:, None], cols[None, :]]


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a [3, H, W] image (antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    resized = F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )
    return resized[0]


def resize_sample(
    image: torch.Tensor, targets: dict[str, torch.Tensor], size: tuple[int, int]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Resize image and labels to `size`; depth values are kept (the camera does not move)."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image, targets
    rows = nearest_indices(0, height, size[0])
    cols = nearest_indices(0, width, size[1])
    labels = {task: resize_labels(t, rows, cols) for task, t in targets.items()}
    return resize_image(image, size), labels


def apply_augmentation(
    image: torch.Tensor,
    targets: dict[str, torch.Tensor],
    augmentation: Augmentation,
    depth_kind: str = "depth",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Apply one drawn augmentation to an image [3, H, W] and its targets."""
    if depth_kind not in DEPTH_KINDS:
        raise ValueError(f"depth_kind must be one of {DEPTH_KINDS}, got {depth_kind!r}")
    height, width = image.shape[-2:]
    targets = dict(targets)
    if augmentation.scale != 1.0:
        crop_h, crop_w = crop_size(height, width, augmentation.scale)
        top, left = augmentation.top, augmentation.left
        window = image[None, :, top : top + crop_h, left : left + crop_w]
        image = F.interpolate(window, size=(height, width), mode="bilinear", align_corners=True)[0]
        rows = nearest_indices(top, crop_h, height)
        cols = nearest_indices(left, crop_w, width)
        targets = {task: resize_labels(t, rows, cols) for task, t in targets.items()}
        if "depth" in targets:
            factor = augmentation.scale if depth_kind == "disparity" else 1 / augmentation.scale
            targets["depth"] = targets["depth"] * factor
    if augmentation.flip:
        image = image.flip(-1)
        targets = {task: t.flip(-1) for task, t in targets.items()}
        if "normal" in targets:
            sign = torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
            targets["normal"] = targets["normal"] * sign
    return image, targets
