"""The `shapes` benchmark, the PNG codec, the preview and `mtsc data shapes`."""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mtsc.commands import data as data_command
from mtsc.errors import MtscError
from mtsc.runtime.data import IGNORE_INDEX, open_dataset
from mtsc.runtime.data import shapes as shapes_module
from mtsc.runtime.data.dataset import denormalize_image
from mtsc.runtime.data.png import decode_png, encode_png, read_png
from mtsc.runtime.data.preview import depth_colors, grid, normal_colors, segment_colors
from mtsc.runtime.data.scene import camera_intrinsics
from mtsc.runtime.data.shapes import (
    SHAPES_CLASSES,
    ShapesConfig,
    cache_path,
    default_cache_dir,
    load_split,
    read_split,
    render_split,
    validate_config,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = ShapesConfig(height=24, width=32, objects=3, seed=7, n_train=6, n_val=4, n_test=2)


@pytest.fixture(scope="module")
def val_split() -> dict[str, np.ndarray]:
    return render_split(ShapesConfig(height=40, width=40, objects=4, seed=3, n_val=40), "val")


# --- PNG -------------------------------------------------------------------------------------


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _png_with_filters(pixels: np.ndarray, filters: list[int]) -> bytes:
    """Encode with a chosen filter per row, straight from the PNG specification."""
    channels = 1 if pixels.ndim == 2 else 3
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width, channels).astype(np.int64)
    raw = b""
    for r, kind in enumerate(filters):
        x = rows[r]
        a = np.concatenate([np.zeros((1, channels), np.int64), x[:-1]])
        b = rows[r - 1] if r else np.zeros_like(x)
        c = np.concatenate([np.zeros((1, channels), np.int64), b[:-1]])
        prediction = [np.zeros_like(x), a, b, (a + b) // 2, _paeth(a, b, c)][kind]
        raw += bytes([kind]) + ((x - prediction) % 256).astype(np.uint8).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    compressed = zlib.compress(raw)
    # Two IDAT chunks, as encoders may split the stream.
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", compressed[:10])
        + chunk(b"IDAT", compressed[10:])
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("shape", [(7, 9), (6, 11, 3)])
def test_png_decodes_every_filter_type(shape):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    filters = [int(f) for f in rng.integers(0, 5, size=shape[0])]
    filters[:5] = [4, 3, 1, 2, 0]  # every type at least once
    assert np.array_equal(decode_png(_png_with_filters(pixels, filters)), pixels)
    # Only None/Sub/Up rows take the row-by-row path.
    simple = [f % 3 for f in filters]
    assert np.array_equal(decode_png(_png_with_filters(pixels, simple)), pixels)


@pytest.mark.parametrize("shape", [(5, 8), (4, 3, 3), (1, 1)])
def test_png_round_trip(tmp_path, shape):
    pixels = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(pixels))
    assert np.array_equal(read_png(path), pixels)


def _header_png(depth: int, color_type: int, interlace: int = 0) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 2, 2, depth, color_type, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 9))


@pytest.mark.parametrize(
    "png, message",
    [
        (_header_png(16, 0), "unsupported PNG (16-bit grey)"),
        (_header_png(8, 3), "unsupported PNG (8-bit palette)"),
        (_header_png(8, 6), "unsupported PNG (8-bit RGBA)"),
        (_header_png(8, 2, interlace=1), "unsupported PNG (8-bit RGB, interlaced)"),
        (b"GIF89a....", "not a PNG file (bad signature)"),
        (encode_png(np.zeros((2, 2), np.uint8))[:30], "truncated PNG"),
    ],
    ids=["16-bit", "palette", "rgba", "interlaced", "signature", "truncated"],
)
def test_png_errors_say_what_is_wrong(png, message):
    with pytest.raises(MtscError) as err:
        decode_png(png, "x.png")
    assert err.value.message.startswith(f"x.png: {message}")


def test_png_bad_crc_is_reported():
    png = bytearray(encode_png(np.zeros((2, 2), np.uint8)))
    png[20] ^= 0xFF  # inside the IHDR payload
    with pytest.raises(MtscError, match="bad CRC in IHDR"):
        decode_png(bytes(png), "x.png")


