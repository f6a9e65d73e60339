"""`mtsc graph`'s pictures of the supermodel (with and without a policy) and of the pruned
tree: golden `.dot` files, so that a lost edge, cluster or task colour shows as a diff."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mtsc.codegen.dot import (
    SIZED_BY_SECOND,
    emit_dot,
    emit_pruned_dot,
    emit_supermodel_dot,
    task_colour,
)
from mtsc.deploy import prune_model
from mtsc.driver import load_backbone, load_supermodel
from mtsc.ir.graph import Graph
from mtsc.ir.ops import Op
from mtsc.ir.passes.insert_routing import RoutingOptions

REFRESH = "pytest tests/test_graph_dot.py --accept"
MINI_POLICY = {
    "model": "mini_tasks",
    "tasks": ["segment", "depth"],
    "choices": {
        "body.conv1": {"segment": "shared", "depth": "skip"},
        "dw.conv1": {"segment": "specific", "depth": "shared"},
        "down.conv1": {"segment": "skip", "depth": "specific"},
        "valid.conv1": {"segment": "shared", "depth": "shared"},
        "fc.linear1": {"segment": "specific", "depth": "specific"},
        "linear1": {"segment": "shared", "depth": "skip"},
    },
}
DEPLOY_POLICY = {
    "model": "deploy_mini",
    "tasks": ["segment", "depth"],
    "choices": {
        "stem.conv1": {"segment": "shared", "depth": "shared"},
        "res.conv1": {"segment": "shared", "depth": "specific"},
        "res.conv2": {"segment": "skip", "depth": "specific"},
    },
}
CASES = {  # golden file: (model, stage, policy)
    "mini_supermodel.dot": ("mini_tasks.mtl", "supermodel", None),
    "mini_supermodel_policy.dot": ("mini_tasks.mtl", "supermodel", MINI_POLICY),
    "deploy_mini_pruned.dot": ("deploy_mini.mtl", "pruned", DEPLOY_POLICY),
    "deploy_mini_pruned_specific.dot": ("deploy_mini.mtl", "pruned", "specific"),
    # per-task batchnorm: the shared convs after it run once per task, on shared weights
    "deploy_mini_pruned_shared.dot": ("deploy_mini.mtl", "pruned", "shared"),
}


@pytest.mark.parametrize("golden", sorted(CASES))
def test_golden_dot(golden, tmp_path, run_mtsc, check_golden):
    model, stage, policy = CASES[golden]
    if isinstance(policy, dict):
        (tmp_path / "policy.json").write_text(json.dumps(policy))
        policy = str(tmp_path / "policy.json")
    out = tmp_path / "graph.dot"
    args = ["graph", f"tests/models/{model}", "--stage", stage, "-o", out]
    proc = run_mtsc(*args, *(["--policy", policy] if policy else []))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {out}\n"
    check_golden(out.read_text(), golden, REFRESH)


def test_pruned_stage_needs_a_policy(tmp_path, run_mtsc):
    out = tmp_path / "g.dot"
    proc = run_mtsc("graph", "examples/resnet_tiny.mtl", "--stage", "pruned", "-o", out)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --stage pruned needs --policy (a policy.json, shared or specific)"
    )
    assert not out.exists()


# ------------------------------------------------- boxes and edges against the IR they draw

BOX = re.compile(r'^\s*n(\d+) \[.*tooltip="((?:[^"\\]|\\.)*)"', re.M)
EDGE = re.compile(r"^\s*n(\d+) -> n(\d+)( \[style=dashed, label=\"size\"\])?", re.M)
EXAMPLES = sorted(p for p in Path("examples").glob("*.mtl") if p.name != "resnet_blocks.mtl")
DRAWN = [  # (model, stage, policy): the prototxt fixtures have no tasks to prune for
    *((m, "backbone", None) for m in EXAMPLES),
    *((m, "backbone", None) for m in sorted(Path("tests/fixtures/prototxt").glob("*.prototxt"))),
    *((m, "pruned", p) for m in EXAMPLES for p in ("shared", "specific")),
    # upsampling to the size of a value, in the backbone and in a head
    (Path("tests/models/tiny.mtl"), "backbone", None),
    *((Path("tests/models/multiscale_heads.mtl"), "pruned", p) for p in ("shared", "specific")),
]


def drawn(dot: str, g: Graph) -> tuple[dict[int, int], Counter]:
    """Each op's box (by the names a box's tooltip lists), and the edges between boxes, each
    with whether it is drawn as a size-only edge."""
    ids = {node.name: nid for nid, node in g.nodes()}
    box_of = {}
    for box, names in BOX.findall(dot):
        for name in names.encode().decode("unicode_escape").split(", "):
            assert ids[name] not in box_of, f"{name} is drawn twice"
            box_of[ids[name]] = int(box)
    return box_of, Counter((int(a), int(b), bool(size)) for a, b, size in EDGE.findall(dot))


def size_only(g: Graph, nid: int, port: int) -> bool:
    """The input `port` of `nid` gives only its size."""
    return port == 1 and g.node(nid).op in SIZED_BY_SECOND and len(g.inputs(nid)) == 2


@pytest.mark.parametrize(
    ("model", "stage", "policy"), DRAWN, ids=lambda v: v.name if isinstance(v, Path) else v
)
def test_every_op_is_in_one_box_and_every_edge_between_boxes_is_drawn(model, stage, policy):
    """Contracting each box's ops gives back the graph, edge for edge; inside a box the ops
    form a chain, each reading only the one before it. An edge that gives only a size is
    dashed, or left out where it comes from the image (the box says so)."""
    if stage == "backbone":
        g = load_backbone(model)
        dot = emit_dot(g, title="t")
    else:
        g = prune_model(model, policy, routing=RoutingOptions()).model
        dot = emit_pruned_dot(g, title="t")
    box_of, edges = drawn(dot, g)
    assert set(box_of) == set(g.node_ids())
    expected = Counter()
    for nid in g.node_ids():
        for port, src in enumerate(g.inputs(nid)):
            if box_of[src] == box_of[nid]:
                assert g.inputs(nid) == [src] and g.users(src) == [nid]
            elif not (size_only(g, nid, port) and src in g.input_ids()):
                expected[box_of[src], box_of[nid], size_only(g, nid, port)] += 1
    assert edges == expected


def routed_ops(g: Graph) -> list[str]:
    return [node.attrs["op"] for _, node in g.nodes() if node.op is Op.ROUTE]


def test_an_op_some_tasks_share_shows_each_of_them_in_its_colour(examples_dir):
    """With --share-bn, segment and depth share layer2 while normal takes its own copy: the
    boxes of layer2's shared ops name both tasks, each in its colour, outlined in grey."""
    model = examples_dir / "resnet_tiny.mtl"
    routing = RoutingOptions(share_bn=True)
    g = load_supermodel(model, routing)
    tasks = [t.name for t in g.tasks]
    choices = {r: dict.fromkeys(tasks, "shared") for r in routed_ops(g)}
    choices["layer2.0.conv1"]["normal"] = "specific"
    policy = {"model": "resnet_tiny", "tasks": tasks, "choices": choices}
    pruned = prune_model(model, policy, routing=routing).model
    dot = emit_pruned_dot(pruned, title="t")
    box_of, _ = drawn(dot, pruned)
    names = {node.name: nid for nid, node in pruned.nodes()}
    line = next(
        line
        for line in dot.splitlines()
        if line.strip().startswith(f"n{box_of[names['segment_depth.layer2.0.conv1']]} [")
    )
    segment, depth = (f'<TD BGCOLOR="{task_colour(i)}">' for i in range(2))
    assert segment in line and depth in line and task_colour(2) not in line
    assert 'color="#333333", penwidth=2' in line


