"""Shape inference: compute every node's output shape from its inputs, in topological order."""

from __future__ import annotations

from mtsc.ir.errors import MtscError
from mtsc.ir.graph import Graph
from mtsc.ir.ops import OpError, infer_shape


def infer_shapes(g: Graph) -> Graph:
    """Fill in (or re-check) the shape of every node; a bad shape is a user error at the op."""
    for nid in g.topo_order():
        node = g.node(nid)
        try:
            shape = infer_shape(node.op, node.attrs, g.in_shapes(nid))
        except OpError as err:
            raise MtscError(node.loc, f"{node.name}: {err}") from None
        if shape != node.shape:
            g.update(nid, shape=shape)
    return g