def _png_from_raw(raw: bytes, width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not zlib", "x.png: corrupt PNG image data"),
        (zlib.compress(b"\0" * 5), "x.png: corrupt PNG (image data has the wrong length)"),
        (zlib.compress(b"\0\0\0\x07\0\0"), "x.png: corrupt PNG (unknown row filter 7)"),
    ],
    ids=["zlib", "length", "filter"],
)
def test_png_corrupt_image_data(raw, message):
    with pytest.raises(MtscError) as err:
        decode_png(_png_from_raw(raw), "x.png")
    assert err.value.message.startswith(message)


def test_png_encoder_rejects_wrong_arrays():
    with pytest.raises(ValueError, match="must be uint8"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"must be \[H, W\] or \[H, W, 3\]"):
        encode_png(np.zeros((2, 2, 4), np.uint8))


# --- rendering ------------------------------------------------------------------------------


def test_splits_are_deterministic_and_seeded():
    first = render_split(SMALL, "train")
    again = render_split(SMALL, "train")
    for key in first:
        assert np.array_equal(first[key], again[key]), key
    other_seed = render_split(ShapesConfig(**{**SMALL.__dict__, "seed": 8}), "train")
    assert not np.array_equal(first["image"], other_seed["image"])
    assert not np.array_equal(first["depth"], other_seed["depth"])
    # Splits differ from each other, and a shorter split is a prefix of a longer one.
    assert not np.array_equal(first["image"][:4], render_split(SMALL, "val")["image"])
    shorter = render_split(ShapesConfig(**{**SMALL.__dict__, "n_train": 3}), "train")
    assert np.array_equal(shorter["image"], first["image"][:3])
    assert np.array_equal(shorter["normal"], first["normal"][:3])


def test_arrays_have_the_documented_shapes_and_types(val_split):
    n = 40
    assert val_split["image"].shape == (n, 40, 40, 3) and val_split["image"].dtype == np.uint8
    assert val_split["segment"].shape == (n, 40, 40) and val_split["segment"].dtype == np.uint8
    assert val_split["depth"].shape == (n, 40, 40) and val_split["depth"].dtype == np.float32
    assert val_split["normal"].shape == (n, 40, 40, 3)
    assert val_split["normal"].dtype == np.float32
    assert json.loads(str(val_split["params"]))["count"] == n


def test_depth_is_positive_exactly_where_a_surface_is_hit(val_split):
    segment, depth = val_split["segment"], val_split["depth"]
    assert np.array_equal(depth > 0, segment > 0)
    assert np.all(depth[segment == 0] == 0)
    assert 0 <= segment.min() and segment.max() < len(SHAPES_CLASSES)
    # Every class shows up somewhere in 40 images.
    assert set(np.unique(segment)) == set(range(len(SHAPES_CLASSES)))


def test_normals_are_unit_on_surfaces_and_face_the_camera(val_split):
    normal, hit = val_split["normal"].astype(np.float64), val_split["depth"] > 0
    assert np.allclose(np.linalg.norm(normal[hit], axis=-1), 1.0, atol=1e-5)
    assert np.all(normal[~hit] == 0)
    height, width = val_split["depth"].shape[1:]
    rays = _camera_rays(height, width)
    facing = np.einsum("nhwc,hwc->nhw", normal, rays)
    assert np.all(facing[hit] <= 1e-6)


def _camera_rays(height: int, width: int) -> np.ndarray:
    """Pixel rays with unit z, computed from the documented intrinsics."""
    focal, cx, cy = camera_intrinsics(height, width)
    v, u = np.mgrid[0:height, 0:width] + 0.5
    return np.stack([(u - cx) / focal, (v - cy) / focal, np.ones_like(u)], axis=-1)


def test_ground_pixels_lie_on_the_ground_plane_with_its_normal(val_split):
    height, width = val_split["depth"].shape[1:]
    rays = _camera_rays(height, width)
    for i in range(len(val_split["depth"])):
        ground = val_split["segment"][i] == 1
        points = rays[ground] * val_split["depth"][i][ground, None]
        world = points @ val_split["scene_rotation"][i].T
        assert np.allclose(world[:, 1], val_split["scene_ground_height"][i], atol=1e-4)
        plane_normal = val_split["scene_ground_normal"][i]
        assert np.allclose(val_split["normal"][i][ground], plane_normal, atol=1e-6)
        # The plane normal points up (world -y) and is a unit vector.
        rotation = val_split["scene_rotation"][i]
        assert np.allclose(rotation @ plane_normal, [0.0, -1.0, 0.0], atol=1e-9)


