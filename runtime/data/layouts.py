"""Find NYUv2 and CityScapes samples in the preprocessed layouts the field already uses.

MTAN/LibMTL layout (`root/<split>/<folder>/<i>.npy`, splits `train` and `val`):

- NYUv2, 13 classes, 288x384: `image` float32 (288, 384, 3) RGB in [0, 1]; `label` float
  (288, 384), -1 unlabelled; `depth` (288, 384, 1), 0 unknown; `normal` (288, 384, 3) in
  [-1, 1], zero vectors unknown.
- CityScapes, 128x256 or 256x512: `image`, `depth` (inverse depth, 0 unknown) and the
  labels `label_7` / `label_19` (MTAN; also `label_2`) or `label` (LibMTL, 7 classes), -1
  unlabelled.

AdaShare/AutoMTL layout (a JSON index, paths relative to the root, splits as its keys, e.g.
`train`, `train1`, `train2`, `test`; `val` is `test` where the index has no `val`, as AutoMTL
validates):

- NYUv2, `nyu_v2_3task.json`: entries [image, seg, normal, depth]; 40 classes; 480x640 RGB
  PNG images, 8-bit PNG labels with 255 unlabelled, 8-bit RGB PNG normals (see
  `convert.normal_map`), float32 .npy depth in metres.
- CityScapes, `cityscape.json`: entries [image, depth, label_2, label_7, label_19], all .npy
  files of MTAN's preprocessing.

A label file that does not exist marks that task invalid for that sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mtsc.errors import MtscError
from mtsc.runtime.data.convert import depth_map, image_chw, normal_map, read_array, segment_map
from mtsc.runtime.data.options import chosen_tasks
from mtsc.runtime.data.sample import DatasetInfo, Sample, unknown_target

NYUV2_JSON = "nyu_v2_3task.json"
CITYSCAPES_JSON = "cityscape.json"
NYUV2_FOLDERS = {"segment": "label", "depth": "depth", "normal": "normal"}
NYUV2_JSON_COLUMNS = {"segment": 1, "normal": 2, "depth": 3}
CITYSCAPES_JSON_DEPTH_COLUMN = 1
CITYSCAPES_JSON_LABEL_COLUMNS = {2: 2, 7: 3, 19: 4}  # by number of classes


@dataclass(frozen=True)
class SampleFiles:
    image: Path
    labels: dict[str, Path | None]  # None: this sample has no label for the task


@dataclass(frozen=True)
class FileDataset:
    """Samples read from files on demand."""

    info: DatasetInfo
    files: tuple[SampleFiles, ...]
    description: str  # which layout was found where, with how many samples, for logs

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> Sample:
        files = self.files[index]
        image = image_chw(read_array(files.image), files.image)
        size = image.shape[1:]
        targets, valid = {}, {}
        for task in self.info.tasks:
            path = files.labels[task]
            valid[task] = path is not None
            if path is None:
                targets[task] = unknown_target(task, *size)
            elif task == "segment":
                targets[task] = segment_map(read_array(path), self.info.num_classes, path, size)
            elif task == "depth":
                targets[task] = depth_map(read_array(path), path, size)
            else:
                targets[task] = normal_map(read_array(path), path, size)
        return Sample(image=image, targets=targets, valid=valid)


def _check_root(name: str, root: Path) -> None:
    if not root.exists():
        raise MtscError(None, f"{name}: {root} does not exist")
    if not root.is_dir():
        raise MtscError(None, f"{name}: {root} is not a directory")


def _has_folder_layout(root: Path) -> bool:
    return any((child / "image").is_dir() for child in root.iterdir() if child.is_dir())


def _layout_not_found(name: str, root: Path, json_name: str) -> MtscError:
    return MtscError(
        None,
        f"{name}: no dataset found in {root}; looked for {root / json_name} "
        f"(AdaShare/AutoMTL layout) and {root}/<split>/image/*.npy (MTAN/LibMTL layout)",
    )


def _sorted_images(folder: Path) -> list[Path]:
    images = [p for p in folder.iterdir() if p.suffix == ".npy"]
    # MTAN names files 0.npy, 1.npy, ...: sort numerically so 10 comes after 9.
    if all(p.stem.isdigit() for p in images):
        return sorted(images, key=lambda p: int(p.stem))
    return sorted(images)


def _split_folder(name: str, root: Path, split: str) -> Path:
    folder = root / split
    if not (folder / "image").is_dir():
        found = sorted(c.name for c in root.iterdir() if (c / "image").is_dir())
        raise MtscError(None, f"{name}: {root} has no split {split!r} (found: {', '.join(found)})")
    return folder


def folder_samples(
    name: str, root: Path, split: str, folders: dict[str, Path]
) -> tuple[SampleFiles, ...]:
    """Samples of `root/<split>/image/*.npy` with labels at `<folder>/<same name>`."""
    split_dir = _split_folder(name, root, split)
    images = _sorted_images(split_dir / "image")
    if not images:
        raise MtscError(None, f"{name}: no .npy images in {split_dir / 'image'}")
    for task, folder in folders.items():
        if not folder.is_dir():
            raise MtscError(
                None,
                f"{name}: no {task} labels: {folder} does not exist "
                f"(leave {task!r} out of tasks to use the data without it)",
            )
    samples = []
    for image in images:
        labels = {}
        for task, folder in folders.items():
            path = folder / image.name
            labels[task] = path if path.is_file() else None
        samples.append(SampleFiles(image, labels))
    return tuple(samples)


def _load_index(name: str, path: Path, split: str) -> tuple[str, list]:
    """The split's entries, and the split they are (`val` may be `test`)."""
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MtscError(None, f"{name}: cannot read {path}: {err}") from None
    if not isinstance(index, dict):
        raise MtscError(None, f"{name}: {path} must hold a JSON object of splits")
    if split == "val" and "val" not in index and "test" in index:
        split = "test"  # AdaShare's indexes have no validation split; AutoMTL validates on test
    if split not in index:
        raise MtscError(
            None, f"{name}: {path} has no split {split!r} (it has: {', '.join(sorted(index))})"
        )
    entries = index[split]
    if not isinstance(entries, list):
        raise MtscError(None, f"{name}: {path}: split {split!r} must be a list of entries")
    return split, entries


