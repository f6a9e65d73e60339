"""IR -> Graphviz DOT: ops as boxes, clustered by the hierarchical names (blocks, stages).

A box shows an op and the shape-keeping ops that follow it in a chain (`conv | bn | relu` is
one box), and an op that only takes the image's size (a head's final upsample) says so in its
box instead of drawing an edge from the top of the picture to the bottom."""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mtsc.codegen.torch_common import module_names, shape_text
from mtsc.codegen.writer import SourceWriter
from mtsc.ir.graph import Graph, Node, Role
from mtsc.ir.ops import DSL_SPELLING, PARAMETRIC, ROUTABLE, Op, spec_of
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
# Ops of one input that keep its shape: drawn inside the box of the op before them.
FOLLOWERS = frozenset(
    {
        Op.BATCHNORM,
        Op.SCALE,
        Op.RELU,
        Op.RELU6,
        Op.LEAKY_RELU,
        Op.PRELU,
        Op.SIGMOID,
        Op.TANH,
        Op.SILU,
        Op.HARDSWISH,
        Op.ELU,
        Op.ABS,
        Op.POWER,
        Op.CLIP,
        Op.L2NORM,
        Op.DROPOUT,
    }
)
# Ops whose second input gives only the output's height and width.
SIZED_BY_SECOND = frozenset({Op.UPSAMPLE, Op.INTERP, Op.CROP})
# The edge from a value that an op reads only the size of (`upsample(x, skip)`).
SIZE_EDGE = ' [style=dashed, label="size"]'
# unpool's second input: the value whose max pooling gives the positions the values go to
INDICES_EDGE = ' [style=dashed, label="pool indices"]'
_TASK_PLUMBING = frozenset({Op.TASK_STACK, Op.TASK_SLICE})


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
    if node.op is Op.UPSAMPLE:
        scale = f" x{a['scale']:g}" if a["scale"] is not None else ""
        return f"upsample{scale} {a['mode']}"
    if node.op is Op.POWER:  # its constants, as the generated code writes them
        return spec_of(Op.POWER).torch.build(a, ["x"])
    return node.op.value


@dataclass(frozen=True)
class Boxes:
    """What a picture draws: each box's ops (its first op, then the followers shown in it),
    the box each drawn op is in, the size-only inputs it leaves out, and the ops whose second
    input gives only a size (its edge drawn dashed)."""

    chains: dict[int, list[int]]
    box_of: dict[int, int]
    sized_by: dict[int, int]  # op -> the graph input whose size it takes, its edge not drawn
    sized_by_value: frozenset[int] = frozenset()  # ops taking another value's size

    def sources(self, nid: int, inputs: list[int]) -> list[int]:
        """The boxes the edges into box `nid` come from."""
        if nid in self.sized_by:
            inputs = inputs[:1]
        return [self.box_of[src] for src in inputs]


def _graph_input(g: Graph, nid: int) -> int | None:
    """The graph input `nid` is, or is a task's slice of."""
    while g.node(nid).op in _TASK_PLUMBING:
        nid = g.inputs(nid)[0]
    return nid if g.node(nid).op is Op.INPUT else None


def make_boxes(g: Graph, order: list[int], group: Callable[[int], Hashable]) -> Boxes:
    """Fold each follower into the box before it when nothing else reads that box's value and
    both ops share a group (cluster, and task in the multi-task pictures)."""
    sized_by = {}
    sized_by_value = set()
    for nid in order:
        inputs = g.inputs(nid)
        if g.node(nid).op in SIZED_BY_SECOND and len(inputs) == 2:
            source = _graph_input(g, inputs[1])
            if source is not None:
                sized_by[nid] = source
            else:
                sized_by_value.add(nid)
    references = {g.inputs(nid)[1] for nid in sized_by}
    # a task's slice of the image that only sizes its head's output has nothing left to draw
    hidden = {
        nid
        for nid in references
        if g.node(nid).op is Op.TASK_SLICE and set(g.users(nid)) <= sized_by.keys()
    }
    outputs = set(g.outputs.values())
    chains: dict[int, list[int]] = {}
    box_of: dict[int, int] = {}
    for nid in order:
        if nid in hidden:
            continue
        inputs = g.inputs(nid)
        before = inputs[0] if len(inputs) == 1 else None
        if (
            g.node(nid).op in FOLLOWERS
            and before in box_of
            and before not in outputs
            and g.users(before) == [nid]
            and g.node(before).op not in (Op.INPUT, *_TASK_PLUMBING)
            and group(before) == group(nid)
        ):
            box_of[nid] = box_of[before]
            chains[box_of[nid]].append(nid)
        else:
            box_of[nid] = nid
            chains[nid] = [nid]
    return Boxes(chains, box_of, sized_by, frozenset(sized_by_value))


