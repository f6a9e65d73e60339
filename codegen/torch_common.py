"""Pieces shared by the PyTorch emitters: module constructors, op calls, variable allocation."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import PurePath

from mtsc.codegen.names import MODULE_ATTRIBUTES, Namespace, sanitize
from mtsc.codegen.pyliteral import call_args, comment_text, py_literal
from mtsc.codegen.writer import SourceWriter
from mtsc.grammar import PRELUDE
from mtsc.ir.graph import BackboneRef, Call, Graph, Node, TaskSpec
from mtsc.ir.ops import Op, TorchExpr, TorchModule, spec_of, torch_class
from mtsc.ir.passes.merge_identical import branch_name


def imports_used(body: str) -> list[str]:
    """The torch imports a generated body needs, in isort order (unused ones fail linters)."""
    imports = ["import torch"]
    if re.search(r"\bF\.", body):
        imports.append("import torch.nn.functional as F")
    if re.search(r"\bnn\.", body):
        imports.append("from torch import nn")
    return imports


def is_module_op(node: Node) -> bool:
    return isinstance(spec_of(node.op).torch, TorchModule)


def constructor(g: Graph, nid: int) -> str:
    """`nn.Conv2d(64, 128, kernel_size=3, ...)` for a module-form op."""
    node = g.node(nid)
    form = spec_of(node.op).torch
    assert isinstance(form, TorchModule)
    args, kwargs = form.args(node.attrs, g.in_shapes(nid))
    return f"{torch_class(node.op, node.attrs)}({call_args(args, kwargs)})"


def op_expression(node: Node, module: str | None, inputs: Sequence[str]) -> str:
    """The right-hand side computing `node` from its inputs' variables."""
    form = spec_of(node.op).torch
    if isinstance(form, TorchExpr):
        return form.build(node.attrs, list(inputs))
    assert module is not None, node.name
    return f"{module}({', '.join(inputs)})"


def location(node: Node) -> str:
    """`file:line` of the op's source: the model's file by its name, the built-in heads by
    their place in the package (a user has no heads.mtl of their own to look in)."""
    if node.loc is None:
        return ""
    file = (
        "mtsc/grammar/heads.mtl" if node.loc.file == str(PRELUDE) else PurePath(node.loc.file).name
    )
    return f"{file}:{node.loc.line}"