def json_samples(
    name: str, root: Path, index_path: Path, split: str, columns: dict[str, int], width: int
) -> tuple[str, tuple[SampleFiles, ...]]:
    """The split read (`val` may be `test`) and its samples listed in an AdaShare-style JSON
    index: lists of `width` relative paths."""
    samples = []
    split, entries = _load_index(name, index_path, split)
    for number, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != width:
            raise MtscError(
                None,
                f"{name}: {index_path}: split {split!r} entry {number} must be a list of "
                f"{width} paths",
            )
        image = root / str(entry[0])
        if not image.is_file():
            raise MtscError(
                None,
                f"{name}: {index_path}: split {split!r} entry {number}: {image} does not exist",
            )
        labels = {}
        for task, column in columns.items():
            path = root / str(entry[column]) if entry[column] else None
            labels[task] = path if path is not None and path.is_file() else None
        samples.append(SampleFiles(image, labels))
    return split, tuple(samples)


def _unlabelled(samples: tuple[SampleFiles, ...], task: str) -> int:
    return sum(s.labels[task] is None for s in samples)


def _label_folders(folders: dict[str, Path]) -> dict[str, str]:
    return {t: f"{folder}/<the image's file name>" for t, folder in folders.items()}


def _json_columns(index: Path, split: str, columns: dict[str, int]) -> dict[str, str]:
    return {t: f"column {c} of {index}'s split {split!r}" for t, c in columns.items()}


def _require_labels(name: str, samples: tuple[SampleFiles, ...], looked_in: dict[str, str]) -> None:
    """Refuse a task no sample has a label file for; `looked_in` says where, per task."""
    for task, where in looked_in.items():
        if samples and _unlabelled(samples, task) == len(samples):
            raise MtscError(
                None,
                f"{name}: none of the {len(samples)} samples has a {task} label file in "
                f"{where} (leave {task!r} out of tasks to use the data without it)",
            )