def follower_text(g: Graph, chain: list[int], *, per_task: bool = False) -> str:
    """`| bn | relu`: the followers in a box, as the DSL pipes them."""
    parts = []
    for nid in chain[1:]:
        node = g.node(nid)
        name = op_label(node) if node.op is Op.POWER else DSL_SPELLING.get(node.op, node.op.value)
        parts.append(f"| {name}{_per_task(node, per_task)}")
    return " ".join(parts)


def _per_task(node: Node, marked: bool) -> str:
    """Marks an op with weights of its own for each task, in the supermodel's picture."""
    return " per task" if marked and node.role is Role.SPECIFIC and node.op in PARAMETRIC else ""


def box_label(g: Graph, boxes: Boxes, chain: list[int], *, per_task: bool = False) -> str:
    """Name, op, size source, followers, shape: one line each."""
    head = g.node(chain[0])
    lines = [short_name(head.name), op_label(head) + _per_task(head, per_task)]
    if per_task and head.op in ROUTABLE and head.sharing is not None:
        lines.append(f"pinned @{head.sharing.value}")  # why the supermodel does not route it
    if chain[0] in boxes.sized_by:
        lines.append(f"to {g.node(boxes.sized_by[chain[0]]).name}'s size")
    if len(chain) > 1:
        lines.append(follower_text(g, chain, per_task=per_task))
    skipped = [op for nid in chain for op in g.node(nid).meta.get("skipped", ())]
    if skipped:  # a pruned task's identity skips leave no op to draw
        lines.append(f"skips {', '.join(skipped)}")
    lines.append(shape_text(g.node(chain[-1]).shape))
    return "\n".join(lines)


def box_attrs(g: Graph, chain: list[int], label: str, fill: str) -> str:
    names = ", ".join(g.node(nid).name for nid in chain)
    return f"label={quote(label)}, fillcolor={quote(fill)}, tooltip={quote(names)}"


def emit_clusters(
    w: SourceWriter,
    ids: list[int],
    line_for: Callable[[int], str],
    cluster_of: Callable[[int], tuple[str, ...]],
) -> None:
    """Write node lines grouped into nested `subgraph cluster_*` by name prefixes."""
    tree: dict = {}
    for nid in ids:
        parts = cluster_of(nid)
        level = tree
        for i in range(len(parts)):
            level = level.setdefault(".".join(parts[: i + 1]), {})
        level.setdefault(None, []).append(nid)

    def write(level: dict) -> None:
        for nid in level.get(None, []):
            w.line(line_for(nid))
        for key in (k for k in level if k is not None):  # in order of appearance
            w.line(f"subgraph {quote('cluster_' + key)} {{")
            with w.indent():
                w.line(f'label={quote(key)}; style=rounded; color="#999999";')
                write(level[key])
            w.line("}")

    write(tree)


def cluster_path(name: str) -> tuple[str, ...]:
    return tuple(name.split(".")[:-1][:CLUSTER_DEPTH])


def short_name(name: str) -> str:
    """The name inside its cluster: `se1.conv1` in `layer1.0`, apart from its `conv1`."""
    return ".".join(name.split(".")[len(cluster_path(name)) :])


def emit_edges(
    w: SourceWriter, g: Graph, boxes: Boxes, inputs_of: Callable[[int], list[int]]
) -> None:
    for nid in boxes.chains:
        for port, src in enumerate(boxes.sources(nid, inputs_of(nid))):
            style = ""
            if port == 1 and nid in boxes.sized_by_value:
                style = SIZE_EDGE
            elif port == 1 and g.node(nid).op is Op.UNPOOL:
                style = INDICES_EDGE
            w.line(f"n{src} -> n{nid}{style};")