def _rotate_y(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[:, 0] + s * v[:, 2], v[:, 1], c * v[:, 2] - s * v[:, 0]], axis=-1)


def _surface_residual_and_normal(kind, p, center, size, yaw):
    """Signed-distance style residual (0 on the surface) and outward normal, per point."""
    if kind == 0:  # sphere
        offset = p - center
        return np.linalg.norm(offset, axis=1) - size[0], offset / size[0]
    if kind == 1:  # box
        local = _rotate_y(p - center, -yaw)
        q = np.abs(local) - size
        residual = np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
        axis = np.argmax(np.abs(local) / size, axis=1)
        face = np.eye(3)[axis] * np.sign(local[np.arange(len(p)), axis])[:, None]
        return residual, _rotate_y(face, yaw)
    radial = (p - center) * [1.0, 0.0, 1.0]
    rho = np.linalg.norm(radial, axis=1)
    if kind == 2:  # cylinder
        d = np.stack([rho - size[0], np.abs(p[:, 1] - center[1]) - size[1]], axis=1)
        residual = np.minimum(d.max(axis=1), 0) + np.linalg.norm(np.maximum(d, 0), axis=1)
        on_cap = np.abs(d[:, 1]) < 1e-4
        cap = np.stack([0 * rho, np.sign(p[:, 1] - center[1]), 0 * rho], axis=1)
        return residual, np.where(on_cap[:, None], cap, radial / rho[:, None])
    # cone: apex above the base centre; the side is the cross product of two tangents
    apex = center - [0.0, size[1], 0.0]
    below_apex = p[:, 1] - apex[1]
    residual = rho - size[0] * below_apex / size[1]
    around = np.stack([-radial[:, 2], 0 * rho, radial[:, 0]], axis=1)
    normal = np.cross(around, p - apex)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    normal *= np.sign(np.sum(normal * radial, axis=1))[:, None]
    return residual, normal


def test_object_pixels_lie_on_their_objects_with_their_normals(val_split):
    """An independent check of the ray casting: back-project every object pixel with its
    depth and compare with implicit surface equations of the scene's objects."""
    height, width = val_split["depth"].shape[1:]
    rays = _camera_rays(height, width)
    checked = 0
    for i in range(len(val_split["depth"])):
        rotation = val_split["scene_rotation"][i]
        for kind in range(4):
            mask = val_split["segment"][i] == 2 + kind
            if not mask.any():
                continue
            world = (rays[mask] * val_split["depth"][i][mask, None]) @ rotation.T
            normals = val_split["normal"][i][mask] @ rotation.T
            best = np.full(len(world), np.inf)
            best_normal = np.zeros_like(world)
            for slot in np.nonzero(val_split["scene_kind"][i] == kind)[0]:
                residual, normal = _surface_residual_and_normal(
                    kind,
                    world,
                    val_split["scene_center"][i, slot],
                    val_split["scene_size"][i, slot],
                    val_split["scene_yaw"][i, slot],
                )
                closer = np.abs(residual) < best
                best = np.where(closer, np.abs(residual), best)
                best_normal[closer] = normal[closer]
            assert best.max() < 1e-4, (i, kind, best.max())
            assert np.allclose(normals, best_normal, atol=1e-3), (i, kind)
            checked += mask.sum()
    assert checked > 1000


def test_object_colour_does_not_tell_the_class():
    config = ShapesConfig(height=8, width=8, objects=4, seed=11, n_train=200)
    arrays = render_split(config, "train")
    kinds, colors = arrays["scene_kind"], arrays["scene_color"]
    overall = colors[kinds >= 0].mean(axis=0)
    for kind in range(4):
        assert np.abs(colors[kinds == kind].mean(axis=0) - overall).max() < 0.08


# --- cache ----------------------------------------------------------------------------------


def test_cache_hit_returns_identical_arrays_without_rendering(tmp_path, monkeypatch):
    calls = []
    real_render = shapes_module.render_split

    def counting_render(config, split):
        calls.append(split)
        return real_render(config, split)

    monkeypatch.setattr(shapes_module, "render_split", counting_render)
    first = load_split(SMALL, "val", tmp_path)
    second = load_split(SMALL, "val", tmp_path)
    assert calls == ["val"]
    assert set(first) == set(second)
    for key in first:
        assert np.array_equal(first[key], second[key]), key
    path = cache_path(SMALL, "val", tmp_path)
    assert path.name.startswith("shapes-") and path.suffix == ".npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary files
    # Other parameters get another file.
    assert cache_path(ShapesConfig(**{**SMALL.__dict__, "seed": 1}), "val", tmp_path) != path


