"""The operator graph: immutable nodes and ordered input edges, behind a small typed API.

Node ids are ints handed out in creation order; they double as the stable key for the
deterministic topological order. Edges carry the input `port` (a multigraph, because
`add(x, x)` reads one value twice).

The graph keeps its own adjacency (the same dict-of-lists networkx would hold) because
importing networkx costs `mtsc build` a third of its run time; `to_networkx()` hands the
same graph to networkx for analysis, and the verifier cross-checks our order against it.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from mtsc.ir.errors import InternalError, Span
from mtsc.ir.ops import Op, Shape

if TYPE_CHECKING:
    import networkx


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


@dataclass(frozen=True, slots=True)
class BackboneRef:
    """A head option naming a backbone variable (`low=skip`): the head reads that tensor."""

    name: str

    def __str__(self) -> str:
        return self.name


def _literal(value: Any) -> str:
    if isinstance(value, BackboneRef):
        return value.name
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
        self._nodes: dict[int, Node] = {}
        self._inputs: dict[int, list[int]] = {}  # node -> its inputs, by port
        self._users: dict[int, dict[int, int]] = {}  # node -> {reader: number of edges}
        self._next_id = 0
        self._topo: list[int] | None = None  # rebuilt on demand after any change

    # -- building ------------------------------------------------------------------------

    def add(self, node: Node, inputs: Sequence[int] = ()) -> int:
        self._check_inputs(node, inputs)
        nid = self._next_id
        self._next_id += 1
        self._nodes[nid] = node
        self._users[nid] = {}
        self._link(nid, inputs)
        return nid

    def replace(self, nid: int, node: Node) -> None:
        self._nodes[nid] = node

    def update(self, nid: int, **changes: Any) -> Node:
        node = replace(self.node(nid), **changes)
        self.replace(nid, node)
        return node

    def set_inputs(self, nid: int, inputs: Sequence[int]) -> None:
        self._check_inputs(self._nodes[nid], inputs)
        for src in self._inputs[nid]:
            self._users[src].pop(nid, None)
        self._link(nid, inputs)

    def _check_inputs(self, node: Node, inputs: Sequence[int]) -> None:
        for src in inputs:
            if src not in self._nodes:
                raise InternalError(f"input {src} of {node.name} is not in the graph")

    def _link(self, nid: int, inputs: Sequence[int]) -> None:
        self._inputs[nid] = list(inputs)
        for src in inputs:
            self._users[src][nid] = self._users[src].get(nid, 0) + 1
        self._topo = None

    def redirect_users(self, old: int, new: int) -> None:
        """Make every reader of `old` read `new` instead (outputs included)."""
        for user in self.users(old):
            self.set_inputs(user, [new if i == old else i for i in self.inputs(user)])
        for key, nid in self.outputs.items():
            if nid == old:
                self.outputs[key] = new

    def remove(self, nid: int) -> None:
        """Delete a node with its edges; its readers lose that input."""
        for user in self._users.pop(nid):
            self._inputs[user] = [i for i in self._inputs[user] if i != nid]
        for src in self._inputs.pop(nid):
            if src != nid:
                self._users[src].pop(nid, None)
        del self._nodes[nid]
        self._topo = None

    # -- reading -------------------------------------------------------------------------

    def node(self, nid: int) -> Node:
        return self._nodes[nid]

    def __contains__(self, nid: int) -> bool:
        return nid in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def node_ids(self) -> Iterator[int]:
        return iter(sorted(self._nodes))

    def inputs(self, nid: int) -> list[int]:
        return list(self._inputs[nid])

    def users(self, nid: int) -> list[int]:
        return sorted(self._users[nid])

    def topo_order(self) -> list[int]:
        """Inputs before readers; among ready nodes the lowest id first (deterministic)."""
        if self._topo is None:
            order = self._kahn_order()
            if len(order) != len(self._nodes):
                raise InternalError(f"{self.name}: the graph has a cycle")
            self._topo = order
        return list(self._topo)

    def _kahn_order(self) -> list[int]:
        pending = {nid: len(set(srcs)) for nid, srcs in self._inputs.items()}
        ready = [nid for nid, count in pending.items() if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            nid = heapq.heappop(ready)
            order.append(nid)
            for user in self._users[nid]:
                pending[user] -= 1
                if pending[user] == 0:
                    heapq.heappush(ready, user)
        return order

    def is_acyclic(self) -> bool:
        return len(self._kahn_order()) == len(self._nodes)

    def input_ids(self) -> list[int]:
        return [n for n in self.node_ids() if self.node(n).op is Op.INPUT]

    def ancestors(self, nid: int) -> set[int]:
        """Every node `nid` depends on, itself excluded."""
        seen: set[int] = set()
        stack = list(self._inputs[nid])
        while stack:
            src = stack.pop()
            if src not in seen:
                seen.add(src)
                stack.extend(self._inputs[src])
        return seen

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
        other._nodes = dict(self._nodes)
        other._inputs = {n: list(i) for n, i in self._inputs.items()}
        other._users = {n: dict(u) for n, u in self._users.items()}
        other._next_id = self._next_id
        return other

    def to_networkx(self) -> networkx.MultiDiGraph:
        """The graph as a networkx multigraph: node attribute `node`, one edge per input
        keyed by its port; graph attributes `name`, `outputs` and `tasks`."""
        import networkx

        out = networkx.MultiDiGraph(name=self.name, outputs=dict(self.outputs), tasks=self.tasks)
        for nid, node in self._nodes.items():
            out.add_node(nid, node=node)
        for nid, srcs in self._inputs.items():
            for port, src in enumerate(srcs):
                out.add_edge(src, nid, key=port, port=port)
        return out
