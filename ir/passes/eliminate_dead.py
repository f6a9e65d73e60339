"""Dead-code elimination: drop every node that no output depends on."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mtsc.ir.errors import Diagnostic
from mtsc.ir.graph import Graph
from mtsc.ir.ops import Op


def eliminate_dead(g: Graph) -> Graph:
    live = _live(g)
    for nid in list(g.node_ids()):
        if nid not in live:
            g.remove(nid)
    return g


def drop_unused_values(g: Graph) -> list[Diagnostic]:
    """Drop the ops of a model that no output depends on, and say so: a value computed and
    never read (a gate never applied) is most likely a mistake, and left in, its ops would be
    routed and searched for nothing. One warning for each unused value (one for all the values
    a line makes, in a block called several times), with the count of the ops that only it
    needed, and one for each input no output depends on: the model's forward does not take
    it."""
    live = _live(g)
    dead = [n for n in g.topo_order() if n not in live]
    unused = [n for n in dead if not g.users(n) and g.node(n).op is not Op.INPUT]
    feeds = {n: g.ancestors(n).intersection(dead) for n in unused}
    # an op that feeds two unused values is needed by neither alone
    needed_by = Counter(op for ops in feeds.values() for op in ops)
    warnings = [
        Diagnostic(
            g.node(n).loc, f"input {g.node(n).name!r} is never used: the model does not take it"
        )
        for n in dead
        if g.node(n).op is Op.INPUT
    ]
    by_line: dict[Any, list[int]] = {}
    for nid in unused:
        by_line.setdefault(g.node(nid).loc or nid, []).append(nid)
    for made in by_line.values():
        names = [g.node(n).name for n in made]
        feeding = sum(needed_by[op] == 1 for n in made for op in feeds[n])
        if len(made) == 1:
            what, verb, only = names[0], "is", "only it needs"
        else:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            what = f"the {len(made)} values this line makes ({shown})"
            verb, only = "are", "only they need"
        before = f" with the {feeding} op{'s' * (feeding > 1)} {only}" if feeding else ""
        warnings.append(
            Diagnostic(g.node(made[0]).loc, f"{what} {verb} never used: dropped{before}")
        )
    for nid in reversed(dead):
        g.remove(nid)
    return warnings


def _live(g: Graph) -> set[int]:
    live: set[int] = set()
    for out in g.outputs.values():
        live.add(out)
        live |= g.ancestors(out)
    return live
