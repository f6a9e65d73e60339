"""Dead-code elimination: drop every node that no output depends on."""

from __future__ import annotations

from collections import Counter

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
    routed and searched for nothing. Inputs stay: they are the model's signature. One warning
    for each unused value, with the count of the ops that only it needed."""
    live = _live(g)
    dead = [n for n in g.topo_order() if n not in live and g.node(n).op is not Op.INPUT]
    unused = [n for n in dead if not g.users(n)]
    feeds = {n: g.ancestors(n).intersection(dead) for n in unused}
    # an op that feeds two unused values is needed by neither alone
    needed_by = Counter(op for ops in feeds.values() for op in ops)
    warnings = []
    for nid in unused:
        node = g.node(nid)
        feeding = sum(needed_by[op] == 1 for op in feeds[nid])
        before = f" with the {feeding} op{'s' * (feeding > 1)} only it needs" if feeding else ""
        warnings.append(Diagnostic(node.loc, f"{node.name} is never used: dropped{before}"))
    for nid in reversed(dead):
        g.remove(nid)
    return warnings


def _live(g: Graph) -> set[int]:
    live: set[int] = set()
    for out in g.outputs.values():
        live.add(out)
        live |= g.ancestors(out)
    return live