def _describe(
    name: str, layout: str, root: Path, split: str, samples: tuple[SampleFiles, ...]
) -> str:
    """For logs: the layout found, the sample count, and how many lack each task's label (a
    missing label file marks the task unknown for that sample, which is easy to miss)."""
    tasks = samples[0].labels if samples else {}
    missing = [f"{n} without a {task} label" for task in tasks if (n := _unlabelled(samples, task))]
    return f"{name} ({layout} layout) {root} [{split}]: " + ", ".join(
        [f"{len(samples)} samples", *missing]
    )


def open_nyuv2(
    root: Path, split: str, tasks: str | tuple[str, ...] | list[str] | None = None
) -> FileDataset:
    """NYUv2 in the MTAN/LibMTL or the AdaShare/AutoMTL layout (detected); `tasks` as
    `open_dataset` checked it."""
    name = "nyuv2"
    root = Path(root).expanduser()
    _check_root(name, root)
    tasks = chosen_tasks(name, tasks)
    index = root / NYUV2_JSON
    if index.is_file():
        columns = {t: NYUV2_JSON_COLUMNS[t] for t in tasks}
        split, samples = json_samples(name, root, index, split, columns, width=4)
        looked_in = _json_columns(index, split, columns)
        num_classes, layout = 40, "AdaShare/AutoMTL"
    elif _has_folder_layout(root):
        folders = {t: root / split / NYUV2_FOLDERS[t] for t in tasks}
        samples = folder_samples(name, root, split, folders)
        looked_in = _label_folders(folders)
        num_classes, layout = 13, "MTAN/LibMTL"
    else:
        raise _layout_not_found(name, root, NYUV2_JSON)
    _require_labels(name, samples, looked_in)
    info = DatasetInfo(name=name, tasks=tasks, num_classes=num_classes, depth_kind="depth")
    return FileDataset(info, samples, _describe(name, layout, root, split, samples))


def _cityscapes_label_folder(name: str, split_dir: Path, classes: int) -> Path:
    candidates = [split_dir / f"label_{classes}"]
    if classes == 7:
        candidates.append(split_dir / "label")  # LibMTL's copy has only the 7-class labels
    for folder in candidates:
        if folder.is_dir():
            return folder
    looked = " or ".join(str(c) for c in candidates)
    raise MtscError(None, f"{name}: no {classes}-class labels: looked for {looked}")


def open_cityscapes(
    root: Path,
    split: str,
    tasks: str | tuple[str, ...] | list[str] | None = None,
    classes: int | None = None,
) -> FileDataset:
    """CityScapes in the MTAN/LibMTL or the AdaShare/AutoMTL layout (detected).

    `classes` picks the 2-, 7- or 19-class labels; by default 7 for the MTAN/LibMTL layout and
    19 for the AdaShare one, as each is used in its papers. `tasks` and `classes` as
    `open_dataset` checked them.
    """
    name = "cityscapes"
    root = Path(root).expanduser()
    _check_root(name, root)
    tasks = chosen_tasks(name, tasks)
    index = root / CITYSCAPES_JSON
    if index.is_file():
        classes = classes or 19
        columns = {
            "segment": CITYSCAPES_JSON_LABEL_COLUMNS[classes],
            "depth": CITYSCAPES_JSON_DEPTH_COLUMN,
        }
        columns = {t: columns[t] for t in tasks}
        split, samples = json_samples(name, root, index, split, columns, width=5)
        looked_in = _json_columns(index, split, columns)
        layout = "AdaShare/AutoMTL"
    elif _has_folder_layout(root):
        classes = classes or 7
        split_dir = _split_folder(name, root, split)
        folders = {"depth": split_dir / "depth"}
        if "segment" in tasks:
            folders["segment"] = _cityscapes_label_folder(name, split_dir, classes)
        folders = {t: folders[t] for t in tasks}
        looked_in = _label_folders(folders)
        samples = folder_samples(name, root, split, folders)
        layout = "MTAN/LibMTL"
    else:
        raise _layout_not_found(name, root, CITYSCAPES_JSON)
    _require_labels(name, samples, looked_in)
    info = DatasetInfo(name=name, tasks=tasks, num_classes=classes, depth_kind="disparity")
    return FileDataset(info, samples, _describe(name, layout, root, split, samples))
