"""Lowering semantics: hierarchical names, sharing pins, compile-time evaluation, the tasks
section, imports, and the IR invariants after every pass."""

from __future__ import annotations

import pytest

from mtsc.driver import (
    BACKBONE_PIPELINE,
    FRONTEND_PIPELINE,
    build,
    load,
    load_backbone,
    supermodel_pipeline,
)
from mtsc.errors import InternalError
from mtsc.grammar.lower import lower_file
from mtsc.ir.graph import Call, Graph, Node, Sharing
from mtsc.ir.ops import Op, spec_of
from mtsc.ir.passes.insert_routing import RoutingOptions
from mtsc.ir.verify import verify

BASIC = """
block basic(x, c, stride=1) {
    y = conv(x, c, k=3, s=stride, p=1) | bn | relu
    y = conv(y, c, k=3, p=1) | bn
    if stride != 1 or channels(x) != c {
        downsample: x = conv(x, c, k=1, s=stride) | bn
    }
    return relu(x + y)
}
"""


def names(g: Graph) -> list[str]:
    return [node.name for _, node in g.nodes() if node.op is not Op.INPUT]


def by_name(g: Graph) -> dict[str, Node]:
    return {node.name: node for _, node in g.nodes()}


# ---------------------------------------------------------------- names


def test_labelled_single_call_collapses_to_the_label(compile_text) -> None:
    g = compile_text(
        "input image: 3x16x16\n" + BASIC + "backbone {\n    layer1: x = basic(image, 3)\n"
        "    return x\n}\n"
    )
    assert names(g) == [
        "layer1.conv1",
        "layer1.bn1",
        "layer1.relu1",
        "layer1.conv2",
        "layer1.bn2",
        "layer1.add1",
        "layer1.relu2",
    ]


def test_labelled_statement_with_several_calls_numbers_them(compile_text) -> None:
    g = compile_text(
        "input image: 8x16x16\n" + BASIC + "backbone {\n"
        "    layer2: x = basic(image, 16, stride=2) | basic(16)\n"
        "    layer3: x = repeat 3 basic(x, 16)\n"
        "    return x\n}\n"
    )
    blocks = sorted({n.rsplit(".", 1)[0] for n in names(g)})
    assert blocks == [
        "layer2.0",
        "layer2.0.downsample",
        "layer2.1",
        "layer3.0",
        "layer3.1",
        "layer3.2",
    ]
    assert "layer2.0.downsample.conv1" in names(g) and "layer2.1.conv2" in names(g)


def test_unlabelled_calls_and_ops_are_counted_per_scope(compile_text) -> None:
    g = compile_text(
        "input image: 3x16x16\n"
        "block inner(x) {\n    return conv(x, 4, k=1) | relu | conv(4, k=1)\n}\n"
        "block outer(x) {\n    return inner(x) | inner\n}\n"
        "backbone {\n    x = outer(image) | relu\n    return outer(x)\n}\n"
    )
    assert names(g) == [
        "outer1.inner1.conv1",
        "outer1.inner1.relu1",
        "outer1.inner1.conv2",
        "outer1.inner2.conv1",
        "outer1.inner2.relu1",
        "outer1.inner2.conv2",
        "relu1",
        "outer2.inner1.conv1",
        "outer2.inner1.relu1",
        "outer2.inner1.conv2",
        "outer2.inner2.conv1",
        "outer2.inner2.relu1",
        "outer2.inner2.conv2",
    ]


def test_labelled_op_statements_and_loops(models_dir) -> None:
    g = load_backbone(models_dir / "tiny.mtl")
    found = names(g)
    assert found[:3] == ["stem.conv1", "stem.bn1", "stem.prelu1"]
    assert "pool" in found  # one op under a label is named by the label
    assert "stages.0.conv1" in found and "stages.1.conv2" in found  # a labelled loop
    assert "gate1.mul1" in found and "concat1" in found


