"""Task routing: turn a model (backbone + heads) into the multi-task supermodel.

For every routed op `n` (conv2d and linear that the user did not pin) the three candidates
become explicit nodes, joined by a `route` node that carries the policy slot:

    shared   `n`           (role SHARED: one copy, run over every task's stacked batch)
    specific `n.specific`  (role SPECIFIC: one copy per task, one grouped call)
    skip     the input of `n` when `n` keeps the shape, else the per-task projection
             `n.skip.conv` (1x1, the op's stride) + `n.skip.bn` (role SKIP); no skip when
             even a projection cannot give the op's output size at every input size. On a
             1x1 map (pooled features: an SE gate) the projection is a linear map and has
             no batchnorm, as a linear op's has none: one there would normalise each
             channel over the batch alone (to +-1 at two samples a task; at one it fails)
    route    `n.route`     (attrs: op name, depth among routed ops, whether skip exists)

Batchnorm (and scale) is task-specific unless `share_bn`; PReLU always is (with batchnorm and
scale the only unpinned parametric ops that are not routed: per task, all-specific is T
independent networks). Ops pinned `@specific` get one copy per task, ops pinned `@shared` stay
shared. Non-parametric ops act per task on the stacked
batch. The shared prefix (the inputs and what every task runs alike before the first routed
op, such as a pinned stem) runs once on the batch: a `task_stack` node follows it, and a
`task_slice` node feeds each task's head its own part of the stacked backbone output.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtsc.ir.errors import MtscError
from mtsc.ir.graph import Graph, Node, Role, Sharing
from mtsc.ir.ops import ROUTABLE, Op, OpError, Shape, infer_shape, spec_of
from mtsc.ir.stats import node_params


@dataclass(frozen=True, slots=True)
class RoutingOptions:
    share_bn: bool = False


def insert_routing(
    g: Graph, tasks: tuple[str, ...] | None = None, options: RoutingOptions = RoutingOptions()
) -> Graph:
    tasks = tuple(t.name for t in g.tasks) if tasks is None else tasks
    if not tasks:
        raise MtscError(
            None,
            f"{g.source or g.name}: the model has no tasks section to route",
            notes=no_tasks_notes(g.source),
        )
    missing = [t for t in tasks if t not in g.outputs]
    if missing:
        raise MtscError(None, f"tasks without a head in the model: {', '.join(missing)}")
    by_name = {t.name: t for t in g.tasks}
    g.tasks = tuple(by_name[t] for t in tasks)
    g.outputs = {t: g.outputs[t] for t in tasks}
    backbone = [n for n in g.topo_order() if g.node(n).task is None]
    routed = [n for n in backbone if g.node(n).op in ROUTABLE and g.node(n).sharing is None]
    for depth, nid in enumerate(routed, start=1):
        _route(g, nid, depth)
    for nid in backbone:
        node = g.node(nid)
        if node.role is not None or node.op is Op.INPUT:
            continue
        g.update(nid, role=_role_of(node, options))
    _stack_after_shared_prefix(g)
    _slice_for_heads(g, tasks)
    return g


def no_tasks_notes(source: str | None) -> tuple[str, ...]:
    """How to give tasks to a Caffe backbone, which cannot hold a tasks section."""
    if source is None or not str(source).endswith((".prototxt", ".prototxt.txt")):
        return ()
    return (
        f"a .prototxt is a backbone alone: `mtsc import {source} -o MODEL.mtl`, then add a "
        "`tasks { ... }` section to MODEL.mtl",
    )


def pinned_ops(g: Graph) -> list[str]:
    """The trunk's convs and linears that the model pins (`@shared`, `@specific`): not routed."""
    return [
        g.node(n).name
        for n in g.topo_order()
        if g.node(n).op in ROUTABLE and g.node(n).task is None and g.node(n).sharing is not None
    ]


def _role_of(node: Node, options: RoutingOptions) -> Role:
    if node.sharing is Sharing.SPECIFIC:
        return Role.SPECIFIC
    if node.sharing is Sharing.SHARED:
        return Role.SHARED
    if node.op in (Op.BATCHNORM, Op.SCALE) and not options.share_bn:
        return Role.SPECIFIC
    if node.op in (Op.PRELU, Op.DECONV2D):  # per task, so all-specific is T networks
        return Role.SPECIFIC
    return Role.SHARED


def _stack_after_shared_prefix(g: Graph) -> None:
    """A task_stack on each edge out of the shared prefix: the inputs and the ops after them
    that every task runs alike (one module, no routing, no dropout mask of its own: a pinned
    stem). The prefix runs once on the batch; the tasks' copies start at the stacks."""
    candidates = {i for n in g.node_ids() if g.node(n).op is Op.ROUTE for i in g.inputs(n)[:2]}
    prefix: set[int] = set()
    for nid in g.topo_order():
        node = g.node(nid)
        if node.op is Op.INPUT or (
            node.task is None
            and node.role is Role.SHARED
            and node.op is not Op.DROPOUT
            and nid not in candidates
            and all(i in prefix for i in g.inputs(nid))
        ):
            prefix.add(nid)
    for nid in [n for n in g.topo_order() if n in prefix]:
        outside = [u for u in g.users(nid) if u not in prefix]
        if not outside:
            continue
        node = g.node(nid)
        stack = g.add(Node(Op.TASK_STACK, f"{node.name}.stacked", {}, node.shape, node.loc), [nid])
        for user in outside:
            g.set_inputs(user, [stack if i == nid else i for i in g.inputs(user)])


