"""Dead-code elimination: drop every node that no output depends on."""

from __future__ import annotations

from mtsc.ir.graph import Graph


def eliminate_dead(g: Graph) -> Graph:
    live: set[int] = set()
    for out in g.outputs.values():
        live.add(out)
        live |= g.ancestors(out)
    for nid in list(g.node_ids()):
        if nid not in live:
            g.remove(nid)
    return g