def test_resnet34_names(examples_dir) -> None:
    found = names(load_backbone(examples_dir / "resnet34.mtl"))
    assert found[:4] == ["stem.conv1", "stem.bn1", "stem.relu1", "stem.maxpool1"]
    layers = {n.split(".")[0]: set() for n in found}
    for n in found:
        layers[n.split(".")[0]].add(n.split(".")[1])
    assert {k: len(v) for k, v in layers.items() if k.startswith("layer")} == {
        "layer1": 3,
        "layer2": 4,
        "layer3": 6,
        "layer4": 3,
    }
    downsampled = sorted({n.rsplit(".", 2)[0] for n in found if ".downsample." in n})
    assert downsampled == ["layer2.0", "layer3.0", "layer4.0"]


def test_nodes_keep_their_source_location_and_variable(models_dir) -> None:
    g = load_backbone(models_dir / "tiny.mtl")
    nodes = by_name(g)
    stem = nodes["stem.conv1"]
    assert stem.loc.file.endswith("tiny.mtl") and stem.loc.line == 11
    assert stem.loc.source_line().strip().startswith("stem: x = conv(image")
    mixed = nodes["stages.0.conv2"]
    assert mixed.loc.file.endswith("parts/mixers.mtl") and mixed.loc.line == 12
    assert (stem.meta["var"], mixed.meta["var"]) == ("x", "b")


# ---------------------------------------------------------------- sharing


def test_sharing_decorators_are_recorded_on_nodes(compile_text) -> None:
    """The pin nearest an op wins."""
    g = compile_text(
        "input image: 3x16x16\n"
        "@specific\nblock pinned(x) {\n    y = conv(x, 4, k=1)\n    @shared\n"
        "    z = conv(y, 4, k=1)\n    return z\n}\n"
        "block free(x) {\n    return conv(x, 4, k=1)\n}\n"
        "backbone {\n    @shared\n    a: x = conv(image, 4, k=1) | free\n"
        "    b: x = pinned(x) | free\n    @shared\n    c: x = pinned(x)\n    return relu(x)\n}\n"
    )
    assert {name: node.sharing for name, node in by_name(g).items()} == {
        "image": None,
        "a.conv1": Sharing.SHARED,
        "a.0.conv1": Sharing.SHARED,  # an unpinned block takes its caller's pin
        "b.0.conv1": Sharing.SPECIFIC,
        "b.0.conv2": Sharing.SHARED,  # a statement's pin beats its block's
        "b.1.conv1": None,
        "c.conv1": Sharing.SPECIFIC,  # a block's own pin beats its caller's
        "c.conv2": Sharing.SHARED,
        "relu1": None,
    }


def test_a_pin_on_a_call_that_gives_several_tensors_pins_the_ops_it_makes(compile_text) -> None:
    g = compile_text(
        "input image: 3x8x8\n"
        "block two(x) {\n    return (conv(x, 4, k=3, p=1), conv(x, 4, k=1))\n}\n"
        "backbone {\n    @shared\n    t = two(image)\n    return t[0] + t[1]\n}\n"
    )
    pins = {node.name: node.sharing for _, node in g.nodes() if node.op is Op.CONV2D}
    assert pins == {"two1.conv1": Sharing.SHARED, "two1.conv2": Sharing.SHARED}


def test_backbone_decorator_pins_everything(compile_text) -> None:
    g = compile_text(
        "input image: 3x8x8\n@shared\nbackbone {\n    return conv(image, 4, k=1) | relu\n}\n"
    )
    assert {node.sharing for _, node in g.nodes() if node.op is not Op.INPUT} == {Sharing.SHARED}


