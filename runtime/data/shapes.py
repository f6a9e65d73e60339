"""The built-in `shapes` benchmark: rendered splits, deterministic from a seed, cached on disk.

Image i of a split depends only on (seed, split, i): it has its own random generator, so a
split of 100 images is the first 100 of a split of 2,000, and rendering in chunks changes
nothing. A split is stored as one `.npz` (no pickles) holding

- `image` uint8 [N, H, W, 3] (sRGB-like, light Gaussian noise, quantised like a camera),
- `segment` uint8 [N, H, W]: 0 background (nothing hit), 1 ground, then one class per
  primitive kind, see `SHAPES_CLASSES` (colour is random, so never a cue to the class),
- `depth` float32 [N, H, W]: distance along the optical axis; > 0 exactly where a surface
  was hit, 0 on background,
- `normal` float32 [N, H, W, 3]: unit surface normal in the camera frame (x right, y down,
  z forward, as in OpenCV), facing the camera; 0 on background,
- the scene parameters (`scene_*`, world frame, see `scene.py`) and `params`, the JSON
  of what the split depends on.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mtsc.errors import MtscError
from mtsc.runtime.data.options import (
    SHAPES_MAX_COUNT,
    SHAPES_MAX_OBJECTS,
    SHAPES_MAX_SEED,
    SHAPES_MAX_SIZE,
    SHAPES_MIN_SIZE,
)
from mtsc.runtime.data.render import render
from mtsc.runtime.data.scene import PRIMITIVES, camera_intrinsics, sample_scene, stack_scenes

SHAPES_CLASSES = ("background", "ground", *PRIMITIVES)
SPLITS = ("train", "val", "test")
RENDERER_VERSION = 1  # bump whenever rendering changes, so old caches are not reused
IMAGE_NOISE = 0.02
CHUNK = 128  # images rendered at once; bounds memory, does not change results
ARRAY_KEYS = (
    "image",
    "segment",
    "depth",
    "normal",
    "scene_rotation",
    "scene_ground_height",
    "scene_ground_normal",
    "scene_kind",
    "scene_center",
    "scene_size",
    "scene_yaw",
    "scene_color",
)


@dataclass(frozen=True)
class ShapesConfig:
    """Everything a `shapes` split depends on."""

    height: int = 64
    width: int = 64
    objects: int = 4  # each image has between 1 and `objects` primitives
    seed: int = 0
    n_train: int = 2000
    n_val: int = 500
    n_test: int = 500

    def count(self, split: str) -> int:
        check_split(split)
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    def intrinsics(self) -> tuple[float, float, float]:
        """(focal length in pixels, cx, cy) of the pinhole camera."""
        return camera_intrinsics(self.height, self.width)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise MtscError(None, f"shapes has no split {split!r} (choose one of {', '.join(SPLITS)})")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MtscError(
            None, f"shapes: {name} must be an integer in [{low}, {high}], got {value!r}"
        )


def validate_config(config: ShapesConfig) -> ShapesConfig:
    _check_int("height", config.height, SHAPES_MIN_SIZE, SHAPES_MAX_SIZE)
    _check_int("width", config.width, SHAPES_MIN_SIZE, SHAPES_MAX_SIZE)
    _check_int("objects", config.objects, 1, SHAPES_MAX_OBJECTS)
    _check_int("seed", config.seed, 0, SHAPES_MAX_SEED)
    for split in SPLITS:
        _check_int(f"n_{split}", config.count(split), 0, SHAPES_MAX_COUNT)
    return config


def _split_params(config: ShapesConfig, split: str) -> dict:
    """What one split's pixels depend on; its JSON names the cache file."""
    return {
        "version": RENDERER_VERSION,
        "height": config.height,
        "width": config.width,
        "objects": config.objects,
        "seed": config.seed,
        "split": split,
        "count": config.count(split),
    }


def render_split(config: ShapesConfig, split: str) -> dict[str, np.ndarray]:
    """Render one split from scratch (no cache)."""
    count = config.count(split)
    split_id = SPLITS.index(split)
    height, width = config.height, config.width
    chunks = []
    for start in range(0, count, CHUNK):
        scenes, noise = [], []
        for index in range(start, min(start + CHUNK, count)):
            rng = np.random.default_rng([config.seed, split_id, index])
            scenes.append(sample_scene(rng, height, width, config.objects))
            noise.append(rng.normal(0.0, IMAGE_NOISE, size=(height, width, 3)))
        batch = stack_scenes(scenes)
        out = render(batch, height, width)
        image = np.clip(out["image"] + np.stack(noise), 0.0, 1.0)
        # The ground normal is (0, -1, 0) in the world; in the camera frame it is R^T of that.
        ground_normal = -batch.rotation[:, 1, :]
        chunks.append(
            {
                "image": np.round(image * 255).astype(np.uint8),
                "segment": out["segment"],
                "depth": out["depth"],
                "normal": out["normal"],
                "scene_rotation": batch.rotation,
                "scene_ground_height": batch.ground_height,
                "scene_ground_normal": ground_normal,
                "scene_kind": batch.kind.astype(np.int8),
                "scene_center": batch.center,
                "scene_size": batch.size,
                "scene_yaw": batch.yaw,
                "scene_color": batch.color,
            }
        )
    if chunks:
        arrays = {key: np.concatenate([c[key] for c in chunks]) for key in ARRAY_KEYS}
    else:
        arrays = _empty_split(config)
    arrays["params"] = np.array(json.dumps(_split_params(config, split), sort_keys=True))
    return arrays


