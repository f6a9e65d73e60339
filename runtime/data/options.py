"""The options (`[data]` in a config, keywords of `open_dataset`) each kind of dataset takes.
Torch-free, so that a config's misspelt option is refused where the file sets it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from mtsc.ir.ops import did_you_mean

# every kind of dataset takes these
EVERY_KIND_OPTIONS = ("tasks", "augment", "scales", "flip")
COMMON_OPTIONS = (*EVERY_KIND_OPTIONS, "size")
SHAPES_RENDER_OPTIONS = ("objects", "seed", "n_train", "n_val", "n_test", "cache_dir")
# what each kind of data takes, by the kind of its spec (see `spec_kind`)
KIND_OPTIONS = {
    "shapes": (*COMMON_OPTIONS, *SHAPES_RENDER_OPTIONS),
    "shapes:DIR": EVERY_KIND_OPTIONS,
    "nyuv2": COMMON_OPTIONS,
    "cityscapes": (*COMMON_OPTIONS, "classes"),
}
# what some kind takes: any other name is a mistake whatever the data
ANY_KIND_OPTIONS = tuple(sorted({name for names in KIND_OPTIONS.values() for name in names}))
SHAPES_MAX_SIZE = 1024
SHAPES_MIN_SIZE = 8
# resizing real data: any size up to twice CityScapes' full width (the model check says what
# a network cannot take)
RESIZE_SIZE_RANGE = (1, 4096)
SHAPES_MAX_OBJECTS = 16
SHAPES_MAX_COUNT = 10_000_000
SHAPES_MAX_SEED = 2**63 - 1
CITYSCAPES_CLASSES = (2, 7, 19)
# every task a dataset of mtsc's has; the tasks each kind of data has
TASKS = ("segment", "depth", "normal")
KIND_TASKS = {
    "shapes": TASKS,
    "shapes:DIR": TASKS,
    "nyuv2": TASKS,
    "cityscapes": ("segment", "depth"),
}


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


def _in(low: int, high: int) -> Callable[[object], bool]:
    return lambda value: _int(value) and low <= value <= high


def size_pair(value: object) -> tuple:
    """A `size` option as a tuple: (height, width) once `option_problems` has passed it."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _size(value: object) -> bool:
    pair = size_pair(value)
    return len(pair) == 2 and all(_int(n) and n > 0 for n in pair)


def _range(low: int, high: int) -> tuple[Callable[[object], bool], str]:
    return _in(low, high), f"an integer in [{low}, {high}]"


# option -> (whether a value is of its kind and in its range, what it must be); the range of
# `size` depends on the kind of data (see `kind_problems`)
_KINDS = {
    "tasks": (_tasks, "a task name or a list of different ones"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "flip": (lambda v: isinstance(v, bool), "true or false"),
    "scales": (_scales, "a list of numbers >= 1 (zoom-in factors)"),
    "size": (_size, "a positive integer or a [height, width] pair of them"),
    "objects": _range(1, SHAPES_MAX_OBJECTS),
    "seed": _range(0, SHAPES_MAX_SEED),
    # a run trains on n_train and checks the model on a validation image: one at least
    "n_train": _range(1, SHAPES_MAX_COUNT),
    "n_val": _range(1, SHAPES_MAX_COUNT),
    "n_test": _range(0, SHAPES_MAX_COUNT),
    "cache_dir": (lambda v: isinstance(v, (str, os.PathLike)), "a folder's path (a string)"),
    "classes": (
        lambda v: _int(v) and v in CITYSCAPES_CLASSES,
        f"one of {', '.join(map(str, CITYSCAPES_CLASSES))}",
    ),
}


def spec_kind(spec: str) -> str | None:
    """The kind of a data spec, as `KIND_OPTIONS` names it; None for a spec no kind reads
    (`open_dataset` says what is wrong with it)."""
    kind, _, path = spec.partition(":")
    if kind == "shapes" and path:
        return "shapes:DIR"
    return kind if kind in KIND_OPTIONS else None


def option_problems(
    options: Mapping[str, object], spec: str | None = None
) -> list[tuple[str, str]]:
    """(option, what is wrong) for each option no dataset takes, or whose value is not of its
    kind; with the data's `spec`, also each option its kind does not take (see
    `kind_problems`). An empty list when all are well formed."""
    kind = spec_kind(spec) if spec is not None else None
    accepted = sorted(KIND_OPTIONS[kind] if kind else ANY_KIND_OPTIONS)
    takers = f"{kind} takes" if kind else "the datasets take"
    unknown = [
        (
            name,
            f"unknown [data] option {name!r}{did_you_mean(name, accepted)}; "
            f"{takers} {', '.join(accepted)}",
        )
        for name in sorted(options)
        if name not in ANY_KIND_OPTIONS
    ]
    known = {name: value for name, value in options.items() if name in ANY_KIND_OPTIONS}
    return unknown + ill_formed_options(known) + (kind_problems(kind, known) if kind else [])


def kind_problems(kind: str, options: Mapping[str, object]) -> list[tuple[str, str]]:
    """(option, what is wrong) for each option `kind` does not take, and a well-formed size
    out of the kind's range (the renderer's for shapes; a sane resize for files)."""
    accepted = sorted(KIND_OPTIONS[kind])
    problems = [
        (name, f"{kind}: unknown option {name!r} (accepted: {', '.join(accepted)})")
        for name in sorted(options)
        if name not in accepted
    ]
    tasks = options.get("tasks")
    if tasks is not None and _tasks(tasks):
        problem = task_problem(kind, tasks)
        if problem:
            problems.append(("tasks", problem))
    size = options.get("size")
    if kind in ("shapes", "nyuv2", "cityscapes") and size is not None and _size(size):
        low, high = (SHAPES_MIN_SIZE, SHAPES_MAX_SIZE) if kind == "shapes" else RESIZE_SIZE_RANGE
        if not all(low <= n <= high for n in size_pair(size)):
            problems.append(
                ("size", f"{kind}: size must be in [{low}, {high}] on each side, got {size!r}")
            )
    return problems


def chosen_tasks(kind: str, tasks: str | Sequence[str] | None) -> tuple[str, ...]:
    """The tasks a well-formed `tasks` option chooses (see `task_problem`): all of the data's
    when it is not given."""
    if tasks is None:
        return KIND_TASKS[kind]
    return (tasks,) if isinstance(tasks, str) else tuple(tasks)


def task_problem(kind: str, tasks: str | Sequence[str]) -> str | None:
    """What is wrong with a well-formed `tasks` option for the data of `kind`, if anything."""
    name, _, _ = kind.partition(":")
    available = ", ".join(KIND_TASKS[kind])
    chosen = chosen_tasks(kind, tasks)
    if not chosen:
        return f"{name}: no tasks chosen (its tasks: {available})"
    unknown = [t for t in chosen if t not in KIND_TASKS[kind]]
    if unknown:
        return f"{name} has no task {unknown[0]!r} (its tasks: {available})"
    return None


def ill_formed_options(options: Mapping[str, object]) -> list[tuple[str, str]]:
    """(option, what is wrong) for each known option whose value is not of its kind."""
    return [
        (name, f"[data] {name} must be {_KINDS[name][1]}, got {options[name]!r}")
        for name in sorted(options)
        if name in _KINDS and not _KINDS[name][0](options[name])
    ]
