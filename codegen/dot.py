"""IR -> Graphviz DOT: ops as boxes, clustered by the hierarchical names (blocks, stages)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mtsc.codegen.torch_common import module_names, shape_text
from mtsc.codegen.writer import SourceWriter
from mtsc.ir.graph import Graph, Node
from mtsc.ir.ops import DSL_SPELLING, PARAMETRIC, Op
from mtsc.ir.stats import node_params

# Fill colours by op family, light enough for black text.
_COLOURS = {
    Op.INPUT: "#d9d9d9",
    Op.CONV2D: "#9ecae1",
    Op.DECONV2D: "#9ecae1",
    Op.LINEAR: "#9ecae1",
    Op.BATCHNORM: "#e5e5e5",
    Op.SCALE: "#e5e5e5",
    Op.MAXPOOL: "#a1d99b",
    Op.AVGPOOL: "#a1d99b",
    Op.ADD: "#fdd0a2",
    Op.MUL: "#fdd0a2",
    Op.MAX: "#fdd0a2",
    Op.CONCAT: "#fdd0a2",
    Op.UPSAMPLE: "#dadaeb",
}
_DEFAULT_COLOUR = "#f7f7f7"
CLUSTER_DEPTH = 2  # nest clusters this many name levels deep: layer1 > layer1.0


def quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


@contextmanager
def digraph(w: SourceWriter, g: Graph, title: str) -> Iterator[None]:
    """A `digraph` with mtsc's look: title on top, rounded filled boxes, grey edges."""
    w.line(f"digraph {quote(g.name)} {{")
    with w.indent():
        w.line(f"label={quote(title)}; labelloc=t; fontname=Helvetica; rankdir=TB;")
        w.line('node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10];')
        w.line('edge [fontname=Helvetica, fontsize=8, color="#555555"];')
        yield
    w.line("}")


def task_outputs(w: SourceWriter, g: Graph, tasks: tuple[str, ...]) -> None:
    """One oval per task in the task's colour, fed by the task's output op."""
    for i, task in enumerate(tasks):
        colour = quote(task_colour(i))
        w.line(f'out_{i} [label={quote(task)}, shape=oval, fillcolor={colour}, fontcolor="white"];')
        w.line(f"n{g.outputs[task]} -> out_{i} [color={colour}];")


def op_label(node: Node) -> str:
    a = node.attrs
    if node.op in (Op.CONV2D, Op.DECONV2D):
        kh, kw = a["kernel"]
        text = f"{DSL_SPELLING[node.op]} {kh}x{kw}"
        if a["stride"] != (1, 1):
            text += f" {'/' if node.op is Op.CONV2D else 'x'}{a['stride'][0]}"
        if a["dilation"] != (1, 1):
            text += f" d{a['dilation'][0]}"
        if a["groups"] != 1:
            text += " dw" if a["groups"] == a["out"] else f" g{a['groups']}"
        return f"{text}, {a['out']}"
    if node.op in (Op.MAXPOOL, Op.AVGPOOL):
        if a["global"]:
            return f"global {node.op.value}"
        return f"{node.op.value} {a['kernel'][0]}/{a['stride'][0]}"
    if node.op is Op.LINEAR:
        return f"linear, {a['out']}"
    if node.op is Op.SLICE:
        return f"slice {a['start']}:{a['end']}"
    return node.op.value


def node_attrs(node: Node, label: str, fill: str) -> str:
    return f"label={quote(label)}, fillcolor={quote(fill)}, tooltip={quote(node.name)}"