# ---------------------------------------------------------------- compile-time evaluation


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("17 // 5 + 17 % 5", 5),
        ("2 ** 5", 32),
        ("-3 + 10", 7),
        ("int(10 / 4)", 2),
        ("round(2.6)", 3),
        ("ceil(2.1)", 3),
        ("floor(2.9)", 2),
        ("abs(-6)", 6),
        ("channels(image)", 3),
        ("height(image)", 12),
        ("width(image)", 20),
        ("channels(conv(image, 9, k=1))", 9),
        ("height(maxpool(image, k=2))", 6),
        ("min(4, 2, 9)", 2),
        ("max([4, 2, 9])", 9),
        ("len(range(2, 11, 3))", 3),
        ("range(5)[-1]", 4),
        ("len([(1, 2), (3, 4)])", 2),
        ("[(1, 2), (3, 4)][1][0]", 3),
        ("WIDTH * 2", 32),
        ("twice(WIDTH)", 32),
    ],
)
def test_compile_time_integers(expr: str, value: int, compile_text) -> None:
    g = compile_text(
        "input image: 3x12x20\nWIDTH = 16\n"
        "block twice(c) {\n    return 2 * c\n}\n"
        f"backbone {{\n    v = {expr}\n    out: x = conv(image, v, k=1)\n    return x\n}}\n"
    )
    assert by_name(g)["out"].attrs["out"] == value


@pytest.mark.parametrize(
    ("cond", "taken"),
    [
        ("channels(image) == 3", True),
        ("channels(image) != 3", False),
        ("height(image) < width(image) and not false", True),
        ("1 > 2 or 2 >= 2", True),
        ("1 <= 0", False),
        ('"a" == "a"', True),
        ("(1, 2) == (1, 2)", True),
        ("1.5 > 1", True),
    ],
)
def test_compile_time_conditions(cond: str, taken: bool, compile_text) -> None:
    g = compile_text(
        "input image: 3x12x20\n"
        f"backbone {{\n    if {cond} {{\n        x = relu(image)\n    }} else {{\n"
        "        x = sigmoid(image)\n    }\n    return x\n}\n"
    )
    assert names(g) == (["relu1"] if taken else ["sigmoid1"])


def test_elif_chains_and_loops_build_the_ops_they_select(compile_text) -> None:
    g = compile_text(
        "input image: 3x16x16\n"
        "block pick(x, n) {\n"
        "    if n == 0 {\n        x = relu(x)\n    } elif n == 1 {\n        x = sigmoid(x)\n"
        "    } elif n == 2 {\n        x = tanh(x)\n    } else {\n        x = silu(x)\n    }\n"
        "    return x\n}\n"
        "backbone {\n    x = image\n    s: for n in range(4) {\n        x = pick(x, n)\n    }\n"
        "    t: for c, k in [(4, 1), (6, 3)] {\n        x = conv(x, c, k=k, p=k // 2)\n    }\n"
        "    return x\n}\n"
    )
    assert [(n, node.op.value) for n, node in by_name(g).items() if n != "image"] == [
        ("s.0.relu1", "relu"),
        ("s.1.sigmoid1", "sigmoid"),
        ("s.2.tanh1", "tanh"),
        ("s.3.silu1", "silu"),
        ("t.conv1", "conv2d"),
        ("t.conv2", "conv2d"),
    ]
    assert by_name(g)["t.conv2"].attrs["kernel"] == (3, 3)
    assert by_name(g)["t.conv2"].attrs["padding"] == (1, 1)


def test_defaults_may_use_earlier_parameters(compile_text) -> None:
    g = compile_text(
        "input image: 3x8x8\n"
        "block b(x, c, hidden=c * 4, k=1 + 2) {\n    return conv(x, hidden, k=k, p=k // 2)\n}\n"
        "backbone {\n    out: x = b(image, 2)\n    return x\n}\n"
    )
    assert by_name(g)["out.conv1"].attrs["out"] == 8
    assert by_name(g)["out.conv1"].attrs["kernel"] == (3, 3)


UNUSED = """\
input image: 3x8x8
block gate(x) {
    g = avgpool(x, global=true) | conv(2, k=1) | relu | conv(4, k=1) | sigmoid
    return x
}
backbone {
    x = conv(image, 4, k=1)
    unused = conv(x, 4, k=1)
    return gate(x)
}
tasks {
    segment: conv1x1(classes=2)
}
"""


