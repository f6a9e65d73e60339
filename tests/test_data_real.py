"""NYUv2 and CityScapes readers, on tiny fixtures written in each layout of the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtsc.errors import MtscError
from mtsc.runtime.data import IGNORE_INDEX, open_dataset
from mtsc.runtime.data.augment import Augmentation, apply_augmentation
from mtsc.runtime.data.dataset import denormalize_image
from mtsc.runtime.data.png import write_png

H, W = 10, 12  # columns 0..11 double as class ids (13 NYUv2 classes in the MTAN layout)
TILT = np.linspace(-0.7, 0.7, W)  # normals lean left to right: x = sin, z = -cos


def _columns() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:H, 0:W]
    return x, y


def _image(index: int) -> np.ndarray:
    """HWC float in [0, 1]: channel 0 encodes the column, 1 the row, 2 is noise."""
    x, y = _columns()
    noise = np.random.default_rng(index).uniform(size=(H, W))
    return np.stack([x / (W - 1), y / (H - 1), noise], axis=-1).astype(np.float32)


def _normals() -> np.ndarray:
    normal = np.zeros((H, W, 3), np.float32)
    normal[..., 0] = np.sin(TILT)
    normal[..., 2] = -np.cos(TILT)
    normal[2, 3] = 0.0  # unknown
    return normal


def _labels() -> np.ndarray:
    x, _ = _columns()
    label = x.astype(np.float32)
    label[0, :3] = -1
    return label


def _depth(index: int) -> np.ndarray:
    _, y = _columns()
    depth = (1.0 + 0.1 * y + 0.01 * index).astype(np.float32)
    depth[1, 1] = 0.0
    return depth


def write_mtan_nyuv2(root: Path, n: int = 3, channels_first: bool = False) -> Path:
    """root/{train,val}/{image,label,depth,normal}/<i>.npy, as MTAN/LibMTL store NYUv2."""
    for split in ("train", "val"):
        for folder in ("image", "label", "depth", "normal"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arrays = {
                "image": _image(i),
                "label": _labels(),
                "depth": _depth(i)[..., None],
                "normal": _normals(),
            }
            for folder, array in arrays.items():
                if channels_first and array.ndim == 3:
                    array = np.moveaxis(array, -1, 0)
                np.save(root / split / folder / f"{i}.npy", array)
    return root


def _to_uint8_normals(normal: np.ndarray) -> np.ndarray:
    encoded = np.round((normal + 1) / 2 * 255).astype(np.uint8)
    encoded[~np.any(normal != 0, axis=-1)] = 255  # AdaShare marks unknown pixels white
    return encoded


def write_adashare_nyuv2(root: Path, n: int = 2) -> Path:
    """root/nyu_v2_3task.json listing PNG images, PNG labels and normals, .npy depth."""
    for folder in ("img", "seg", "normal_mask", "depth"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        write_png(root / "img" / f"{i}.png", np.round(_image(i) * 255).astype(np.uint8))
        seg = _labels().astype(np.int64) + 20  # 40 classes here: use the upper ids too
        seg[seg == 19] = 255
        write_png(root / "seg" / f"{i}.png", seg.astype(np.uint8))
        write_png(root / "normal_mask" / f"{i}.png", _to_uint8_normals(_normals()))
        np.save(root / "depth" / f"{i}.npy", _depth(i))
        entries.append([f"img/{i}.png", f"seg/{i}.png", f"normal_mask/{i}.png", f"depth/{i}.npy"])
    (root / "nyu_v2_3task.json").write_text(json.dumps({"train": entries, "test": entries}))
    return root


def write_mtan_cityscapes(root: Path, n: int = 2, libmtl: bool = False) -> Path:
    """root/{train,val}/{image,label_7,label_19,depth}/<i>.npy (LibMTL: `label` only)."""
    label_folders = ("label",) if libmtl else ("label_2", "label_7", "label_19")
    for split in ("train", "val"):
        for folder in ("image", "depth", *label_folders):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", _image(i))
            np.save(root / split / "depth" / f"{i}.npy", _depth(i)[..., None])
            x, _ = _columns()
            for folder in label_folders:
                classes = {"label": 7, "label_2": 2, "label_7": 7, "label_19": 19}[folder]
                label = (x % classes).astype(np.float32)
                label[-1, -1] = -1
                np.save(root / split / folder / f"{i}.npy", label)
    return root


def write_adashare_cityscapes(root: Path) -> Path:
    write_mtan_cityscapes(root)
    groups = [
        [f"train/{f}/{i}.npy" for f in ("image", "depth", "label_2", "label_7", "label_19")]
        for i in range(2)
    ]
    (root / "cityscape.json").write_text(json.dumps({"train": groups, "test": groups}))
    return root


def _raw(image: torch.Tensor) -> np.ndarray:
    return denormalize_image(image).numpy()


# --- reading each layout --------------------------------------------------------------------


def test_mtan_nyuv2_items_follow_the_conventions(tmp_path):
    ds = open_dataset(f"nyuv2:{write_mtan_nyuv2(tmp_path)}", "val")
    assert len(ds) == 3 and not ds.augment
    assert ds.info.num_classes == 13 and ds.info.tasks == ("segment", "depth", "normal")
    assert ds.info.ignore_index == IGNORE_INDEX == 255 and ds.info.depth_kind == "depth"
    assert ds.source.description == f"nyuv2 (MTAN/LibMTL layout) {tmp_path} [val]: 3 samples"
    image, targets = ds[2]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert np.allclose(_raw(image), np.moveaxis(_image(2), -1, 0), atol=1e-5)
    segment = targets["segment"].numpy()
    assert targets["segment"].dtype == torch.int64 and segment.shape == (H, W)
    expected = _labels().astype(np.int64)
    expected[expected == -1] = IGNORE_INDEX
    assert np.array_equal(segment, expected)
    assert targets["depth"].shape == (1, H, W) and targets["depth"].dtype == torch.float32
    assert np.array_equal(targets["depth"][0].numpy(), _depth(2))
    assert targets["normal"].shape == (3, H, W)
    assert np.array_equal(targets["normal"].numpy(), np.moveaxis(_normals(), -1, 0))
    assert {t: bool(v) for t, v in targets["valid"].items()} == dict.fromkeys(ds.info.tasks, True)


def test_both_channel_orders_read_the_same(tmp_path):
    hwc = open_dataset(f"nyuv2:{write_mtan_nyuv2(tmp_path / 'hwc')}", "val")
    chw = open_dataset(f"nyuv2:{write_mtan_nyuv2(tmp_path / 'chw', channels_first=True)}", "val")
    (image_a, targets_a), (image_b, targets_b) = hwc[1], chw[1]
    assert torch.equal(image_a, image_b)
    for task in ("segment", "depth", "normal"):
        assert torch.equal(targets_a[task], targets_b[task]), task


def test_files_sort_numerically(tmp_path):
    root = write_mtan_nyuv2(tmp_path, n=11)
    ds = open_dataset(f"nyuv2:{root}", "val", tasks=["depth"])
    # Sample 10 is 10.npy (not 2.npy, which a text sort would put third).
    assert np.array_equal(ds[10][1]["depth"][0].numpy(), _depth(10))
    assert np.array_equal(ds[2][1]["depth"][0].numpy(), _depth(2))


def test_adashare_nyuv2_items(tmp_path):
    ds = open_dataset(f"nyuv2:{write_adashare_nyuv2(tmp_path)}", "test")
    assert ds.info.num_classes == 40 and len(ds) == 2
    assert ds.source.description == f"nyuv2 (AdaShare/AutoMTL layout) {tmp_path} [test]: 2 samples"
    image, targets = ds[1]
    assert np.allclose(_raw(image), np.round(np.moveaxis(_image(1), -1, 0) * 255) / 255, atol=1e-5)
    expected = _labels().astype(np.int64) + 20
    expected[(expected == 19) | (expected == 255)] = IGNORE_INDEX
    assert np.array_equal(targets["segment"].numpy(), expected)
    assert np.array_equal(targets["depth"][0].numpy(), _depth(1))
    normal = np.moveaxis(targets["normal"].numpy(), 0, -1)
    known = np.any(_normals() != 0, axis=-1)
    assert np.all(normal[~known] == 0)  # white pixels are unknown
    assert np.allclose(np.linalg.norm(normal[known], axis=-1), 1.0, atol=1e-5)
    assert np.allclose(normal[known], _normals()[known], atol=2 / 255)


def test_mtan_cityscapes_picks_labels_by_class_count(tmp_path):
    root = write_mtan_cityscapes(tmp_path)
    seven = open_dataset(f"cityscapes:{root}", "val")
    assert seven.info.num_classes == 7 and seven.info.tasks == ("segment", "depth")
    assert seven.info.depth_kind == "disparity"
    x, _ = _columns()
    expected = x % 7
    expected[-1, -1] = IGNORE_INDEX
    assert np.array_equal(seven[0][1]["segment"].numpy(), expected)
    nineteen = open_dataset(f"cityscapes:{root}", "val", classes=19)
    expected = x % 19
    expected[-1, -1] = IGNORE_INDEX
    assert np.array_equal(nineteen[0][1]["segment"].numpy(), expected)
    assert np.array_equal(nineteen[0][1]["depth"][0].numpy(), _depth(0))


def test_libmtl_cityscapes_uses_its_label_folder(tmp_path):
    root = write_mtan_cityscapes(tmp_path, libmtl=True)
    ds = open_dataset(f"cityscapes:{root}", "train", augment=False)
    assert ds.info.num_classes == 7
    assert ds[1][1]["segment"].max() == IGNORE_INDEX
    with pytest.raises(MtscError) as err:
        open_dataset(f"cityscapes:{root}", "train", classes=19)
    assert err.value.message == (
        f"cityscapes: no 19-class labels: looked for {root / 'train' / 'label_19'}"
    )


def test_adashare_cityscapes_defaults_to_19_classes(tmp_path):
    root = write_adashare_cityscapes(tmp_path)
    ds = open_dataset(f"cityscapes:{root}", "test")
    assert ds.info.num_classes == 19
    x, _ = _columns()
    expected = x % 19
    expected[-1, -1] = IGNORE_INDEX
    assert np.array_equal(ds[0][1]["segment"].numpy(), expected)
    seven = open_dataset(f"cityscapes:{root}", "test", classes=7, tasks="segment")
    expected = x % 7
    expected[-1, -1] = IGNORE_INDEX
    assert np.array_equal(seven[0][1]["segment"].numpy(), expected)


# --- missing labels -------------------------------------------------------------------------


def test_missing_label_files_give_validity_flags(tmp_path):
    root = write_mtan_nyuv2(tmp_path)
    (root / "val" / "normal" / "1.npy").unlink()
    (root / "val" / "label" / "2.npy").unlink()
    ds = open_dataset(f"nyuv2:{root}", "val")
    _, targets = ds[1]
    assert not targets["valid"]["normal"] and targets["valid"]["segment"]
    assert torch.count_nonzero(targets["normal"]) == 0 and targets["normal"].shape == (3, H, W)
    _, targets = ds[2]
    assert not targets["valid"]["segment"]
    assert torch.all(targets["segment"] == IGNORE_INDEX)
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    images, batch = next(iter(loader))
    assert images.shape == (3, 3, H, W)
    assert batch["valid"]["normal"].tolist() == [True, False, True]
    assert batch["valid"]["segment"].tolist() == [True, True, False]
    assert batch["valid"]["depth"].dtype == torch.bool


def test_adashare_entries_without_a_label_are_invalid(tmp_path):
    root = write_adashare_nyuv2(tmp_path)
    index = json.loads((root / "nyu_v2_3task.json").read_text())
    index["test"][0][2] = None
    (root / "nyu_v2_3task.json").write_text(json.dumps(index))
    ds = open_dataset(f"nyuv2:{root}", "test")
    assert not ds[0][1]["valid"]["normal"] and ds[1][1]["valid"]["normal"]


def test_the_description_counts_samples_without_a_label(tmp_path):
    root = write_mtan_nyuv2(tmp_path)
    (root / "val" / "depth" / "1.npy").unlink()
    ds = open_dataset(f"nyuv2:{root}", "val", size=(8, 12))
    assert ds.description == (
        f"nyuv2 (MTAN/LibMTL layout) {root} [val]: 3 samples, 1 without a depth label; "
        "resized to 8x12"
    )
    root = write_adashare_nyuv2(tmp_path / "ada")
    index = json.loads((root / "nyu_v2_3task.json").read_text())
    for entry in index["test"]:
        entry[1] = "missing.png"
    index["train"] = index["test"]
    (root / "nyu_v2_3task.json").write_text(json.dumps(index))
    ds = open_dataset(f"nyuv2:{root}", "train", tasks=("depth", "normal"))
    assert ds.description == (
        f"nyuv2 (AdaShare/AutoMTL layout) {root} [train]: 2 samples; augmented (scales "
        "1, 1.2, 1.5, flips)"
    )
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{root}", "val")
    assert err.value.message == (
        f"nyuv2: none of the 2 samples has a segment label file in column 1 of "
        f"{root / 'nyu_v2_3task.json'}'s split 'test' (leave 'segment' out of tasks to use the "
        "data without it)"
    )


def test_a_task_with_no_labels_at_all_is_an_error(tmp_path):
    root = write_mtan_nyuv2(tmp_path)
    for path in (root / "val" / "normal").iterdir():
        path.unlink()
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{root}", "val")
    assert err.value.message == (
        f"nyuv2: none of the 3 samples has a normal label file in {root / 'val' / 'normal'}/"
        "<the image's file name> (leave 'normal' out of tasks to use the data without it)"
    )
    (root / "val" / "normal").rmdir()
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{root}", "val")
    assert err.value.message == (
        f"nyuv2: no normal labels: {root / 'val' / 'normal'} does not exist "
        "(leave 'normal' out of tasks to use the data without it)"
    )
    ds = open_dataset(f"nyuv2:{root}", "val", tasks=("segment", "depth"))
    assert set(ds[0][1]) == {"segment", "depth", "valid"}


# --- errors that name the file ----------------------------------------------------------------


def test_wrong_shapes_name_the_file(tmp_path):
    root = write_mtan_nyuv2(tmp_path)
    depth_file = root / "val" / "depth" / "0.npy"
    np.save(depth_file, np.ones((H, W, 2), np.float32))
    ds = open_dataset(f"nyuv2:{root}", "val")
    with pytest.raises(MtscError) as err:
        ds[0]
    assert err.value.message == (
        f"{depth_file}: depth has shape ({H}, {W}, 2), expected (H, W), (H, W, 1) or (1, H, W)"
    )
    np.save(depth_file, np.ones((5, 6), np.float32))
    with pytest.raises(MtscError) as err:
        ds[0]
    assert err.value.message == f"{depth_file}: depth is 5x6 but the image is {H}x{W}"
    image_file = root / "val" / "image" / "1.npy"
    np.save(image_file, np.ones((H, W), np.float32))
    with pytest.raises(MtscError) as err:
        ds[1]
    assert err.value.message == (
        f"{image_file}: image has shape ({H}, {W}), expected (H, W, 3) or (3, H, W)"
    )


@pytest.mark.parametrize(
    "folder, array, message",
    [
        ("label", np.full((H, W), 13.0), "label 13 is outside 0..12 (13 classes;"),
        ("label", np.full((H, W), 0.5), "segmentation labels must be whole numbers"),
        ("image", np.full((H, W, 3), 255.0), "float image values must lie in [0, 1], found"),
        ("normal", np.full((H, W, 3), 2.0), "normal components must lie in [-1, 1]"),
        ("image", np.zeros((H, W, 3), np.int32), "image has dtype int32, expected uint8 or float"),
    ],
    ids=["class-range", "fractional-class", "image-range", "normal-range", "image-dtype"],
)
def test_bad_values_name_the_file(tmp_path, folder, array, message):
    root = write_mtan_nyuv2(tmp_path)
    path = root / "val" / folder / "0.npy"
    np.save(path, array)
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{root}", "val")[0]
    assert err.value.message.startswith(f"{path}: {message}")


def test_unreadable_and_unsupported_files(tmp_path):
    root = write_adashare_nyuv2(tmp_path)
    index = json.loads((root / "nyu_v2_3task.json").read_text())
    index["test"][0][0] = "img/0.jpg"
    (root / "img" / "0.jpg").write_bytes(b"\xff\xd8\xff")
    index["test"][1][3] = "depth/1.txt"
    (root / "depth" / "1.txt").write_text("1")
    (root / "nyu_v2_3task.json").write_text(json.dumps(index))
    ds = open_dataset(f"nyuv2:{root}", "test")
    with pytest.raises(MtscError, match=r"0\.jpg: JPEG images are not supported"):
        ds[0]
    with pytest.raises(MtscError, match=r"1\.txt: unsupported file type '\.txt'"):
        ds[1]
    np.save(root / "depth" / "0.npy", np.array([{"a": 1}], dtype=object))
    index["test"][0][0] = "img/1.png"
    (root / "nyu_v2_3task.json").write_text(json.dumps(index))
    with pytest.raises(MtscError, match=r"0\.npy: not a readable \.npy array"):
        open_dataset(f"nyuv2:{root}", "test")[0]


def test_files_removed_after_opening_are_named(tmp_path):
    root = write_mtan_nyuv2(tmp_path)
    ds = open_dataset(f"nyuv2:{root}", "val")
    (root / "val" / "image" / "0.npy").unlink()
    with pytest.raises(MtscError) as err:
        ds[0]
    assert err.value.message == f"{root / 'val' / 'image' / '0.npy'}: no such file"


def test_wrong_label_dtypes_are_named(tmp_path):
    root = write_mtan_nyuv2(tmp_path)
    np.save(root / "val" / "label" / "0.npy", np.zeros((H, W), bool))
    np.save(root / "val" / "normal" / "1.npy", np.zeros((H, W, 3), np.int32))
    ds = open_dataset(f"nyuv2:{root}", "val")
    with pytest.raises(MtscError) as err:
        ds[0]
    assert err.value.message.endswith("0.npy: segmentation label has dtype bool")
    with pytest.raises(MtscError) as err:
        ds[1]
    assert err.value.message.endswith("1.npy: normal has dtype int32, expected float or uint8")


def test_empty_image_folder(tmp_path):
    (tmp_path / "train" / "image").mkdir(parents=True)
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{tmp_path}", "train")
    assert err.value.message == f"nyuv2: no .npy images in {tmp_path / 'train' / 'image'}"


def test_layout_detection_errors(tmp_path):
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{tmp_path / 'nowhere'}", "train")
    assert err.value.message == f"nyuv2: {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "file").write_text("x")
    with pytest.raises(MtscError, match="is not a directory"):
        open_dataset(f"cityscapes:{tmp_path / 'file'}", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtscError) as err:
        open_dataset(f"cityscapes:{tmp_path / 'empty'}", "train")
    empty = tmp_path / "empty"
    assert err.value.message == (
        f"cityscapes: no dataset found in {empty}; looked for {empty / 'cityscape.json'} "
        f"(AdaShare/AutoMTL layout) and {empty}/<split>/image/*.npy (MTAN/LibMTL layout)"
    )


def test_missing_splits_list_what_exists(tmp_path):
    root = write_mtan_nyuv2(tmp_path / "mtan")
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{root}", "test")
    assert err.value.message == f"nyuv2: {root} has no split 'test' (found: train, val)"
    root = write_adashare_nyuv2(tmp_path / "ada")
    index_path = root / "nyu_v2_3task.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({"train1": index["train"], "train2": index["train"]}))
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{root}", "val")
    assert err.value.message == (f"nyuv2: {index_path} has no split 'val' (it has: train1, train2)")


def test_an_adashare_index_without_val_validates_on_test(tmp_path):
    """AdaShare's indexes have train, train1, train2 and test; AutoMTL validates on test."""
    root = write_adashare_nyuv2(tmp_path, n=3)
    index_path = root / "nyu_v2_3task.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({"train": index["train"], "test": index["test"][:2]}))
    val, test = open_dataset(f"nyuv2:{root}", "val"), open_dataset(f"nyuv2:{root}", "test")
    assert len(val) == len(test) == 2
    torch.testing.assert_close(val[1][0], test[1][0], rtol=0, atol=0)
    index_path.write_text(json.dumps({**index, "test": [["missing.png", "", "", ""]]}))
    with pytest.raises(MtscError, match="split 'test' entry 0: .*missing.png does not exist"):
        open_dataset(f"nyuv2:{root}", "val")


