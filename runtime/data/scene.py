"""Random scenes for the `shapes` benchmark: camera, ground, primitives, light, colours.

World frame: x right, y down (gravity is +y), z forward. The camera sits at the origin,
pitched down and slightly rolled; the ground is the plane y = `ground_height`. Camera
frame (the frame of depth and normal labels): x right, y down, z along the optical axis,
as in OpenCV. `rotation` maps camera vectors to world vectors.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

PRIMITIVES = ("sphere", "box", "cylinder", "cone")
SPHERE, BOX, CYLINDER, CONE = range(len(PRIMITIVES))
EMPTY_SLOT = -1
HORIZONTAL_FOV_DEGREES = 60.0
MAX_DEPTH = 25.0  # ground farther than this along the optical axis counts as background
TEXTURE_CELLS = 16  # side of the random value-noise grid that textures the ground


@dataclass(frozen=True)
class Scenes:
    """A batch of B scenes with room for K objects each (unused slots have kind EMPTY_SLOT).

    Object `size` per kind: sphere (r, r, r); box half extents (x, y, z); cylinder
    (radius, half height, radius); cone (base radius, height, base radius). `center` is the
    centre of the sphere, box or cylinder, and the centre of the cone's base.
    """

    rotation: np.ndarray  # [B, 3, 3] camera to world
    ground_height: np.ndarray  # [B]
    kind: np.ndarray  # [B, K] int
    center: np.ndarray  # [B, K, 3]
    size: np.ndarray  # [B, K, 3]
    yaw: np.ndarray  # [B, K] rotation of boxes about the vertical axis
    color: np.ndarray  # [B, K, 3] albedo in [0, 1]
    light: np.ndarray  # [B, 3] unit vector towards the light
    ambient: np.ndarray  # [B]
    ground_colors: np.ndarray  # [B, 2, 3]
    checker_size: np.ndarray  # [B]
    texture: np.ndarray  # [B, TEXTURE_CELLS, TEXTURE_CELLS] value noise in [0, 1]
    texture_mix: np.ndarray  # [B] weight of the noise against the checkerboard
    sky_colors: np.ndarray  # [B, 2, 3] top and horizon colours


def camera_intrinsics(height: int, width: int) -> tuple[float, float, float]:
    """(focal length in pixels, cx, cy); pixel (v, u) looks through (u + 0.5, v + 0.5)."""
    focal = 0.5 * width / math.tan(math.radians(HORIZONTAL_FOV_DEGREES) / 2)
    return focal, width / 2, height / 2


def camera_rays(height: int, width: int) -> np.ndarray:
    """[H*W, 3] camera-frame ray directions with z = 1, so a hit at ray parameter t has depth t."""
    focal, cx, cy = camera_intrinsics(height, width)
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    rays = np.stack([(u - cx) / focal, (v - cy) / focal, np.ones_like(u)], axis=-1)
    return rays.reshape(-1, 3)


def camera_rotation(pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation: roll about the optical axis, then pitch the axis down."""
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    pitch_down = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    roll_z = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return pitch_down @ roll_z


def _random_color(rng: np.random.Generator, saturation: tuple[float, float]) -> np.ndarray:
    hue = rng.uniform(0.0, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(0.35, 1.0)))


def _ground_point(
    rng: np.random.Generator, rotation: np.ndarray, ground_height: float, height: int, width: int
) -> np.ndarray:
    """A world point on the ground that shows in the lower part of the image, not too far."""
    focal, cx, cy = camera_intrinsics(height, width)
    while True:
        u = rng.uniform(0.1, 0.9) * width
        v = rng.uniform(0.5, 0.95) * height
        ray = rotation @ np.array([(u - cx) / focal, (v - cy) / focal, 1.0])
        if ray[1] > 1e-6:
            t = ground_height / ray[1]
            if 2.0 < t < 0.45 * MAX_DEPTH:
                return t * ray


def _object_size(rng: np.random.Generator, kind: int) -> np.ndarray:
    if kind == SPHERE:
        return np.full(3, rng.uniform(0.3, 0.7))
    if kind == BOX:
        return rng.uniform(0.25, 0.6, size=3)
    if kind == CYLINDER:
        radius = rng.uniform(0.2, 0.5)
        return np.array([radius, rng.uniform(0.3, 0.8), radius])
    radius = rng.uniform(0.3, 0.6)
    return np.array([radius, rng.uniform(0.6, 1.5), radius])


def _resting_center(kind: int, ground: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Lift the object from its ground contact point so that it stands on the ground."""
    if kind == CONE:
        return ground.copy()
    return ground - np.array([0.0, size[1], 0.0])


def sample_scene(rng: np.random.Generator, height: int, width: int, max_objects: int) -> dict:
    """One scene's parameters (arrays without the batch axis); `stack_scenes` batches them."""
    rotation = camera_rotation(math.radians(rng.uniform(12, 35)), math.radians(rng.uniform(-6, 6)))
    ground_height = rng.uniform(1.3, 2.2)
    count = int(rng.integers(1, max_objects + 1))
    kind = np.full(max_objects, EMPTY_SLOT)
    center = np.zeros((max_objects, 3))
    size = np.ones((max_objects, 3))
    yaw = np.zeros(max_objects)
    color = np.zeros((max_objects, 3))
    for slot in range(count):
        kind[slot] = rng.integers(len(PRIMITIVES))
        size[slot] = _object_size(rng, kind[slot])
        ground = _ground_point(rng, rotation, ground_height, height, width)
        center[slot] = _resting_center(kind[slot], ground, size[slot])
        yaw[slot] = rng.uniform(0, math.pi / 2)
        # Colour is drawn independently of the kind: class must be learnt from shape.
        color[slot] = _random_color(rng, (0.2, 1.0))
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = math.radians(rng.uniform(25, 70))
    light = np.array(
        [
            math.cos(elevation) * math.cos(azimuth),
            -math.sin(elevation),
            math.cos(elevation) * math.sin(azimuth),
        ]
    )
    return {
        "rotation": rotation,
        "ground_height": ground_height,
        "kind": kind,
        "center": center,
        "size": size,
        "yaw": yaw,
        "color": color,
        "light": light,
        "ambient": rng.uniform(0.25, 0.45),
        "ground_colors": np.stack([_random_color(rng, (0.0, 0.6)) for _ in range(2)]),
        "checker_size": rng.uniform(0.3, 1.2),
        "texture": rng.uniform(0.0, 1.0, size=(TEXTURE_CELLS, TEXTURE_CELLS)),
        "texture_mix": rng.uniform(0.2, 0.8),
        "sky_colors": np.stack([_random_color(rng, (0.0, 0.4)) * 0.3 + 0.6 for _ in range(2)]),
    }


def stack_scenes(scenes: list[dict]) -> Scenes:
    return Scenes(**{name: np.stack([s[name] for s in scenes]) for name in scenes[0]})