def emit_dot(g: Graph, *, title: str) -> str:
    def cluster_of(nid: int) -> tuple[str, ...]:
        return cluster_path(g.node(nid).name)

    w = SourceWriter()
    with digraph(w, g, title):
        boxes = make_boxes(g, g.topo_order(), cluster_of)

        def line_for(nid: int) -> str:
            chain = boxes.chains[nid]
            fill = _COLOURS.get(g.node(nid).op, _DEFAULT_COLOUR)
            return f"n{nid} [{box_attrs(g, chain, box_label(g, boxes, chain), fill)}];"

        emit_clusters(w, list(boxes.chains), line_for, cluster_of)
        for key, nid in sorted(g.outputs.items()):
            w.line(f'out_{key} [label={quote(key)}, shape=oval, fillcolor="#ffffff"];')
            w.line(f"n{boxes.box_of[nid]} -> out_{key};")
        emit_edges(w, g, boxes, g.inputs)
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
    if i < len(TASK_COLOURS):
        return TASK_COLOURS[i]
    # past the palette: hues a golden angle apart, dark enough for white text
    red, green, blue = colorsys.hsv_to_rgb((0.1 + i * 0.618034) % 1, 0.8, 0.6)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def task_outputs(w: SourceWriter, g: Graph, boxes: Boxes, tasks: tuple[str, ...]) -> None:
    """One oval per task in the task's colour, fed by the box of the task's output op."""
    for i, task in enumerate(tasks):
        colour = quote(task_colour(i))
        w.line(f'out_{i} [label={quote(task)}, shape=oval, fillcolor={colour}, fontcolor="white"];')
        w.line(f"n{boxes.box_of[g.outputs[task]]} -> out_{i} [color={colour}];")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _route_label(g: Graph, chain: list[int], tasks: tuple[str, ...], policy: dict | None) -> str:
    """One box per routed op: the op and its followers, then one cell per task with its
    candidates (S T K) or, with a policy, its choice."""
    route = chain[0]
    shared = g.node(g.inputs(route)[0])
    attrs = g.node(route).attrs
    rows = [f"{_html(short_name(shared.name))}: {_html(op_label(shared))}"]
    if len(chain) > 1:
        rows.append(_html(follower_text(g, chain, per_task=True)))
    rows.append(f'<FONT POINT-SIZE="8">{shape_text(g.node(chain[-1]).shape)}</FONT>')
    cells = []
    for i, task in enumerate(tasks):
        if policy is None:
            text = "S T K" if attrs["skip"] else "S T"
        else:
            text = CHOICE_MARKS[policy["choices"][attrs["op"]][task]]
        cells.append((task_colour(i), text))
    return _cells_label(rows, cells)


def _tasks_label(text: str, some: tuple[str, ...], tasks: tuple[str, ...]) -> str:
    """A box's lines over one cell per task that runs it, in the task's colour."""
    cells = [(task_colour(tasks.index(t)), _html(t)) for t in some]
    return _cells_label([_html(row) for row in text.split("\n")], cells)


def _cells_label(rows: list[str], cells: list[tuple[str, str]]) -> str:
    """An HTML label: each of `rows` across the box, then a row of white-on-colour cells,
    one per (colour, text). Rows and texts are HTML already."""
    tds = "".join(
        f'<TD BGCOLOR="{colour}"><FONT COLOR="white" POINT-SIZE="9">{text}</FONT></TD>'
        for colour, text in cells
    )
    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1" CELLPADDING="2">'
        + "".join(f'<TR><TD COLSPAN="{len(cells)}">{row}</TD></TR>' for row in rows)
        + f"<TR>{tds}</TR></TABLE>>"
    )