def test_a_damaged_cache_file_is_rendered_again(tmp_path):
    path = cache_path(SMALL, "test", tmp_path)
    path.write_bytes(b"not a zip file")
    arrays = load_split(SMALL, "test", tmp_path)
    assert np.array_equal(arrays["image"], render_split(SMALL, "test")["image"])
    assert np.array_equal(read_split(path)["depth"], arrays["depth"])


def test_cache_folder_comes_from_mtsc_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTSC_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    load_split(SMALL, "test")
    assert cache_path(SMALL, "test").parent == tmp_path / "c"
    assert cache_path(SMALL, "test").is_file()
    monkeypatch.delenv("MTSC_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mtsc"


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_savez(stream, **arrays):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(shapes_module.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        load_split(SMALL, "test", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MtscError, match=r"cannot write to .*file"):
        load_split(SMALL, "test", blocker / "cache")


def test_read_split_errors(tmp_path):
    with pytest.raises(MtscError, match=r"missing\.npz: no such file"):
        read_split(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros(1))
    with pytest.raises(MtscError, match=r"bad\.npz: not a shapes split file"):
        read_split(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"height": 4}, "height must be an integer in [8, 1024], got 4"),
        ({"width": 2000}, "width must be an integer in [8, 1024], got 2000"),
        ({"objects": 0}, "objects must be an integer in [1, 16], got 0"),
        ({"n_train": -1}, "n_train must be an integer in [0, 10000000], got -1"),
        ({"seed": -3}, "seed must be an integer in [0, 9223372036854775807], got -3"),
        ({"n_val": 2.5}, "n_val must be an integer"),
    ],
)
def test_bad_parameters_are_user_errors(change, message):
    with pytest.raises(MtscError) as err:
        validate_config(ShapesConfig(**{**SMALL.__dict__, **change}))
    assert message in err.value.message


def test_empty_split_has_the_right_shapes():
    arrays = render_split(ShapesConfig(height=16, width=8, n_test=0), "test")
    assert arrays["image"].shape == (0, 16, 8, 3)
    assert arrays["normal"].shape == (0, 16, 8, 3)


# --- torch dataset --------------------------------------------------------------------------


def test_shapes_dataset_items(tmp_path):
    ds = open_dataset(
        "shapes", "val", size=(24, 32), objects=3, seed=7, n_val=4, cache_dir=tmp_path
    )
    assert len(ds) == 4 and ds.info.num_classes == len(SHAPES_CLASSES)
    assert ds.info.class_names == SHAPES_CLASSES and not ds.augment
    image, targets = ds[1]
    assert image.shape == (3, 24, 32) and image.dtype == torch.float32
    assert targets["segment"].shape == (24, 32) and targets["segment"].dtype == torch.int64
    assert targets["depth"].shape == (1, 24, 32) and targets["depth"].dtype == torch.float32
    assert targets["normal"].shape == (3, 24, 32) and targets["normal"].dtype == torch.float32
    assert all(bool(v) for v in targets["valid"].values())
    arrays = render_split(SMALL, "val")
    expected_image = np.moveaxis(arrays["image"][1], -1, 0) / 255
    assert np.allclose(denormalize_image(image).numpy(), expected_image, atol=1e-5)
    # The image is normalised: far from [0, 1] statistics.
    assert image.min() < -0.5
    assert np.array_equal(targets["segment"].numpy(), arrays["segment"][1])
    assert np.array_equal(targets["depth"][0].numpy(), arrays["depth"][1])
    assert np.array_equal(targets["normal"].numpy(), np.moveaxis(arrays["normal"][1], -1, 0))
    assert (targets["segment"] != IGNORE_INDEX).all()
    # Items are copies: changing one in place leaves the dataset as it was.
    for task in ("segment", "depth", "normal"):
        targets[task].zero_()
    again = ds[1][1]
    assert np.array_equal(again["depth"][0].numpy(), arrays["depth"][1])
    assert np.array_equal(again["normal"].numpy(), np.moveaxis(arrays["normal"][1], -1, 0))