def test_unused_values_are_dropped_with_a_warning(write_model, capsys) -> None:
    """A value computed and never read (here an SE gate never applied) is most likely a
    mistake; left in, its convs would be routed and searched for nothing."""
    path = write_model(UNUSED)
    g = load(path)
    assert [n for n in names(g) if not n.startswith("heads.")] == ["conv1"]
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:8:14: warning: conv2 is never used: dropped",
        "        unused = conv(x, 4, k=1)",
        "                 ^^^^^^^^^^^^^^^",
        f"{path}:3:72: warning: gate1.sigmoid1 is never used: dropped with the 4 ops only it needs",
        "        g = avgpool(x, global=true) | conv(2, k=1) | relu | conv(4, k=1) | sigmoid",
        " " * 75 + "^^^^^^^",
    ]
    supermodel = build(path, None).supermodel
    routed = [n.attrs["op"] for _, n in supermodel.nodes() if n.op is Op.ROUTE]
    assert routed == ["conv1"]


def test_one_warning_for_a_line_whose_values_go_unused_in_every_call(write_model, capsys) -> None:
    """A block called four times makes four unused values on one line: one warning names
    them, not four of the same line; an input nothing reads is a warning too."""
    path = write_model(
        "input image: 3x8x8\ninput extra: 3x8x8\n"
        "block cb(x) {\n    y = conv(x, 4, k=1)\n    z = relu(y) | sigmoid\n    return y\n}\n"
        "backbone {\n    return image | repeat 4 cb\n}\n"
    )
    g = load(path)
    assert names(g) == ["cb1.conv1", "cb2.conv1", "cb3.conv1", "cb4.conv1"]
    assert [node.name for _, node in g.nodes() if node.op is Op.INPUT] == ["image"]
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:2:1: warning: input 'extra' is never used: the model does not take it",
        "    input extra: 3x8x8",
        "    ^^^^^^^^^^^^^^^^^^",
        f"{path}:5:19: warning: the 4 values this line makes (cb1.sigmoid1, cb2.sigmoid1, "
        "cb3.sigmoid1, ...) are never used: dropped with the 4 ops only they need",
        "        z = relu(y) | sigmoid",
        "                      ^^^^^^^",
    ]


def test_ops_feeding_two_unused_values_count_for_neither(write_model, capsys) -> None:
    path = write_model(
        "input image: 3x8x8\nbackbone {\n    x = conv(image, 4, k=1)\n"
        "    t = conv(x, 4, k=1) | relu\n    a = conv(t, 4, k=1)\n"
        "    b = conv(t, 4, k=1) | relu\n    return x\n}\n"
    )
    assert names(load(path)) == ["conv1"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert [line.split("warning: ")[1] for line in warnings] == [
        "conv3 is never used: dropped",
        "relu2 is never used: dropped with the 1 op only it needs",
    ]


# ---------------------------------------------------------------- tasks


def plain(call: Call | None) -> tuple | None:
    return None if call is None else (call.name, call.kwargs)


def test_tasks_section_is_kept(models_dir) -> None:
    g = load(models_dir / "tiny.mtl")
    segment, depth = g.tasks
    assert (segment.name, plain(segment.head)) == (
        "segment",
        ("fcn", (("classes", 5), ("width", 8))),
    )
    assert plain(segment.loss) == ("cross_entropy", (("ignore", 255),))
    assert (plain(segment.metric), segment.weight) == (("miou", ()), 2.0)
    assert (depth.name, plain(depth.head), plain(depth.loss), depth.metric, depth.weight) == (
        "depth",
        ("conv1x1", (("classes", 1),)),
        ("l1", ()),
        None,
        1.0,
    )
    lines = (models_dir / "tiny.mtl").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("    segment: fcn("))
    assert (segment.loc.line, segment.head.loc.line, segment.head.loc.column) == (line, line, 14)


def test_task_heads_are_lowered_after_the_backbone(models_dir) -> None:
    g = load(models_dir / "tiny.mtl")
    assert list(g.outputs) == ["backbone", "segment", "depth"]
    for task, classes in (("segment", 5), ("depth", 1)):
        out = g.node(g.outputs[task])
        assert out.shape == (classes, 32, 32)  # back at the input's resolution
        assert out.name.startswith(f"heads.{task}.") and out.task == task
    backbone = load_backbone(models_dir / "tiny.mtl")
    assert list(backbone.outputs) == ["backbone"]
    assert all(node.task is None for _, node in backbone.nodes())