def test_a_box_says_which_of_its_ops_share_weights_with_which_tasks(examples_dir):
    """All-specific with --share-bn: each task's conv is its own, its batchnorm the one all
    tasks share; all-shared with per-task batchnorm: the reverse, past the first batchnorm."""
    model = examples_dir / "resnet_tiny.mtl"

    def label(policy: str, share_bn: bool, name: str) -> str:
        pruned = prune_model(model, policy, routing=RoutingOptions(share_bn=share_bn)).model
        dot = emit_pruned_dot(pruned, title="t")
        box_of, _ = drawn(dot, pruned)
        nid = box_of[next(n for n, node in pruned.nodes() if node.name == name)]
        return next(line for line in dot.splitlines() if line.strip().startswith(f"n{nid} ["))

    specific = label("specific", True, "depth.layer1.0.conv1.specific")
    assert "\\ndepth; shares bn with segment, normal" in specific
    shared = label("shared", False, "depth.layer1.0.conv2")
    assert "\\ndepth; shares conv with segment, normal" in shared


def test_unpool_reads_its_pool_indices_on_a_dashed_edge(examples_dir):
    """SegNet: each unpool's second input gives where the maxima were, not values."""
    g = load_backbone(examples_dir / "segnet.mtl")
    dot = emit_dot(g, title="t")
    box_of, _ = drawn(dot, g)
    unpools = [nid for nid, node in g.nodes() if node.op is Op.UNPOOL]
    assert unpools
    for nid in unpools:
        values, indices = (box_of[src] for src in g.inputs(nid))
        assert f"n{values} -> n{box_of[nid]};" in dot
        assert f'n{indices} -> n{box_of[nid]} [style=dashed, label="pool indices"];' in dot


def test_clusters_come_in_the_models_order(examples_dir):
    """Blocks as the backbone runs them, heads as the tasks section lists them (resnet_tiny:
    segment, depth, normal), not in alphabetical order."""
    g = load_supermodel(examples_dir / "resnet_tiny.mtl", RoutingOptions())
    clusters = re.findall(r'subgraph "cluster_([^"]+)"', emit_supermodel_dot(g, title="t"))
    heads = [c for c in clusters if c.count(".") == 1 and c.startswith("heads.")]
    assert heads == ["heads.segment", "heads.depth", "heads.normal"]
    layers = [c for c in clusters if c.startswith("layer") and "." not in c]
    assert layers == sorted(layers) and len(layers) >= 3


def test_power_boxes_show_their_constants(write_model):
    """`x * (relu6(x + 3) / 6)` (hard swish): the boxes say which power op is which."""
    path = write_model(
        "input image: 3x8x8\nbackbone {\n    x = conv(image, 4, k=1) | relu\n"
        "    return x * (relu6(x + 3) / 6)\n}\n"
    )
    labels = [
        label
        for label, _ in re.findall(
            r'label="((?:[^"\\]|\\.)*)"(, fillcolor)', emit_dot(load_backbone(path), title="t")
        )
    ]
    assert "power1\\nx + 3.0\\n| relu6 | x / 6.0\\n4x8x8" in labels


def test_tasks_past_the_palette_get_colours_of_their_own_dark_enough_for_white_text():
    colours = [task_colour(i) for i in range(40)]
    assert len(set(colours)) == 40
    for colour in colours:
        red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
        assert 0.299 * red + 0.587 * green + 0.114 * blue < 190  # white text stays legible