def test_bad_json_indexes(tmp_path):
    root = write_adashare_nyuv2(tmp_path)
    index_path = root / "nyu_v2_3task.json"
    index_path.write_text("{not json")
    with pytest.raises(MtscError, match=r"nyuv2: cannot read .*nyu_v2_3task\.json"):
        open_dataset(f"nyuv2:{root}", "test")
    index_path.write_text(json.dumps({"test": [["img/0.png", "seg/0.png"]]}))
    with pytest.raises(MtscError, match="split 'test' entry 0 must be a list of 4 paths"):
        open_dataset(f"nyuv2:{root}", "test")
    index_path.write_text(json.dumps({"test": [["img/9.png", "a", "b", "c"]]}))
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{root}", "test")
    assert err.value.message.endswith(
        f"split 'test' entry 0: {root / 'img' / '9.png'} does not exist"
    )


def test_json_index_structure_errors(tmp_path):
    root = write_adashare_cityscapes(tmp_path)
    index_path = root / "cityscape.json"
    index_path.write_text(json.dumps([1, 2]))
    with pytest.raises(MtscError) as err:
        open_dataset(f"cityscapes:{root}", "train")
    assert err.value.message == f"cityscapes: {index_path} must hold a JSON object of splits"
    index_path.write_text(json.dumps({"train": "all"}))
    with pytest.raises(MtscError) as err:
        open_dataset(f"cityscapes:{root}", "train")
    assert err.value.message == (
        f"cityscapes: {index_path}: split 'train' must be a list of entries"
    )