def _slice_for_heads(g: Graph, tasks: tuple[str, ...]) -> None:
    """Every edge from the (task-stacked) trunk into a head goes through that task's slice."""
    slices: dict[tuple[int, str], int] = {}
    for nid in g.topo_order():
        node = g.node(nid)
        if node.task is None:
            continue
        new_inputs = []
        for src in g.inputs(nid):
            src_node = g.node(src)
            if src_node.task is None:
                key = (src, node.task)
                if key not in slices:
                    slices[key] = g.add(task_slice_node(src_node, node.task), [src])
                src = slices[key]
            new_inputs.append(src)
        g.set_inputs(nid, new_inputs)


def task_slice_node(src: Node, task: str) -> Node:
    """The node taking `task`'s part of the task-stacked value of `src`."""
    return Node(Op.TASK_SLICE, f"{src.name}.{task}", {"task": task}, src.shape, src.loc, task=task)


def _route(g: Graph, nid: int, depth: int) -> None:
    node = g.node(nid)
    (x,) = g.inputs(nid)
    in_shape = g.node(x).shape
    users = g.users(nid)
    outputs = [k for k, v in g.outputs.items() if v == nid]
    g.update(nid, role=Role.SHARED, meta={**node.meta, "depth": depth})
    specific = g.add(
        Node(
            node.op,
            f"{node.name}.specific",
            dict(node.attrs),
            node.shape,
            node.loc,
            role=Role.SPECIFIC,
            meta=dict(node.meta),
        ),
        [x],
    )
    candidates = [nid, specific]
    skip = _skip_candidate(g, node, x, in_shape)
    if skip is not None:
        candidates.append(skip)
    route = g.add(
        Node(
            Op.ROUTE,
            f"{node.name}.route",
            {"op": node.name, "depth": depth, "skip": skip is not None},
            node.shape,
            node.loc,
            meta=dict(node.meta),
        ),
        candidates,
    )
    g.update(route, meta={**g.node(route).meta, "cost": choice_params(g, route)})
    for user in users:
        g.set_inputs(user, [route if i == nid else i for i in g.inputs(user)])
    for key in outputs:
        g.outputs[key] = route


def _skip_candidate(g: Graph, node: Node, x: int, in_shape: Shape) -> int | None:
    """The identity when the op keeps the shape, else a projection when one fits. A conv's
    skip must fit at every input size, as the supermodel runs at any: its windows must be
    centred on the input pixels of its stride's grid (`p = d * (k - 1) / 2`). A 2x2 stride-2
    conv halves 9 pixels to 4 where a 1x1 stride-2 projection gives 5: no skip."""
    if node.op is Op.LINEAR:
        if in_shape == node.shape:
            return x
        attrs = spec_of(Op.LINEAR).normalize({"out": node.shape[0], "bias": False})
        return g.add(_skip_node(node, Op.LINEAR, "skip.linear", attrs), [x])
    a = node.attrs
    windows = zip(a["kernel"], a["padding"], a["dilation"], strict=True)
    if any(2 * p != d * (k - 1) for k, p, d in windows):
        return None
    stride = a["stride"]
    if in_shape == node.shape and stride == (1, 1):
        return x
    conv_attrs = spec_of(Op.CONV2D).normalize({"out": node.shape[0], "kernel": 1, "stride": stride})
    try:
        shape = infer_shape(Op.CONV2D, conv_attrs, [in_shape])
    except OpError:
        return None
    if shape != node.shape:
        return None
    conv = g.add(_skip_node(node, Op.CONV2D, "skip.conv", conv_attrs), [x])
    if in_shape[1:] == (1, 1):
        return conv
    bn_attrs = spec_of(Op.BATCHNORM).normalize({})
    return g.add(_skip_node(node, Op.BATCHNORM, "skip.bn", bn_attrs), [conv])


def _skip_node(node: Node, op: Op, suffix: str, attrs: dict) -> Node:
    return Node(
        op,
        f"{node.name}.{suffix}",
        attrs,
        node.shape,
        node.loc,
        role=Role.SKIP,
        meta=dict(node.meta),
    )


def choice_params(g: Graph, route: int) -> dict[str, int]:
    """Parameters of each candidate at a routed op: the shared op (paid once, whoever uses
    it) and, per task that chooses them, the task-specific copy and the skip projection."""
    shared, specific, *skip = g.inputs(route)
    cost = {"shared": node_params(g, shared), "specific": node_params(g, specific), "skip": 0}
    if skip:
        k = skip[0]
        while g.node(k).role is Role.SKIP:
            cost["skip"] += node_params(g, k)
            (k,) = g.inputs(k)
    return cost