def test_shapes_dataset_task_subset_and_errors(tmp_path):
    ds = open_dataset("shapes", "test", size=24, tasks=["depth"], n_test=2, cache_dir=tmp_path)
    _, targets = ds[0]
    assert set(targets) == {"depth", "valid"} and set(targets["valid"]) == {"depth"}
    with pytest.raises(MtscError, match="shapes has no split 'dev'"):
        open_dataset("shapes", "dev", cache_dir=tmp_path)
    with pytest.raises(MtscError, match="shapes has no task 'edges'"):
        open_dataset("shapes", "val", tasks=("edges",))
    with pytest.raises(MtscError, match="size must be a positive integer or a"):
        open_dataset("shapes", "val", size=(1, 2, 3))
    with pytest.raises(IndexError):
        ds[2]


def test_open_dataset_spec_errors():
    with pytest.raises(MtscError, match=r"unknown dataset 'kitti:/x' \(use shapes, shapes:DIR"):
        open_dataset("kitti:/x", "train")
    with pytest.raises(MtscError, match="nyuv2 needs a path: nyuv2:PATH"):
        open_dataset("nyuv2", "train")
    with pytest.raises(MtscError, match="scales must be a list of numbers >= 1"):
        open_dataset("shapes", "val", scales=(0.5,))


# --- preview and the command ----------------------------------------------------------------


def test_colour_maps():
    segment = np.array([[0, 1, IGNORE_INDEX, 300]])
    colors = segment_colors(segment)
    assert colors.shape == (1, 4, 3) and colors.dtype == np.uint8
    assert np.all(colors[0, 2] == 0) and len({tuple(c) for c in colors[0]}) == 4
    depth = np.array([[0.0, 1.0, 2.0, 4.0]])
    depth_rgb = depth_colors(depth).astype(int)
    assert np.all(depth_rgb[0, 0] == 0)
    brightness = depth_rgb[0, 1:].sum(axis=1)
    assert brightness[0] > brightness[1] > brightness[2]  # near is bright
    normals = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]])
    assert normal_colors(normals).tolist() == [[[0, 0, 0], [255, 128, 128], [128, 128, 0]]]
    picture = grid([[np.zeros((2, 3, 3), np.uint8)] * 2] * 3, zoom=2)
    assert picture.shape == (3 * (4 + 2) + 2, 2 * (6 + 2) + 2, 3)


def _shapes_args(out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    data_command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["data", "shapes", "--out", str(out), *extra])


def test_data_shapes_command_writes_dataset_and_preview(tmp_path, capsys):
    preview = tmp_path / "grid.png"
    args = _shapes_args(
        tmp_path / "out",
        *("--n-train", "5", "--n-val", "2", "--n-test", "1", "--size", "16"),
        *("--objects", "2", "--seed", "3", "--preview", str(preview)),
    )
    assert data_command.run(args) == 0
    assert "wrote 5 train, 2 val, 1 test images (16x16)" in capsys.readouterr().out
    description = json.loads((tmp_path / "out" / "shapes.json").read_text())
    assert description["classes"] == list(SHAPES_CLASSES)
    assert description["config"]["seed"] == 3
    train = read_split(tmp_path / "out" / "train.npz")
    config = ShapesConfig(height=16, width=16, objects=2, seed=3, n_train=5)
    assert np.array_equal(train["image"], render_split(config, "train")["image"])
    assert preview.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    picture = read_png(preview)
    assert picture.ndim == 3 and picture.shape[1] > 4 * 16  # four panels side by side
    ds = open_dataset(f"shapes:{tmp_path / 'out'}", "val")
    assert len(ds) == 2 and ds[0][0].shape == (3, 16, 16)
    with pytest.raises(MtscError) as err:
        open_dataset(f"shapes:{tmp_path / 'out'}", "val", seed=1)
    assert err.value.message == (
        "shapes:DIR: unknown option 'seed' (accepted: augment, flip, scales, tasks)"
    )
    # what the listing names is accepted
    ds = open_dataset(
        f"shapes:{tmp_path / 'out'}",
        "val",
        augment=False,
        flip=False,
        scales=[1.0],
        tasks=["depth"],
    )
    assert set(ds[0][1]) == {"depth", "valid"}


