"""The options (`[data]` in a config, keywords of `open_dataset`) each kind of dataset takes.
Torch-free, so that a config's misspelt option is refused where the file sets it."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mtsc.ir.ops import did_you_mean

# every kind of dataset takes these (taken out of the options before `_check_options`)
EVERY_KIND_OPTIONS = ("tasks", "augment", "scales", "flip")
COMMON_OPTIONS = (*EVERY_KIND_OPTIONS, "size")
SHAPES_RENDER_OPTIONS = ("objects", "seed", "n_train", "n_val", "n_test", "cache_dir")
CITYSCAPES_OPTIONS = (*COMMON_OPTIONS, "classes")
# what some kind takes: any other name is a mistake whatever the data
ANY_KIND_OPTIONS = tuple(sorted({*COMMON_OPTIONS, *SHAPES_RENDER_OPTIONS, *CITYSCAPES_OPTIONS}))


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tasks(value: object) -> bool:
    names = [value] if isinstance(value, str) else value
    return (
        isinstance(names, (list, tuple))
        and all(isinstance(t, str) for t in names)
        and len(set(names)) == len(names)
    )


def _scales(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 1 for s in value)
    )


def _size(value: object) -> bool:
    pair = value if isinstance(value, (list, tuple)) else (value, value)
    return len(pair) == 2 and all(_int(n) and n > 0 for n in pair)


# option -> (whether a value is of its kind, what it must be); ranges are checked where the
# options are used
_KINDS = {
    "tasks": (_tasks, "a task name or a list of different ones"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "flip": (lambda v: isinstance(v, bool), "true or false"),
    "scales": (_scales, "a list of numbers >= 1 (zoom-in factors)"),
    "size": (_size, "a positive integer or a [height, width] pair of them"),
    "objects": (_int, "an integer"),
    "seed": (_int, "an integer"),
    "n_train": (_int, "an integer"),
    "n_val": (_int, "an integer"),
    "n_test": (_int, "an integer"),
    "cache_dir": (lambda v: isinstance(v, (str, os.PathLike)), "a folder's path (a string)"),
    "classes": (_int, "an integer"),
}


def option_problems(options: Mapping[str, object]) -> list[tuple[str, str]]:
    """(option, what is wrong) for each option no dataset takes, or whose value is not of its
    kind; an empty list when all are well formed."""
    unknown = [
        (name, f"unknown [data] option {name!r}{did_you_mean(name, ANY_KIND_OPTIONS)}")
        for name in sorted(options)
        if name not in ANY_KIND_OPTIONS
    ]
    return unknown + ill_formed_options(options)


def ill_formed_options(options: Mapping[str, object]) -> list[tuple[str, str]]:
    """(option, what is wrong) for each known option whose value is not of its kind."""
    return [
        (name, f"[data] {name} must be {_KINDS[name][1]}, got {options[name]!r}")
        for name in sorted(options)
        if name in _KINDS and not _KINDS[name][0](options[name])
    ]
