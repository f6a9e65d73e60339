"""Value numbering across tasks: nodes that compute provably the same value become one.

Two nodes are the same value when they apply the same op with the same attributes and the
same weights (`meta["weights"]`: the same shared weights, or the same task's weights) to the
same input values. Processing in topological order makes that a single pass. Merged nodes
record the tasks that use them (`meta["tasks"]`) and are named after the supermodel op they
come from, prefixed by their tasks when not all tasks use them (`depth_normal.layer4.0.conv1`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mtsc.ir.graph import Graph


def _key(g: Graph, nid: int, number: dict[int, int]) -> tuple:
    node = g.node(nid)
    attrs = tuple(sorted((k, repr(v)) for k, v in node.attrs.items()))
    weights = node.meta.get("weights", (node.name, None))
    return (node.op, attrs, weights, tuple(number[i] for i in g.inputs(nid)))


def merge_identical(g: Graph) -> Graph:
    number: dict[int, int] = {}
    first_of: dict[tuple, int] = {}
    tasks_of: dict[int, set[str]] = {}
    for nid in g.topo_order():
        node = g.node(nid)
        key = _key(g, nid, number)
        keep = first_of.setdefault(key, nid)
        number[nid] = keep
        tasks_of.setdefault(keep, set())
        if node.task is not None:
            tasks_of[keep].add(node.task)
        if keep != nid:
            g.redirect_users(nid, keep)
            g.remove(nid)
    _rename(g, tasks_of)
    return g


def _rename(g: Graph, tasks_of: dict[int, set[str]]) -> None:
    """Trunk ops keep their supermodel name; a branch op is prefixed by the tasks using it."""
    order = [t.name for t in g.tasks]
    for nid in g.node_ids():
        node = g.node(nid)
        origin = node.meta.get("origin")
        if origin is None:
            continue
        users = sorted(tasks_of.get(nid, ()), key=order.index)
        name = branch_name(origin, users, order)
        task = users[0] if len(users) == 1 else None
        g.update(nid, name=name, task=task, meta={**node.meta, "tasks": tuple(users)})


def branch_name(origin: str, users: Iterable[str], order: Sequence[str]) -> str:
    """The name of supermodel op `origin` where tasks `users` run it: prefixed by them when
    not all tasks (`order`) do (`depth_normal.layer4.0.conv1`); a head op is its task's."""
    users = [t for t in order if t in set(users)]
    if len(users) < len(order) and not origin.startswith("heads."):
        return f"{'_'.join(users)}.{origin}"
    return origin
