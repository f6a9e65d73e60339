"""Read one file of a dataset and bring it to mtsc's conventions (see `sample.py`).

Both channel orders are accepted where the field uses both: HWC (what MTAN/LibMTL store:
image (288, 384, 3), depth (288, 384, 1), normal (288, 384, 3)) and CHW. Every mistake names
the file and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtsc.errors import MtscError
from mtsc.runtime.data.png import read_png
from mtsc.runtime.data.sample import IGNORE_INDEX

# Unlabelled pixels in the files: -1 in MTAN/LibMTL and AdaShare's CityScapes, 255 in
# AdaShare's NYUv2 PNGs.
FILE_IGNORE_VALUES = (-1, 255)
RANGE_TOLERANCE = 1e-3


def read_array(path: Path) -> np.ndarray:
    """The array stored in a .npy or 8-bit PNG file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise MtscError(None, f"{path}: no such file")
    if suffix == ".png":
        return read_png(path)
    if suffix in (".jpg", ".jpeg"):
        raise MtscError(
            None,
            f"{path}: JPEG images are not supported (mtsc has no JPEG decoder); "
            "convert them to PNG or .npy",
        )
    if suffix != ".npy":
        raise MtscError(None, f"{path}: unsupported file type {suffix!r} (expected .npy or .png)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise MtscError(None, f"{path}: not a readable .npy array ({err})") from None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _channels_first(array: np.ndarray, channels: int, path: Path, what: str) -> np.ndarray:
    """[C, H, W] from HWC, CHW or (for one channel) HW."""
    if channels == 1 and array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[-1] == channels:
        return np.moveaxis(array, -1, 0)
    if array.ndim == 3 and array.shape[0] == channels:
        return array
    expected = f"(H, W, {channels}) or ({channels}, H, W)"
    if channels == 1:
        expected = f"(H, W), {expected}"
    raise MtscError(
        None, f"{path}: {what} has shape {_shape_text(array.shape)}, expected {expected}"
    )


def _check_size(array: np.ndarray, size: tuple[int, int] | None, path: Path, what: str) -> None:
    if size is not None and tuple(array.shape[-2:]) != tuple(size):
        raise MtscError(
            None,
            f"{path}: {what} is {array.shape[-2]}x{array.shape[-1]} "
            f"but the image is {size[0]}x{size[1]}",
        )


def image_chw(array: np.ndarray, path: Path) -> np.ndarray:
    """float32 [3, H, W] in [0, 1] from uint8 (0..255) or float (0..1) RGB."""
    image = _channels_first(array, 3, path, "image")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    if not np.issubdtype(image.dtype, np.floating):
        raise MtscError(None, f"{path}: image has dtype {image.dtype}, expected uint8 or float")
    image = image.astype(np.float32)
    low, high = float(image.min(initial=0.0)), float(image.max(initial=0.0))
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE or not np.isfinite(image).all():
        raise MtscError(
            None, f"{path}: float image values must lie in [0, 1], found [{low:g}, {high:g}]"
        )
    return np.clip(image, 0.0, 1.0)


def segment_map(
    array: np.ndarray, num_classes: int, path: Path, size: tuple[int, int] | None
) -> np.ndarray:
    """int64 [H, W] classes, with the files' ignore values mapped to IGNORE_INDEX."""
    labels = _channels_first(array, 1, path, "segmentation label")[0]
    _check_size(labels, size, path, "segmentation label")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise MtscError(None, f"{path}: segmentation labels must be whole numbers")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise MtscError(None, f"{path}: segmentation label has dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    ignored = np.isin(labels, FILE_IGNORE_VALUES)
    wrong = ~ignored & ((labels < 0) | (labels >= num_classes))
    if wrong.any():
        raise MtscError(
            None,
            f"{path}: label {int(labels[wrong][0])} is outside 0..{num_classes - 1} "
            f"({num_classes} classes; -1 and 255 mean unlabelled)",
        )
    return np.where(ignored, IGNORE_INDEX, labels)


def depth_map(array: np.ndarray, path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """float32 [1, H, W]; anything not finite and positive becomes 0 (unknown)."""
    depth = _channels_first(array, 1, path, "depth").astype(np.float32)
    _check_size(depth, size, path, "depth")
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0))


def normal_map(array: np.ndarray, path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """float32 [3, H, W] normals; unknown pixels are zero vectors.

    Float files hold components in [-1, 1] with zero vectors where unknown (MTAN). 8-bit
    files (AdaShare's PNGs) map each channel c to c / 255 * 2 - 1 in the file's RGB order;
    their unknown pixels are white (255, 255, 255) or mid grey, so a pixel is kept only if
    its decoded vector has length within 0.5 of 1, and is then renormalised.
    """
    normal = _channels_first(array, 3, path, "normal")
    _check_size(normal, size, path, "normal")
    if normal.dtype == np.uint8:
        vectors = normal.astype(np.float32) / 255 * 2 - 1
        length = np.linalg.norm(vectors, axis=0, keepdims=True)
        keep = np.abs(length - 1) < 0.5
        return np.where(keep, vectors / np.maximum(length, 1e-6), np.float32(0.0))
    if not np.issubdtype(normal.dtype, np.floating):
        raise MtscError(None, f"{path}: normal has dtype {normal.dtype}, expected float or uint8")
    normal = normal.astype(np.float32)
    finite = np.isfinite(normal).all(axis=0, keepdims=True)
    normal = np.where(finite, normal, np.float32(0.0))
    if np.abs(normal).max(initial=0.0) > 1 + RANGE_TOLERANCE:
        raise MtscError(None, f"{path}: normal components must lie in [-1, 1]")
    return normal
