"""Hyper-parameters of search and training, with defaults that work on the built-in `shapes`
data with `resnet_tiny.mtl`; overridable from a TOML file and from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsc.errors import MtscError, Span
from mtsc.fsutil import read_source
from mtsc.ir.ops import did_you_mean
from mtsc.runtime.data.options import option_problems

# SearchConfig.mixing: "auto" or one of Supermodel.set_mixing's choices
MIXING_CHOICES = ("auto", "outputs", "weights")


@dataclass
class SearchConfig:
    seed: int = 0
    batch_size: int = 16
    # stage lengths, in optimizer steps
    warmup_steps: int = 400
    search_steps: int = 400
    # policy search: one policy step (Adam, held-out split) after every `policy_every`
    # weight steps (SGD with momentum)
    policy_every: int = 1
    held_out: float = 0.2  # fraction of the training split kept for policy steps
    weight_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not on PReLU slopes
    policy_lr: float = 0.01
    # Gumbel-softmax temperature: tau = max(tau_min, tau_init * tau_decay ** (step / 100))
    tau_init: float = 5.0
    tau_decay: float = 0.8
    tau_min: float = 0.1
    reg_weight: float = 0.01  # lambda_reg of the depth-weighted sharing regulariser
    budget: float | None = None  # instead of reg_weight: a target size (fraction, 0..1]
    budget_weight: float = 1.0
    derive: str = "argmax"  # or "sample"
    derive_seed: int = 0
    eval_every: int = 200
    eval_batches: int = 20  # validation batches per evaluation (0: the whole split)
    checkpoint_every: int = 100
    log_every: int = 10
    num_workers: int = 0
    amp: str | None = None  # "bf16" or "fp16" autocast (fp16 with loss scaling)
    # how routed ops mix their candidates (Supermodel.set_mixing): "outputs" (mix3),
    # "weights" (one grouped call with mixed weights: the same search, less work) or "auto"
    # (weights on a CPU, outputs elsewhere: resolve_mixing)
    mixing: str = "auto"
    data: dict[str, Any] = field(default_factory=dict)  # options for open_dataset

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 16
    steps: int = 800
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not on PReLU slopes
    eval_every: int = 200
    eval_batches: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    num_workers: int = 0
    amp: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_mixing(mixing: str, device_type: str) -> str:
    """SearchConfig.mixing as Supermodel.set_mixing takes it. "auto" mixes weights on a CPU,
    where a search step is measured 1.2x to 1.6x faster that way (benchmarks/NOTES.md), and
    outputs elsewhere: on a GPU that is the fused mix3 kernel, and weights mixing there is not
    measured yet."""
    if mixing != "auto":
        return mixing
    return "weights" if device_type == "cpu" else "outputs"


QUICK = {
    SearchConfig: {
        "warmup_steps": 30,
        "search_steps": 30,
        "eval_every": 30,
        "eval_batches": 4,
        "checkpoint_every": 20,
        "batch_size": 8,
    },
    TrainConfig: {
        "steps": 40,
        "eval_every": 40,
        "eval_batches": 4,
        "checkpoint_every": 20,
        "batch_size": 8,
    },
}


def make_config(
    cls: type,
    toml_path: str | Path | None,
    overrides: dict[str, Any],
    *,
    quick: bool = False,
    data_spec: str | None = None,
) -> Any:
    """Defaults, then `--quick`, then the TOML file, then command-line overrides. With the
    `data_spec` the run reads, `[data]` options that kind of data does not take are refused
    here too, located in the file."""
    values, text = _given(cls, toml_path, overrides, quick=quick)
    config = cls(**values)
    _refuse(_check(config, data_spec), text, toml_path, overrides)
    return config


def given_values(
    cls: type, toml_path: str | Path | None, overrides: dict[str, Any], *, quick: bool = False
) -> dict[str, Any]:
    """The values a command sets (`--quick`'s, then the TOML file's, then the overrides that
    are not None), checked for names and types; the rest keep the defaults."""
    return _given(cls, toml_path, overrides, quick=quick)[0]


def _given(
    cls: type, toml_path: str | Path | None, overrides: dict[str, Any], *, quick: bool
) -> tuple[dict[str, Any], str]:
    """`given_values`, and the TOML file's text ("" without one) for locating later errors."""
    values: dict[str, Any] = dict(QUICK[cls]) if quick else {}
    text = ""
    if toml_path is not None:
        text = _read_toml(Path(toml_path))
        values.update(_parse_toml(text, str(toml_path)))
    for key, value in overrides.items():
        table, dot, inner = key.partition(".")
        if value is None:
            continue
        if dot and table == "data":  # `--set data.size=32`: one option of the file's [data]
            given = values.get("data")
            values["data"] = {**(given if isinstance(given, dict) else {}), inner: value}
        else:
            values[key] = value
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        # located at the first one the file sets; those from --set have no place to show
        raise MtscError(
            _where_set(text, toml_path, unknown),
            f"unknown config keys: {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            notes=tuple(_unknown_key_hints(cls, unknown, sorted(known))),
        )
    _refuse(_check_types(cls, values), text, toml_path, overrides)
    return values, text


