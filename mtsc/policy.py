"""Reading policies (`policy.json`, or the `shared` / `specific` shorthands) for a routed graph.

Policies are JSON, never code. Their format and checks live in `mtsc.runtime.policy_format`,
which the generated supermodel shares.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtsc.errors import MtscError, Span
from mtsc.fsutil import read_source
from mtsc.ir.graph import Graph
from mtsc.ir.ops import Op, did_you_mean
from mtsc.ir.passes.insert_routing import pinned_ops
from mtsc.runtime.policy_format import CHOICES, check_policy, uniform_policy

SHORTHANDS = ("shared", "specific")


def routed_ops(g: Graph) -> dict[str, bool]:
    """Routed op name -> whether it has a skip candidate, in order."""
    return {
        g.node(n).attrs["op"]: g.node(n).attrs["skip"]
        for n in g.topo_order()
        if g.node(n).op is Op.ROUTE
    }


def read_policy(spec: str, g: Graph) -> dict:
    """A policy for routed graph `g` from a file path or a shorthand; checked against `g`."""
    tasks = tuple(t.name for t in g.tasks)
    ops = routed_ops(g)
    if spec in SHORTHANDS:
        return uniform_policy(g.name, tasks, list(ops), spec)
    path = Path(spec)
    try:
        text = read_source(path)
    except OSError as err:
        hint = ""
        if path.name == spec and not path.exists():  # a bare word: maybe a shorthand misspelt
            hint = did_you_mean(spec, SHORTHANDS) or f" (shorthands: {', '.join(SHORTHANDS)})"
        raise MtscError(None, f"cannot read policy {path}: {err.strerror}{hint}") from None
    try:
        policy = json.loads(text)
    except json.JSONDecodeError as err:
        span = Span(str(path), err.lineno, err.colno, source=text)
        raise MtscError(span, f"invalid JSON: {err.msg}") from None
    except (ValueError, RecursionError) as err:  # a number too long, nesting too deep
        raise MtscError(None, f"{path}: invalid JSON: {err}") from None
    problems = check_policy(policy, g.name, tasks, ops, pinned_ops(g))
    if problems:
        raise MtscError(
            None,
            f"{path}: the policy does not match {g.source or g.name}",
            notes=tuple(problems),
        )
    return policy


__all__ = ["CHOICES", "SHORTHANDS", "pinned_ops", "read_policy", "routed_ops"]