def test_option_errors(tmp_path):
    root = write_mtan_cityscapes(tmp_path)
    with pytest.raises(MtscError) as err:
        open_dataset(f"nyuv2:{root}", "train", classes=7)
    assert err.value.message == (
        "nyuv2: unknown option 'classes' (accepted: augment, flip, scales, size, tasks)"
    )
    with pytest.raises(MtscError, match=r"\[data\] classes must be one of 2, 7, 19, got 5"):
        open_dataset(f"cityscapes:{root}", "train", classes=5)
    with pytest.raises(MtscError, match=r"cityscapes has no task 'normal' \(its tasks: segment"):
        open_dataset(f"cityscapes:{root}", "train", tasks=["normal"])
    with pytest.raises(MtscError, match="cityscapes: no tasks chosen"):
        open_dataset(f"cityscapes:{root}", "train", tasks=[])


# --- augmentation ---------------------------------------------------------------------------


def test_flip_mirrors_image_and_labels_and_negates_normal_x(tmp_path):
    ds = open_dataset(f"nyuv2:{write_mtan_nyuv2(tmp_path)}", "val")
    image, targets = ds[0]
    raw = {k: v for k, v in targets.items() if k != "valid"}
    flipped_image, flipped = apply_augmentation(
        denormalize_image(image), raw, Augmentation(scale=1.0, top=0, left=0, flip=True)
    )
    assert np.allclose(flipped_image.numpy(), _raw(image)[:, :, ::-1], atol=1e-6)
    assert np.array_equal(flipped["segment"].numpy(), targets["segment"].numpy()[:, ::-1])
    assert np.array_equal(flipped["depth"].numpy(), targets["depth"].numpy()[:, :, ::-1])
    expected_normal = targets["normal"].numpy()[:, :, ::-1] * np.array([-1, 1, 1])[:, None, None]
    assert np.array_equal(flipped["normal"].numpy(), expected_normal)


