"""Vectorised ray casting of `shapes` scenes: colour image and exact per-pixel labels.

Every function works on whole batches of rays (`[..., 3]` arrays) at once; the only Python
loops run over object slots and primitive kinds. One ray per pixel centre, so every label
describes exactly the surface that coloured the pixel.
"""

from __future__ import annotations

import numpy as np

from mtsc.runtime.data.scene import (
    BOX,
    CONE,
    CYLINDER,
    EMPTY_SLOT,
    MAX_DEPTH,
    SPHERE,
    TEXTURE_CELLS,
    Scenes,
    camera_rays,
)

BACKGROUND_CLASS = 0
GROUND_CLASS = 1
FIRST_OBJECT_CLASS = 2  # class of primitive kind k is FIRST_OBJECT_CLASS + k
EPSILON = 1e-6
SHADOW_OFFSET = 1e-3  # shadow rays start this far off the surface to miss it


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.broadcast_arrays(a, b)
    return np.einsum("...i,...i->...", a, b)


def _rotate_y(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate vectors [..., 3] about the vertical axis by `angle` [...]."""
    c, s = np.cos(angle), np.sin(angle)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([c * x + s * z, y, c * z - s * x], axis=-1)


def _safe(x: np.ndarray) -> np.ndarray:
    """Avoid dividing by exact zeros; the resulting huge t values are rejected later."""
    return np.where(np.abs(x) < 1e-12, 1e-12, x)


def _closest(candidates: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The nearest valid hit among candidates (t with inf for a miss, normal)."""
    ts = np.stack([t for t, _ in candidates])
    normals = np.stack([n for _, n in candidates])
    best = np.argmin(ts, axis=0)
    t = np.take_along_axis(ts, best[None], axis=0)[0]
    normal = np.take_along_axis(normals, best[None, ..., None], axis=0)[0]
    return t, normal


def _quadratic_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    """Roots of a t^2 + 2 b t + c = 0 (nan where there are none)."""
    disc = b * b - a * c
    root = np.sqrt(np.where(disc >= 0, disc, np.nan))
    a = _safe(a)
    return (-b - root) / a, (-b + root) / a


def _valid(t: np.ndarray, condition: np.ndarray) -> np.ndarray:
    return np.where(condition & (t > EPSILON), t, np.inf)


def _point(origin: np.ndarray, direction: np.ndarray, t: np.ndarray) -> np.ndarray:
    finite = np.where(np.isfinite(t), t, 0.0)
    return origin + finite[..., None] * direction


def _hit_sphere(
    origin: np.ndarray, direction: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    radius = size[..., 0]
    oc = origin - center
    candidates = []
    for t in _quadratic_roots(
        _dot(direction, direction), _dot(oc, direction), _dot(oc, oc) - radius**2
    ):
        t = _valid(t, np.isfinite(t))
        normal = (_point(origin, direction, t) - center) / radius[..., None]
        candidates.append((t, normal))
    return _closest(candidates)


def _hit_box(
    origin: np.ndarray, direction: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    local_o = _rotate_y(origin - center, -yaw)
    local_d = _safe(_rotate_y(direction, -yaw))
    t1 = (-size - local_o) / local_d
    t2 = (size - local_o) / local_d
    t_enter = np.max(np.minimum(t1, t2), axis=-1)
    t_exit = np.min(np.maximum(t1, t2), axis=-1)
    t = np.where(t_enter > EPSILON, t_enter, t_exit)
    t = _valid(t, t_exit >= t_enter)
    local_p = _point(local_o, local_d, t)
    # The face hit is the axis along which the point reaches the box's extent.
    axis = np.argmax(np.abs(local_p) / size, axis=-1)
    face = np.eye(3)[axis] * np.sign(np.take_along_axis(local_p, axis[..., None], axis=-1))
    return t, _rotate_y(face, yaw)


def _hit_cylinder(
    origin: np.ndarray, direction: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    radius, half_height = size[..., 0], size[..., 1]
    o = origin - center
    flat_d = direction * np.array([1.0, 0.0, 1.0])
    flat_o = o * np.array([1.0, 0.0, 1.0])
    candidates = []
    for t in _quadratic_roots(
        _dot(flat_d, flat_d), _dot(flat_o, flat_d), _dot(flat_o, flat_o) - radius**2
    ):
        y = o[..., 1] + np.nan_to_num(t) * direction[..., 1]
        t = _valid(t, np.isfinite(t) & (np.abs(y) <= half_height))
        normal = (_point(flat_o, flat_d, t)) / radius[..., None]
        candidates.append((t, normal))
    for sign in (-1.0, 1.0):
        t = (sign * half_height - o[..., 1]) / _safe(direction[..., 1])
        p = _point(flat_o, flat_d, t)
        t = _valid(t, _dot(p, p) <= radius**2)
        normal = np.zeros_like(p) + np.array([0.0, sign, 0.0])
        candidates.append((t, normal))
    return _closest(candidates)


def _hit_cone(
    origin: np.ndarray, direction: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    radius, cone_height = size[..., 0], size[..., 1]
    apex = center - np.stack(
        [np.zeros_like(cone_height), cone_height, np.zeros_like(cone_height)], -1
    )
    o = origin - apex
    k2 = (radius / cone_height) ** 2
    # x^2 + z^2 = k^2 y^2 with y measured down from the apex.
    weight = np.stack([np.ones_like(k2), -k2, np.ones_like(k2)], axis=-1)
    candidates = []
    for t in _quadratic_roots(
        _dot(direction * weight, direction), _dot(o * weight, direction), _dot(o * weight, o)
    ):
        y = o[..., 1] + np.nan_to_num(t) * direction[..., 1]
        t = _valid(t, np.isfinite(t) & (y >= 0) & (y <= cone_height))
        p = _point(o, direction, t)
        gradient = p * weight
        normal = gradient / np.maximum(np.linalg.norm(gradient, axis=-1, keepdims=True), 1e-12)
        candidates.append((t, normal))
    t = (cone_height - o[..., 1]) / _safe(direction[..., 1])
    p = _point(o, direction, t) * np.array([1.0, 0.0, 1.0])
    t = _valid(t, _dot(p, p) <= radius**2)
    candidates.append((t, np.zeros_like(p) + np.array([0.0, 1.0, 0.0])))
    return _closest(candidates)


# Every hit function takes (origin, direction, center, size, yaw) for M rays ([M, 3] / [M])
# and returns (t [M], inf for a miss; outward world normal [M, 3]).
_HIT_FUNCTIONS = {SPHERE: _hit_sphere, BOX: _hit_box, CYLINDER: _hit_cylinder, CONE: _hit_cone}


def _bounding_spheres(scenes: Scenes) -> tuple[np.ndarray, np.ndarray]:
    """A sphere around every object ([B, K, 3] centres, [B, K] radii), for cheap culling."""
    size = scenes.size
    half_height = np.where(scenes.kind == CONE, size[..., 1] / 2, size[..., 1])
    center = scenes.center.copy()
    center[..., 1] -= np.where(scenes.kind == CONE, half_height, 0.0)
    radius = np.sqrt(size[..., 0] ** 2 + half_height**2 + size[..., 2] ** 2)
    return center, radius


def _nearest_object_hits(
    scenes: Scenes, origin: np.ndarray, direction: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest object along the active rays of every scene.

    origin and direction broadcast to [B, P, 3] (a per-scene [B, 1, 3] costs nothing to
    broadcast); active [B, P] picks the rays to trace. Returns t [B, P] (inf: no hit), world
    normal [B, P, 3] and the slot hit [B, P] (-1: none). Each slot first culls rays against
    its objects' bounding spheres with dense broadcasting, then runs the exact test on the few
    rays left.
    """
    batch, pixels = active.shape
    full_shape = (batch, pixels, 3)
    best_t = np.full(batch * pixels, np.inf)
    best_normal = np.zeros((batch * pixels, 3))
    best_slot = np.full(batch * pixels, -1)
    origin_full = np.broadcast_to(origin, full_shape).reshape(-1, 3)
    direction_full = np.broadcast_to(direction, full_shape).reshape(-1, 3)
    # Culling runs in float32 with spheres grown a little, so rounding never culls a hit.
    bound_center, bound_radius = _bounding_spheres(scenes)
    bound_center = bound_center.astype(np.float32)
    bound_radius = (bound_radius * 1.01 + 1e-3).astype(np.float32)
    origin32, direction32 = origin.astype(np.float32), direction.astype(np.float32)
    # (o - c).d and |o - c|^2 expanded, so a slot costs two small matmuls and a few
    # elementwise ops on [B, P].
    o_dot_d = _dot(origin32, direction32)
    o_dot_o = _dot(origin32, origin32)
    d_dot_d = _dot(direction32, direction32)
    for slot in range(scenes.kind.shape[1]):
        center = bound_center[:, slot, :, None]  # [B, 3, 1]
        b = o_dot_d - np.matmul(direction32, center)[..., 0]
        c_dot_c = np.sum(bound_center[:, slot] ** 2, axis=-1)[:, None]
        oc_sq = o_dot_o - 2 * np.matmul(origin32, center)[..., 0] + c_dot_c
        oc_sq -= bound_radius[:, slot, None] ** 2
        meets_line = b * b >= d_dot_d * oc_sq
        # The far intersection is ahead when the sphere's centre is ahead or o is inside.
        ahead = (b < 0) | (oc_sq < 0)
        occupied = (scenes.kind[:, slot] != EMPTY_SLOT)[:, None]
        rays = np.flatnonzero(active & occupied & meets_line & ahead)
        owner = rays // pixels
        for kind, hit in _HIT_FUNCTIONS.items():
            pick = scenes.kind[owner, slot] == kind
            if not pick.any():
                continue
            chosen, image = rays[pick], owner[pick]
            t, normal = hit(
                origin_full[chosen],
                direction_full[chosen],
                scenes.center[image, slot],
                scenes.size[image, slot],
                scenes.yaw[image, slot],
            )
            closer = t < best_t[chosen]
            updated = chosen[closer]
            best_t[updated] = t[closer]
            best_normal[updated] = normal[closer]
            best_slot[updated] = slot
    best_t = best_t.reshape(batch, pixels)
    best_normal = best_normal.reshape(full_shape)
    best_slot = best_slot.reshape(batch, pixels)
    return best_t, best_normal, best_slot


def _ground_albedo(scenes: Scenes, point: np.ndarray) -> np.ndarray:
    """Checkerboard mixed with bilinear value noise, in world x/z, for points [B, P, 3]."""
    # float32 is plenty for texture coordinates and twice as fast as float64 here.
    x, z = point[..., 0].astype(np.float32), point[..., 2].astype(np.float32)
    cell = scenes.checker_size[:, None].astype(np.float32)
    checker = (np.floor(x / cell) + np.floor(z / cell)) % 2
    gx, gz = np.mod(x * 2, TEXTURE_CELLS), np.mod(z * 2, TEXTURE_CELLS)
    x0, z0 = gx.astype(np.int32), gz.astype(np.int32)
    fx, fz = gx - x0, gz - z0
    x0, z0 = x0 % TEXTURE_CELLS, z0 % TEXTURE_CELLS
    x1, z1 = (x0 + 1) % TEXTURE_CELLS, (z0 + 1) % TEXTURE_CELLS
    # Flat indices into the [B, T, T] texture: one np.take per corner.
    base = (np.arange(point.shape[0]) * TEXTURE_CELLS * TEXTURE_CELLS)[:, None]
    tex = scenes.texture.astype(np.float32).reshape(-1)
    row0, row1 = base + z0 * TEXTURE_CELLS, base + z1 * TEXTURE_CELLS
    noise = (
        np.take(tex, row0 + x0) * (1 - fx) * (1 - fz)
        + np.take(tex, row0 + x1) * fx * (1 - fz)
        + np.take(tex, row1 + x0) * (1 - fx) * fz
        + np.take(tex, row1 + x1) * fx * fz
    )
    mix = scenes.texture_mix[:, None]
    value = ((1 - mix) * checker + mix * noise)[..., None]
    colors = scenes.ground_colors[:, None]
    return colors[..., 0, :] * (1 - value) + colors[..., 1, :] * value


def render(scenes: Scenes, height: int, width: int) -> dict[str, np.ndarray]:
    """Render a batch of B scenes.

    Returns image float64 [B,H,W,3] in [0, 1], segment uint8 [B,H,W], depth float32 [B,H,W]
    (0 where nothing is hit) and normal float32 [B,H,W,3] (camera frame, 0 where nothing).
    """
    batch = scenes.kind.shape[0]
    rays_cam = camera_rays(height, width)
    # World ray directions d_w = R d_c, [B, P, 3].
    rays = np.matmul(rays_cam[None], scenes.rotation.transpose(0, 2, 1))
    everywhere = np.ones(rays.shape[:2], bool)

    t_obj, normal, slot = _nearest_object_hits(scenes, np.zeros((1, 1, 3)), rays, everywhere)
    t_ground = scenes.ground_height[:, None] / _safe(rays[..., 1])
    ground_hit = (rays[..., 1] > 0) & (t_ground <= MAX_DEPTH) & (t_ground < t_obj)
    object_hit = np.isfinite(t_obj) & ~ground_hit
    surface = ground_hit | object_hit
    # The camera ray has unit z in the camera frame, so t is the depth along the optical axis.
    depth = np.where(ground_hit, t_ground, np.where(object_hit, t_obj, 0.0))
    normal[ground_hit] = (0.0, -1.0, 0.0)
    normal[~surface] = 0.0

    kind = np.take_along_axis(scenes.kind, np.maximum(slot, 0), axis=1)
    segment = np.where(object_hit, FIRST_OBJECT_CLASS + kind, BACKGROUND_CLASS)
    segment[ground_hit] = GROUND_CLASS

    point = rays * depth[..., None]
    object_color = np.take_along_axis(scenes.color, np.maximum(slot, 0)[..., None], axis=1)
    albedo = np.where(ground_hit[..., None], _ground_albedo(scenes, point), object_color)

    light = scenes.light[:, None, :]
    lambert = np.maximum(_dot(normal, light), 0.0)
    t_shadow, _, _ = _nearest_object_hits(
        scenes, point + SHADOW_OFFSET * normal, light, lambert > 0
    )
    lambert[np.isfinite(t_shadow)] = 0.0
    ambient = scenes.ambient[:, None]
    shaded = albedo * (ambient + (1 - ambient) * lambert)[..., None]

    row = np.repeat(np.arange(height) / max(height - 1, 1), width)[None, :, None]
    sky = scenes.sky_colors[:, None, 0] * (1 - row) + scenes.sky_colors[:, None, 1] * row
    color = np.where(surface[..., None], shaded, sky)

    # Labels go to the camera frame: n_c = R^T n_w.
    normal_cam = np.matmul(normal, scenes.rotation)
    frame = (batch, height, width)
    return {
        "image": np.clip(color, 0.0, 1.0).reshape(*frame, 3),
        "segment": segment.astype(np.uint8).reshape(frame),
        "depth": depth.astype(np.float32).reshape(frame),
        "normal": normal_cam.astype(np.float32).reshape(*frame, 3),
    }
