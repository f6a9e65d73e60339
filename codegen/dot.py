"""IR -> Graphviz DOT: ops as boxes, clustered by the hierarchical names (blocks, stages)."""

from __future__ import annotations

from collections.abc import Callable

from mtsc.codegen.torch_common import shape_text
from mtsc.codegen.writer import SourceWriter
from mtsc.ir.graph import Graph, Node
from mtsc.ir.ops import Op

# Fill colours by op family, light enough for black text.
_COLOURS = {
    Op.INPUT: "#d9d9d9",
    Op.CONV2D: "#9ecae1",
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


def op_label(node: Node) -> str:
    a = node.attrs
    if node.op is Op.CONV2D:
        kh, kw = a["kernel"]
        text = f"conv {kh}x{kw}"
        if a["stride"] != (1, 1):
            text += f" /{a['stride'][0]}"
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
    return node.op.value


def node_attrs(node: Node, label: str, fill: str) -> str:
    return (
        f"label={quote(label)}, fillcolor={quote(fill)}, "
        f"tooltip={quote(node.name)}"
    )


def emit_clusters(
    w: SourceWriter,
    ids: list[int],
    g: Graph,
    line_for: Callable[[int], str],
) -> None:
    """Write node lines grouped into nested `subgraph cluster_*` by name prefixes."""
    tree: dict = {}
    for nid in ids:
        parts = g.node(nid).name.split(".")[:-1][:CLUSTER_DEPTH]
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
                w.line(f"label={quote(key)}; style=rounded; color=\"#999999\";")
                write(level[key])
            w.line("}")

    write(tree)


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in key.replace(".", " . ").split()]


def emit_dot(g: Graph, *, title: str) -> str:
    w = SourceWriter()
    w.line(f"digraph {quote(g.name)} {{")
    with w.indent():
        w.line(f"label={quote(title)}; labelloc=t; fontname=Helvetica; rankdir=TB;")
        w.line("node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=10];")
        w.line("edge [fontname=Helvetica, fontsize=8, color=\"#555555\"];")
        order = g.topo_order()

        def line_for(nid: int) -> str:
            node = g.node(nid)
            label = f"{node.name.rsplit('.', 1)[-1]}\n{op_label(node)}\n{shape_text(node.shape)}"
            fill = _COLOURS.get(node.op, _DEFAULT_COLOUR)
            return f"n{nid} [{node_attrs(node, label, fill)}];"

        emit_clusters(w, order, g, line_for)
        for key, nid in sorted(g.outputs.items()):
            w.line(f"out_{key} [label={quote(key)}, shape=oval, fillcolor=\"#ffffff\"];")
            w.line(f"n{nid} -> out_{key};")
        for nid in order:
            for src in g.inputs(nid):
                w.line(f"n{src} -> n{nid};")
    w.line("}")
    return w.text()