def emit_supermodel_dot(g: Graph, *, title: str, policy: dict | None = None) -> str:
    """The routed graph, compactly: each routed op is one box whose coloured cells show, per
    task, its candidates (S shared, T task-specific, K skip) or, with a policy, its choice.
    Task-specific candidates and skip projections are folded into that box."""
    tasks = tuple(t.name for t in g.tasks)
    folded: set[int] = set()
    for nid in g.node_ids():
        node = g.node(nid)
        if node.op is Op.ROUTE:
            folded |= set(g.inputs(nid)[:2])
        elif node.role is Role.SKIP:
            folded.add(nid)

    def inputs_of(nid: int) -> list[int]:
        """A routed op's box is fed by what its shared candidate reads."""
        if g.node(nid).op is Op.ROUTE:
            return g.inputs(g.inputs(nid)[0])[:1]
        return g.inputs(nid)

    def cluster_of(nid: int) -> tuple[str, ...]:
        node = g.node(nid)
        if node.op is Op.ROUTE:
            return cluster_path(node.attrs["op"])
        if node.op is Op.TASK_SLICE:
            return cluster_path(f"heads.{node.attrs['task']}.input")
        if node.op is Op.TASK_STACK:  # where the shared prefix it ends is
            return cluster_path(g.node(g.inputs(nid)[0]).name)
        return cluster_path(node.name)

    order = [n for n in g.topo_order() if n not in folded]
    boxes = make_boxes(g, order, lambda nid: (cluster_of(nid), g.node(nid).task))
    w = SourceWriter()
    with digraph(w, g, title):
        _legend(w, tasks, "S shared, T task-specific, K skip")

        def line_for(nid: int) -> str:
            node = g.node(nid)
            chain = boxes.chains[nid]
            if node.op is Op.ROUTE:
                label = _route_label(g, chain, tasks, policy)
                names = quote(", ".join([node.attrs["op"], *(g.node(n).name for n in chain[1:])]))
                return f'n{nid} [label={label}, fillcolor="#deebf7", tooltip={names}];'
            if node.op in _TASK_PLUMBING:
                # a head may slice two values (its features, and the image it upsamples to):
                # the shape tells them apart
                text = "stack tasks" if node.op is Op.TASK_STACK else node.attrs["task"]
                text += f"\n{shape_text(node.shape)}"
                return f'n{nid} [label={quote(text)}, shape=oval, fillcolor="#ffffff"];'
            label = box_label(g, boxes, chain, per_task=True)
            attrs = box_attrs(g, chain, label, _COLOURS.get(node.op, _DEFAULT_COLOUR))
            if node.task is not None:
                colour = quote(task_colour(tasks.index(node.task)))
                return f"n{nid} [{attrs}, color={colour}, penwidth=2];"
            return f"n{nid} [{attrs}];"

        emit_clusters(w, list(boxes.chains), line_for, cluster_of)
        task_outputs(w, g, boxes, tasks)
        emit_edges(w, g, boxes, inputs_of)
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
    """The deployed model as a tree: ops of the shared trunk filled, each task's branch
    outlined in the task's colour, and an op that some but not all tasks run over a cell in
    each one's colour."""
    tasks = tuple(t.name for t in g.tasks)
    modules = module_names(g)

    def users(nid: int) -> tuple[str, ...]:
        return tuple(g.node(nid).meta.get("tasks", tasks))

    module_tasks: dict[str, set[str]] = {}
    for nid in g.node_ids():
        if nid in modules and node_params(g, nid):
            module_tasks.setdefault(modules[nid], set()).update(users(nid))

    def sharing_note(chain: list[int], some: tuple[str, ...]) -> str:
        """`shares conv with depth, normal`: the weights this box's tasks use with others'
        copies of the op (run on their own inputs), so that the picture does not suggest
        weights of their own."""
        shared = [n for n in chain if set(module_tasks.get(modules.get(n), ())) - set(some)]
        if not shared:
            return ""
        others = set().union(*(module_tasks[modules[n]] for n in shared)) - set(some)
        ops = dict.fromkeys(DSL_SPELLING.get(g.node(n).op, g.node(n).op.value) for n in shared)
        return f"shares {', '.join(ops)} with {', '.join(t for t in tasks if t in others)}"

    boxes = make_boxes(g, g.topo_order(), lambda n: (cluster_path(g.node(n).name), users(n)))
    w = SourceWriter()
    with digraph(w, g, title):
        _legend(w, tasks, "filled: every task runs it; outlined: only the tasks it names")

        def line_for(nid: int) -> str:
            chain = boxes.chains[nid]
            label = box_label(g, boxes, chain)
            some = users(nid)
            if 0 < len(some) < len(tasks):
                note = sharing_note(chain, some)
                if len(some) == 1:
                    colour = quote(task_colour(tasks.index(some[0])))
                    text = f"{label}\n{some[0]}" + (f"; {note}" if note else "")
                    attrs = box_attrs(g, chain, text, "#ffffff")
                    return f"n{nid} [{attrs}, color={colour}, penwidth=2];"
                # several tasks: each named in its own colour, under the op
                label += f"\n{note}" if note else ""
                names = quote(", ".join(g.node(n).name for n in chain))
                return (
                    f'n{nid} [label={_tasks_label(label, some, tasks)}, fillcolor="#ffffff", '
                    f'tooltip={names}, color="#333333", penwidth=2];'
                )
            fill = _COLOURS.get(g.node(nid).op, _DEFAULT_COLOUR)
            return f"n{nid} [{box_attrs(g, chain, label, fill)}];"

        emit_clusters(w, list(boxes.chains), line_for, lambda n: cluster_path(g.node(n).name))
        task_outputs(w, g, boxes, tasks)
        emit_edges(w, g, boxes, g.inputs)
    return w.text()
