"""Checkpoints that survive crashes: written to a temporary file and renamed into place, so a
kill at any moment leaves the last good checkpoint whole; read back with `weights_only=True`."""

from __future__ import annotations

import glob
import os
import random
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtsc.errors import MtscError


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # what a write killed before its rename left (a checkpoint's size each): this one replaces it
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def _new_file_mode() -> int:
    """What `open` gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _write_atomic(path, lambda f: torch.save(state, f))


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text.encode()))


def check_searched_model(
    path: str | Path, searched: tuple[str, list[str]], model: tuple[str, list[str]]
) -> None:
    """A search checkpoint names its model and tasks, (name, tasks): one of another model is
    refused by name rather than at the first tensor that does not fit."""
    if searched != model:
        named = " (a model takes its file's name)" if searched[0] != model[0] else ""
        raise MtscError(
            None,
            f"{path} is a search of model {searched[0]!r} with tasks {searched[1]}, "
            f"not of {model[0]!r} with {model[1]}{named}",
        )


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """Tensors and plain containers only: loading a checkpoint never runs code. A file that
    cannot be loaded so is an MtscError naming it, with torch's reason in one line. `mmap`
    leaves the tensors in the file until read: for a caller that wants only the settings."""
    path = Path(path)
    if path.is_dir():
        raise MtscError(None, f"cannot load {path}: it is a folder, not a weights file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns of a pickle protocol, then fails
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise MtscError(None, f"no such checkpoint: {path}") from None
    except PermissionError as err:
        raise MtscError(None, f"cannot read {path}: {err.strerror}") from None
    except Exception as err:  # torch raises many types for a file it cannot or may not load
        if not zipfile.is_zipfile(path):  # what torch.save writes
            message = (
                f"cannot load {path}: it is not a weights file saved by torch, or it is damaged"
            )
        else:
            message = f"cannot load {path} as a weights-only checkpoint: {_torch_reason(err)}"
        raise MtscError(None, message) from None


# The lines of torch's weights-only message that are the same whatever the file held.
_TORCH_BOILERPLATE = (
    "Weights only load failed",
    "Check the documentation",
    "Please file an issue",
    "(1)",
    "(2)",
)


def _torch_reason(err: Exception) -> str:
    """The one line of torch's long message that says what was wrong with the file (its first
    sentence, if it goes on to advice)."""
    text = str(err)
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = (line.strip() for line in (rest if found else text).splitlines())
    reasons = [line for line in lines if line and not line.startswith(_TORCH_BOILERPLATE)]
    return reasons[0].split(". ")[0].rstrip(".") if reasons else type(err).__name__


def rng_state() -> dict[str, Any]:
    """Every random stream a run draws from, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