def emit_clusters(
    w: SourceWriter,
    ids: list[int],
    g: Graph,
    line_for: Callable[[int], str],
    name_of: Callable[[int], str] | None = None,
) -> None:
    """Write node lines grouped into nested `subgraph cluster_*` by name prefixes."""
    tree: dict = {}
    for nid in ids:
        name = name_of(nid) if name_of else g.node(nid).name
        parts = name.split(".")[:-1][:CLUSTER_DEPTH]
        level = tree
        for i in range(len(parts)):
            level = level.setdefault(".".join(parts[: i + 1]), {})
        level.setdefault(None, []).append(nid)

    def write(level: dict) -> None:
        for nid in level.get(None, []):
            w.line(line_for(nid))
        for key in sorted((k for k in level if k is not None), key=_natural):
            w.line(f"subgraph {quote('cluster_' + key)} {{")
            with w.indent():
                w.line(f'label={quote(key)}; style=rounded; color="#999999";')
                write(level[key])
            w.line("}")

    write(tree)


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in key.replace(".", " . ").split()]


def emit_dot(g: Graph, *, title: str) -> str:
    w = SourceWriter()
    with digraph(w, g, title):
        order = g.topo_order()

        def line_for(nid: int) -> str:
            node = g.node(nid)
            label = f"{node.name.rsplit('.', 1)[-1]}\n{op_label(node)}\n{shape_text(node.shape)}"
            fill = _COLOURS.get(node.op, _DEFAULT_COLOUR)
            return f"n{nid} [{node_attrs(node, label, fill)}];"

        emit_clusters(w, order, g, line_for)
        for key, nid in sorted(g.outputs.items()):
            w.line(f'out_{key} [label={quote(key)}, shape=oval, fillcolor="#ffffff"];')
            w.line(f"n{nid} -> out_{key};")
        for nid in order:
            for src in g.inputs(nid):
                w.line(f"n{src} -> n{nid};")
    return w.text()


# ---------------------------------------------------------------- the supermodel

TASK_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
CHOICE_MARKS = {"shared": "S", "specific": "T", "skip": "K"}


def task_colour(i: int) -> str:
    return TASK_COLOURS[i % len(TASK_COLOURS)]


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _route_label(g: Graph, route: int, tasks: tuple[str, ...], policy: dict | None) -> str:
    """One box per routed op: the op, then one cell per task with its choice (or S/T/K)."""
    shared = g.node(g.inputs(route)[0])
    attrs = g.node(route).attrs
    head = f"{_html(shared.name.rsplit('.', 1)[-1])}: {_html(op_label(shared))}"
    cells = []
    for i, task in enumerate(tasks):
        if policy is None:
            text = "S T K" if attrs["skip"] else "S T"
        else:
            text = CHOICE_MARKS[policy["choices"][attrs["op"]][task]]
        cells.append(
            f'<TD BGCOLOR="{task_colour(i)}"><FONT COLOR="white" POINT-SIZE="9">{text}</FONT></TD>'
        )
    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1" CELLPADDING="2">'
        f'<TR><TD COLSPAN="{len(tasks)}">{head}</TD></TR>'
        f'<TR><TD COLSPAN="{len(tasks)}"><FONT POINT-SIZE="8">{shape_text(shared.shape)}'
        f"</FONT></TD></TR><TR>{''.join(cells)}</TR></TABLE>>"
    )