@pytest.mark.parametrize("depth_kind, factor", [("depth", 1 / 1.5), ("disparity", 1.5)])
def test_scale_crop_zooms_labels_with_the_image(depth_kind, factor):
    x, y = _columns()
    image = torch.from_numpy(np.moveaxis(_image(0), -1, 0))
    targets = {
        "segment": torch.from_numpy(x.astype(np.int64)),
        "depth": torch.full((1, H, W), 3.0),
    }
    draw = Augmentation(scale=1.5, top=2, left=3, flip=False)
    out_image, out = apply_augmentation(image, targets, draw, depth_kind)
    crop_h, crop_w = int(H / 1.5), int(W / 1.5)
    # Bilinear sampling of the column ramp gives each output pixel's source column exactly.
    source_x = out_image[0].numpy() * (W - 1)
    assert np.allclose(source_x[:, 0], 3) and np.allclose(source_x[:, -1], 3 + crop_w - 1)
    source_y = out_image[1].numpy() * (H - 1)
    assert np.allclose(source_y[0], 2) and np.allclose(source_y[-1], 2 + crop_h - 1)
    # Labels come from the nearest source pixel: never more than one pixel away.
    assert np.abs(out["segment"].numpy() - source_x).max() < 1
    assert out["segment"].min() == 3 and out["segment"].max() == 3 + crop_w - 1
    assert torch.allclose(out["depth"], torch.full((1, H, W), 3.0 * factor))


