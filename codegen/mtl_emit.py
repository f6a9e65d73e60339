"""IR -> `.mtl` source: the backbone as one labelled statement per op, in canonical format.

`mtsc import` writes imported prototxt models with it. Lowering the text gives back the same
IR: the same ops, attributes, shapes and edges, and each node named by its statement's label.
A label must be an identifier, so a node name like `conv1/7x7_s2` or `fc6.flatten` becomes
`conv1_7x7_s2` / `fc6_flatten`, with the original in a comment at the end of the statement;
`MtlSource.labels` gives every node's label. Attributes equal to their defaults are left out.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtsc.codegen.names import Namespace
from mtsc.codegen.pyliteral import comment_text
from mtsc.codegen.writer import SourceWriter
from mtsc.ir.graph import Graph, Node, TaskSpec
from mtsc.ir.ops import DSL_SPELLING, Attr, Kind, Op, OpError, OpSpec, spec_of

# Words of the .mtl grammar that cannot be labels or variable names.
KEYWORDS = frozenset(
    "and assert backbone block elif else false for if import in input loss metric not or "
    "repeat return tasks true weight".split()
)
_COMMENT_WIDTH = 96
_OPTION_PREFIX = re.compile(r"loss|metric|weight")


@dataclass(frozen=True, slots=True)
class MtlSource:
    text: str
    labels: dict[int, str]  # node id -> the label (the node name the .mtl gives it)


def identifier(name: str) -> str:
    """`conv1/7x7_s2` -> `conv1_7x7_s2`: a legal .mtl name that is no keyword."""
    ident = re.sub(r"\W+", "_", name).strip("_") or "v"
    if ident[0].isdigit():
        ident = f"v{ident}"
    if _OPTION_PREFIX.match(ident):
        # The .mtl lexer takes a name starting with a task option word, where a statement
        # follows an expression, for that word (`loss3_x` lexes as `loss` `3_x`).
        ident = f"_{ident}"
    return f"{ident}_" if ident in KEYWORDS else ident


def emit_mtl(g: Graph, *, header: Sequence[str] = ()) -> MtlSource:
    """The .mtl text of `g`'s backbone (and tasks); `header` lines open it as comments."""
    out_id = g.outputs["backbone"]
    backbone = g.ancestors(out_id) | {out_id} | set(g.input_ids())
    order = [n for n in g.topo_order() if n in backbone]
    labels = _labels(g, order)
    w = SourceWriter()
    for text in header:
        _comment(w, text)
    if any(labels[n] != g.node(n).name for n in order):
        _comment(w, "A label that differs from its layer's name has that name in a comment.")
    w.blank()
    inputs = [n for n in order if g.node(n).op is Op.INPUT]
    for nid in inputs:
        shape = "x".join(map(str, g.node(nid).shape))
        w.line(f"input {labels[nid]}: {shape}{_original(g.node(nid), labels[nid])}")
    w.blank()
    w.line("backbone {")
    with w.indent():
        names = _Variables(g, order, out_id, {n: labels[n] for n in inputs})
        for nid in order:
            node = g.node(nid)
            if node.op is Op.INPUT:
                continue
            args = [names.var[i] for i in g.inputs(nid)]
            var = names.assign(nid, node.meta.get("var") or labels[nid])
            if "note" in node.meta:
                _comment(w, node.meta["note"])
            if node.sharing is not None:
                w.line(f"@{node.sharing.value}")
            w.line(
                f"{labels[nid]}: {var} = {_expression(node, args)}{_original(node, labels[nid])}"
            )
        w.line(f"return {names.var[out_id]}")
    w.line("}")
    if g.tasks:
        w.blank()
        _tasks(w, g.tasks)
    return MtlSource(w.text(), labels)


def _comment(w: SourceWriter, text: str) -> None:
    for line in textwrap.wrap(comment_text(text), _COMMENT_WIDTH, subsequent_indent="  ") or [""]:
        w.line(f"# {line}".rstrip())


def _original(node: Node, label: str) -> str:
    return f"  # {comment_text(node.name)}" if node.name != label else ""


def _labels(g: Graph, order: Sequence[int]) -> dict[int, str]:
    labels = Namespace(clean=identifier)
    return {nid: labels.create(g.node(nid).name) for nid in order}


class _Variables:
    """Variables named after the hint (the Caffe top blob, say), reused once the value they
    hold is dead, so that an in-place chain reads `conv1 = relu(conv1)` as in the source."""

    def __init__(self, g: Graph, order: Sequence[int], out_id: int, inputs: dict[int, str]) -> None:
        position = {nid: i for i, nid in enumerate(order)}
        self._last_use = {
            nid: max((position[u] for u in g.users(nid) if u in position), default=position[nid])
            for nid in order
        }
        self._last_use[out_id] = len(order)
        self._position = position
        self._holder: dict[str, int] = {}
        self.var: dict[int, str] = {}
        for nid, name in inputs.items():
            self._take(name, nid)

    def _take(self, name: str, nid: int) -> str:
        self._holder[name] = nid
        self.var[nid] = name
        return name

    def assign(self, nid: int, hint: str) -> str:
        base = identifier(hint)
        now, n = self._position[nid], 0
        name = base
        while name in self._holder and self._last_use[self._holder[name]] > now:
            n += 1
            name = f"{base}_{n}"
        return self._take(name, nid)


def _expression(node: Node, args: list[str]) -> str:
    if len(args) == 2 and not node.attrs.get("coeffs"):
        symbol = {Op.ADD: "+", Op.MUL: "*"}.get(node.op)
        if symbol:
            return f"{args[0]} {symbol} {args[1]}"
    spec = spec_of(node.op)
    given = _needed_attrs(spec, node.attrs)
    parts = list(args)
    for attr in spec.attrs:
        if attr.name not in given:
            continue
        value = _literal(attr, given[attr.name])
        parts.append(value if attr.name in spec.positional else f"{_short(attr)}={value}")
    return f"{DSL_SPELLING.get(node.op, node.op.value)}({', '.join(parts)})"


def _needed_attrs(spec: OpSpec, attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes to write: without each one that normalizing would restore anyway."""
    given = dict(attrs)
    for attr in spec.attrs:
        if attr.required:
            continue
        trial = {k: v for k, v in given.items() if k != attr.name}
        try:
            same = spec.normalize(trial) == attrs
        except OpError:
            same = False
        if same:
            given = trial
    return given


def _short(attr: Attr) -> str:
    return min((attr.name, *attr.aliases), key=len)


def _literal(attr: Attr, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if attr.kind is Kind.PAIR:
        return str(value[0]) if value[0] == value[1] else f"({value[0]}, {value[1]})"
    if attr.kind is Kind.SHAPE:
        return repr(value)  # (8, 1, 1), (512,): the README's spelling of a shape
    if isinstance(value, tuple):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return repr(value)


def _tasks(w: SourceWriter, tasks: Sequence[TaskSpec]) -> None:
    width = max(len(t.name) for t in tasks)
    w.line("tasks {")
    with w.indent():
        for task in tasks:
            options = "".join(
                f" {key}={value}"
                for key, value in (("loss", task.loss), ("metric", task.metric))
                if value is not None
            )
            if task.weight != 1.0:
                options += f" weight={task.weight!r}"
            w.line(f"{task.name + ':':<{width + 1}} {task.head}{options}")
    w.line("}")