def _empty_split(config: ShapesConfig) -> dict[str, np.ndarray]:
    """Arrays of the right shapes and dtypes for a split of no images."""
    h, w, k = config.height, config.width, config.objects
    return {
        "image": np.zeros((0, h, w, 3), np.uint8),
        "segment": np.zeros((0, h, w), np.uint8),
        "depth": np.zeros((0, h, w), np.float32),
        "normal": np.zeros((0, h, w, 3), np.float32),
        "scene_rotation": np.zeros((0, 3, 3)),
        "scene_ground_height": np.zeros(0),
        "scene_ground_normal": np.zeros((0, 3)),
        "scene_kind": np.zeros((0, k), np.int8),
        "scene_center": np.zeros((0, k, 3)),
        "scene_size": np.zeros((0, k, 3)),
        "scene_yaw": np.zeros((0, k)),
        "scene_color": np.zeros((0, k, 3)),
    }


def default_cache_dir() -> Path:
    """`$MTSC_CACHE` if set, else `~/.cache/mtsc`."""
    return Path(os.environ.get("MTSC_CACHE") or Path.home() / ".cache" / "mtsc")


def cache_path(config: ShapesConfig, split: str, cache_dir: Path | None = None) -> Path:
    key = json.dumps(_split_params(config, split), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (cache_dir or default_cache_dir()) / f"shapes-{digest}.npz"


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Stream into a temporary file in the same folder, then rename it over `path`, so a
    reader never sees a half-written file (arrays are too big to build in memory first)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = temp.open("xb")
    except OSError as err:
        raise MtscError(None, f"cannot write to {path.parent}: {err.strerror or err}") from None
    try:
        with stream:
            write(stream)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def save_split(path: Path, arrays: dict[str, np.ndarray]) -> None:
    _write_atomically(path, lambda stream: np.savez(stream, **arrays))


def read_split(path: Path) -> dict[str, np.ndarray]:
    """A split written by `save_split`; MtscError if the file is missing or not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in (*ARRAY_KEYS, "params")}
    except FileNotFoundError:
        raise MtscError(None, f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise MtscError(None, f"{path}: not a shapes split file ({err})") from None
    return arrays


def _cached(path: Path, config: ShapesConfig, split: str) -> dict[str, np.ndarray] | None:
    """The cached split if the file exists, reads, and holds exactly these parameters."""
    if not path.exists():
        return None
    try:
        arrays = read_split(path)
    except MtscError:
        return None  # a damaged cache file is rendered again and replaced
    if json.loads(str(arrays["params"])) != _split_params(config, split):
        return None
    return arrays


def load_split(
    config: ShapesConfig, split: str, cache_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """One split, rendered on first use and read from the cache afterwards."""
    validate_config(config)
    check_split(split)
    path = cache_path(config, split, cache_dir)
    arrays = _cached(path, config, split)
    if arrays is None:
        arrays = render_split(config, split)
        save_split(path, arrays)
    return arrays


def write_dataset(config: ShapesConfig, out_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Render every split to `out_dir/<split>.npz` with a `shapes.json` that describes them.

    The folder is the user's own copy, so the cache is neither read nor filled.
    """
    validate_config(config)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MtscError(None, f"{out_dir} exists and is not a directory")
    splits = {}
    for split in SPLITS:
        splits[split] = render_split(config, split)
        save_split(out_dir / f"{split}.npz", splits[split])
    focal, cx, cy = config.intrinsics()
    description = {
        "dataset": "shapes",
        "config": asdict(config),
        "renderer_version": RENDERER_VERSION,
        "classes": list(SHAPES_CLASSES),
        "intrinsics": {"focal": focal, "cx": cx, "cy": cy},
        "camera_frame": "x right, y down, z forward (OpenCV)",
        "splits": {split: f"{split}.npz" for split in SPLITS},
    }
    text = json.dumps(description, indent=2) + "\n"
    _write_atomically(out_dir / "shapes.json", lambda stream: stream.write(text.encode()))
    return splits