def test_unknown_depth_kind_is_refused():
    image = torch.zeros(3, H, W)
    with pytest.raises(ValueError, match=r"depth_kind must be one of \('depth', 'disparity'\)"):
        apply_augmentation(image, {}, Augmentation(1.0, 0, 0, False), "inverse")


def test_training_augmentation_keeps_image_and_labels_together(tmp_path):
    """Random draws through the dataset: whatever was drawn, every label moved with the
    image, normals' x flipped with it, and depth was divided by the zoom."""
    root = write_mtan_nyuv2(tmp_path)
    depth = np.full((H, W, 1), 2.0, np.float32)
    np.save(root / "train" / "depth" / "0.npy", depth)
    ds = open_dataset(f"nyuv2:{root}", "train")
    assert ds.augment
    torch.manual_seed(0)
    seen_flips, seen_scales = set(), set()
    for _ in range(24):
        image, targets = ds[0]
        source_x = _raw(image)[0] * (W - 1)
        flipped = source_x[0, 0] > source_x[0, -1]
        span = round(abs(source_x[0, -1] - source_x[0, 0]))
        scale = next(s for s in (1.0, 1.2, 1.5) if int(W / s) - 1 == span)
        seen_flips.add(bool(flipped))
        seen_scales.add(scale)
        segment = targets["segment"].numpy()
        labelled = segment != IGNORE_INDEX
        assert np.abs(segment - source_x)[labelled].max() < 1
        normal_x = targets["normal"][0].numpy()
        known = targets["normal"].abs().sum(0).numpy() > 0
        # The normal's x follows the (possibly mirrored) column it came from.
        expected_x = np.sin(np.interp(segment, np.arange(W), TILT)) * (-1 if flipped else 1)
        assert np.allclose(normal_x[known & labelled], expected_x[known & labelled], atol=0.07)
        assert torch.allclose(targets["depth"], torch.tensor(2.0 / scale))
    assert seen_flips == {True, False} and seen_scales == {1.0, 1.2, 1.5}


