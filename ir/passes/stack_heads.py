"""Stack the task heads: run the ops the heads have in common once over the task-stacked batch.

The heads of a model are often one block with different options (`aspp(classes=40)`,
`aspp(classes=3)`, ...): every op up to the class-score convs is the same op with the same
shape in each head. Such an op becomes one task-specific node of the routed trunk (one
grouped call over all tasks, weights per task, as the trunk's task-specific ops), instead of
T calls on T task slices. The ops where the heads differ stay per task, fed by a
`task_slice` of the stacked op before them.

An op is stacked when every task's head has it: the same op, attributes, output shape and
name below `heads.<task>`, reading the same trunk values or stacked ops. The stacked node is
named `heads.<rest>` and keeps the per-task names in `meta["task_names"]` (task order), from
which prune names each task's copy as if the heads had never been stacked.
"""

from __future__ import annotations

from mtsc.ir.graph import Graph, Node, Role
from mtsc.ir.ops import PARAMETRIC, Op
from mtsc.ir.passes.insert_routing import task_slice_node


def stack_heads(g: Graph) -> Graph:
    tasks = tuple(t.name for t in g.tasks)
    if len(tasks) < 2:
        return g
    signature = _signatures(g)
    members: dict[int, dict[str, int]] = {}
    for nid in g.topo_order():
        node = g.node(nid)
        if node.task in tasks:
            members.setdefault(signature[nid], {})[node.task] = nid
    taken = set(g.by_name())
    stacked: dict[int, int] = {}  # signature -> the trunk value all tasks read, or stacked op
    for nid in g.topo_order():
        node = g.node(nid)
        if node.task != tasks[0] or len(group := members[signature[nid]]) != len(tasks):
            continue
        if node.op is Op.TASK_SLICE:
            stacked[signature[nid]] = g.inputs(nid)[0]
            continue
        name = f"heads.{_name_below_task(node)}"
        if name in taken or any(signature[i] not in stacked for i in g.inputs(nid)):
            continue
        taken.add(name)
        stacked[signature[nid]] = g.add(
            Node(
                node.op,
                name,
                dict(node.attrs),
                node.shape,
                node.loc,
                sharing=node.sharing,
                role=Role.SPECIFIC if node.op in PARAMETRIC else Role.SHARED,
                meta={**node.meta, "task_names": tuple(g.node(group[t]).name for t in tasks)},
            ),
            [stacked[signature[i]] for i in g.inputs(nid)],
        )
    _read_through_slices(g, signature, stacked)
    return g


def _signatures(g: Graph) -> dict[int, int]:
    """A number per head node: equal for nodes that compute the same op on the same values,
    up to the task."""
    numbers: dict[tuple, int] = {}
    signature: dict[int, int] = {}
    for nid in g.topo_order():
        node = g.node(nid)
        if node.task is None:
            continue
        if node.op is Op.TASK_SLICE:
            key: tuple = ("slice", g.inputs(nid)[0])
        else:
            rest = _name_below_task(node)
            inputs = tuple(signature.get(i) for i in g.inputs(nid))
            key = (node.op, repr(sorted(node.attrs.items())), node.shape, node.sharing, inputs)
            key = (nid,) if rest is None or None in inputs else (*key, rest)
        signature[nid] = numbers.setdefault(key, len(numbers))
    return signature


def _name_below_task(node: Node) -> str | None:
    prefix = f"heads.{node.task}."
    return node.name[len(prefix) :] if node.name.startswith(prefix) else None


def _read_through_slices(g: Graph, signature: dict[int, int], stacked: dict[int, int]) -> None:
    """Point what is left of each head (and each task's output) at a slice of the stacked op
    it read, then drop the heads' stacked ops and the slices nobody reads."""
    slices: dict[tuple[int, str], int] = {}

    def slice_of(src: int, task: str) -> int:
        if (src, task) not in slices:
            slices[src, task] = g.add(task_slice_node(g.node(src), task), [src])
        return slices[src, task]

    def replaced(nid: int) -> bool:  # a head op now computed by a stacked one
        node = g.node(nid)
        return node.task is not None and node.op is not Op.TASK_SLICE and signature[nid] in stacked

    heads = [n for n in g.topo_order() if g.node(n).task is not None]
    for nid in heads:
        if not replaced(nid) and g.node(nid).op is not Op.TASK_SLICE:
            task = g.node(nid).task
            ins = [
                slice_of(stacked[signature[i]], task) if replaced(i) else i for i in g.inputs(nid)
            ]
            g.set_inputs(nid, ins)
    for task, out in g.outputs.items():
        if replaced(out):
            g.outputs[task] = slice_of(stacked[signature[out]], task)
    outputs = set(g.outputs.values())
    for nid in reversed(heads):
        if replaced(nid) or (g.node(nid).op is Op.TASK_SLICE and not g.users(nid)):
            if nid not in outputs:
                g.remove(nid)
