"""Keep only the backbone: drop the task heads and every output but `backbone`."""

from __future__ import annotations

from mtsc.ir.graph import Graph
from mtsc.ir.passes.eliminate_dead import eliminate_dead


def extract_backbone(g: Graph) -> Graph:
    g.outputs = {"backbone": g.outputs["backbone"]}
    return eliminate_dead(g)