# ---------------------------------------------------------------- imports


def test_imports_are_relative_to_the_importing_file(write_model, compile_text, tmp_path) -> None:
    write_model(
        'import "b.mtl"\nWIDTH = DEPTH * 2\nblock a(x) {\n    return conv(x, WIDTH, k=1)\n}\n',
        "sub/a.mtl",
    )
    write_model("DEPTH = 3\nblock b(x) {\n    return relu(x)\n}\n", "sub/b.mtl")
    # Both files are also imported directly: each is loaded once (no duplicate blocks).
    g = compile_text(
        'import "sub/a.mtl"\nimport "sub/b.mtl"\ninput image: 3x8x8\n'
        "backbone {\n    return a(image) | b\n}\n"
    )
    assert names(g) == ["a1.conv1", "b1.relu1"]
    assert by_name(g)["a1.conv1"].attrs["out"] == 6  # constants of imported files are visible
    assert by_name(g)["a1.conv1"].loc.file == str((tmp_path / "sub" / "a.mtl").resolve())


def test_constants_of_a_file_imported_twice_stay_visible(write_model, compile_text) -> None:
    write_model("DEPTH = 3\n", "lib/consts.mtl")
    write_model(
        'import "consts.mtl"\nblock a(x) {\n    return conv(x, DEPTH, k=1)\n}\n', "lib/a.mtl"
    )
    # consts.mtl is loaded by the model first; a.mtl, importing it again, still sees DEPTH.
    g = compile_text(
        'import "lib/consts.mtl"\nimport "lib/a.mtl"\ninput image: 3x8x8\n'
        "backbone {\n    return a(image) | conv(DEPTH * 2, k=1)\n}\n"
    )
    assert [node.attrs["out"] for _, node in g.nodes() if node.op is Op.CONV2D] == [3, 6]


def test_import_from_another_working_directory(models_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "stages.0.conv1" in names(load_backbone(models_dir / "tiny.mtl"))


# ---------------------------------------------------------------- IR invariants


MODELS = ["efficientnet_b0", "mnasnet", "mobilenetv2", "resnet18", "resnet34", "resnet_tiny"]


def _stage_name(stage) -> str:
    return getattr(stage, "__name__", None) or stage.func.__name__


@pytest.mark.parametrize("name", [*MODELS, "tiny"])
def test_verify_passes_after_every_pass(name, examples_dir, models_dir) -> None:
    path = models_dir / "tiny.mtl" if name == "tiny" else examples_dir / f"{name}.mtl"
    g = lower_file(path)
    verify(g, after="lowering")
    done = ["lowering"]
    for stage in FRONTEND_PIPELINE:
        g = stage(g)
        done.append(_stage_name(stage))
        verify(g, after=" -> ".join(done))
    supermodel = g.copy()
    for stage in supermodel_pipeline(RoutingOptions()):
        supermodel = stage(supermodel)
        verify(supermodel, after=" -> ".join([*done, _stage_name(stage)]))
    for stage in BACKBONE_PIPELINE:
        g = stage(g)
        done.append(_stage_name(stage))
        verify(g, after=" -> ".join(done))
    assert list(g.outputs) == ["backbone"]


def _small_graph() -> tuple[Graph, int, int]:
    g = Graph("t")
    image = g.add(Node(Op.INPUT, "image", {"shape": (3, 8, 8)}, (3, 8, 8)))
    attrs = spec_of(Op.CONV2D).normalize({"out": 4, "k": 3, "p": 1})
    conv = g.add(Node(Op.CONV2D, "conv1", attrs, (4, 8, 8)), [image])
    g.outputs["backbone"] = conv
    return g, image, conv


def test_verify_accepts_a_valid_graph() -> None:
    g, _, _ = _small_graph()
    verify(g)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("shape", "conv1: shape (4, 9, 9) but its inputs give (4, 8, 8)"),
        ("name", "share the name 'image'"),
        ("attrs", "conv1: attributes ['kernel', 'out'] do not match the conv2d op"),
        ("arity", "conv1: conv2d: takes 1 input(s), got 2"),
        ("outputs", "the graph has no outputs"),
        ("removed_output", "output 'backbone' points at a removed node"),
        ("cycle", "the graph has a cycle"),
        ("readers", "image: its readers [] disagree with its edges"),
    ],
)
def test_verify_reports_broken_invariants(breakage: str, message: str) -> None:
    g, image, conv = _small_graph()
    if breakage == "shape":
        g.update(conv, shape=(4, 9, 9))
    elif breakage == "name":
        g.update(conv, name="image")
    elif breakage == "attrs":
        g.update(conv, attrs={"out": 4, "kernel": (3, 3)})
    elif breakage == "arity":
        g.set_inputs(conv, [image, image])
    elif breakage == "outputs":
        g.outputs.clear()
    elif breakage == "removed_output":
        g.outputs["backbone"] = 99
    elif breakage == "cycle":
        relu = g.add(Node(Op.RELU, "relu1", {}, (4, 8, 8)), [conv])
        g.set_inputs(conv, [relu])
    elif breakage == "readers":
        g._users[image].clear()  # an index out of step with the edges: a bug in Graph itself
    with pytest.raises(InternalError) as info:
        verify(g, after="a test")
    assert str(info.value).startswith("IR verification failed after a test: ")
    assert message in str(info.value)


