"""Pictures of samples: image | segmentation | depth | normals, side by side, as uint8 RGB.

Colour maps are computed here in numpy (no plotting library). Unknown pixels are black in
every label panel.
"""

from __future__ import annotations

import numpy as np

from mtsc.runtime.data.sample import IGNORE_INDEX

# Distinct colours for the first classes; class 0 is a dark grey, so black stays "unknown".
SEGMENT_PALETTE = np.array(
    [
        (70, 70, 70),
        (150, 150, 150),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
        (170, 255, 195),
        (128, 128, 0),
        (255, 215, 180),
    ],
    np.uint8,
)
# Far to near: dark blue through teal and green to yellow.
DEPTH_RAMP = np.array(
    [(48, 18, 90), (52, 90, 140), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64
)
GAP = 2


def segment_colors(segment: np.ndarray) -> np.ndarray:
    """[H, W] classes -> [H, W, 3]; classes past the palette get hashed colours."""
    segment = segment.astype(np.int64)
    extra = (segment[..., None] * np.array([97, 57, 151]) + np.array([13, 101, 47])) % 256
    colors = np.where(
        (segment < len(SEGMENT_PALETTE))[..., None],
        SEGMENT_PALETTE[np.clip(segment, 0, len(SEGMENT_PALETTE) - 1)],
        extra,
    )
    colors[segment == IGNORE_INDEX] = 0
    return colors.astype(np.uint8)


def depth_colors(depth: np.ndarray) -> np.ndarray:
    """[H, W] depth (0 = unknown) -> [H, W, 3]; near is bright, log-scaled per picture."""
    valid = depth > 0
    if not valid.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    # Log depth, so near objects keep their contrast next to a far horizon.
    log_depth = np.log(np.where(valid, depth, 1.0))
    low, high = log_depth[valid].min(), log_depth[valid].max()
    nearness = (high - log_depth) / max(high - low, 1e-6)
    position = np.clip(nearness, 0.0, 1.0) * (len(DEPTH_RAMP) - 1)
    below = np.minimum(np.floor(position).astype(int), len(DEPTH_RAMP) - 2)
    fraction = (position - below)[..., None]
    colors = DEPTH_RAMP[below] * (1 - fraction) + DEPTH_RAMP[below + 1] * fraction
    colors[~valid] = 0
    return np.round(colors).astype(np.uint8)


def normal_colors(normal: np.ndarray) -> np.ndarray:
    """[H, W, 3] unit normals -> RGB = (n + 1) / 2; zero vectors (unknown) are black."""
    colors = np.round((np.clip(normal, -1.0, 1.0) + 1) / 2 * 255)
    colors[~np.any(normal != 0, axis=-1)] = 0
    return colors.astype(np.uint8)


def image_colors(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB, uint8 or float in [0, 1] -> uint8."""
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def sample_panels(
    image: np.ndarray, segment: np.ndarray, depth: np.ndarray, normal: np.ndarray
) -> list[np.ndarray]:
    """The four panels of one sample, all channels-last."""
    return [
        image_colors(image),
        segment_colors(segment),
        depth_colors(depth),
        normal_colors(normal),
    ]


def grid(rows: list[list[np.ndarray]], zoom: int = 1) -> np.ndarray:
    """Tile same-sized [h, w, 3] panels into one picture with white gaps, zoomed by pixels."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    cell_h, cell_w = height * zoom, width * zoom
    canvas = np.full(
        (len(rows) * (cell_h + GAP) + GAP, columns * (cell_w + GAP) + GAP, 3), 255, np.uint8
    )
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            y, x = GAP + r * (cell_h + GAP), GAP + c * (cell_w + GAP)
            canvas[y : y + cell_h, x : x + cell_w] = panel.repeat(zoom, 0).repeat(zoom, 1)
    return canvas


def shapes_preview(
    arrays: dict[str, np.ndarray], count: int = 6, min_size: int = 160
) -> np.ndarray:
    """A grid of the first `count` samples of a shapes split, zoomed to about `min_size` px."""
    count = min(count, len(arrays["image"]))
    if count == 0:
        return np.full((2 * GAP + 1, 2 * GAP + 1, 3), 255, np.uint8)
    zoom = max(1, -(-min_size // max(arrays["image"].shape[1:3])))
    rows = [
        sample_panels(
            arrays["image"][i], arrays["segment"][i], arrays["depth"][i], arrays["normal"][i]
        )
        for i in range(count)
    ]
    return grid(rows, zoom)