def _unknown_key_hints(cls: type, unknown: list[str], known: list[str]) -> list[str]:
    """A near miss of a known key, or a key of the other command's config (`lr` is train's)."""
    other, command = (TrainConfig, "train") if cls is SearchConfig else (SearchConfig, "search")
    theirs = {f.name for f in dataclasses.fields(other)}
    near = {key: did_you_mean(key, known) for key in unknown if key not in theirs}
    hints = [f"{key}{hint}" for key, hint in near.items() if hint]
    borrowed = [key for key in unknown if key in theirs]
    if borrowed:  # one note: a whole file of the other command's keys is one mistake
        if len(borrowed) == 1:
            which = f"{borrowed[0]} is a key"
        else:
            which = "they are keys" if borrowed == unknown else f"{', '.join(borrowed)} are keys"
        hints.append(f"{which} of `mtsc {command}`'s config")
    return hints


def _refuse(
    problems: list[tuple[str, str]],
    text: str = "",
    toml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Raise the config's problems (key, what is wrong) as one error, located at the first
    line of the TOML file that sets one of those keys (not one a command-line value set)."""
    if not problems:
        return
    from_file = [k for k, _ in problems if (overrides or {}).get(k) is None]
    raise MtscError(
        _where_set(text, toml_path, from_file),
        "bad config: " + "; ".join(message for _, message in problems),
    )


def _where_set(text: str, toml_path: str | Path | None, keys: list[str]) -> Span | None:
    """The first line of the TOML `text` that sets one of `keys` (`table.key`: in that table);
    None if none does."""
    spans = [_key_span(text, str(toml_path), *k.split(".", 1)) for k in keys] if text else []
    return min((s for s in spans if s is not None), key=lambda s: s.line, default=None)


def _read_toml(path: Path) -> str:
    try:
        return read_source(path)
    except OSError as err:
        raise MtscError(None, f"cannot read config {path}: {err.strerror}") from None


# tomllib (3.11) gives the place only in its message: "Invalid value (at line 2, column 14)"
_TOML_PLACE = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)$")


def _parse_toml(text: str, file: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        place = _TOML_PLACE.search(message)
        if place is None:
            raise MtscError(None, f"{file}: invalid TOML: {message}") from None
        if place[1]:
            line, column = int(place[1]), int(place[2])
        else:
            lines = text.split("\n")
            line, column = len(lines), len(lines[-1]) + 1
        span = Span(file, line, column, source=text)
        raise MtscError(span, f"invalid TOML: {message[: place.start()]}") from None
    except (ValueError, RecursionError) as err:  # a number too long, nesting too deep
        raise MtscError(None, f"{file}: invalid TOML: {err}") from None


def _key_span(text: str, file: str, key: str, inner: str | None = None) -> Span | None:
    """Where a TOML file sets top-level `key`: `key = ...` (or `key.x = ...`) before the first
    table, or a table `[key]`, `[key.x]`, `[[key]]`; with `inner`, where it sets `inner` in
    the table `key` (see `_inner_key_span`). None when no line reads so."""
    if inner is not None:
        return _inner_key_span(text, file, key, inner)
    table = re.compile(rf"\s*\[\[?\s*({_toml_name(key)})\s*[.\]]")
    assignment = re.compile(rf"\s*({_toml_name(key)})\s*[.=]")
    at_top = True
    for number, line in enumerate(text.split("\n"), 1):  # as tomllib counts lines
        found = table.match(line) or (assignment.match(line) if at_top else None)
        if found:
            return _span_of(found, file, number, text)
        if line.lstrip().startswith("["):
            at_top = False
    return None


def _inner_key_span(text: str, file: str, key: str, inner: str) -> Span | None:
    """Where a TOML file sets `inner` in the table `key`: `inner = ...` under `[key]`, a table
    `[key.inner]`, or before the first table `key.inner = ...` or `key = { inner = ... }`."""
    k, i = _toml_name(key), _toml_name(inner)
    own_table = re.compile(rf"\s*\[\s*{k}\s*\]")
    inner_table = re.compile(rf"\s*\[\[?\s*{k}\s*\.\s*({i})\s*[.\]]")
    in_table = re.compile(rf"\s*({i})\s*[.=]")
    dotted = re.compile(rf"\s*{k}\s*\.\s*({i})\s*[.=]")
    inline = re.compile(rf"\s*{k}\s*=\s*\{{(?:.*[{{,])?\s*({i})\s*=")
    at_top, in_own = True, False
    for number, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("["):
            found = inner_table.match(line)
            if found:
                return _span_of(found, file, number, text)
            at_top, in_own = False, own_table.match(line) is not None
            continue
        if in_own:
            found = in_table.match(line)
        else:
            found = (dotted.match(line) or inline.match(line)) if at_top else None
        if found:
            return _span_of(found, file, number, text)
    return None


def _span_of(found: re.Match, file: str, number: int, text: str) -> Span:
    """The span of `found`'s first group on line `number` of `text`."""
    start, end = found.span(1)
    return Span(file, number, start + 1, number, end + 1, source=text)


def _toml_name(key: str) -> str:
    """A TOML key as written: bare or quoted."""
    return rf"(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')"


def resumed_config(
    cls: type,
    given: dict[str, Any],
    state: dict[str, Any],
    where: Path,
    *,
    saved_extra: dict[str, Any] | None = None,
    given_extra: dict[str, Any] | None = None,
) -> Any:
    """The config a resumed run keeps: the one in its checkpoint `state`. A value given again
    (`given`, and `given_extra` against `saved_extra` for settings kept beside the config,
    such as command-line options) must be the saved one."""
    config = saved_config(cls, state.get("config") or {})
    refuse_changed_settings(
        {**config.to_dict(), **(saved_extra or {})}, {**given, **(given_extra or {})}, where
    )
    return config


def saved_config(cls: type, saved: dict[str, Any]) -> Any:
    """The config a checkpoint holds (its `to_dict`); a key this version no longer has is
    dropped, one it added keeps its default."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in saved.items() if k in known}
    _refuse(_check_types(cls, values))
    config = cls(**values)
    _refuse(_check(config))
    return config


def refuse_changed_settings(saved: dict[str, Any], given: dict[str, Any], where: Path) -> None:
    """A resumed run keeps the settings it was started with: giving one again is fine, giving
    it another value is refused, naming every such key."""
    differ = [k for k in saved if k in given and given[k] != saved[k]]
    if differ:
        raise MtscError(
            None,
            f"--resume keeps the run's settings; these differ from {where}: "
            + ", ".join(f"{k} ({_shown(saved[k])} there, {_shown(given[k])} here)" for k in differ),
        )


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _check_types(cls: type, values: dict[str, Any]) -> list[tuple[str, str]]:
    """TOML and --set give typed values; a wrong type is a user's mistake, not a traceback.
    Returns the problems: (key, what is wrong)."""
    hints = typing.get_type_hints(cls)
    problems = []
    for name, value in values.items():
        hint = hints[name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        allowed = tuple(typing.get_origin(a) or a for a in allowed)  # dict[str, Any] -> dict
        if float in allowed and type(value) is int:
            values[name] = float(value)  # TOML writes 1 for 1.0
        elif (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            wanted = " or ".join("none" if a is type(None) else a.__name__ for a in allowed)
            problems.append((name, f"{name} must be {wanted}, got {value!r}"))
    return problems


# Seeds are below 2**32: see _RANGES.
SEED_LIMIT = 2**32


def seed_argument(text: str) -> int:
    """argparse's type for --seed: the error names the flag, as --seed may set two seeds."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a whole number, got {text!r}") from None
    if not 0 <= seed < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in [0, {SEED_LIMIT - 1}], got {seed}")
    return seed


# (names, test, wording): the ranges of the numeric values; `_check` skips the names its
# config lacks, and nan fails every test
_RANGES = (
    (
        ("batch_size", "checkpoint_every", "log_every", "policy_every"),
        lambda v: v >= 1,  # all of them divide or count steps
        "at least 1",
    ),
    (
        (
            "warmup_steps",
            "search_steps",
            "steps",
            "weight_decay",
            "reg_weight",
            "budget_weight",
        ),
        lambda v: v >= 0,
        "at least 0",
    ),
    # each worker is a process holding a copy of the dataset
    (("num_workers",), lambda v: 0 <= v <= 256, "in [0, 256]"),
    (("eval_every",), lambda v: v >= 0, "at least 0 (0: never)"),
    (("eval_batches",), lambda v: v >= 0, "at least 0 (0: the whole split)"),
    (("weight_lr", "policy_lr", "lr", "tau_init", "tau_min"), lambda v: v > 0, "positive"),
    (("tau_decay",), lambda v: 0 < v <= 1, "in (0, 1]"),
    (("momentum",), lambda v: 0 <= v < 1, "in [0, 1)"),
    (
        ("held_out",),
        lambda v: 0 < v < 1,
        "a fraction in (0, 1): the policy steps train on that part of the training split, "
        "the weight steps on the rest",
    ),
    (
        ("seed", "derive_seed"),
        # torch takes seeds below 2**64, but a batch stream seeds each epoch with
        # seed * 100_003 + epoch, and numpy's seed is taken modulo 2**32: below 2**32 every
        # derived seed fits and no two seeds alias
        lambda v: 0 <= v < SEED_LIMIT,
        f"in [0, {SEED_LIMIT - 1}]",
    ),
)


def _check(config: Any, data_spec: str | None = None) -> list[tuple[str, str]]:
    """The values out of range: (key, what is wrong)."""
    problems = []
    for names, allowed, wording in _RANGES:
        for name in names:
            if hasattr(config, name) and not allowed(getattr(config, name)):
                problems.append((name, f"{name} must be {wording}"))
    if getattr(config, "budget", None) is not None and not 0 < config.budget <= 1:
        problems.append(("budget", "budget must be a fraction in (0, 1]"))
    tau_min, tau_init = getattr(config, "tau_min", 0), getattr(config, "tau_init", 0)
    if tau_min > tau_init > 0:  # the temperature falls from tau_init to tau_min
        problems.append(("tau_min", f"tau_min ({tau_min}) must not be above tau_init ({tau_init})"))
    if getattr(config, "derive", "argmax") not in ("argmax", "sample"):
        problems.append(("derive", "derive must be 'argmax' or 'sample'"))
    if getattr(config, "mixing", "auto") not in MIXING_CHOICES:
        problems.append(("mixing", "mixing must be 'auto', 'outputs' or 'weights'"))
    if config.amp not in (None, "bf16", "fp16"):
        problems.append(("amp", "amp must be bf16 or fp16"))
    data = getattr(config, "data", None) or {}
    problems += [(f"data.{name}", message) for name, message in option_problems(data, data_spec)]
    return problems