def emit_supermodel_dot(g: Graph, *, title: str, policy: dict | None = None) -> str:
    """The routed graph, compactly: each routed op is one box whose coloured cells show, per
    task, its candidates (S shared, T task-specific, K skip) or, with a policy, its choice.
    Task-specific candidates and skip projections are folded into that box."""
    from mtsc.ir.graph import Role

    tasks = tuple(t.name for t in g.tasks)
    folded: set[int] = set()
    for nid in g.node_ids():
        node = g.node(nid)
        if node.op is Op.ROUTE:
            folded |= set(g.inputs(nid)[:2])
        elif node.role is Role.SKIP:
            folded.add(nid)
    order = [n for n in g.topo_order() if n not in folded]

    def source_of(nid: int) -> int:
        node = g.node(nid)
        if node.op is Op.ROUTE:
            return g.inputs(g.inputs(nid)[0])[0]
        return nid

    w = SourceWriter()
    with digraph(w, g, title):
        _legend(w, tasks, "S shared, T task-specific, K skip")

        def line_for(nid: int) -> str:
            node = g.node(nid)
            if node.op is Op.ROUTE:
                label = _route_label(g, nid, tasks, policy)
                return f'n{nid} [label={label}, fillcolor="#deebf7", tooltip={quote(node.name)}];'
            if node.op in (Op.TASK_STACK, Op.TASK_SLICE):
                # a head may slice two values (its features, and the image it upsamples to):
                # the shape tells them apart
                text = "stack tasks" if node.op is Op.TASK_STACK else node.attrs["task"]
                text += f"\n{shape_text(node.shape)}"
                return f'n{nid} [label={quote(text)}, shape=oval, fillcolor="#ffffff"];'
            label = f"{node.name.rsplit('.', 1)[-1]}\n{op_label(node)}\n{shape_text(node.shape)}"
            if node.role is Role.SPECIFIC and node.op in PARAMETRIC:
                label += "\nper task"
            fill = _COLOURS.get(node.op, _DEFAULT_COLOUR)
            if node.task is not None:
                colour = quote(task_colour(tasks.index(node.task)))
                return f"n{nid} [{node_attrs(node, label, fill)}, color={colour}, penwidth=2];"
            return f"n{nid} [{node_attrs(node, label, fill)}];"

        def cluster_name(nid: int) -> str:
            node = g.node(nid)
            if node.op is Op.ROUTE:
                return node.attrs["op"]
            if node.op is Op.TASK_SLICE:
                return f"heads.{node.attrs['task']}.input"
            return node.name

        emit_clusters(w, order, g, line_for, cluster_name)
        task_outputs(w, g, tasks)
        for nid in order:
            for src in g.inputs(nid) if g.node(nid).op is not Op.ROUTE else [source_of(nid)]:
                w.line(f"n{src} -> n{nid};")
    return w.text()


def _legend(w: SourceWriter, tasks: tuple[str, ...], caption: str) -> None:
    """A box of the task colours, and what the picture's marks mean."""
    cells = " ".join(
        f'<TD BGCOLOR="{task_colour(i)}"><FONT COLOR="white">{_html(t)}</FONT></TD>'
        for i, t in enumerate(tasks)
    )
    w.line(
        'legend [shape=plaintext, style="", label=<<TABLE BORDER="0" CELLSPACING="2">'
        f'<TR>{cells}</TR><TR><TD COLSPAN="{len(tasks)}">{_html(caption)}</TD></TR></TABLE>>];'
    )


def emit_pruned_dot(g: Graph, *, title: str) -> str:
    """The deployed model as a tree: ops of the shared trunk in grey, each task's branch in the
    task's colour (ops used by some but not all tasks get the colour of the first)."""
    tasks = tuple(t.name for t in g.tasks)
    w = SourceWriter()
    modules = module_names(g)
    module_uses = Counter(modules.values())
    with digraph(w, g, title):
        _legend(w, tasks, "filled: every task runs it; outlined: only the tasks it names")
        order = g.topo_order()

        def line_for(nid: int) -> str:
            node = g.node(nid)
            users = node.meta.get("tasks", tasks)
            label = f"{node.name.rsplit('.', 1)[-1]}\n{op_label(node)}\n{shape_text(node.shape)}"
            if 0 < len(users) < len(tasks):
                label += "\n" + ", ".join(users)
                # A task's copy of an op whose module other copies use too (on their own
                # inputs): the picture must not suggest separate weights.
                if module_uses[modules.get(nid)] > 1 and node_params(g, nid):
                    label += " (shared weights)"
                colour = quote(task_colour(tasks.index(users[0])))
                return f"n{nid} [{node_attrs(node, label, '#ffffff')}, color={colour}, penwidth=2];"
            fill = _COLOURS.get(node.op, _DEFAULT_COLOUR)
            return f"n{nid} [{node_attrs(node, label, fill)}];"

        emit_clusters(w, order, g, line_for)
        task_outputs(w, g, tasks)
        for nid in order:
            for src in g.inputs(nid):
                w.line(f"n{src} -> n{nid};")
    return w.text()
