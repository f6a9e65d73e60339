"""The operator graph: immutable nodes in a networkx multigraph, behind a small typed API.

Node ids are ints handed out in creation order; they double as the stable key for the
deterministic topological order. Edges carry the input `port` (a multigraph, because
`add(x, x)` reads one value twice).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from mtsc.ir.errors import InternalError, Span
from mtsc.ir.ops import Op, Shape


class Role(enum.Enum):
    """What a backbone node is in the supermodel (set by `insert_routing`)."""

    SHARED = "shared"  # one copy of the weights, run over all tasks' stacked batch
    SPECIFIC = "specific"  # one copy per task, run as one grouped call
    SKIP = "skip"  # the per-task projection that stands in for a skipped op


class Sharing(enum.Enum):
    """A user's pin on an op: always shared across tasks, or always one copy per task."""

    SHARED = "shared"
    SPECIFIC = "specific"


@dataclass(frozen=True, slots=True)
class Call:
    """A named call with keyword arguments, e.g. a head `aspp(classes=13)` or a loss."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    loc: Span | None = None

    def kwarg(self, key: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(key, default)

    def __str__(self) -> str:
        if not self.kwargs:
            return self.name
        args = ", ".join(f"{k}={_literal(v)}" for k, v in self.kwargs)
        return f"{self.name}({args})"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One entry of the `tasks` section."""

    name: str
    head: Call
    loss: Call | None = None
    metric: Call | None = None
    weight: float = 1.0
    loc: Span | None = None


@dataclass(frozen=True, slots=True)
class Node:
    op: Op
    name: str  # hierarchical, dot-separated: "layer2.0.conv1"
    attrs: dict[str, Any]
    shape: Shape | None = None
    loc: Span | None = None
    sharing: Sharing | None = None
    role: Role | None = None  # in a supermodel: shared, task-specific or skip
    task: str | None = None  # set on the nodes of one task's head
    meta: dict[str, Any] = field(default_factory=dict)  # pass scratch data, never tensors


class Graph:
    """A model: nodes, ordered inputs per node, named outputs, and the task list."""

    def __init__(self, name: str, *, source: str | None = None) -> None:
        self.name = name
        self.source = source  # the file the model came from, for headers and messages
        self.tasks: tuple[TaskSpec, ...] = ()
        self.outputs: dict[str, int] = {}
        self._nx = nx.MultiDiGraph()
        self._next_id = 0
        # Derived views, rebuilt on demand after any change (passes ask for them often).
        self._inputs: dict[int, list[int]] = {}
        self._topo: list[int] | None = None

    # -- building ------------------------------------------------------------------------

    def add(self, node: Node, inputs: Sequence[int] = ()) -> int:
        nid = self._next_id
        self._next_id += 1
        self._nx.add_node(nid, node=node)
        for port, src in enumerate(inputs):
            if src not in self._nx:
                raise InternalError(f"input {src} of {node.name} is not in the graph")
            self._nx.add_edge(src, nid, key=port, port=port)
        self._inputs[nid] = list(inputs)
        self._topo = None
        return nid

    def replace(self, nid: int, node: Node) -> None:
        self._nx.nodes[nid]["node"] = node

    def update(self, nid: int, **changes: Any) -> Node:
        node = replace(self.node(nid), **changes)
        self.replace(nid, node)
        return node

    def set_inputs(self, nid: int, inputs: Sequence[int]) -> None:
        self._nx.remove_edges_from(list(self._nx.in_edges(nid, keys=True)))
        for port, src in enumerate(inputs):
            self._nx.add_edge(src, nid, key=port, port=port)
        self._inputs[nid] = list(inputs)
        self._topo = None

    def redirect_users(self, old: int, new: int) -> None:
        """Make every reader of `old` read `new` instead (outputs included)."""
        for user in self.users(old):
            self.set_inputs(user, [new if i == old else i for i in self.inputs(user)])
        for key, nid in self.outputs.items():
            if nid == old:
                self.outputs[key] = new

    def remove(self, nid: int) -> None:
        for user in self._nx.successors(nid):
            self._inputs[user] = [i for i in self._inputs[user] if i != nid]
        self._nx.remove_node(nid)
        del self._inputs[nid]
        self._topo = None

    # -- reading -------------------------------------------------------------------------

    def node(self, nid: int) -> Node:
        return self._nx.nodes[nid]["node"]

    def __contains__(self, nid: int) -> bool:
        return nid in self._nx

    def __len__(self) -> int:
        return self._nx.number_of_nodes()

    def node_ids(self) -> Iterator[int]:
        return iter(sorted(self._nx.nodes))

    def inputs(self, nid: int) -> list[int]:
        return list(self._inputs[nid])

    def input_ports(self, nid: int) -> list[int]:
        return sorted(port for _, _, port in self._nx.in_edges(nid, data="port"))

    def users(self, nid: int) -> list[int]:
        return sorted(set(self._nx.successors(nid)))

    def topo_order(self) -> list[int]:
        if self._topo is None:
            self._topo = list(nx.lexicographical_topological_sort(self._nx))
        return list(self._topo)

    def is_acyclic(self) -> bool:
        return nx.is_directed_acyclic_graph(self._nx)

    def input_ids(self) -> list[int]:
        return [n for n in self.node_ids() if self.node(n).op is Op.INPUT]

    def ancestors(self, nid: int) -> set[int]:
        return nx.ancestors(self._nx, nid)

    def by_name(self) -> dict[str, int]:
        return {self.node(n).name: n for n in self.node_ids()}

    def in_shapes(self, nid: int) -> list[Shape]:
        shapes = []
        for src in self.inputs(nid):
            shape = self.node(src).shape
            if shape is None:
                raise InternalError(f"{self.node(src).name} has no inferred shape")
            shapes.append(shape)
        return shapes

    def nodes(self, ids: Iterable[int] | None = None) -> Iterator[tuple[int, Node]]:
        for nid in self.topo_order() if ids is None else ids:
            yield nid, self.node(nid)

    def copy(self) -> Graph:
        other = Graph(self.name, source=self.source)
        other.tasks = self.tasks
        other.outputs = dict(self.outputs)
        other._nx = self._nx.copy()
        other._next_id = self._next_id
        other._inputs = {n: list(i) for n, i in self._inputs.items()}
        return other
