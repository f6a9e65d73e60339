"""Prune: from the supermodel and a policy to one plain network per task.

Every task gets its own copy of its path (`<task>.<name>` for now): the backbone ops with each
routed op replaced by the candidate the task chose, then the task's head. A copy remembers
where its weights come from in `meta["weights"]`: `(supermodel node name, task index)` for
per-task weights, `(name, None)` for shared ones, and in `meta["skipped"]` the routed ops the
task skipped as identities just before it (for a comment in the code). `merge_identical`
then folds copies that compute the same value, and `eliminate_dead` drops the candidates
nobody chose.
"""

from __future__ import annotations

from mtsc.ir.errors import MtscError
from mtsc.ir.graph import Graph, Node, Role
from mtsc.ir.ops import Op

CHOICE_INDEX = {"shared": 0, "specific": 1, "skip": 2}


def prune(g: Graph, policy: dict) -> Graph:
    tasks = [t.name for t in g.tasks]
    out = Graph(g.name, source=g.source)
    out.tasks = g.tasks
    shared_inputs: dict[int, int] = {}
    for nid in g.input_ids():
        node = g.node(nid)
        shared_inputs[nid] = out.add(
            Node(Op.INPUT, node.name, dict(node.attrs), node.shape, node.loc)
        )
    for t_index, task in enumerate(tasks):
        value: dict[int, int] = dict(shared_inputs)
        # ops the task skips as identities on the way to a value: no node is left of them
        skipped: dict[int, tuple[str, ...]] = {}
        for nid in g.topo_order():
            node = g.node(nid)
            if node.op is Op.INPUT or node.task not in (None, task):
                continue
            ins = g.inputs(nid)
            if node.op in (Op.TASK_STACK, Op.TASK_SLICE):
                value[nid] = value[ins[0]]
                skipped[nid] = skipped.get(ins[0], ())
            elif node.op is Op.ROUTE:
                choice = _choice(policy, node.attrs["op"], task)
                if CHOICE_INDEX[choice] >= len(ins):
                    raise MtscError(None, f"{node.attrs['op']}: {task} cannot skip this op")
                chosen = ins[CHOICE_INDEX[choice]]
                value[nid] = value[chosen]
                identity = choice == "skip" and g.node(chosen).role is not Role.SKIP
                skipped[nid] = skipped.get(chosen, ()) + ((node.attrs["op"],) if identity else ())
            else:
                per_task = node.role in (Role.SPECIFIC, Role.SKIP)
                # A stacked head op: each task's copy is the op of that task's head (its name,
                # and for a stateless op its own module: a dropout draws a mask per task).
                meta = dict(node.meta)
                stacked_names = meta.pop("task_names", None)
                origin = stacked_names[t_index] if stacked_names else node.name
                weights = (node.name, t_index) if per_task else (origin, None)
                copy = Node(
                    node.op,
                    f"{task}.{origin}",
                    dict(node.attrs),
                    node.shape,
                    node.loc,
                    task=task,
                    meta={
                        **meta,
                        "weights": weights,
                        "origin": origin,
                    },
                )
                after = tuple(op for i in ins for op in skipped.get(i, ()))
                if after:
                    copy.meta["skipped"] = after
                value[nid] = out.add(copy, [value[i] for i in ins])
        out.outputs[task] = value[g.outputs[task]]
    return out


def _choice(policy: dict, op: str, task: str) -> str:
    try:
        return policy["choices"][op][task]
    except (KeyError, TypeError):
        raise MtscError(None, f"the policy has no choice for {op} / {task}") from None
