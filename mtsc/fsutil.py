"""Reading model sources, and writing outputs so that a failure never leaves a half-written
file behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from mtsc.errors import MtscError


def read_source(path: Path) -> str:
    """A model file's text: UTF-8, a leading byte-order mark dropped. An OSError passes on, for
    the caller to name what it was reading the file for."""
    data = path.read_bytes()
    try:
        return data.decode().removeprefix("\ufeff")  # utf-8-sig would shift the offsets below
    except UnicodeDecodeError as err:
        problem = f"byte 0x{data[err.start]:02x} at offset {err.start}"
        raise MtscError(None, f"{path}: not UTF-8 text ({problem})") from None


def read_model(path: Path) -> str:
    """`read_source` for a model file named on the command line: a read error is the user's."""
    try:
        return read_source(path)
    except OSError as err:
        raise MtscError(None, f"cannot read {path}: {err.strerror}") from None


def json_text(value: object, **options) -> str:
    """`json.dumps` as strict readers (jq, JavaScript) take it: a NaN or infinite number, as a
    metric with nothing to score gives, is null."""

    def strict(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        return v

    return json.dumps(strict(value), allow_nan=False, **options)


def _file_mode(path: Path) -> int:
    """The mode the written file gets: the old file's, else what `open` would give (0666 - umask).

    Needed because `mkstemp` creates its file as 0600, which `os.replace` would keep.
    """
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file in the same folder, then rename it into place. A symlink is
    written through, as `open` does: its target gets the data, and the link stays."""
    path = Path(path)
    target = Path(os.path.realpath(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise MtscError(None, f"cannot write {path}: {err.strerror}") from None
    try:
        os.fchmod(fd, _file_mode(target))
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, target)
    except OSError as err:  # a full disk, say: a message, not a traceback
        Path(tmp).unlink(missing_ok=True)
        raise MtscError(None, f"cannot write {path}: {err.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_folder(folder: Path) -> None:
    """Fail before any work where `folder` cannot be written to: it, or the nearest folder
    above it that exists, is a file (mkdir would only say "File exists" or "Not a directory")
    or is not writable."""
    _check_folder(Path(folder), f"cannot write to {folder}", named=True)


def check_output_files(paths: Iterable[Path]) -> None:
    """Fail before anything is written where an output file cannot be: a folder is in its
    place, or its folder cannot be written to."""
    for path in map(Path, paths):
        check_not_a_folder(path)
        _check_folder(path.parent, f"cannot write {path}", named=False)


def check_not_a_folder(path: Path) -> None:
    """A file cannot replace a folder: say so before a set of outputs is half written."""
    if Path(path).is_dir():
        raise MtscError(None, f"cannot write {path}: it is a folder, not a file")


def _check_folder(folder: Path, failure: str, *, named: bool) -> None:
    """`named`: `failure` names `folder`, so the message calls it "it"."""
    for path in (folder, *folder.parents):
        if not path.exists():
            continue
        which = "it" if named and path == folder else str(path)
        if not path.is_dir():
            raise MtscError(None, f"{failure}: {which} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise MtscError(None, f"{failure}: {which} is not writable")
        return


def remove_stale(folder: Path, names: Iterable[str], written: Iterable[Path]) -> list[Path]:
    """Remove the files among `names` in `folder` that this run did not write: an earlier run's
    outputs, which would not match the new ones. Only those names, never a folder; call it once
    the new outputs are all written. Returns what was removed."""
    folder, kept = Path(folder), {Path(p) for p in written}
    removed = []
    for name in names:
        path = folder / name
        if path in kept or not (path.is_file() or path.is_symlink()):
            continue
        try:
            path.unlink()
        except OSError as err:
            raise MtscError(
                None, f"cannot remove {path} of an earlier run: {err.strerror}"
            ) from None
        removed.append(path)
    return removed


@contextlib.contextmanager
def undone_on_failure(folder: Path, *, unless: str | None = None) -> Iterator[None]:
    """If the body raises, remove what it added to `folder`: the entries that were not there
    before, and `folder` itself with the folders above it that had to be made. With `unless`,
    nothing is removed once that file is in `folder` (a checkpoint a run can resume from)."""
    folder = Path(folder)
    check_output_folder(folder)
    made = _topmost_missing(folder)
    before = set() if made is not None else set(os.listdir(folder))
    try:
        yield
    except BaseException:
        if unless is None or not (folder / unless).exists():
            _remove_added(folder, made, before)
        raise


def _topmost_missing(folder: Path) -> Path | None:
    """The highest of `folder` and its parents that does not exist (None: `folder` exists)."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            return missing
        missing = path
    return missing


def _remove_added(folder: Path, made: Path | None, before: set[str]) -> None:
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        return
    now = set(os.listdir(folder)) if folder.is_dir() else set()
    for name in sorted(now - before):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