def test_evaluation_splits_are_not_augmented(tmp_path):
    root = write_mtan_nyuv2(tmp_path)
    ds = open_dataset(f"nyuv2:{root}", "val")
    first, second = ds[0], ds[0]
    assert torch.equal(first[0], second[0])
    plain = open_dataset(f"nyuv2:{root}", "train", augment=False)
    assert np.allclose(_raw(plain[1][0]), np.moveaxis(_image(1), -1, 0), atol=1e-5)


def test_size_option_resizes_every_sample(tmp_path):
    root = write_mtan_nyuv2(tmp_path)
    ds = open_dataset(f"nyuv2:{root}", "val", size=(5, 6))
    image, targets = ds[0]
    assert image.shape == (3, 5, 6) and targets["segment"].shape == (5, 6)
    assert targets["depth"].shape == (1, 5, 6) and targets["normal"].shape == (3, 5, 6)
    # Nearest resampling keeps label values (every other column here) and depth values.
    assert targets["segment"][-1].tolist() == [0, 2, 4, 6, 8, 10]
    assert set(targets["depth"].flatten().tolist()) <= set(_depth(0).flatten().tolist())
    with pytest.raises(MtscError, match="size must be a positive integer or a"):
        open_dataset(f"nyuv2:{root}", "val", size=(0, 4))