def test_an_unknown_shapes_option_lists_every_option_shapes_takes(tmp_path):
    with pytest.raises(MtscError) as err:
        open_dataset("shapes", "val", colour=1)
    assert err.value.message == (
        "shapes: unknown option 'colour' (accepted: augment, cache_dir, flip, n_test, n_train, "
        "n_val, objects, scales, seed, size, tasks)"
    )
    ds = open_dataset(
        "shapes",
        "test",
        n_test=1,
        size=16,
        cache_dir=tmp_path,
        augment=True,
        flip=False,
        scales=[1.0, 1.5],
        tasks=["segment"],
    )
    assert ds.augment and set(ds[0][1]) == {"segment", "valid"}


def test_data_shapes_command_user_errors(tmp_path):
    for flag, value, message in [
        ("--size", "2", "--size must be in [8, 1024], got 2"),
        ("--n-val", "-1", "--n-val must be in [0, 10000000], got -1"),
        ("--objects", "0", "--objects must be in [1, 16], got 0"),
    ]:
        with pytest.raises(MtscError) as err:
            data_command.run(_shapes_args(tmp_path / "o", flag, value))
        assert err.value.message == message
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MtscError, match=r"cannot write to .*file: it is a file, not a folder"):
        data_command.run(_shapes_args(blocker, "--n-train", "1"))
    with pytest.raises(MtscError, match=r"cannot write to .*file"):
        data_command.run(_shapes_args(blocker / "sub", "--n-train", "1", "--size", "8"))
    with pytest.raises(MtscError, match=r"cannot write .*p.png: .*file is a file, not a folder"):
        data_command.run(_shapes_args(tmp_path / "o", "--preview", str(blocker / "p.png")))


def test_the_preview_may_go_into_the_new_output_folder(tmp_path, capsys):
    out = tmp_path / "new"
    counts = ("--n-train", "2", "--n-val", "0", "--n-test", "0", "--size", "8")
    data_command.run(_shapes_args(out, *counts, "--preview", str(out / "pictures/p.png")))
    assert (out / "pictures/p.png").read_bytes().startswith(b"\x89PNG")
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote preview {out / 'pictures/p.png'}"


def test_preview_that_cannot_be_written(tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    counts = ("--n-train", "1", "--n-val", "0", "--n-test", "0")
    args = _shapes_args(tmp_path / "o", *counts, "--size", "8", "--preview", str(folder))
    with pytest.raises(MtscError) as err:
        data_command.run(args)
    assert err.value.message.startswith(f"cannot write {folder}: ")


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-folder"])
def test_a_preview_that_fails_to_write_takes_the_new_dataset_with_it(
    tmp_path, monkeypatch, existing
):
    """A preview path the checks let through but the write refuses (as root, /proc/x.png):
    neither the dataset nor the preview's new folder stays behind."""
    from mtsc import fsutil

    out, preview = tmp_path / "o", tmp_path / "pictures" / "p.png"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    real = fsutil.write_atomic

    def refuse_png(path, data):
        if Path(path).suffix == ".png":
            raise MtscError(None, f"cannot write {path}: No such file or directory")
        real(path, data)

    monkeypatch.setattr(fsutil, "write_atomic", refuse_png)
    counts = ("--n-train", "2", "--n-val", "1", "--n-test", "0", "--size", "8")
    with pytest.raises(MtscError, match="cannot write .*p.png"):
        data_command.run(_shapes_args(out, *counts, "--preview", str(preview)))
    assert sorted(p.name for p in tmp_path.iterdir()) == (["o"] if existing else [])
    if existing:
        assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_unknown_data_command():
    with pytest.raises(MtscError) as err:
        data_command.run(argparse.Namespace(dataset="kitti"))
    assert err.value.message == "unknown dataset command 'kitti'"


def test_data_command_module_does_not_import_torch():
    code = "import sys, mtsc.commands.data, mtsc.runtime.data.shapes; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "False"


def test_data_shapes_through_the_mtsc_command(tmp_path):
    out, preview = tmp_path / "out", tmp_path / "p.png"
    command = [sys.executable, "-m", "mtsc", "data", "shapes", "--out", str(out)]
    command += ["--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "16"]
    result = subprocess.run(
        [*command, "--preview", str(preview)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert (out / "train.npz").is_file() and read_png(preview).ndim == 3
    bad = subprocess.run([*command[:-2], "--size", "3"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --size must be in [8, 1024], got 3"
