"""Reading model sources, and writing outputs so that a failure never leaves a half-written
file behind."""

from __future__ import annotations

import os
import tempfile
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
    """Write to a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise MtscError(None, f"cannot write {path}: {err.strerror}") from None
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as err:  # a full disk, say: a message, not a traceback
        Path(tmp).unlink(missing_ok=True)
        raise MtscError(None, f"cannot write {path}: {err.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
