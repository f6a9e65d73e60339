"""The IR verifier: the invariants every pass must keep. A failure is a bug in mtsc."""

from __future__ import annotations

import networkx

from mtsc.ir.errors import InternalError
from mtsc.ir.graph import Graph
from mtsc.ir.ops import OpError, infer_shape, spec_of


def verify(g: Graph, *, after: str = "") -> None:
    """Check acyclicity, edges, arity, attributes, shapes, names and outputs.

    The graph's own order and edge index are checked against networkx's algorithms, so a
    bug in either shows up as a disagreement here.
    """
    where = f" after {after}" if after else ""

    def fail(message: str) -> None:
        raise InternalError(f"IR verification failed{where}: {message}")

    reference = g.to_networkx()
    for nid in g.node_ids():
        if g.users(nid) != sorted(reference.successors(nid)):
            fail(f"{g.node(nid).name}: its readers {g.users(nid)} disagree with its edges")
    if not networkx.is_directed_acyclic_graph(reference):
        fail("the graph has a cycle")
    if g.topo_order() != list(networkx.lexicographical_topological_sort(reference)):
        fail("the topological order disagrees with networkx's")
    names: dict[str, int] = {}
    for nid in g.topo_order():
        node = g.node(nid)
        if node.name in names:
            fail(f"nodes {names[node.name]} and {nid} share the name {node.name!r}")
        names[node.name] = nid
        spec = spec_of(node.op)
        if set(node.attrs) != {a.name for a in spec.attrs}:
            fail(
                f"{node.name}: attributes {sorted(node.attrs)} do not match the {node.op.value} op"
            )
        try:
            expected = infer_shape(node.op, node.attrs, g.in_shapes(nid))
        except OpError as err:
            fail(f"{node.name}: {err}")
        if expected != node.shape:
            fail(f"{node.name}: shape {node.shape} but its inputs give {expected}")
    if not g.outputs:
        fail("the graph has no outputs")
    for key, nid in g.outputs.items():
        if nid not in g:
            fail(f"output {key!r} points at a removed node")
