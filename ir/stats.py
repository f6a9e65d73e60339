"""Parameter and MAC counts of a graph at its declared input size."""

from __future__ import annotations

from dataclasses import dataclass

from mtsc.ir.graph import Graph, Role
from mtsc.ir.ops import Op, mac_count, param_count


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    ops: int  # operators, inputs not counted
    params: int
    macs: int
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    op_counts: dict[str, int]

    def as_dict(self) -> dict:
        return {
            "model": self.name,
            "ops": self.ops,
            "params": self.params,
            "macs": self.macs,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "outputs": {k: list(v) for k, v in self.outputs.items()},
            "op_counts": dict(self.op_counts),
        }


def node_params(g: Graph, nid: int) -> int:
    node = g.node(nid)
    return param_count(node.op, node.attrs, g.in_shapes(nid), node.shape)


def node_macs(g: Graph, nid: int) -> int:
    node = g.node(nid)
    return mac_count(node.op, node.attrs, g.in_shapes(nid), node.shape)


def summarize(g: Graph) -> Summary:
    params = macs = ops = 0
    counts: dict[str, int] = {}
    inputs: dict[str, tuple[int, ...]] = {}
    for nid, node in g.nodes():
        if node.op is Op.INPUT:
            inputs[node.name] = node.shape
            continue
        ops += 1
        counts[node.op.value] = counts.get(node.op.value, 0) + 1
        params += node_params(g, nid)
        macs += node_macs(g, nid)
    outputs = {key: g.node(nid).shape for key, nid in g.outputs.items()}
    return Summary(g.name, ops, params, macs, inputs, outputs, dict(sorted(counts.items())))


def supermodel_params(g: Graph) -> int:
    """The weights of a routed graph's supermodel (its policy logits aside): a task-specific or
    skip node stands for one copy per task."""
    copies = {Role.SPECIFIC: len(g.tasks), Role.SKIP: len(g.tasks)}
    return sum(node_params(g, nid) * copies.get(node.role, 1) for nid, node in g.nodes())