def test_a_value_is_named_as_the_statement_that_assigned_it(tmp_path):
    """A block's result takes the name the caller gave it, not the block's `return` name
    (`out`): the generated code reads `e1 = self.enc1_relu1(y)`."""
    path = tmp_path / "names.mtl"
    path.write_text(
        "input image: 3x8x8\n"
        "block cbr(x, c) {\n    y = conv(x, c, k=3, p=1) | bn\n    return relu(y)\n}\n"
        "backbone {\n    enc1: e1 = cbr(image, 4)\n    enc2: e2 = cbr(e1, 4)\n"
        "    x = e1\n    return e1 + e2\n}\n"
    )
    g = lower_file(path)
    var = {node.name: node.meta.get("var") for _, node in g.nodes()}
    assert var["enc1.conv1"] == "y" and var["enc1.relu1"] == "e1" and var["enc2.relu1"] == "e2"
    assert var["add1"] == "out"  # `x = e1` names no new value


def test_automatic_names_never_meet_each_other_or_a_label(tmp_path):
    """An op or block whose name ends in a digit counts after an underscore (the 61st relu
    and the first relu6 were both `relu61`), and a count a label took is passed over."""
    path = tmp_path / "names.mtl"
    path.write_text(
        "input image: 3x8x8\n"
        "block cb1(x) {\n    return conv(x, 4, k=1)\n}\n"
        "backbone {\n    x = image\n    for i in range(61) {\n        x = relu(x)\n    }\n"
        "    x = relu6(x)\n    conv2: x = cb1(x)\n    x = conv(x, 4, k=1) | conv(4, k=1)\n"
        "    return x\n}\n"
    )
    names = {node.name for _, node in lower_file(path).nodes()}
    assert {"relu61", "relu6_1", "conv2.conv1", "conv1", "conv3"} <= names
    assert "conv2" not in names and "relu62" not in names


def test_a_repeated_stage_needs_no_brackets(compile_text):
    """`| repeat 3 relu` is `| repeat 3 relu()`, as `| relu` is `| relu()`."""
    block = "block cb(x, c=4) {\n    return conv(x, c, k=1) | relu\n}\n"
    bare = compile_text(
        "input image: 3x8x8\n"
        + block
        + "backbone {\n    return image | repeat 2 cb | repeat 3 relu\n}\n"
    )
    called = compile_text(
        "input image: 3x8x8\n"
        + block
        + "backbone {\n    return repeat 3 relu(repeat 2 cb(image))\n}\n"
    )
    assert names(bare) == names(called) == [
        "cb1.conv1", "cb1.relu1", "cb2.conv1", "cb2.relu1", "relu1", "relu2", "relu3"
    ]  # fmt: skip