def shape_text(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape else "?"


class VariableAllocator:
    """Names forward-pass variables after the DSL's own (`x`, `y`), reusing a name once its
    value is dead, as hand-written code does; this also frees activations early."""

    def __init__(
        self,
        order: Sequence[int],
        inputs_of: Callable[[int], Sequence[int]],
        keep_alive: set[int],
    ) -> None:
        position = {nid: i for i, nid in enumerate(order)}
        self._last_use: dict[int, int] = {nid: i for i, nid in enumerate(order)}
        for nid in order:
            for src in inputs_of(nid):
                self._last_use[src] = max(self._last_use[src], position[nid])
        for nid in keep_alive:
            self._last_use[nid] = len(order)
        self._position = position
        self._holder: dict[str, int] = {}  # variable name -> the value it holds now
        self.var: dict[int, str] = {}

    def assign(self, nid: int, hint: str) -> str:
        now = self._position[nid]
        base = sanitize(hint)
        name, k = base, 0
        # A name is free when it never held a value or its value has no reader after `now`.
        while (held := self._holder.get(name)) is not None and self._last_use[held] > now:
            k += 1
            name = f"{base}_{k}"
        self._holder[name] = nid
        self.var[nid] = name
        return name


def variable_hint(node: Node) -> str:
    if node.op is Op.INPUT:
        return node.name
    return node.meta.get("var") or node.op.value


def scope_of(name: str) -> str:
    return name.rpartition(".")[0]


def emit_forward(
    w: SourceWriter,
    g: Graph,
    order: Sequence[int],
    *,
    inputs_of: Callable[[int], Sequence[int]],
    scope: Callable[[int], str] | None = None,
    rhs_of: Callable[[int, list[str]], str],
    outputs: dict[str, int],
    signature: Callable[[list[str]], str],
    returns: Callable[[dict[str, str]], str],
    begin: Callable[[int, str], str] | None = None,
) -> None:
    """A straight-line `forward`: one line per op, variables named after the DSL's, a
    comment per scope change and the DSL line of each op. `scope`: the scope of a node's line,
    where it is not that of the node's name; `begin`: what each input is taken as, first."""
    scope_of_node = scope or (lambda nid: scope_of(g.node(nid).name))
    alloc = VariableAllocator(order, inputs_of, keep_alive=set(outputs.values()))
    input_ids = [n for n in order if g.node(n).op is Op.INPUT]
    params = [alloc.assign(n, variable_hint(g.node(n))) for n in input_ids]
    w.line(signature(params))
    with w.indent():
        current = None
        first = begin is None  # a blank line, then the ops, after what begins the forward
        for nid, var in zip(input_ids, params, strict=True) if begin else ():
            w.line(f"{var} = {begin(nid, var)}{_location_comment(g.node(nid))}", node=nid)
        for nid in order:
            node = g.node(nid)
            if node.op is Op.INPUT:
                continue
            here = scope_of_node(nid)
            if here != current:
                current = here
                if current:
                    if not first:
                        w.blank()
                    w.comment(current)
            first = False
            for op in node.meta.get("skipped", ()):
                w.comment(f"{op}: skipped (identity)")
            rhs = rhs_of(nid, [alloc.var[i] for i in inputs_of(nid)])
            var = alloc.assign(nid, variable_hint(node))
            w.line(f"{var} = {rhs}{_location_comment(node)}", node=nid)
        w.line(returns({key: alloc.var[nid] for key, nid in outputs.items()}))


def _location_comment(node: Node) -> str:
    """`  # file.mtl:12`, the DSL line a forward line computes, or nothing."""
    loc = location(node)
    return f"  # {comment_text(loc)}" if loc else ""


def weight_key(node: Node) -> tuple | None:
    """Nodes with the same key share one module: the same weights applied to other inputs
    (a pruned model's shared op after per-task batchnorms). None: a module of its own."""
    weights = node.meta.get("weights")
    if weights is None or weights[1] is not None:
        return None
    return (weights, repr(node.meta.get("fold_bn")))


def module_names(g: Graph) -> dict[int, str]:
    """The attribute name of every module-form op: its sanitized hierarchical name, made
    unique in topological order (so the same graph always gives the same state-dict keys).
    Ops that share weights share the attribute, named after the weights' source op and, as
    the ops are, prefixed by the tasks that run it when not all do. Names that
    nn.Module, or a multi-task model's class, already use get a suffix."""
    tasks = [t.name for t in g.tasks]
    methods = [f"forward_{sanitize(t)}" for t in tasks]
    ns = Namespace(MODULE_ATTRIBUTES | {"TASKS", "TASK_SPECS", "forward_task", *methods})
    modules = [
        nid
        for nid in g.topo_order()
        if g.node(nid).op is not Op.INPUT
        and spec_of(g.node(nid).op).torch is not None
        and is_module_op(g.node(nid))
    ]
    # the tasks that run each shared module: the module is named for them, as its ops are
    users: dict[tuple, set[str]] = {}
    for nid in modules:
        key = weight_key(g.node(nid))
        if key is not None:
            users.setdefault(key, set()).update(g.node(nid).meta.get("tasks", tasks))
    names: dict[int, str] = {}
    shared: dict[tuple, str] = {}
    for nid in modules:
        node = g.node(nid)
        key = weight_key(node)
        if key is None:
            names[nid] = ns.create(node.name)
        else:
            if key not in shared:
                shared[key] = ns.create(branch_name(node.meta["weights"][0], users[key], tasks))
            names[nid] = shared[key]
    return names


def task_spec(task: TaskSpec) -> dict:
    """A task's entry as plain data for the runtime (losses and metrics are built from it)."""

    def call(c: Call | None) -> tuple | None:
        # a head option naming a backbone tensor is given as that name
        return None if c is None else (c.name, {k: _plain(v) for k, v in c.kwargs})

    return {
        "head": call(task.head),
        "loss": call(task.loss),
        "metric": call(task.metric),
        "weight": task.weight,
    }


def _plain(value: object) -> object:
    return str(value) if isinstance(value, BackboneRef) else value


def emit_task_specs(w: SourceWriter, g: Graph, *, class_var: str) -> None:
    """The class attribute `TASK_SPECS` of a generated multi-task model (`class_var` is how
    the file spells `typing.ClassVar`, depending on its imports)."""
    w.line(f"TASK_SPECS: {class_var}[dict[str, dict]] = {{")
    with w.indent():
        for task in g.tasks:
            w.line(f"{py_literal(task.name)}: {py_literal(task_spec(task))},")
    w.line("}")
