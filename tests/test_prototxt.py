"""The prototxt frontend: schema loading, import of every dialect feature, Caffe's shapes, the
generated backbone against hand-written references, `mtsc import` round trips, and every error.

Expected shapes are computed by hand with Caffe's rules (in the comments and the fixtures),
never by the code under test.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtsc.cli import main
from mtsc.codegen.mtl_emit import emit_mtl, identifier
from mtsc.driver import build
from mtsc.grammar.caffe_layers import f32, pooled_size
from mtsc.grammar.format import format_source
from mtsc.grammar.lower import lower_file
from mtsc.grammar.proto_schema import message_class, parse_proto
from mtsc.grammar.prototxt import SCHEMA, import_prototxt, import_text
from mtsc.grammar.prototxt_scan import bare_fields
from mtsc.ir.errors import InternalError, MtscError
from mtsc.ir.graph import Graph
from mtsc.ir.ops import Op
from mtsc.ir.stats import summarize
from mtsc.ir.verify import verify

FIXTURES = Path(__file__).parent / "fixtures" / "prototxt"

# Fixture -> (input shape, backbone output shape), by hand from each fixture's layers.
FIXTURE_SHAPES = {
    # 64 -> conv 7/2 p3: 32 -> max 3/2 rounded up: ceil(29/2) + 1 = 16 -> stride 2: 8
    # -> average 8/1: 1 -> fc 10.
    "resnet_bottleneck": ((3, 64, 64), (10,)),
    # Input layer 49 -> conv 3/2: 24 -> max 3/2: ceil(21/2) + 1 = 12 -> global average.
    "squeezenet_fire": ((3, 49, 49), (10, 1, 1)),
    # input_shape 32 -> conv 3/2 p1: 16 -> dw 3/2 p1: 8 -> ... -> global average -> 1x1 conv.
    "mobilenet_dw": ((3, 32, 32), (10, 1, 1)),
    # 32 -> max 2/2: 16 -> max 2/2: 8 -> fc6 on 16 * 8 * 8 -> fc7 -> fc8 10.
    "vgg_v1": ((3, 32, 32), (10,)),
    # 40 -> conv 7/2 p3: 20 -> max 3/2: ceil(17/2) + 1 = 10 -> inception (20 channels)
    # -> average 10/1: 1 -> classifier 10.
    "googlenet_names": ((3, 40, 40), (10,)),
    # 33 -> conv 3/2 p1: 17 -> max 2/2 CEIL: ceil(15/2) + 1 = 9 -> max 2/2 FLOOR: 7 // 2 + 1 = 4.
    "automtl_quirk": ((3, 33, 33), (16, 4, 4)),
    # See the comments in the fixture: 13x11 -> 7x6 -> 4x4 -> 3x3 -> 2x2 -> fc 5.
    "small_numeric": ((3, 13, 11), (5,)),
    # 30 -> conv 3/2 p1: 15 -> max 3/2 ceil_mode false: 12 // 2 + 1 = 7 -> avg 2/2 rounded up:
    # ceil(5/2) + 1 = 4 -> reshape to 16 * 4 * 4 -> fc 10.
    "fork_dialect": ((3, 30, 30), (10,)),
    # See the comments in the fixture: 21 -> max 3/2 p1: 11 -> conv 3 hole 2 p2: 11
    # -> conv 3 with hole_h 2, hole_w 3: 7x5.
    "deeplab_v1": ((3, 21, 21), (10, 7, 5)),
    # 12 -> conv 3/2 p1: 6 -> SE blocks keep 8x6x6 -> average 3/3: ceil(3/3) + 1 = 2 -> fc 5.
    "se_blocks": ((3, 12, 12), (5,)),
    # See the comments in the fixture: 9x7 -> 17x13 -> 9x7 -> 13x10 -> 5x6 -> 9x7 -> fc 5.
    "interp_forms": ((3, 9, 7), (5,)),
    # See the comments in the fixture: 10x8 -> 5x4 -> 10x8 -> 23x19 -> crop to 10x8.
    "fcn_upsample": ((3, 10, 8), (6, 10, 8)),
    # Normalize keeps the shape: 10x9 -> conv 3 p1 (6 channels) -> Normalize.
    "ssd_normalize": ((3, 10, 9), (6, 10, 9)),
    # See the comments in the fixture: 8x8x8 sliced and rejoined to 6x8x8 -> fc 5.
    "slice_branches": ((3, 8, 8), (5,)),
    # Element-wise layers keep 6x9x7; a 1x1 conv makes 4 channels.
    "elementwise": ((3, 9, 7), (4, 9, 7)),
    # See the comments in the fixture: 9x7 -> pool 5x4 -> unpool 9x7 -> 1x1 conv to 2.
    "segnet_unpool": ((3, 9, 7), (2, 9, 7)),
    # 12 -> conv 3/2 p1: 6 -> depthwise, scaled by its gate -> global average -> fc 5.
    "se_inner_product": ((3, 12, 12), (5,)),
}
# Shapes of named inner layers, by hand: they pin the rounding of each pooling layer.
INNER_SHAPES = {
    "resnet_bottleneck": {"pool1": (16, 16, 16), "res2a": (32, 16, 16), "res3a": (64, 8, 8)},
    "squeezenet_fire": {"pool1": (16, 12, 12), "fire2/concat": (16, 12, 12)},
    "mobilenet_dw": {"conv2_2/dw": (16, 8, 8), "conv_asym": (16, 4, 8), "conv_dilated": (16, 4, 8)},
    "vgg_v1": {"pool2": (16, 8, 8), "flatten": (1024,), "fc6": (32,)},
    "googlenet_names": {"pool1/3x3_s2": (8, 10, 10), "inception_3a/output": (20, 10, 10)},
    "automtl_quirk": {"max_pool1": (8, 9, 9), "add1": (8, 9, 9), "conv4": (16, 4, 4)},
    "small_numeric": {"pool1": (8, 4, 4), "pool2": (16, 3, 3), "pool3": (16, 2, 2)},
    "fork_dialect": {"conv1/bn": (8, 15, 15), "pool1": (8, 7, 7), "pool2": (16, 4, 4)},
    "deeplab_v1": {"pool1": (8, 11, 11), "conv2": (16, 11, 11), "fc6": (32, 7, 5)},
    "se_blocks": {
        "res_pool": (8, 1, 1),
        "res_prob": (8, 1, 1),
        "res.scale": (8, 6, 6),
        "res": (8, 6, 6),
        "inc_prob": (8, 1, 1),
        "inc_scale": (8, 6, 6),
        "pool": (8, 2, 2),
    },
    "interp_forms": {
        "zoom": (4, 17, 13),
        "shrink": (4, 9, 7),
        "both": (4, 13, 10),
        "fixed": (4, 5, 6),
        "back": (4, 9, 7),
    },
    "elementwise": {"abs1": (6, 9, 7), "square": (6, 9, 7), "sum": (6, 9, 7)},
    "segnet_unpool": {"pool1": (4, 5, 4), "conv2": (4, 5, 4), "upsample1": (4, 9, 7)},
    "fcn_upsample": {
        "conv1": (8, 5, 4),
        "score": (4, 5, 4),
        "upscore": (4, 10, 8),
        "up2": (6, 23, 19),
    },
    "ssd_normalize": {"conv4_3_norm.l2norm": (8, 10, 9), "conv4_3_norm": (8, 10, 9)},
    "slice_branches": {
        "split.b": (2, 8, 8),
        "split.c": (4, 8, 8),
        "halves.h1": (2, 8, 8),
        "halves.h2": (2, 8, 8),
        "cat": (6, 8, 8),
    },
    "se_inner_product": {
        "se2/ip2": (8,),
        "se2/scale.gate": (8, 1, 1),
        "se2/scale": (8, 6, 6),
    },
}


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.prototxt"


def nodes_by_name(g: Graph) -> dict:
    return {g.node(n).name: g.node(n) for n in g.node_ids()}


def line_of(text: str, snippet: str) -> int:
    return text[: text.index(snippet)].count("\n") + 1


# ----------------------------------------------------------------------------- the schema


def test_parse_proto_builds_nested_types_defaults_and_packed_fields():
    fdp = parse_proto(
        """
        syntax = "proto2";  // a comment
        package demo;
        enum Top { A = 0; B = 1; }
        message Outer {
          /* nested types resolve from the innermost scope outward */
          message Inner { optional Mode mode = 1 [default = FAST]; }
          enum Mode { SLOW = 0; FAST = 1; }
          optional Inner inner = 1;
          repeated int64 dims = 2 [packed = true];
          optional float ratio = 3 [default = .5];
          optional string label = 4 [default = 'x'];
          optional Top top = 5 [default = B];
        }
        """,
        "demo.proto",
    )
    outer = fdp.message_type[0]
    fields = {f.name: f for f in outer.field}
    assert fields["inner"].type_name == ".demo.Outer.Inner"
    assert fields["top"].type_name == ".demo.Top"
    assert outer.nested_type[0].field[0].type_name == ".demo.Outer.Mode"
    assert outer.nested_type[0].field[0].default_value == "FAST"
    assert fields["dims"].options.packed
    assert fields["ratio"].default_value == "0.5"
    assert fields["label"].default_value == "x"


def test_parse_proto_reports_schema_mistakes_as_internal_errors():
    with pytest.raises(InternalError, match="unknown type 'Missing'"):
        parse_proto("message A { optional Missing m = 1; }", "bad.proto")
    with pytest.raises(InternalError, match=r"bad.proto:1: only proto2"):
        parse_proto('syntax = "proto3";', "bad.proto")
    with pytest.raises(InternalError, match=r"bad.proto:2: unexpected '\?'"):
        parse_proto("message A {\n ? }", "bad.proto")


def test_caffe_schema_keeps_caffe_field_numbers_and_defaults():
    net_class = message_class(SCHEMA, "caffe.NetParameter")
    net = net_class()
    layer = net.DESCRIPTOR.fields_by_name["layer"].message_type
    v1 = net.DESCRIPTOR.fields_by_name["layers"].message_type
    # Numbers from BVLC caffe.proto.
    assert net.DESCRIPTOR.fields_by_name["layer"].number == 100
    assert layer.fields_by_name["convolution_param"].number == 106
    assert layer.fields_by_name["pooling_param"].number == 121
    assert layer.fields_by_name["prelu_param"].number == 131
    assert v1.fields_by_name["pooling_param"].number == 19
    pool = layer.fields_by_name["pooling_param"].message_type
    assert pool.fields_by_name["round_mode"].default_value == 0  # CEIL: Caffe always rounded up
    new_layer = net.layer.add()
    assert new_layer.convolution_param.bias_term is True
    assert new_layer.pooling_param.stride == 1
    assert new_layer.scale_param.bias_term is False


# ----------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("name", sorted(FIXTURE_SHAPES))
def test_fixture_imports_with_caffe_shapes(name):
    g = import_prototxt(fixture(name)).graph
    verify(g)
    in_shape, out_shape = FIXTURE_SHAPES[name]
    assert [g.node(n).shape for n in g.input_ids()] == [in_shape]
    assert g.node(g.outputs["backbone"]).shape == out_shape
    named = nodes_by_name(g)
    for layer, shape in INNER_SHAPES[name].items():
        assert named[layer].shape == shape, layer


def test_resnet_fixture_fuses_batchnorm_and_scale_and_drops_the_softmax():
    imported = import_prototxt(fixture("resnet_bottleneck"))
    g = imported.graph
    named = nodes_by_name(g)
    ops = [g.node(n).op for n in g.topo_order()]
    assert ops.count(Op.BATCHNORM) == 9 and Op.SCALE not in ops
    assert all(named[n].attrs["affine"] for n in ("bn_conv1", "bn2a_branch1", "bn3a_branch2c"))
    assert named["bn_conv1"].meta["note"].startswith("bn_conv1 + scale_conv1: BatchNorm and Scale")
    assert named["conv1"].attrs["bias"] is True and named["res2a_branch1"].attrs["bias"] is False
    assert named["pool1"].attrs["ceil"] is True
    assert "prob" not in named
    assert imported.notes == (
        "Not imported: the backbone ends at blob 'fc10', which does not need prob (Softmax).",
    )
    # Each node points at its layer block; the in-place ReLU reads the fused batchnorm.
    text = fixture("resnet_bottleneck").read_text()
    relu = next(n for n in g.node_ids() if g.node(n).name == "conv1_relu")
    assert g.node(relu).loc.line == line_of(text, 'top: "conv1"\n  name: "conv1_relu"') - 2
    assert g.node(g.inputs(relu)[0]).name == "bn_conv1"


@pytest.mark.parametrize(
    ("blob", "shape", "dropped"),
    [
        ("res3a", (64, 8, 8), "pool5 (Pooling), fc10 (InnerProduct), prob (Softmax)"),
        ("res2a", (32, 16, 16), "res3a_branch1 (Convolution)"),
    ],
)
def test_output_cuts_the_trunk_at_a_blob(blob, shape, dropped):
    imported = import_prototxt(fixture("resnet_bottleneck"), output=blob)
    verify(imported.graph)
    assert imported.graph.node(imported.graph.outputs["backbone"]).shape == shape
    assert dropped in imported.notes[0]
    assert f"ends at blob {blob!r}" in imported.notes[0]


def test_output_of_an_in_place_blob_is_its_last_value():
    g = import_prototxt(fixture("resnet_bottleneck"), output="res2a").graph
    assert g.node(g.outputs["backbone"]).name == "res2a_relu"


def test_automtl_dialect_binds_data_to_blob1_and_keeps_pytorch_batchnorm():
    imported = import_prototxt(fixture("automtl_quirk"))
    g = imported.graph
    named = nodes_by_name(g)
    assert [g.node(n).name for n in g.input_ids()] == ["blob1"]
    assert g.node(g.inputs(g.by_name()["conv1"])[0]).name == "blob1"
    (warning,) = imported.warnings
    assert "reads blob 'data', which is never declared; using the only input, 'blob1'" in (
        warning.message
    )
    text = fixture("automtl_quirk").read_text()
    rendered = warning.render().splitlines()
    line = line_of(text, 'bottom: "data"')
    assert rendered[0].startswith(f"{fixture('automtl_quirk')}:{line}:3: warning: layer 'conv1'")
    assert rendered[1].strip() == 'bottom: "data"' and rendered[2].strip() == "^" * 14
    assert named["batch_norm1"].attrs == {"eps": 1e-05, "momentum": 0.1, "affine": True}
    assert named["batch_norm2"].attrs["momentum"] == 0.01
    assert named["max_pool1"].attrs["ceil"] is True and named["max_pool2"].attrs["ceil"] is False
    # `feat` is written by conv3, then again by conv4 (from feat2), then in place by relu4.
    assert g.node(g.inputs(g.by_name()["relu4"])[0]).name == "conv4"
    assert g.node(g.outputs["backbone"]).name == "relu4"


def test_caffe_batchnorm_alone_is_not_affine_and_reads_its_moving_average():
    named = nodes_by_name(import_prototxt(fixture("mobilenet_dw")).graph)
    assert named["conv1/bn"].attrs == {"eps": 0.001, "momentum": 0.01, "affine": True}
    assert named["relu2_1/sep"].op is Op.RELU6
    assert named["conv2_1/dw"].attrs["groups"] == 8
    assert named["conv_asym"].attrs["kernel"] == (1, 3)
    assert named["conv_asym"].attrs["stride"] == (2, 1)
    assert named["conv_asym"].attrs["padding"] == (0, 1)
    assert named["conv_dilated"].attrs["dilation"] == (2, 2)
    small = nodes_by_name(import_prototxt(fixture("small_numeric")).graph)
    assert small["bn_t"].attrs == {"eps": 1e-05, "momentum": 0.1, "affine": False}
    assert small["scale_alone"].op is Op.SCALE and small["scale_alone"].attrs == {"bias": True}
    assert small["sum"].attrs == {"coeffs": (0.5, -2.0)}
    assert small["leaky"].attrs == {"slope": 0.1}


def test_squeeze_and_excitation_axpy_and_two_bottom_scale_are_mul_and_add():
    imported = import_prototxt(fixture("se_blocks"))
    g = imported.graph
    named = nodes_by_name(g)

    def inputs(name):
        return [g.node(n).name for n in g.inputs(g.by_name()[name])]

    # Axpy(gate, x, y) = gate * x + y: x * gate under a derived name, then + y as the layer.
    assert named["res.scale"].op is Op.MUL and inputs("res.scale") == ["res_branch", "res_prob"]
    assert named["res"].op is Op.ADD and inputs("res") == ["res.scale", "conv1/relu"]
    assert named["res.scale"].meta["var"] == named["res"].meta["var"] == "res"
    # The gate reshaped to N x 8 for Scale (axis 0) is read as the 8x1x1 blob it came from.
    assert named["inc_scale"].op is Op.MUL and inputs("inc_scale") == ["inc/concat", "inc_prob"]
    assert "inc_prob_reshape" not in named
    assert named["inc_scale"].meta["note"] == (
        "inc_prob_reshape: Reshape of the gate 'inc_up' to N x 8 left out; mul reads it as "
        "N x 8 x 1 x 1"
    )
    assert named["conv1/bn"].attrs["affine"] is True  # still fused with conv1/scale
    assert (imported.notes, imported.warnings) == (
        ("Not imported: the backbone ends at blob 'fc', which does not need prob (Softmax).",),
        (),
    )
    # By hand: conv1 216, bn 16, res_branch 584, down 18, up 24, inc 36 + 292, down 18, up 24,
    # fc 32 * 5 + 5.
    assert summarize(g).params == 1393


def test_v1_layers_map_enum_types():
    g = import_prototxt(fixture("vgg_v1")).graph
    named = nodes_by_name(g)
    assert named["relu1_1"].op is Op.RELU and named["pool1"].op is Op.MAXPOOL
    assert named["flatten"].op is Op.FLATTEN and "fc6.flatten" not in named
    assert g.node(g.inputs(g.by_name()["fc6"])[0]).name == "flatten"
    assert named["drop6"].attrs == {"p": 0.5}


def ruled(name: str, rule: str) -> str:
    """A ReLU on `data`, in place, with an include / exclude `rule`."""
    return layer(name, "ReLU", "data", top="data", body=rule)


def kept_layers(text: str) -> list[str]:
    g = import_text(text, "net.prototxt").graph
    return sorted(n for n, node in nodes_by_name(g).items() if node.op is Op.RELU)


# (rules of the layers a, b, c; the file's `state`, or None) -> the layers imported
PHASE_CASES = {
    "phases, TEST by default": (
        ("include { phase: TRAIN }", "include { phase: TEST }", "exclude { phase: TEST }"),
        None,
        ["b"],
    ),
    "the file's state": (
        ("include { phase: TRAIN }", "include { phase: TEST }", "exclude { phase: TEST }"),
        "state { phase: TRAIN }",
        ["a", "c"],
    ),
    "stages": (
        ("include { stage: 'deploy' }", "exclude { stage: 'deploy' }",
         "include { not_stage: 'deploy' }"),
        "state { stage: 'deploy' stage: 'fast' }",
        ["a"],
    ),
    "any include rule, all of one rule's conditions": (
        ("include { phase: TRAIN } include { stage: 'x' }",
         "include { phase: TEST stage: 'x' }", "include { phase: TEST }"),
        "state { stage: 'x' }",
        ["a", "b", "c"],
    ),
    "levels": (
        ("include { min_level: 1 }", "include { max_level: 1 }", "include { min_level: 3 }"),
        "state { level: 2 }",
        ["a"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(PHASE_CASES))
def test_layers_outside_the_networks_state_are_left_out(case):
    """Caffe's NetState rules: a layer with `include` rules is built when one of them matches
    the state, one with `exclude` rules when none does; a rule matches when its phase, level
    range, stages and not-stages all hold."""
    rules, state, expected = PHASE_CASES[case]
    body = "".join(ruled(name, rule) for name, rule in zip("abc", rules, strict=True))
    text = (state or "") + "\n" + INPUT + body
    assert kept_layers(text) == expected


def test_train_and_test_copies_of_a_layer_import_the_test_one():
    """A train_val file's TRAIN / TEST pair (the same name and top, in place) and a Dropout
    excluded from TEST: the TEST network, with a note naming what was left out."""
    text = (
        INPUT
        + conv("conv1")
        + layer("bn1", "BatchNorm", "conv1", top="conv1",
                body="batch_norm_param { use_global_stats: false } include { phase: TRAIN }")
        + layer("bn1", "BatchNorm", "conv1", top="conv1",
                body="batch_norm_param { use_global_stats: true eps: 0.001 } "
                "include { phase: TEST }")
        + layer("drop", "Dropout", "conv1", top="conv1", body="exclude { phase: TEST }")
    )  # fmt: skip
    imported = import_text(text, "net.prototxt")
    named = nodes_by_name(imported.graph)
    assert named["bn1"].attrs["eps"] == pytest.approx(0.001)
    assert "drop" not in named
    assert imported.notes == (
        "Not imported: outside Caffe's TEST network: bn1 (BatchNorm, line 10), drop (Dropout).",
    )
    v1 = INPUT + (
        'layers { name: "r" type: RELU bottom: "data" top: "r" include { phase: TRAIN } }\n'
        'layers { name: "s" type: SIGMOID bottom: "data" top: "s" include { phase: TEST } }\n'
    )
    imported = import_text(v1, "net.prototxt")
    assert "r" not in nodes_by_name(imported.graph)
    assert imported.notes == ("Not imported: outside Caffe's TEST network: r (ReLU).",)


@pytest.mark.parametrize("type_", ["DepthwiseConvolution", "ConvolutionDepthwise"])
def test_the_forks_depthwise_convolutions_are_grouped_per_channel(type_):
    """MobileNet ports' depthwise layers: a Convolution with one group per input channel, with
    or without `group`; another group count is an error."""
    params = "num_output: 6 kernel_size: 3 pad: 1 stride: 2 bias_term: false"
    for group in ("", " group: 3"):
        text = INPUT + layer("dw", type_, "data", body=f"convolution_param {{ {params}{group} }}")
        dw = nodes_by_name(import_text(text, "net.prototxt").graph)["dw"]
        assert dw.op is Op.CONV2D and dw.shape == (6, 4, 4)
        assert (dw.attrs["groups"], dw.attrs["stride"], dw.attrs["bias"]) == (3, (2, 2), False)
    text = INPUT + layer("dw", type_, "data", body=f"convolution_param {{ {params} group: 1 }}")
    with pytest.raises(MtscError) as info:
        import_text(text, "net.prototxt")
    assert info.value.message == (
        f"layer 'dw' ({type_}): group 1 on 3 input channels; a depthwise convolution has one "
        "group per channel"
    )
    assert info.value.span.line == line_of(text, "convolution_param")


def test_a_split_gives_its_bottom_under_each_top():
    """Caffe's Split copies its bottom to every top: the tops are the bottom's value, read by
    each branch, with no node of its own and no note of a layer left out."""
    text = INPUT + (
        conv("c")
        + layer("split", "Split", "c", top="c_a").replace('top: "c_a"', 'top: "c_a"\n  top: "c_b"')
        + layer("r", "ReLU", "c_a")
        + layer("s", "Sigmoid", "c_b")
        + layer("sum", "Eltwise", "r", "s")
    )
    imported = import_text(text, "net.prototxt")
    g = imported.graph
    named = nodes_by_name(g)
    assert "split" not in named and imported.notes == ()
    for name in ("r", "s"):
        assert [g.node(n).name for n in g.inputs(g.by_name()[name])] == ["c"]
    v1 = INPUT + (
        'layers { name: "sp" type: SPLIT bottom: "data" top: "a" top: "b" }\n'
        'layers { name: "cat" type: CONCAT bottom: "a" bottom: "b" top: "cat" }\n'
    )
    cat = import_text(v1, "net.prototxt").graph
    assert nodes_by_name(cat)["cat"].shape == (6, 8, 8)
    bad = INPUT + conv("c") + layer("split", "Split", "c", "data")
    with pytest.raises(MtscError) as info:
        import_text(bad, "net.prototxt")
    assert info.value.message == "layer 'split' (Split): takes 1 bottom(s), got 2"


def test_a_convolution_takes_pad_h_or_pad_w_alone():
    """Caffe's convolution reads pad_h and pad_w when either is set, the other being 0
    (pooling needs both: an error above)."""
    text = INPUT + conv("c", params="num_output: 4 kernel_size: 3 pad_w: 1")
    c = nodes_by_name(import_text(text, "net.prototxt").graph)["c"]
    assert c.attrs["padding"] == (0, 1) and c.shape == (4, 6, 8)


def test_layers_named_alike_are_renamed_with_a_note():
    """Caffe allows two layers one name (HED names five Crop layers `crop`), or a layer the
    name of an input; an op's name is its own, so the later one gets a suffix."""
    text = (
        INPUT
        + layer("data", "ReLU", "data", top="r")
        + layer("c", "ReLU", "r", top="s")
        + layer("c", "ReLU", "s", top="t")
    )
    imported = import_text(text, "net.prototxt")
    assert list(nodes_by_name(imported.graph)) == ["data", "data_2", "c", "c_2"]
    assert imported.notes == (
        "Renamed layers whose name an input or an earlier layer has: data (line 3) as data_2, "
        "c (line 15) as c_2.",
    )


def test_a_concat_of_one_bottom_passes_it_through():
    """Caffe's Concat takes one bottom too, and shares its data (darknet's route layers)."""
    text = INPUT + conv("c") + layer("route", "Concat", "c") + layer("r", "ReLU", "route")
    g = import_text(text, "net.prototxt").graph
    assert list(nodes_by_name(g)) == ["data", "c", "r"]
    assert [g.node(n).name for n in g.inputs(g.outputs["backbone"])] == ["c"]


def test_output_at_a_softmax_ends_at_its_scores_with_a_warning():
    text = INPUT + conv("fc") + layer("prob", "Softmax", "fc")
    imported = import_text(text, "net.prototxt", output="prob")
    assert imported.graph.node(imported.graph.outputs["backbone"]).name == "fc"
    (warning,) = imported.warnings
    assert warning.message == (
        "--output 'prob' is a Softmax's top; mtsc drops a final Softmax, so the backbone ends "
        "at its bottom, 'fc'"
    )
    assert warning.span.source_line().strip() == 'type: "Softmax"'


def test_an_unused_input_of_any_shape_is_only_noted():
    """Faster R-CNN's `im_info` (1 x 3) beside the image: cut before anything reads it, the
    import goes on; read, its shape is the error."""
    text = (
        'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
        'input: "im_info"\ninput_shape { dim: 1 dim: 3 }\n'
        + conv("c")
        + layer("proposal", "Eltwise", "c", "im_info")
    )
    imported = import_text(text, "net.prototxt", output="c")
    assert "im_info" not in nodes_by_name(imported.graph)
    assert imported.notes[-1] == "Not imported: the unused input(s) 'im_info'."
    with pytest.raises(MtscError) as info:
        import_text(text, "net.prototxt")
    assert info.value.message == (
        "input 'im_info' has shape 1x3; mtsc needs N x C x H x W, all positive"
    )
    assert info.value.span.line == line_of(text, 'input: "im_info"')


def test_the_note_names_the_files_state():
    text = (
        "state { phase: TRAIN level: 2 stage: 'a' stage: 'b' }\n"
        + INPUT
        + (ruled("r", "include { phase: TEST }") + ruled("s", "include { phase: TRAIN }"))
    )
    assert import_text(text, "net.prototxt").notes == (
        "Not imported: outside Caffe's TRAIN network at level 2 with stage a, b: r (ReLU).",
    )


def test_interp_with_a_size_of_its_own_does_not_read_a_second_bottom():
    """Caffe's InterpLayer takes the second bottom's size only when no factor, height or width
    is given."""
    pool = layer(
        "pool", "Pooling", "data", body="pooling_param { pool: MAX kernel_size: 2 stride: 2 }"
    )
    zoom = layer("i", "Interp", "pool", "data", body="interp_param { zoom_factor: 3 }")
    g = import_text(INPUT + pool + zoom, "n.prototxt").graph
    out = g.outputs["backbone"]
    assert g.node(out).shape == (3, 10, 10)  # 4x4 zoomed: 3 * 3 + 1, not data's 8x8
    assert [g.node(i).name for i in g.inputs(out)] == ["pool"]


def test_names_with_slashes_lrn_and_the_implicit_flatten_of_inner_product():
    g = import_prototxt(fixture("googlenet_names")).graph
    named = nodes_by_name(g)
    assert named["pool1/norm1"].attrs == {
        "size": 5,
        "alpha": 0.0001,
        "beta": 0.75,
        "k": 1.0,
        "region": "across",
    }
    # Caffe's InnerProduct flattens C x H x W itself; the IR spells it out.
    assert named["loss3/classifier.flatten"].op is Op.FLATTEN
    assert named["loss3/classifier.flatten"].shape == (20,)
    classifier = g.by_name()["loss3/classifier"]
    assert g.node(g.inputs(classifier)[0]).name == "loss3/classifier.flatten"
    assert named["pool5/drop_10x10_s1"].attrs == {"p": 0.4}


# ----------------------------------------------------------------------------- generated code


@pytest.fixture(scope="module")
def built(tmp_path_factory, load_generated):
    """Build every fixture once with the driver and import its backbone.py."""
    out = {}
    for name in FIXTURE_SHAPES:
        folder = tmp_path_factory.mktemp(name)
        build(fixture(name), folder, render=False)
        out[name] = load_generated(folder / "backbone.py")
    return out


@pytest.mark.parametrize("name", sorted(FIXTURE_SHAPES))
def test_generated_backbone_gives_the_caffe_output_shape(built, name):
    import torch

    in_shape, out_shape = FIXTURE_SHAPES[name]
    model = built[name].Backbone().eval()
    with torch.no_grad():
        y = model(torch.randn(2, *in_shape))
    assert tuple(y.shape) == (2, *out_shape)


def caffe_pool(x: np.ndarray, k: int, s: int, p: int, mode: str) -> np.ndarray:
    """Caffe's pooling forward pass, written from its definition: rounded-up output size, a
    last window starting in the padding dropped, averages over the window clipped to the
    padded input."""
    n, c, h, w = x.shape

    def size(length: int) -> int:
        out = math.ceil((length + 2 * p - k) / s) + 1
        return out - 1 if p and (out - 1) * s >= length + p else out

    out = np.empty((n, c, size(h), size(w)))
    for i in range(size(h)):
        for j in range(size(w)):
            h0, w0 = i * s - p, j * s - p
            h1, w1 = min(h0 + k, h + p), min(w0 + k, w + p)
            window = x[:, :, max(h0, 0) : min(h1, h), max(w0, 0) : min(w1, w)]
            if mode == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / ((h1 - h0) * (w1 - w0))
    return out


def caffe_lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """Across channels: x / (k + alpha / size * sum of squares over `size` channels)^beta."""
    half = (size - 1) // 2
    squares = np.zeros_like(x)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - half), min(x.shape[1], c + half + 1)
        squares[:, c] = (x[:, lo:hi] ** 2).sum(axis=1)
    return x / (k + alpha / size * squares) ** beta


def caffe_interp(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Caffe's InterpLayer, loop for loop: output pixel i reads the input at i * (n1 - 1) /
    (n2 - 1), bilinearly (corners aligned), the neighbour clamped at the last row/column."""
    n1h, n1w = x.shape[2:]
    ratio_h = (n1h - 1) / (height - 1) if height > 1 else 0.0
    ratio_w = (n1w - 1) / (width - 1) if width > 1 else 0.0
    out = np.empty((*x.shape[:2], height, width))
    for i in range(height):
        h0 = int(ratio_h * i)
        dh, lh = int(h0 < n1h - 1), ratio_h * i - h0
        for j in range(width):
            w0 = int(ratio_w * j)
            dw, lw = int(w0 < n1w - 1), ratio_w * j - w0
            top = (1 - lw) * x[:, :, h0, w0] + lw * x[:, :, h0, w0 + dw]
            bottom = (1 - lw) * x[:, :, h0 + dh, w0] + lw * x[:, :, h0 + dh, w0 + dw]
            out[:, :, i, j] = (1 - lh) * top + lh * bottom
    return out


def interp_forms_reference(p: dict, x):
    """The interp_forms network written by hand (float64), the resizes in numpy."""
    import torch
    import torch.nn.functional as F

    conv1 = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1).numpy()
    y = caffe_interp(conv1, 17, 13)
    y = caffe_interp(y, 9, 7)
    y = caffe_interp(y, 13, 10)
    y = caffe_interp(y, 5, 6)
    y = torch.from_numpy(caffe_interp(y, 9, 7) + conv1)
    return y.mean(dim=(2, 3)) @ p["fc.weight"].T + p["fc.bias"]


def small_numeric_reference(p: dict, x):
    """The small_numeric network written by hand (float64), pooling and LRN in numpy."""
    import torch
    import torch.nn.functional as F

    def ch(v):
        return v.view(1, -1, 1, 1)

    def bn(name, y, eps, affine):
        y = (y - ch(p[f"{name}.running_mean"])) / torch.sqrt(ch(p[f"{name}.running_var"]) + eps)
        return y * ch(p[f"{name}.weight"]) + ch(p[f"{name}.bias"]) if affine else y

    def numpy(fn, y, *args):
        return torch.from_numpy(fn(y.numpy(), *args))

    y = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], stride=2, padding=1)
    y = torch.relu(bn("bn1", y, 1e-3, affine=True))
    pool1 = numpy(caffe_pool, y, 3, 2, 1, "max")
    dw = F.conv2d(pool1, p["dw.weight"], None, padding=(1, 0), groups=8)
    dw = dw * ch(p["scale_alone.weight"].flatten()) + ch(p["scale_alone.bias"])
    dw = torch.where(dw > 0, dw, 0.1 * dw)
    dw = torch.where(dw > 0, dw, ch(p["dw_prelu.weight"]) * dw)
    gate = torch.sigmoid(F.conv2d(pool1, p["gate.weight"], p["gate.bias"]))
    t = bn("bn_t", torch.tanh(pool1), 1e-5, affine=False)
    mixed = 0.5 * torch.maximum(dw * gate, t) - 2.0 * pool1
    cat = numpy(caffe_lrn, torch.cat([mixed, pool1], dim=1), 3, 0.5, 0.75, 2.0)
    pooled = numpy(caffe_pool, numpy(caffe_pool, cat, 3, 2, 1, "ave"), 2, 2, 1, "max")
    fc = pooled.flatten(1) @ p["fc.weight"].T + p["fc.bias"]
    return torch.where(fc > 0, fc, p["fc_prelu.weight"] * fc)


def se_blocks_reference(p: dict, x):
    """The se_blocks network written by hand (float64): Axpy is gate * branch + shortcut, the
    Scale multiplies each channel of the concatenation by its gate."""
    import torch
    import torch.nn.functional as F

    def conv(name, y, **kw):
        return F.conv2d(y, p[f"{name}.weight"], p.get(f"{name}.bias"), **kw)

    def excite(name, y):
        squeezed = y.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(conv(f"{name}_up", torch.relu(conv(f"{name}_down", squeezed))))

    def ch(v):
        return v.view(1, -1, 1, 1)

    y = conv("conv1", x, stride=2, padding=1)
    y = (y - ch(p["conv1_bn.running_mean"])) / torch.sqrt(ch(p["conv1_bn.running_var"]) + 1e-5)
    shortcut = torch.relu(y * ch(p["conv1_bn.weight"]) + ch(p["conv1_bn.bias"]))
    branch = conv("res_branch", shortcut, padding=1)
    res = torch.relu(excite("res", branch) * branch + shortcut)
    cat = torch.cat([conv("inc_1x1", res), conv("inc_3x3", res, padding=1)], dim=1)
    gate = excite("inc", cat).flatten(1)  # N x C, as the Reshape makes it
    out = cat * gate[:, :, None, None]
    pooled = torch.from_numpy(caffe_pool(out.numpy(), 3, 3, 0, "ave"))
    return pooled.flatten(1) @ p["fc.weight"].T + p["fc.bias"]


def fcn_upsample_reference(p: dict, x):
    """The fcn_upsample network written by hand (float64); Caffe's Deconvolution blob is
    `[C_in, C_out / group, kh, kw]`, as torch's transposed conv weight."""
    import torch
    import torch.nn.functional as F

    y = torch.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], stride=2, padding=1))
    y = F.conv2d(y, p["score.weight"], p["score.bias"])
    y = F.conv_transpose2d(y, p["upscore.weight"], None, stride=2, padding=1, groups=4)
    y = F.conv_transpose2d(y, p["up2.weight"], p["up2.bias"], stride=2, dilation=2)
    return y[:, :, 5:15, 4:12]


def slice_branches_reference(p: dict, x):
    """The slice_branches network written by hand (float64)."""
    import torch
    import torch.nn.functional as F

    y = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)
    total = F.conv2d(y[:, 2:4], p["conv_b.weight"], p["conv_b.bias"]) + y[:, 4:8]
    joined = torch.cat([total[:, 2:], total[:, :2], y[:, :2]], dim=1)
    return joined.flatten(1) @ p["fc.weight"].T + p["fc.bias"]


def se_inner_product_reference(p: dict, x):
    """The se_inner_product network written by hand (float64)."""
    import torch
    import torch.nn.functional as F

    y = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], stride=2, padding=1)
    y = F.conv2d(y, p["conv2_dw.weight"], None, padding=1, groups=8)
    squeezed = y.mean(dim=(2, 3))
    hidden = torch.relu(squeezed @ p["se2_ip1.weight"].T + p["se2_ip1.bias"])
    gate = torch.sigmoid(hidden @ p["se2_ip2.weight"].T + p["se2_ip2.bias"])
    pooled = (y * gate[:, :, None, None]).mean(dim=(2, 3))
    return pooled @ p["fc.weight"].T + p["fc.bias"]


def elementwise_reference(p: dict, x):
    """The elementwise network written by hand (float64)."""
    import torch
    import torch.nn.functional as F

    y = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)
    y = torch.where(y > 0, y, 0.5 * torch.expm1(y))
    square = (0.5 * y.abs() - 0.25) ** 2
    total = square + torch.where(y > 0, y, torch.expm1(y))
    shuffled = total.clamp(-0.5, 2.0)[:, [0, 2, 4, 1, 3, 5]]
    return F.conv2d(shuffled, p["conv2.weight"], p["conv2.bias"])


def segnet_unpool_reference(p: dict, x):
    """The segnet_unpool network written by hand (float64): each 2x2 window of conv1 (the
    last row's window cut short) gives its value in conv2 to the place of its maximum."""
    import torch
    import torch.nn.functional as F

    conv1 = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)
    pooled = torch.zeros(*conv1.shape[:2], 5, 4, dtype=x.dtype)
    where = {}
    for n, c, i, j in np.ndindex(*pooled.shape):
        window = conv1[n, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        k = int(window.argmax())
        pooled[n, c, i, j] = window.flatten()[k]
        where[n, c, i, j] = (2 * i + k // window.shape[1], 2 * j + k % window.shape[1])
    conv2 = F.conv2d(pooled, p["conv2.weight"], p["conv2.bias"], padding=1)
    up = torch.zeros_like(conv1)
    for (n, c, i, j), (h, w) in where.items():
        up[n, c, h, w] = conv2[n, c, i, j]
    return F.conv2d(up, p["conv3.weight"], p["conv3.bias"])


def ssd_normalize_reference(p: dict, x):
    """The ssd_normalize network written by hand (float64): Caffe adds eps to the sum of
    squares before the square root."""
    import torch
    import torch.nn.functional as F

    def scaled(name, y):
        return y * p[f"{name}.weight"].view(1, -1, 1, 1)

    y = torch.relu(F.conv2d(x, p["conv4_3.weight"], p["conv4_3.bias"], padding=1))
    y = scaled("conv4_3_norm", y / torch.sqrt((y * y).sum(1, keepdim=True) + 1e-10))
    y = F.conv2d(y, p["conv4_3_norm_mbox_loc.weight"], p["conv4_3_norm_mbox_loc.bias"], padding=1)
    return scaled("whole_norm", y / torch.sqrt((y * y).sum((1, 2, 3), keepdim=True) + 1e-3))


# fixture: (its hand-written reference, the input's size)
REFERENCES = {
    "small_numeric": (small_numeric_reference, (13, 11)),
    "se_blocks": (se_blocks_reference, (12, 12)),
    "interp_forms": (interp_forms_reference, (9, 7)),
    "fcn_upsample": (fcn_upsample_reference, (10, 8)),
    "slice_branches": (slice_branches_reference, (8, 8)),
    "se_inner_product": (se_inner_product_reference, (12, 12)),
    "elementwise": (elementwise_reference, (9, 7)),
    "segnet_unpool": (segnet_unpool_reference, (9, 7)),
    "ssd_normalize": (ssd_normalize_reference, (10, 9)),
}


@pytest.mark.parametrize("fixture", sorted(REFERENCES))
def test_generated_backbone_matches_a_hand_written_reference(built, fixture):
    import torch

    reference, size = REFERENCES[fixture]
    model = built[fixture].Backbone().double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float64))
            if key.endswith("running_var"):
                tensor.abs_().add_(0.5)
        params = dict(model.state_dict())
        x = torch.randn(2, 3, *size, generator=generator, dtype=torch.float64)
        out = model(x)
        expected = reference(params, x)
    assert out.shape == (2, *FIXTURE_SHAPES[fixture][1])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- .mtl round trip


def assert_same_ir(original: Graph, lowered: Graph, labels: dict[int, str]) -> None:
    """Same ops, attributes, shapes and edges, node by node in topological order; names equal
    up to the documented renaming (`labels`)."""
    first, second = original.topo_order(), lowered.topo_order()
    assert len(first) == len(second)
    pos_a = {n: i for i, n in enumerate(first)}
    pos_b = {n: i for i, n in enumerate(second)}
    for a, b in zip(first, second, strict=True):
        na, nb = original.node(a), lowered.node(b)
        assert (na.op, na.attrs, na.shape) == (nb.op, nb.attrs, nb.shape), (na.name, nb.name)
        assert labels[a] == nb.name
        assert [pos_a[i] for i in original.inputs(a)] == [pos_b[i] for i in lowered.inputs(b)]
    assert pos_a[original.outputs["backbone"]] == pos_b[lowered.outputs["backbone"]]


@pytest.mark.parametrize("name", sorted(FIXTURE_SHAPES))
def test_emitted_mtl_builds_the_same_ir(name, tmp_path):
    imported = import_prototxt(fixture(name))
    source = emit_mtl(imported.graph, header=imported.notes)
    path = tmp_path / f"{name}.mtl"
    path.write_text(source.text)
    assert_same_ir(imported.graph, lower_file(path), source.labels)
    assert format_source(source.text, str(path)) == source.text
    for nid, label in source.labels.items():
        original = imported.graph.node(nid).name
        if label != original:
            assert re.search(rf"^\s*{label}: .*  # {re.escape(original)}$", source.text, re.M)


def test_emitted_mtl_reads_like_the_prototxt():
    imported = import_prototxt(fixture("googlenet_names"))
    text = emit_mtl(imported.graph, header=imported.notes).text
    assert text.startswith("# Not imported: the backbone ends at blob 'loss3/classifier'")
    assert "input data: 3x40x40\n" in text
    assert (
        "    conv1_7x7_s2: conv1_7x7_s2 = conv(data, 8, k=7, s=2, p=3, bias=true)"
        "  # conv1/7x7_s2\n" in text
    )
    assert "conv1_relu_7x7: conv1_7x7_s2 = relu(conv1_7x7_s2)  # conv1/relu_7x7\n" in text
    assert "pool1_norm1: pool1_norm1 = lrn(pool1_3x3_s2, size=5)  # pool1/norm1\n" in text
    assert "= maxpool(pool1_norm1, k=3, s=1, p=1, ceil=true)  # inception_3a/pool\n" in text
    # A name that starts with a task option word is escaped (see mtl_emit.identifier).
    assert "    return _loss3_classifier\n}\n" in text
    fused = emit_mtl(import_prototxt(fixture("resnet_bottleneck")).graph).text
    assert (
        "    # bn_conv1 + scale_conv1: BatchNorm and Scale fused into one affine batchnorm\n"
        "    bn_conv1: conv1 = bn(conv1)\n" in fused
    )
    assert "res2a: res2a = res2a_branch1 + res2a_branch2c\n" in fused


def test_emitted_mtl_keeps_coefficients_and_elementwise_forms(tmp_path):
    text = emit_mtl(import_prototxt(fixture("small_numeric")).graph).text
    assert "sum: sum = add(max, pool1, coeffs=[0.5, -2.0])\n" in text
    assert "prod: prod = dw * gate\n" in text
    assert "max: max = max(prod, t)\n" in text
    assert "bn_t: t = bn(t, affine=false)\n" in text


@pytest.mark.parametrize(
    ("name", "ident"),
    [
        ("conv1/7x7_s2", "conv1_7x7_s2"),
        ("fc6.flatten", "fc6_flatten"),
        ("3x3", "v3x3"),
        ("return", "return_"),
        ("input", "input_"),
        ("loss3/x", "_loss3_x"),
        ("weights", "_weights"),
        ("/", "v"),
        ("conv-1 a", "conv_1_a"),
    ],
)
def test_identifier_makes_legal_mtl_names(name, ident):
    assert identifier(name) == ident


def test_labels_stay_unique_after_renaming(tmp_path):
    text = """input: "data"  input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
    layer { name: "a/b" type: "ReLU" bottom: "data" top: "x" }
    layer { name: "a_b" type: "Sigmoid" bottom: "x" top: "x" }
    layer { name: "return" type: "TanH" bottom: "x" top: "x" }"""
    imported = import_text(text, "n.prototxt")
    source = emit_mtl(imported.graph)
    assert sorted(source.labels.values()) == ["a_b", "a_b_1", "data", "return_"]
    path = tmp_path / "n.mtl"
    path.write_text(source.text)
    assert_same_ir(imported.graph, lower_file(path), source.labels)


def backbone_only(g: Graph) -> Graph:
    """A copy of `g` without its task heads: the backbone output and what it depends on."""
    out = g.outputs["backbone"]
    keep = g.ancestors(out) | {out}
    part = g.copy()
    part.outputs = {"backbone": out}
    for nid in list(part.node_ids()):
        if nid not in keep:
            part.remove(nid)
    return part


def test_mtl_round_trip_of_a_dsl_model_keeps_sharing_and_tasks(tmp_path, examples_dir):
    model = lower_file(examples_dir / "resnet_tiny.mtl")
    source = emit_mtl(model, header=["resnet_tiny, printed back"])
    text = source.text
    assert "    @shared\n    stem_conv1: x = conv(image, 16, k=3, s=2, p=1)  # stem.conv1\n" in text
    assert (
        "    segment: fcn(classes=6, width=32) loss=cross_entropy(ignore=255) metric=miou\n" in text
    )
    path = tmp_path / "printed.mtl"
    path.write_text(text)
    again = lower_file(path)
    first, second = backbone_only(model), backbone_only(again)
    assert_same_ir(first, second, source.labels)
    pairs = zip(first.topo_order(), second.topo_order(), strict=True)
    assert all(first.node(a).sharing == second.node(b).sharing for a, b in pairs)
    assert [(t.name, str(t.head), str(t.loss), str(t.metric)) for t in again.tasks] == [
        (t.name, str(t.head), str(t.loss), str(t.metric)) for t in model.tasks
    ]


# ----------------------------------------------------------------------------- the command


def test_mtsc_build_and_import_commands(tmp_path, run_mtsc):
    built = run_mtsc(
        "build",
        fixture("resnet_bottleneck"),
        "--output",
        "res3a",
        "-o",
        tmp_path / "out",
        "--no-svg",
    )
    assert built.returncode == 0, built.stderr
    assert "output backbone: 64x8x8" in built.stdout
    assert (tmp_path / "out" / "backbone.py").is_file()
    imported = run_mtsc("import", fixture("squeezenet_fire"), "-o", tmp_path / "fire.mtl")
    assert imported.returncode == 0, imported.stderr
    checked = run_mtsc("check", tmp_path / "fire.mtl")
    assert checked.returncode == 0, checked.stderr
    assert "output backbone: 10x1x1" in checked.stdout
    quirk = run_mtsc("import", fixture("automtl_quirk"))
    assert quirk.returncode == 0 and quirk.stdout.startswith("# automtl_quirk: imported by")
    assert "warning: layer 'conv1' reads blob 'data'" in quirk.stderr


def test_import_keeps_an_edited_mtl_unless_forced(tmp_path, run_mtsc):
    """The imported .mtl is edited next (its tasks section): importing over it again is
    refused once it differs, and --force replaces it. The same text may be written again."""
    out = tmp_path / "fire.mtl"
    assert run_mtsc("import", fixture("squeezenet_fire"), "-o", out).returncode == 0
    again = run_mtsc("import", fixture("squeezenet_fire"), "-o", out)
    assert (again.returncode, again.stdout) == (0, f"wrote {out}\n")
    edited = out.read_text() + "\ntasks {\n    segment: fcn(classes=4)\n}\n"
    out.write_text(edited)
    refused = run_mtsc("import", fixture("squeezenet_fire"), "-o", out)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: {out} exists and differs from this import (edited since?); give --force to "
        "replace it, or -o another file\n"
    )
    assert out.read_text() == edited
    forced = run_mtsc("import", fixture("squeezenet_fire"), "-o", out, "--force")
    assert forced.returncode == 0 and "tasks {" not in out.read_text()


def test_cli_errors_exit_2_with_a_located_message(tmp_path, capsys):
    assert main(["check", str(fixture("resnet_bottleneck")), "--output", "res3b"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {fixture('resnet_bottleneck')}: --output 'res3b': the network has no blob of "
        "that name (did you mean 'res3a'?)"
    )
    assert main(["import", str(FIXTURES.parent.parent / "test_prototxt.py")]) == 2
    assert "mtsc import reads .prototxt files" in capsys.readouterr().err
    mtl = tmp_path / "m.mtl"
    mtl.write_text("input image: 3x8x8\nbackbone {\n    return relu(image)\n}\n")
    assert main(["check", str(mtl), "--output", "x"]) == 2
    assert "--output cuts .prototxt networks" in capsys.readouterr().err
    bad = tmp_path / "bad.prototxt"
    bad.write_text(
        'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
        'layer { name: "n" type: "ArgMax" bottom: "data" top: "n" }\n'
    )
    assert main(["build", str(bad), "-o", str(tmp_path / "o"), "--no-svg"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad}:6:19: error: layer 'n' (ArgMax): unsupported layer type")
    assert err[2].strip() == "^" * len('type: "ArgMax"')


def test_an_empty_prototxt_is_named_in_its_error(tmp_path, capsys):
    empty = tmp_path / "empty.prototxt"
    empty.write_text("")
    for command in (["import", str(empty)], ["check", str(empty)]):
        assert main(command) == 2
        assert capsys.readouterr().err == f"error: {empty}: the network has no layers to import\n"


@pytest.mark.parametrize("out", ["same", "other spelling", "symlink", "hard link"])
def test_import_refuses_to_write_over_its_prototxt(out, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = fixture("mobilenet_dw").read_text()
    (tmp_path / "sub").mkdir()
    net = Path("v.prototxt")
    net.write_text(source)
    target = {
        "same": "v.prototxt",
        "other spelling": "sub/../v.prototxt",
        "symlink": "link.prototxt",
        "hard link": "hard.prototxt",
    }[out]
    Path("link.prototxt").symlink_to("v.prototxt")
    Path("hard.prototxt").hardlink_to("v.prototxt")
    assert main(["import", "v.prototxt", "-o", target]) == 2
    assert capsys.readouterr() == (
        "",
        f"error: -o {target} would overwrite the model file v.prototxt; write the .mtl to "
        "another file (such as v.mtl)\n",
    )
    assert net.read_text() == source
    assert main(["import", "link.prototxt", "-o", "v.mtl"]) == 0  # a new file is fine
    assert capsys.readouterr().out == "wrote v.mtl\n"


# ----------------------------------------------------------------------------- helpers


def test_f32_gives_the_shortest_decimal_of_a_caffe_float():
    as_float32 = struct.unpack("f", struct.pack("f", 1e-5))[0]
    assert as_float32 != 1e-5 and f32(as_float32) == 1e-5
    assert f32(struct.unpack("f", struct.pack("f", 0.999))[0]) == 0.999


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_f32_is_the_same_float32(value):
    short = f32(value)
    assert struct.unpack("f", struct.pack("f", short))[0] == value
    assert float(f"{short:.9g}") == short  # never more digits than a float32 needs


@pytest.mark.parametrize(
    ("args", "caffe", "torch"),
    [
        ((32, 3, 2, 0), 16, 16),  # ceil(29 / 2) + 1, no clipping needed
        ((3, 2, 2, 1), 2, 2),  # ceil(3 / 2) + 1 = 3, the third window starts in the padding
        ((5, 1, 2, 0), 3, 3),  # no padding: ceil(4 / 2) + 1 = 3 starts at 4 < 5
        ((6, 1, 3, 0), 3, 2),  # ceil(5 / 3) + 1 = 3 starts at 6: outside; only PyTorch drops it
    ],
)
def test_pooled_size_follows_caffe_and_pytorch(args, caffe, torch):
    size, k, s, p = args
    assert pooled_size(size, k, s, p, ceil=True, clip=p > 0) == caffe
    assert pooled_size(size, k, s, p, ceil=True, clip=True) == torch


# ----------------------------------------------------------------------------- errors

INPUT = 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
# The end of the message for a type mtsc does not import, written out.
SUPPORTED = (
    "mtsc supports AbsVal, Axpy, BN, BatchNorm, Clip, Concat, Convolution, ConvolutionDepthwise, "
    "Crop, Deconvolution, DepthwiseConvolution, Dropout, ELU, Eltwise, Flatten, InnerProduct, "
    "Input, Interp, LRN, Normalize, PReLU, Pooling, Power, ReLU, ReLU6, Reshape, Scale, "
    "ShuffleChannel, Sigmoid, Slice, Softmax, Split, TanH, Upsample (to import the network up to "
    "a blob before this layer, use --output BLOB)"
)


def layer(name: str, type_: str, *bottoms: str, top: str | None = None, body: str = "") -> str:
    lines = [f'  name: "{name}"', f'  type: "{type_}"']
    lines += [f'  bottom: "{b}"' for b in bottoms]
    lines += [f'  top: "{top or name}"']
    if body:
        lines.append(f"  {body}")
    return "layer {\n" + "\n".join(lines) + "\n}\n"


def conv(name: str, bottom: str = "data", params: str = "num_output: 4 kernel_size: 3") -> str:
    return layer(name, "Convolution", bottom, body=f"convolution_param {{ {params} }}")


def pool(name: str, params: str, bottom: str = "data") -> str:
    return layer(name, "Pooling", bottom, body=f"pooling_param {{ {params} }}")


def gate_net(gate_layers: str) -> str:
    """data 3x8x8, its global average `g` (3x1x1, a gate), then `gate_layers`."""
    gap = layer("g", "Pooling", "data", body="pooling_param { pool: AVE global_pooling: true }")
    return INPUT + gap + gate_layers


# The gate reshaped to N x C, as SE-BN-Inception does.
RESHAPED = layer("r", "Reshape", "g", body="reshape_param { shape { dim: 0 dim: 0 } }")

# (text, --output, message, the text that the error's line holds)
ERRORS = {
    "include and exclude": (
        INPUT
        + layer("r", "ReLU", "data", body="include { phase: TEST }\n  exclude { stage: 'x' }"),
        None,
        "layer 'r': give `include` or `exclude` rules, not both (as Caffe says)",
        "exclude { stage",
    ),
    "syntax": (
        INPUT + "layer { name: 'a' type: 'ReLU' bottom: 'data' top: 'a' ",
        None,
        'not a valid prototxt: Expected "}".',
        "layer { name",
    ),
    "unknown enum value": (
        INPUT + pool("p", "pool: MEDIAN kernel_size: 2"),
        None,
        'not a valid prototxt: Enum type "caffe.PoolingParameter.PoolMethod" has no value '
        "named MEDIAN.",
        "pool: MEDIAN",
    ),
    "unsupported type": (
        INPUT + layer("s", "ArgMax", "data"),
        None,
        "layer 's' (ArgMax): unsupported layer type 'ArgMax'; " + SUPPORTED,
        'type: "ArgMax"',
    ),
    "misspelled type": (
        INPUT + layer("s", "Eltwize", "data"),
        None,
        "layer 's' (Eltwize): unsupported layer type 'Eltwize' (did you mean 'Eltwise'?); "
        + SUPPORTED,
        'type: "Eltwize"',
    ),
    "bottom from a later layer": (
        INPUT + pool("p", "pool: MAX kernel_size: 2", bottom="c") + conv("c"),
        None,
        "layer 'p' (Pooling): bottom 'c' is the top of a later layer, 'c' (line 10); Caffe runs "
        "the layers in the file's order, so a layer comes after those whose tops it reads",
        'bottom: "c"',
    ),
    "type in another case": (
        INPUT + layer("r", "Relu", "data"),
        None,
        "layer 'r' (Relu): unsupported layer type 'Relu' (did you mean 'ReLU'?); " + SUPPORTED,
        'type: "Relu"',
    ),
    "clip without max": (
        INPUT + layer("c", "Clip", "data", body="clip_param { min: 0 }"),
        None,
        "layer 'c' (Clip): clip_param needs max",
        "clip_param {",
    ),
    "clip above": (
        INPUT + layer("c", "Clip", "data", body="clip_param { min: 1 max: 0 }"),
        None,
        "layer 'c' (Clip): clip: min 1 is above max 0",
        "clip_param {",
    ),
    "unsupported V1 type": (
        INPUT + 'layers { name: "l" type: ARGMAX bottom: "data" top: "l" }',
        None,
        "layer 'l' (ARGMAX): unsupported layer type 'ARGMAX'; " + SUPPORTED,
        "type: ARGMAX",
    ),
    "softmax inside": (
        INPUT + layer("sm", "Softmax", "data") + layer("r", "ReLU", "sm"),
        None,
        "layer 'sm' (Softmax): a Softmax is supported only at the end of the network, "
        "where it is dropped (--output data imports the network up to it)",
        'type: "Softmax"',
    ),
    "mixed formats": (
        INPUT + layer("r", "ReLU", "data") + 'layers { name: "l" type: RELU bottom: "r" top: "l" }',
        None,
        "the file mixes `layer` blocks with Caffe's old `layers` blocks; use one kind",
        "layers {",
    ),
    "undefined bottom": (
        INPUT + conv("conv1") + layer("r", "ReLU", "conv2"),
        None,
        "layer 'r' (ReLU): bottom 'conv2' is neither an input nor the top of an earlier layer "
        "(did you mean 'conv1'?)",
        'bottom: "conv2"',
    ),
    "undefined first bottom, two inputs": (
        'input: "a"\ninput: "b"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
        "input_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n" + layer("r", "ReLU", "data"),
        None,
        "layer 'r' (ReLU): bottom 'data' is neither an input nor the top of an earlier layer",
        'bottom: "data"',
    ),
    "unknown output": (
        INPUT + conv("conv1"),
        "conv9",
        "net.prototxt: --output 'conv9': the network has no blob of that name "
        "(did you mean 'conv1'?)",
        None,
    ),
    "output is an input": (
        INPUT + conv("c1"),
        "data",
        "the output 'data' is an input of the network",
        'input: "data"',
    ),
    "two outputs": (
        INPUT + conv("c1") + conv("c2"),
        None,
        "the network has 2 outputs ('c1', 'c2'); choose the backbone's with --output BLOB",
        'layer {\n  name: "c2"',
    ),
    "no layers": (INPUT, None, "net.prototxt: the network has no layers to import", None),
    "input without shape": (
        'input: "data"\n' + conv("c1"),
        None,
        "input 'data' has no shape: add input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }, or "
        "four input_dim values",
        'input: "data"',
    ),
    "input_dim count": (
        'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\n' + conv("c1"),
        None,
        "input_dim needs 4 values (N, C, H, W) per input: 1 input(s), 3 values",
        "input_dim: 1",
    ),
    "input_shape count": (
        'input: "a"\ninput: "b"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n' + conv("c1", "a"),
        None,
        "2 input(s) but 1 input_shape(s); give one per input",
        "input_shape {",
    ),
    "input_shape and input_dim": (
        INPUT + "input_dim: 1\n" + conv("c1"),
        None,
        "give the inputs input_shape or input_dim, not both",
        "input_dim: 1",
    ),
    "input not 4-D": (
        'input: "data"\ninput_shape { dim: 1 dim: 64 }\n' + conv("c1"),
        None,
        "input 'data' has shape 1x64; mtsc needs N x C x H x W, all positive",
        'input: "data"',
    ),
    "Input layer without shape": (
        'layer { name: "in" type: "Input" top: "data" }\n' + conv("c1"),
        None,
        "layer 'in' (Input): needs one input_param shape, or one per top (1); got 0",
        "layer {",
    ),
    "a layer named like a helper op": (
        INPUT
        + layer("ip.flatten", "ReLU", "data")
        + layer("ip", "InnerProduct", "ip.flatten", body="inner_product_param { num_output: 2 }"),
        None,
        "the name 'ip.flatten' is used twice (first at line 4)",
        'name: "ip"',
    ),
    "V0 format": (
        INPUT + 'layers {\n  layer { name: "c" type: "conv" num_output: 4 }\n  bottom: "data"\n'
        '  top: "c"\n}\n',
        None,
        "Caffe's V0 format (`layers { layer { ... } bottom: ... }`) is not supported; upgrade "
        "the file with Caffe's tools/upgrade_net_proto_text first",
        "layer {",
    ),
    "a bottom only a left-out layer gives": (
        layer("d", "Input", top="data", body="include { phase: TRAIN }")
        + layer("r", "ReLU", "data"),
        None,
        "layer 'r' (ReLU): bottom 'data' is neither an input nor the top of an earlier layer; "
        "layer 'd' (line 1) gives it, but its include/exclude rules leave it outside Caffe's "
        "TEST network",
        'bottom: "data"',
    ),
    "two tops": (
        INPUT
        + 'layer { name: "r" type: "ReLU" bottom: "data" top: "a" top: "b" }\n'
        + layer("cat", "Concat", "a", "b"),
        None,
        "layer 'r' (ReLU): has 2 tops; mtsc needs exactly one",
        'top: "a"',
    ),
    "bottom count": (
        INPUT + conv("c1") + layer("r", "ReLU", "data", "c1"),
        None,
        "layer 'r' (ReLU): takes 1 bottom(s), got 2",
        'bottom: "data"\n  bottom: "c1"',
    ),
    "eltwise with one bottom": (
        INPUT + layer("e", "Eltwise", "data"),
        None,
        "layer 'e' (Eltwise): takes at least 2 bottom(s), got 1",
        'bottom: "data"',
    ),
    "conv without num_output": (
        INPUT + conv("c", params="kernel_size: 3"),
        None,
        "layer 'c' (Convolution): needs num_output",
        "convolution_param",
    ),
    "conv without kernel": (
        INPUT + conv("c", params="num_output: 4"),
        None,
        "layer 'c' (Convolution): needs kernel_size",
        "convolution_param",
    ),
    "pooling pad_w alone": (
        INPUT + pool("p", "pool: MAX kernel_size: 3 pad_w: 1"),
        None,
        "layer 'p' (Pooling): pad_h and pad_w must be given together",
        "pooling_param",
    ),
    "kernel_h alone": (
        INPUT + conv("c", params="num_output: 4 kernel_h: 3"),
        None,
        "layer 'c' (Convolution): kernel_h and kernel_w must be given together",
        "convolution_param",
    ),
    "kernel_size and kernel_h": (
        INPUT + conv("c", params="num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3"),
        None,
        "layer 'c' (Convolution): give kernel_size or kernel_h and kernel_w, not both",
        "convolution_param",
    ),
    "hole and dilation": (
        INPUT + conv("c", params="num_output: 4 kernel_size: 3 dilation: 2 hole: 2"),
        None,
        "layer 'c' (Convolution): give dilation or DeepLab's hole, not both",
        "convolution_param",
    ),
    "hole_h alone": (
        INPUT + conv("c", params="num_output: 4 kernel_size: 3 hole_h: 2"),
        None,
        "layer 'c' (Convolution): hole_h and hole_w must be given together",
        "convolution_param",
    ),
    "three kernel sizes": (
        INPUT + conv("c", params="num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3"),
        None,
        "layer 'c' (Convolution): kernel_size has 3 values; a 2-D layer takes 1 or 2",
        "convolution_param",
    ),
    "conv axis": (
        INPUT + conv("c", params="num_output: 4 kernel_size: 3 axis: 2"),
        None,
        "layer 'c' (Convolution): only convolution along the channel axis (1) is supported, not 2",
        "convolution_param",
    ),
    "conv groups": (
        INPUT + conv("c", params="num_output: 4 kernel_size: 3 group: 2"),
        None,
        "layer 'c' (Convolution): conv2d: 3 input channels not divisible by groups=2",
        "layer {",
    ),
    "stochastic pooling": (
        INPUT + pool("p", "pool: STOCHASTIC kernel_size: 2"),
        None,
        "layer 'p' (Pooling): only MAX and AVE pooling are supported",
        "pooling_param",
    ),
    "global pooling with kernel": (
        INPUT + pool("p", "global_pooling: true kernel_size: 2"),
        None,
        "layer 'p' (Pooling): global_pooling takes no kernel size",
        "pooling_param",
    ),
    "global pooling with stride": (
        INPUT + pool("p", "global_pooling: true stride: 2"),
        None,
        "layer 'p' (Pooling): global_pooling needs pad 0 and stride 1",
        "pooling_param",
    ),
    "pooling without kernel": (
        INPUT + pool("p", "pool: MAX"),
        None,
        "layer 'p' (Pooling): needs kernel_size",
        "pooling_param",
    ),
    # 8 pixels, kernel 1, stride 3: Caffe makes ceil(7 / 3) + 1 = 4 windows, the last at 9.
    "pooling window outside the input": (
        INPUT + pool("p", "kernel_size: 1 stride: 3"),
        None,
        "layer 'p' (Pooling): Caffe's rounding gives 4 windows over 8 pixels here, the last one "
        "starting outside the input (stride 3 > kernel 1, no padding); PyTorch drops that "
        "window. Use round_mode: FLOOR, or a stride no larger than the kernel",
        "pooling_param",
    ),
    "pooling padding too large for PyTorch": (
        INPUT + pool("p", "kernel_size: 3 pad: 2"),
        None,
        "layer 'p' (Pooling): maxpool: padding 2 must be at most half the kernel size 3 "
        "(as PyTorch pools)",
        "pooling_param {",
    ),
    "eltwise coefficients count": (
        INPUT
        + conv("a", params="num_output: 3 kernel_size: 1")
        + layer("e", "Eltwise", "data", "a", body="eltwise_param { coeff: 1 }"),
        None,
        "layer 'e' (Eltwise): 1 coefficients for 2 bottoms",
        "eltwise_param",
    ),
    "eltwise coefficients with PROD": (
        INPUT
        + conv("a", params="num_output: 3 kernel_size: 1")
        + layer("e", "Eltwise", "data", "a", body="eltwise_param { operation: PROD coeff: 1 }"),
        None,
        "layer 'e' (Eltwise): coefficients apply only to operation: SUM",
        "eltwise_param",
    ),
    "eltwise channels": (
        INPUT + conv("a") + layer("e", "Eltwise", "data", "a"),
        None,
        "layer 'e' (Eltwise): bottoms of shapes 3x8x8 and 4x6x6; Eltwise takes bottoms of "
        "one shape",
        'layer {\n  name: "e"',
    ),
    "eltwise broadcast": (
        INPUT
        + pool("g", "pool: AVE global_pooling: true")
        + layer("e", "Eltwise", "data", "g", body="eltwise_param { operation: PROD }"),
        None,
        "layer 'e' (Eltwise): bottoms of shapes 3x8x8 and 3x1x1; Eltwise takes bottoms of "
        "one shape",
        'layer {\n  name: "e"',
    ),
    "concat axis": (
        INPUT + layer("cat", "Concat", "data", "data", body="concat_param { axis: 2 }"),
        None,
        "layer 'cat' (Concat): only concatenation along the channel axis (1) is supported, not 2",
        "concat_param",
    ),
    "concat sizes": (
        INPUT + conv("a") + layer("cat", "Concat", "data", "a"),
        None,
        "layer 'cat' (Concat): concat: spatial size 8x8 vs 6x6",
        'layer {\n  name: "cat"',
    ),
    "inner product without num_output": (
        INPUT + layer("fc", "InnerProduct", "data"),
        None,
        "layer 'fc' (InnerProduct): needs num_output",
        'layer {\n  name: "fc"',
    ),
    "flatten axis": (
        INPUT + layer("f", "Flatten", "data", body="flatten_param { axis: 2 }"),
        None,
        "layer 'f' (Flatten): only flattening everything after the batch axis is supported",
        "flatten_param",
    ),
    "lrn even size": (
        INPUT + layer("n", "LRN", "data", body="lrn_param { local_size: 4 }"),
        None,
        "layer 'n' (LRN): local_size must be odd, got 4",
        "lrn_param",
    ),
    "normalize with one scale": (
        INPUT + layer("n", "Normalize", "data", body="norm_param { across_spatial: false }"),
        None,
        "layer 'n' (Normalize): one scale for all channels (channel_shared: true, the default) "
        "is not supported; mtsc learns one per channel, as SSD does: set channel_shared: false",
        "norm_param",
    ),
    "normalize of features": (
        INPUT
        + layer("fc", "InnerProduct", "data", body="inner_product_param { num_output: 4 }")
        + layer("n", "Normalize", "fc", body="norm_param { channel_shared: false }"),
        None,
        "layer 'n' (Normalize): takes a feature map (N x C x H x W), got N x 4",
        'layer {\n  name: "n"',
    ),
    "scale axis": (
        INPUT + layer("s", "Scale", "data", body="scale_param { axis: 0 }"),
        None,
        "layer 's' (Scale): only a per-channel scale (axis: 1, num_axes: 1) is supported",
        "scale_param",
    ),
    "data layer": (
        'layer { name: "data" type: "Data" top: "data" top: "label" }\n' + conv("c1"),
        None,
        "layer 'data' (Data): a data layer (Data) without transform_param's crop_size (or "
        "image_data_param's new_height and new_width) does not give the input's shape; declare "
        "the input with an Input layer (input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 "
        "} }) or with input and input_shape",
        'type: "Data"',
    ),
    "pooling mask read": (
        INPUT
        + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n  top: "p_mask"\n'
        + "  pooling_param { kernel_size: 2 stride: 2 } }\n"
        + layer("u", "Concat", "p", "p_mask"),
        None,
        "layer 'p' (Pooling): top 'p_mask' is the max-pooling mask, which only the second "
        "bottom of an Upsample layer (max unpooling) can read, not layer 'u' (Concat)",
        'top: "p_mask"',
    ),
    "pooling mask chosen as output": (
        INPUT
        + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n  top: "p_mask"\n'
        + "  pooling_param { kernel_size: 2 stride: 2 } }\n",
        "p_mask",
        "layer 'p' (Pooling): top 'p_mask' is the max-pooling mask, which only the second "
        "bottom of an Upsample layer (max unpooling) can read, not the network's output",
        'top: "p_mask"',
    ),
    "upsample without a mask": (
        INPUT + conv("c1") + layer("u", "Upsample", "data", "c1"),
        None,
        "layer 'u' (Upsample): bottom 'c1' must be the mask of a max Pooling layer (its "
        "second top): mtsc supports Upsample as SegNet's max unpooling",
        'bottom: "c1"',
    ),
    "upsample of another shape than the mask's": (
        INPUT
        + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n  top: "p_mask"\n'
        + "  pooling_param { kernel_size: 2 stride: 2 } }\n"
        + layer("u", "Upsample", "data", "p_mask", body="upsample_param { scale: 1 }"),
        "u",
        "layer 'u' (Upsample): bottom 'data' is N x 3 x 8 x 8, but the mask of 'p' is for its "
        "output, N x 3 x 4 x 4",
        'bottom: "data"\n  bottom: "p_mask"',
    ),
    "a mask read by a type mtsc lacks": (
        INPUT
        + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n  top: "p_mask"\n'
        + "  pooling_param { kernel_size: 2 stride: 2 } }\n"
        + layer("u", "Unpooling", "p", "p_mask"),
        None,
        "layer 'u' (Unpooling): unsupported layer type 'Unpooling'; " + SUPPORTED,
        'type: "Unpooling"',
    ),
    "upsample with one bottom": (
        INPUT + layer("u", "Upsample", "data"),
        None,
        "layer 'u' (Upsample): takes 2 bottom(s), got 1",
        'bottom: "data"',
    ),
    "upsample to another size": (
        INPUT
        + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n  top: "p_mask"\n'
        + "  pooling_param { kernel_size: 2 stride: 2 } }\n"
        + layer("u", "Upsample", "p", "p_mask", body="upsample_param { scale: 3 }"),
        None,
        "layer 'u' (Upsample): gives 12x12 in Caffe, but the input of 'p', whose mask places "
        "the values, is 8x8; set upsample_h: 8 and upsample_w: 8",
        "upsample_param {",
    ),
    "average pooling with two tops": (
        INPUT
        + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n  top: "q"\n'
        + "  pooling_param { pool: AVE kernel_size: 2 } }\n",
        "p",
        "layer 'p' (Pooling): has 2 tops; mtsc needs exactly one",
        'top: "p"',
    ),
    "round_mode and ceil_mode": (
        INPUT + pool("p", "kernel_size: 2 round_mode: FLOOR ceil_mode: false"),
        None,
        "layer 'p' (Pooling): give round_mode or ceil_mode, not both",
        "pooling_param",
    ),
    "scale by a gate not reshaped": (
        gate_net(layer("s", "Scale", "data", "g", body="scale_param { axis: 0 }")),
        None,
        "layer 's' (Scale): Caffe cannot scale N x 3 x 8 x 8 by N x 3 x 1 x 1: with axis 0 the "
        "second bottom's shape must begin bottom 0's; for a per-channel gate, reshape it to "
        "N x C first (reshape_param { shape { dim: 0 dim: 0 } }), as SE-BN-Inception does",
        'bottom: "g"',
    ),
    "scale by a second bottom along axis 1": (
        gate_net(RESHAPED + layer("s", "Scale", "data", "r")),
        None,
        "layer 's' (Scale): the second bottom (N x 3) starts with the batch axis, which Caffe "
        "lines up with bottom 0's axis 1 (N x 3 x 8 x 8); a per-channel gate needs axis: 0",
        'layer {\n  name: "s"',
    ),
    "scale by a second bottom with a bias": (
        gate_net(
            RESHAPED
            + layer("s", "Scale", "data", "r", body="scale_param { axis: 0 bias_term: true }")
        ),
        None,
        "layer 's' (Scale): bias_term with a second bottom learns a bias shaped like that "
        "bottom (N x 3), batch axis included; mtsc cannot express it (set bias_term: false and "
        "add the bias with a layer of its own)",
        "scale_param",
    ),
    "axpy with x and y of different shapes": (
        gate_net(conv("c") + layer("a", "Axpy", "g", "data", "c")),
        None,
        "layer 'a' (Axpy): x (N x 3 x 8 x 8) and y (N x 4 x 6 x 6), the second and third "
        "bottoms, must have the same shape",
        'bottom: "c"',
    ),
    "axpy with a gate of another size": (
        INPUT + layer("a", "Axpy", "data", "data", "data"),
        None,
        "layer 'a' (Axpy): the first bottom (N x 3 x 8 x 8) must be a gate of N x 3 x 1 x 1 or "
        "N x 3, one value per channel of x (N x 3 x 8 x 8)",
        'bottom: "data"',
    ),
    "axpy with two bottoms": (
        gate_net(layer("a", "Axpy", "g", "data")),
        None,
        "layer 'a' (Axpy): takes 3 bottom(s), got 2",
        'bottom: "g"\n  bottom: "data"',
    ),
    "reshape keeping the spatial axes": (
        INPUT
        + layer("r", "Reshape", "data", body="reshape_param { shape { dim: 0 dim: 3 dim: -1 } }"),
        None,
        "layer 'r' (Reshape): gives N x 3 x 64; only N x 192 (a flatten) is supported",
        "reshape_param",
    ),
    "reshape of the batch axis": (
        INPUT + layer("r", "Reshape", "data", body="reshape_param { shape { dim: 1 dim: -1 } }"),
        None,
        "layer 'r' (Reshape): gives 1 x 192, which does not keep the batch axis and 192 values "
        "per sample",
        "reshape_param",
    ),
    "reshape to another size": (
        INPUT + layer("r", "Reshape", "data", body="reshape_param { shape { dim: 0 dim: 100 } }"),
        None,
        "layer 'r' (Reshape): gives N x 100, which does not keep the batch axis and 192 values "
        "per sample",
        "reshape_param",
    ),
    "reshape without a shape": (
        INPUT + layer("r", "Reshape", "data"),
        None,
        "layer 'r' (Reshape): Reshape needs its shape: reshape_param { shape { dim: ... } }",
        "layer {",  # no parameter block: the layer's
    ),
    "reshape with an empty shape": (
        INPUT + layer("r", "Reshape", "data", body="reshape_param { shape { } }"),
        None,
        "layer 'r' (Reshape): Reshape needs its shape: reshape_param { shape { dim: ... } }",
        "reshape_param",
    ),
    "pooling with stride 0": (
        INPUT + pool("p", "kernel_size: 2 stride: 0"),
        None,
        "layer 'p' (Pooling): stride must be at least 1, got 0",
        "pooling_param",
    ),
    "pooling with kernel 0": (
        INPUT + pool("p", "kernel_size: 0"),
        None,
        "layer 'p' (Pooling): kernel_size must be at least 1, got 0",
        "pooling_param",
    ),
    "reshape with two inferred dims": (
        INPUT + layer("r", "Reshape", "data", body="reshape_param { shape { dim: -1 dim: -1 } }"),
        None,
        "layer 'r' (Reshape): shape dims must be positive, 0 (copy) or one -1 (inferred)",
        "reshape_param",
    ),
    "reshape copying a missing axis": (
        INPUT
        + layer(
            "r",
            "Reshape",
            "data",
            body="reshape_param { axis: 2 shape { dim: 0 dim: 0 dim: 0 } }",
        ),
        None,
        "layer 'r' (Reshape): a dim of 0 copies an axis the 4-axis input lacks",
        "reshape_param",
    ),
    "reshape axis out of range": (
        INPUT + layer("r", "Reshape", "data", body="reshape_param { axis: 5 shape { dim: 1 } }"),
        None,
        "layer 'r' (Reshape): axis 5 with num_axes -1 is outside the input's 4 axes",
        "reshape_param",
    ),
    "interp cropping": (
        INPUT + layer("i", "Interp", "data", body="interp_param { zoom_factor: 2 pad_end: -1 }"),
        None,
        "layer 'i' (Interp): pad_beg and pad_end (cropping the input) are not supported",
        "interp_param",
    ),
    "interp without a size": (
        INPUT + layer("i", "Interp", "data", body="interp_param { height: 5 }"),
        None,
        "layer 'i' (Interp): give zoom_factor, shrink_factor, height and width, or a second bottom",
        "interp_param",
    ),
    "interp zoom of 0": (
        INPUT + layer("i", "Interp", "data", body="interp_param { zoom_factor: 0 }"),
        None,
        "layer 'i' (Interp): zoom_factor must be at least 1, got 0",
        "interp_param",
    ),
    "crop of channels": (
        INPUT
        + layer("p", "Pooling", "data", body="pooling_param { pool: MAX kernel_size: 2 }")
        + layer("c", "Crop", "data", "p", body="crop_param { axis: 1 }"),
        None,
        "layer 'c' (Crop): only cropping from axis 2 (height and width) is supported, not 1",
        "crop_param",
    ),
    "crop offsets": (
        INPUT
        + layer("p", "Pooling", "data", body="pooling_param { pool: MAX kernel_size: 2 }")
        + layer("c", "Crop", "data", "p", body="crop_param { offset: 1 offset: 2 offset: 3 }"),
        None,
        "layer 'c' (Crop): offset has 3 values; a crop from axis 2 takes 1 or 2",
        "crop_param",
    ),
    "crop past the input": (
        INPUT
        + layer("p", "Pooling", "data", body="pooling_param { pool: MAX kernel_size: 2 }")
        + layer("c", "Crop", "data", "p", body="crop_param { offset: 5 }"),
        None,
        "layer 'c' (Crop): crop: offset 5x5 and the reference's 7x7 reach past the input's 8x8",
        'layer {\n  name: "c"',
    ),
    "crop of one bottom": (
        INPUT + layer("c", "Crop", "data"),
        None,
        "layer 'c' (Crop): takes 2 bottom(s), got 1",
        'bottom: "data"',
    ),
    "slice of the height": (
        INPUT + layer("s", "Slice", "data", body="slice_param { axis: 2 }"),
        None,
        "layer 's' (Slice): only slicing along the channel axis (1) is supported, not 2",
        "slice_param",
    ),
    "slice of the batch": (
        INPUT + layer("s", "Slice", "data", body="slice_param { slice_dim: 0 }"),
        None,
        "layer 's' (Slice): only slicing along the channel axis (1) is supported, not 0",
        "slice_param",
    ),
    "slice tops nobody reads": (
        INPUT
        + 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b"\n'
        + "  slice_param { slice_point: 1 } }\n",
        None,
        "the network has 2 outputs ('a', 'b'); choose the backbone's with --output BLOB",
        'layer { name: "s"',
    ),
    "slice top twice": (
        INPUT
        + 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "a"\n'
        + "  slice_param { slice_point: 1 } }\n",
        None,
        "layer 's' (Slice): writes a top twice; each top of a layer needs its own name",
        'top: "a"',
    ),
    "slice axis twice": (
        INPUT + layer("s", "Slice", "data", body="slice_param { axis: 1 slice_dim: 1 }"),
        None,
        "layer 's' (Slice): give axis or slice_dim, not both",
        "slice_param",
    ),
    "slice into unequal parts": (
        INPUT
        + 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" }\n'
        + layer("cat", "Concat", "a", "b"),
        None,
        "layer 's' (Slice): 3 channels do not split into 2 equal tops; give slice_point",
        'layer { name: "s"',
    ),
    "slice points for the tops": (
        INPUT
        + 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b"\n'
        + "  slice_param { slice_point: 1 slice_point: 2 } }\n"
        + layer("cat", "Concat", "a", "b"),
        None,
        "layer 's' (Slice): 2 slice_point(s) for 2 tops; give one fewer than the tops",
        "slice_param",
    ),
    "slice points out of order": (
        INPUT
        + 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" top: "c"\n'
        + "  slice_param { slice_point: 2 slice_point: 1 } }\n"
        + layer("cat", "Concat", "a", "b", "c"),
        None,
        "layer 's' (Slice): slice_point 2, 1 must rise strictly within the input's 3 channels",
        "slice_param",
    ),
    "slice point past the channels": (
        INPUT
        + 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b"\n'
        + "  slice_param { slice_point: 3 } }\n"
        + layer("cat", "Concat", "a", "b"),
        None,
        "layer 's' (Slice): slice_point 3 must rise strictly within the input's 3 channels",
        "slice_param",
    ),
    "dropout ratio": (
        INPUT + layer("d", "Dropout", "data", body="dropout_param { dropout_ratio: 1 }"),
        None,
        "layer 'd' (Dropout): dropout: p must be below 1, got 1.0",
        "dropout_param {",
    ),
}


def test_slice_tops_the_output_does_not_need_are_left_out():
    graph = import_prototxt(fixture("slice_branches"), output="conv_b").graph
    assert sorted(nodes_by_name(graph)) == ["conv1", "conv_b", "data", "split.b"]
    assert nodes_by_name(graph)["split.b"].attrs == {"start": 2, "end": 4}


def test_lrn_within_channel_imports_without_k():
    body = "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.5 k: 2 }"
    g = import_text(INPUT + layer("n", "LRN", "data", body=body), "n.prototxt").graph
    assert nodes_by_name(g)["n"].attrs == {
        "size": 3,
        "alpha": 0.5,
        "beta": 0.75,
        "k": 1.0,
        "region": "within",
    }


def test_v1_slice_imports():
    text = (
        INPUT
        + 'layers { name: "s" type: SLICE bottom: "data" top: "a" top: "b"\n'
        + "  slice_param { slice_point: 1 } }\n"
        + 'layers { name: "cat" type: CONCAT bottom: "b" bottom: "a" top: "cat" }\n'
    )
    nodes = nodes_by_name(import_text(text, "net.prototxt").graph)
    assert (nodes["s.a"].attrs, nodes["s.a"].shape) == ({"start": 0, "end": 1}, (1, 8, 8))
    assert (nodes["s.b"].attrs, nodes["s.b"].shape) == ({"start": 1, "end": 3}, (2, 8, 8))


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_import_error(case):
    text, output, message, where = ERRORS[case]
    with pytest.raises(MtscError) as info:
        import_text(text, "net.prototxt", output=output)
    assert info.value.message == message
    if where is None:
        assert info.value.span is None
    else:
        assert info.value.span.file == "net.prototxt"
        assert info.value.span.line == line_of(text, where)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(MtscError, match=r"cannot read .*nope.prototxt: No such file"):
        import_prototxt(tmp_path / "nope.prototxt")


def test_unknown_fields_are_skipped():
    text = INPUT + layer(
        "c",
        "Convolution",
        "data",
        body="param { lr_mult: 1 } convolution_param { num_output: 4 kernel_size: 1 "
        'weight_filler { type: "gaussian" std: 0.01 } engine: CAFFE } made_up_param { x: [1, 2] }',
    )
    imported = import_text("state { phase: TEST }\n" + text, "n.prototxt")
    g = imported.graph
    assert [(n.op, n.name) for _, n in g.nodes()] == [(Op.INPUT, "data"), (Op.CONV2D, "c")]
    conv = g.node(g.outputs["backbone"])
    assert (conv.attrs["out"], conv.attrs["kernel"], conv.attrs["bias"]) == (4, (1, 1), True)
    assert conv.shape == (4, 8, 8)
    assert imported.warnings == ()


def test_unknown_fields_that_change_nothing_stay_silent():
    """Fillers, engines, training rules and switches, blocks of other types, and whatever a
    layer that is not imported holds: none of it changes the imported network."""
    quiet = (
        layer(
            "c",
            "Convolution",
            "data",
            body="include { phase: TEST } param { lr_mult: 1 } "
            "convolution_param { num_output: 4 kernel_size: 1 force_nd_im2col: false "
            "bias_filler { type: 'constant' odd: 1 } } pooling_param { hole_size: 2 } "
            "loss_weight: 1 propagate_down: false",
        )
        + layer("p", "Pooling", "c", body="pooling_param { kernel_size: 2 engine: CUDNN }")
        + layer("s", "Scale", "p", body="scale_param { filler { value: 1 } bias_term: true }")
        + layer("e", "Eltwise", "s", "p", body="eltwise_param { stable_prod_grad: true }")
        + layer("r", "ReLU", "e", body="relu_param { inplace: 1 engine: CAFFE }")
    )
    # Not needed by the output `r`: the unknown fields of `branch` and `prob` stay silent.
    unused = conv("branch", "r", params="num_output: 2 kernel_size: 1 hole_size: 2") + layer(
        "prob", "Softmax", "r", body="softmax_param { made_up: 1 }"
    )
    imported = import_text(INPUT + quiet + unused, "n.prototxt", output="r")
    assert imported.warnings == ()
    # The softmax is dropped at the end; `branch` (here the output) is converted and warned of.
    cut = import_text(INPUT + quiet + unused, "n.prototxt", output="branch")
    assert [w.message.split(":")[0] for w in cut.warnings] == ["layer 'branch' (Convolution)"]


def test_unknown_field_in_a_converted_layers_parameters_is_a_located_warning():
    text = (
        INPUT
        + conv("c", params="num_output: 4 kernel_size: 3\n    hole_size: 2 hole_size: 2")
        + pool("p", "pool: MAX kernel_size: 2\n    ceil: false", bottom="c")
    )
    warnings = import_text(text, "net.prototxt").warnings
    assert [w.render().splitlines()[0] for w in warnings] == [
        "net.prototxt:9:5: warning: layer 'c' (Convolution): mtsc does not know "
        "convolution_param.hole_size and ignored it; if it changes the layer (a fork's "
        "dilation, padding or rounding), the imported layer is wrong",
        "net.prototxt:17:5: warning: layer 'p' (Pooling): mtsc does not know "
        "pooling_param.ceil and ignored it; if it changes the layer (a fork's dilation, "
        "padding or rounding), the imported layer is wrong",
    ]
    source, caret = warnings[0].render().splitlines()[1:]
    assert (source.strip(), caret) == ("hole_size: 2 hole_size: 2 }", " " * 8 + "^" * 12)


def test_unknown_parameter_block_of_a_layer_without_its_own_is_a_warning():
    text = INPUT + layer("r", "ReLU", "data", body="relu_params { negative_slope: 0.1 }")
    (warning,) = import_text(text, "net.prototxt").warnings
    assert warning.span.line == line_of(text, "relu_params") and warning.span.column == 3
    assert warning.message == (
        "layer 'r' (ReLU): mtsc does not know the field relu_params (did you mean "
        "'relu_param'?) and ignored it; if it holds the layer's settings (it has no relu_param), "
        "the imported layer is wrong"
    )


def test_check_prints_unknown_field_warnings_and_succeeds(tmp_path, capsys):
    path = tmp_path / "x.prototxt"
    path.write_text(INPUT + conv("c", params="num_output: 4 kernel_size: 3 hole_size: 2"))
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "output backbone: 4x6x6" in out
    assert err.startswith(
        f"{path}:8:52: warning: layer 'c' (Convolution): mtsc does not know "
        "convolution_param.hole_size and ignored it"
    )


def test_misspelt_layer_fields_are_warnings_printed_before_an_error(tmp_path, capsys):
    """A field Caffe does not know (`botom`, `includ`, `num_ouput`) is skipped with a warning
    that suggests the field meant; when the import then fails, the warnings come first, as
    they may be why."""
    path = tmp_path / "x.prototxt"
    path.write_text(
        INPUT
        + layer("r", "ReLU", "data", body='botom: "data" includ { phase: TRAIN }')
        + conv("c", "r", params="num_ouput: 4 kernel_size: 3")
    )
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    found = [line.split(": ", 2)[2] for line in err.splitlines() if ": warning: " in line]
    assert found == [
        "layer 'r' (ReLU): mtsc does not know the field botom (did you mean 'bottom'?) and "
        "ignored it; Caffe would refuse the file",
        "layer 'r' (ReLU): mtsc does not know the field includ (did you mean 'include'?) and "
        "ignored it; Caffe would refuse the file",
        "layer 'c' (Convolution): mtsc does not know convolution_param.num_ouput (did you mean "
        "'num_output'?) and ignored it; if it changes the layer (a fork's dilation, padding or "
        "rounding), the imported layer is wrong",
    ]
    assert f"{path}:15:3: error: layer 'c' (Convolution): needs num_output" in err
    assert err.index("error:") > err.index("num_ouput")
    assert out == ""


def test_opencvs_prototxt_txt_is_a_prototxt(tmp_path, capsys):
    path = tmp_path / "deploy.prototxt.txt"
    path.write_text(INPUT + conv("c"))
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.startswith("deploy: 1 ops, ")
    assert main(["import", str(path)]) == 0
    assert "imported by `mtsc import` from deploy.prototxt.txt" in capsys.readouterr().out
    assert main(["stats", str(path), "--policy", "shared"]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: the model has no tasks section to route\n"
        f"note: a .prototxt is a backbone alone: `mtsc import {path} -o MODEL.mtl`, then add "
        "a `tasks { ... }` section to MODEL.mtl\n"
    )


def test_graph_cuts_a_prototxt_at_output(tmp_path, capsys):
    path = tmp_path / "net.prototxt"
    path.write_text(INPUT + conv("c") + layer("r", "ReLU", "c"))
    out = tmp_path / "g.dot"
    assert main(["graph", str(path), "--stage", "backbone", "--output", "c", "-o", str(out)]) == 0
    assert "relu" not in out.read_text() and "conv" in out.read_text()


@pytest.mark.parametrize(
    ("params", "dilation", "shape"),
    [
        # 8 pixels; a kernel of 3 dilated by d spans 2 * d + 1 of them.
        ("hole: 2", (2, 2), (4, 4, 4)),
        ("hole: 1", (1, 1), (4, 6, 6)),
        ("hole_h: 3 hole_w: 1", (3, 1), (4, 2, 6)),
        ("dilation: 2", (2, 2), (4, 4, 4)),
    ],
)
def test_deeplab_hole_is_the_dilation(params, dilation, shape):
    text = INPUT + conv("c", params=f"num_output: 4 kernel_size: 3 {params}")
    imported = import_text(text, "n.prototxt")
    out = imported.graph.node(imported.graph.outputs["backbone"])
    assert (out.attrs["dilation"], out.shape, imported.warnings) == (dilation, shape, ())


def test_fusion_needs_a_bias_and_a_batchnorm_read_only_by_the_scale():
    bn = layer("bn", "BatchNorm", "data")
    scale_no_bias = layer("s", "Scale", "bn")
    named = nodes_by_name(import_text(INPUT + bn + scale_no_bias, "n.prototxt").graph)
    assert named["bn"].attrs["affine"] is False and named["s"].attrs == {"bias": False}
    # The un-scaled batchnorm output is read again: fusing would change that reader's input.
    scale = layer("s", "Scale", "bn", body="scale_param { bias_term: true }")
    text = INPUT + bn + scale + layer("e", "Eltwise", "bn", "s")
    named = nodes_by_name(import_text(text, "n.prototxt").graph)
    assert named["bn"].attrs["affine"] is False and named["s"].op is Op.SCALE
    # Cut at the batchnorm: the Scale is not imported, nothing is fused.
    cut = import_text(INPUT + bn + scale, "n.prototxt", output="bn").graph
    assert cut.node(cut.outputs["backbone"]).attrs["affine"] is False


def test_fork_bn_layer_is_an_affine_batchnorm():
    """The forks' `BN` carries its own scale and shift; PSPNet's momentum is Caffe's moving
    average fraction (the old statistics' weight), PyTorch's momentum the new ones'."""
    named = nodes_by_name(import_prototxt(fixture("fork_dialect")).graph)
    assert named["conv1/bn"].attrs == {"eps": 1e-5, "affine": True, "momentum": 0.05}
    assert named["conv2_bn"].attrs == {"eps": 1e-5, "affine": True, "momentum": 0.1}
    eps = layer("bn", "BN", "data", body="bn_param { eps: 0.001 }")
    g = import_text(INPUT + eps, "n.prototxt").graph
    assert g.node(g.outputs["backbone"]).attrs["eps"] == 0.001


@pytest.mark.parametrize(
    ("params", "size"),
    [
        # 9 pixels, kernel 2, stride 2: rounded up ceil(7 / 2) + 1 = 5, down 7 // 2 + 1 = 4.
        ("", 5),
        ("ceil_mode: true", 5),
        ("ceil_mode: false", 4),
        ("round_mode: FLOOR", 4),
        ("round_mode: CEIL", 5),
    ],
)
def test_ceil_mode_is_the_forks_spelling_of_round_mode(params, size):
    text = 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 9 dim: 9 }\n'
    text += pool("p", f"pool: MAX kernel_size: 2 stride: 2 {params}")
    g = import_text(text, "n.prototxt").graph
    assert g.node(g.outputs["backbone"]).shape == (3, size, size)


@pytest.mark.parametrize(
    "params",
    [
        "shape { dim: 0 dim: -1 }",
        "shape { dim: -1 dim: 192 }",  # -1 takes the batch: 192 values follow
        "shape { dim: 0 dim: 192 }",
        "axis: 1 shape { dim: -1 }",
        "axis: -4 shape { dim: -1 }",  # -4 is axis 1 of four
        "axis: 1 num_axes: 3 shape { dim: 192 }",
    ],
)
def test_reshape_to_one_vector_per_sample_is_a_flatten(params):
    text = INPUT + layer("r", "Reshape", "data", body=f"reshape_param {{ {params} }}")
    g = import_text(text, "n.prototxt").graph
    out = g.node(g.outputs["backbone"])
    assert (out.op, out.shape) == (Op.FLATTEN, (192,))


def test_reshape_of_a_squeezed_classifier_is_a_flatten():
    # Conv classifiers end 10x1x1; `dim: 0 dim: 0` keeps N and C, dropping the 1x1.
    gap = layer("g", "Pooling", "data", body="pooling_param { pool: AVE global_pooling: true }")
    text = (
        INPUT + gap + layer("r", "Reshape", "g", body="reshape_param { shape { dim: 0 dim: 0 } }")
    )
    g = import_text(text, "n.prototxt").graph
    assert g.node(g.outputs["backbone"]).shape == (3,)


def test_data_layers_and_pooling_masks_are_not_outputs():
    # SegNet-style: neither the data layer's label nor an unread pooling mask is a candidate
    # output, so the error is the data layer's, not "the network has 3 outputs".
    data = 'layer { name: "data" type: "DenseImageData" top: "data" top: "label" }\n'
    masked = (
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "p_mask"\n'
        "  pooling_param { kernel_size: 2 } }\n"
    )
    with pytest.raises(MtscError, match=r"a data layer \(DenseImageData\) without transform_param"):
        import_text(data + masked + conv("c", "p"), "n.prototxt")
    g = import_text(INPUT + masked + conv("c", "p"), "n.prototxt").graph
    assert [n.name for _, n in g.nodes()] == ["data", "p", "c"]
    assert g.node(g.outputs["backbone"]).shape == (4, 5, 5)  # 8 -> pool 2/1: 7 -> conv 3: 5


@pytest.mark.parametrize(
    "view",
    [
        layer("r", "Reshape", "g", body="reshape_param { shape { dim: 0 dim: -1 } }"),
        layer("r", "Flatten", "g"),
    ],
)
def test_a_gate_flattened_to_n_x_c_gates_scale_and_axpy(view):
    scale = layer("s", "Scale", "data", "r", body="scale_param { axis: -4 }")
    g = import_text(gate_net(view) + scale + layer("a", "Axpy", "r", "s", "data"), "n").graph
    named = nodes_by_name(g)
    assert "r" not in named
    assert [g.node(n).name for n in g.inputs(g.by_name()["s"])] == ["data", "g"]
    assert [g.node(n).name for n in g.inputs(g.by_name()["a.scale"])] == ["s", "g"]
    assert named["s"].meta["note"].startswith("r: ")
    assert named["a.scale"].meta["note"] == named["s"].meta["note"]
    assert g.node(g.outputs["backbone"]).shape == (3, 8, 8)


def test_scale_by_a_blob_of_the_same_shape_is_an_elementwise_mul():
    scale = layer("s", "Scale", "data", "t", body="scale_param { axis: 0 }")
    text = INPUT + layer("t", "TanH", "data") + scale
    g = import_text(text, "n.prototxt").graph
    out = g.node(g.outputs["backbone"])
    assert (out.op, out.shape) == (Op.MUL, (3, 8, 8))


def test_a_reshaped_gate_that_another_layer_reads_stays_flat_and_scales_as_a_map():
    # fc reads the scaled map; `e` adds the N x 3 gate to it: r stays a flat blob, and the
    # Scale reads it reshaped to N x 3 x 1 x 1.
    scale = layer("s", "Scale", "data", "r", body="scale_param { axis: 0 }")
    fc = layer("fc", "InnerProduct", "s", body="inner_product_param { num_output: 3 }")
    g = import_text(gate_net(RESHAPED + scale + fc + layer("e", "Eltwise", "fc", "r")), "n").graph
    nodes = nodes_by_name(g)
    assert (nodes["r"].op, nodes["r"].shape) == (Op.FLATTEN, (3,))
    assert (nodes["s.gate"].op, nodes["s.gate"].shape) == (Op.RESHAPE, (3, 1, 1))
    assert [g.node(i).name for i in g.inputs(g.by_name()["s"])] == ["data", "s.gate"]
    assert nodes["e"].shape == (3,)


def test_a_reshaped_gate_of_a_flat_blob_scales_it_flat():
    # SE-BN-Inception's N x C view of the pooled map, gating an N x C InnerProduct output.
    fc = layer("fc", "InnerProduct", "g", body="inner_product_param { num_output: 3 }")
    scale = layer("s", "Scale", "fc", "r", body="scale_param { axis: 0 }")
    g = import_text(gate_net(RESHAPED + fc + scale), "n.prototxt").graph
    nodes = nodes_by_name(g)
    assert (nodes["s.gate"].op, nodes["s.gate"].shape) == (Op.RESHAPE, (3,))
    assert [g.node(i).name for i in g.inputs(g.by_name()["s"])] == ["fc", "s.gate"]
    assert nodes["s"].shape == (3,)


@pytest.mark.parametrize(
    "gated",
    [
        layer("s", "Scale", "data", "fc", body="scale_param { axis: 0 }"),
        layer("s", "Axpy", "fc", "data", "data"),
    ],
    ids=["scale", "axpy"],
)
def test_an_inner_product_gate_multiplies_each_channel(gated):
    fc = layer("fc", "InnerProduct", "g", body="inner_product_param { num_output: 3 }")
    g = import_text(gate_net(fc + gated), "n.prototxt").graph
    gate = g.by_name()["s.gate"]
    assert (g.node(gate).op, g.node(gate).attrs) == (Op.RESHAPE, {"shape": (3, 1, 1)})
    assert g.node(g.inputs(gate)[0]).name == "fc"
    (mul,) = [n for n in g.node_ids() if g.node(n).op is Op.MUL]
    assert gate in g.inputs(mul)
    assert g.node(g.outputs["backbone"]).shape == (3, 8, 8)


def test_v1_deconvolution_imports_as_a_transposed_conv():
    text = INPUT + (
        'layers { name: "up" type: DECONVOLUTION bottom: "data" top: "up"\n'
        "  convolution_param { num_output: 4 kernel_size: 2 stride: 2 group: 1 } }\n"
    )
    g = import_text(text, "n.prototxt").graph
    up = nodes_by_name(g)["up"]
    assert (up.op, up.shape) == (Op.DECONV2D, (4, 16, 16))
    assert (up.attrs["kernel"], up.attrs["stride"], up.attrs["bias"]) == ((2, 2), (2, 2), True)


def test_v1_absval_and_power_import():
    text = INPUT + (
        'layers { name: "a" type: ABSVAL bottom: "data" top: "a" }\n'
        'layers { name: "p" type: POWER bottom: "a" top: "p"\n'
        "  power_param { power: 0.5 shift: 1 } }\n"
    )
    nodes = nodes_by_name(import_text(text, "n.prototxt").graph)
    assert nodes["a"].op == Op.ABS
    assert (nodes["p"].op, nodes["p"].attrs) == (
        Op.POWER,
        {"power": 0.5, "scale": 1.0, "shift": 1.0},
    )


def test_power_and_elu_defaults_are_caffes():
    text = INPUT + layer("p", "Power", "data") + layer("e", "ELU", "p")
    nodes = nodes_by_name(import_text(text, "n.prototxt").graph)
    assert nodes["p"].attrs == {"power": 1.0, "scale": 1.0, "shift": 0.0}
    assert nodes["e"].attrs == {"alpha": 1.0}


# ----------------------------------------------------------------------------- train_val files

TRAIN_VAL = """name: "tv"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 9 } data_param { source: "train_lmdb" } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { mirror: false crop_size: 9 } data_param { source: "val_lmdb" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_a_train_val_file_imports_its_test_network_up_to_the_scores():
    imported = import_text(TRAIN_VAL, "tv.prototxt")
    g = imported.graph
    data = nodes_by_name(g)["data"]
    assert (data.op, data.shape) == (Op.INPUT, (3, 9, 9))
    assert g.node(g.outputs["backbone"]).shape == (5,)
    assumed = (
        "layer 'data' (Data): the input 'data' is taken as 3 x 9 x 9 (its crop_size; 3 "
        "channels, which a data layer does not say); if that is wrong, declare the input with "
        "an Input layer instead"
    )
    assert [w.message for w in imported.warnings] == [assumed]
    assert imported.warnings[0].span.line == line_of(TRAIN_VAL, "transform_param { mirror: false")
    assert assumed in imported.notes
    assert any("accuracy (Accuracy), loss (SoftmaxWithLoss)" in n for n in imported.notes)


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        (
            'layer { name: "d" type: "ImageData" top: "data" top: "label"\n'
            '  image_data_param { source: "l.txt" new_height: 7 new_width: 6 is_color: false } }',
            (1, 7, 6),
        ),
        (
            'layer { name: "d" type: "MemoryData" top: "data" top: "label"\n'
            "  memory_data_param { batch_size: 4 channels: 2 height: 5 width: 6 } }",
            (2, 5, 6),
        ),
        (
            'layer { name: "d" type: "DummyData" top: "data"\n'
            "  dummy_data_param { shape { dim: 1 dim: 3 dim: 6 dim: 5 } } }",
            (3, 6, 5),
        ),
        (
            'layer { name: "d" type: "DummyData" top: "data"\n'
            "  dummy_data_param { num: 2 channels: 4 height: 5 width: 5 } }",
            (4, 5, 5),
        ),
    ],
)
def test_data_layers_that_say_their_shape_give_the_input_without_a_warning(data, shape):
    imported = import_text(data + "\n" + layer("r", "ReLU", "data"), "n.prototxt")
    assert imported.graph.node(imported.graph.outputs["backbone"]).shape == shape
    assert imported.warnings == ()


def test_a_data_layers_label_read_by_the_network_is_an_error():
    text = TRAIN_VAL + layer("cat", "Concat", "fc", "label")
    with pytest.raises(MtscError) as info:
        import_text(text, "tv.prototxt", output="cat")
    assert info.value.message == (
        "layer 'data' (Data): top 'label' is read, but mtsc takes only a data layer's first "
        "top (the images), as the network's input"
    )
    assert info.value.span.line == line_of(text, 'top: "label" include { phase: TEST }')


def test_an_unsupported_layer_is_named_before_an_unusable_input():
    # Faster R-CNN: im_info (1 x 3) feeds the proposal layer, which is the real blocker.
    text = (
        'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
        'input: "im_info"\ninput_shape { dim: 1 dim: 3 }\n'
        + layer("rois", "Python", "data", "im_info")
    )
    with pytest.raises(MtscError, match=r"layer 'rois' \(Python\): unsupported layer type"):
        import_text(text, "n.prototxt")


V1_DEEPLAB = """layers { name: "data" type: IMAGE_SEG_DATA top: "data" top: "label"
  image_data_param { source: "val.txt" } transform_param { crop_size: 9 } }
layers { name: "fc8" type: CONVOLUTION bottom: "data" top: "fc8"
  convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "fc8_interp" type: INTERP bottom: "fc8" top: "fc8_interp"
  interp_param { zoom_factor: 2 } }
layers { name: "fc8_crop" type: PADDING bottom: "fc8_interp" top: "fc8_crop"
  padding_param { pad_beg: -1 pad_end: -1 } }
# layers { name: "im" type: IMSHOW bottom: "fc8_crop" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc8_crop" bottom: "label" }
layers { name: "mat" type: MAT_WRITE bottom: "fc8_crop" }
"""


def test_v1_fork_types_parse_and_are_named_where_unsupported():
    # DeepLab v1: IMAGE_SEG_DATA, INTERP, PADDING and MAT_WRITE are not in Caffe's V1 enum.
    with pytest.raises(MtscError) as info:
        import_text(V1_DEEPLAB, "deeplab.prototxt")
    assert info.value.message.startswith(
        "layer 'fc8_crop' (PADDING): unsupported layer type 'PADDING'"
    )
    assert info.value.span.line == line_of(V1_DEEPLAB, "type: PADDING")
    g = import_text(V1_DEEPLAB, "deeplab.prototxt", output="fc8_interp").graph
    interp = nodes_by_name(g)["fc8_interp"]
    assert (interp.op, interp.shape) == (Op.INTERP, (3, 13, 13))  # 9 -> 7 -> (7 - 1) * 2 + 1


def test_bare_fields_skip_comments_and_strings():
    text = 'type: CONV # type: IMSHOW\nname: "type: X"\nlayers { type:\n  RELU }'
    found = bare_fields(text, "type")
    assert [name for _, _, name in found] == ["CONV", "RELU"]
    assert [text[a:b] for a, b, _ in found] == ["type: CONV", "type:\n  RELU"]


@pytest.mark.parametrize(
    ("layers", "message", "where"),
    [
        (
            'layers { name: "b" type: BN bottom: "data" top: "b" }',
            "layer 'b': type BN in a V1 `layers` block; mtsc reads the V1 types ABSVAL, CONCAT, "
            "CONVOLUTION, DECONVOLUTION, DROPOUT, ELTWISE, FLATTEN, INNER_PRODUCT, INTERP, LRN, "
            "POOLING, POWER, RELU, SIGMOID, SLICE, SOFTMAX, SPLIT, TANH; write the layer in a "
            "`layer { }` block",
            (3, 20),
        ),
        (
            'layers { name: "b" type: CRF bottom: "data" top: y }',
            "not a valid prototxt: Expected string but found: 'y'",
            (3, 50),
        ),
    ],
)
def test_v1_type_errors_keep_their_places(layers, message, where):
    text = INPUT + layers + "\n"
    with pytest.raises(MtscError) as info:
        import_text(text, "n.prototxt")
    assert (info.value.message, (info.value.span.line, info.value.span.column)) == (
        message,
        where,
    )


def test_a_v1_fork_type_on_the_next_line_is_read():
    text = INPUT + 'layers { name: "z" type:\n  INTERP bottom: "data" top: "z"\n'
    text += "  interp_param { zoom_factor: 2 } }\n"
    node = nodes_by_name(import_text(text, "n.prototxt").graph)["z"]
    assert (node.op, node.shape) == (Op.INTERP, (3, 15, 15))


def test_shuffle_channel_imports_as_channel_shuffle():
    text = INPUT + layer("s", "ShuffleChannel", "data", body="shuffle_channel_param { group: 3 }")
    node = nodes_by_name(import_text(text, "n.prototxt").graph)["s"]
    assert (node.op, node.attrs, node.shape) == (Op.CHANNEL_SHUFFLE, {"groups": 3}, (3, 8, 8))
    bad = INPUT + layer("s", "ShuffleChannel", "data", body="shuffle_channel_param { group: 2 }")
    with pytest.raises(MtscError, match="channel_shuffle: 3 channels do not split into 2 groups"):
        import_text(bad, "n.prototxt")


def with_two_tasks(mtl: str, output: tuple[int, ...]) -> str:
    """An imported backbone's .mtl with two tasks reading its output: 1x1 convs on a feature
    map, linear read-outs of flat features."""
    if len(output) == 3:
        return mtl + "\ntasks {\n    a: conv1x1(classes=2)\n    b: conv1x1(classes=3)\n}\n"
    head = "\nblock readout(x, input, classes) {\n    return linear(x, classes)\n}\n"
    return mtl + head + "\ntasks {\n    a: readout(classes=2)\n    b: readout(classes=3)\n}\n"


@pytest.mark.parametrize("name", sorted(FIXTURE_SHAPES))
def test_every_fixture_builds_a_supermodel_that_searches(name, tmp_path, load_generated):
    import torch

    in_shape, out_shape = FIXTURE_SHAPES[name]
    imported = import_prototxt(fixture(name))
    path = tmp_path / f"{name}.mtl"
    path.write_text(with_two_tasks(emit_mtl(imported.graph).text, out_shape))
    build(path, tmp_path / "out", render=False)
    model = load_generated(tmp_path / "out" / "supermodel.py").Supermodel().set_mode("search")
    torch.manual_seed(0)
    out = model(torch.randn(2, *in_shape))
    size = in_shape[1:] if len(out_shape) == 3 else ()  # dense heads upsample to the input's
    assert {t: tuple(v.shape) for t, v in out.items()} == {"a": (2, 2, *size), "b": (2, 3, *size)}
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.policy_parameters())


NESTED_INPUT = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'


def _nested_relu(depth: int) -> str:
    inner = "foo { " * depth + "}" * depth
    return NESTED_INPUT + f'layer {{ name: "r" type: "ReLU" bottom: "data" top: "r" {inner} }}\n'


def test_blocks_nested_too_deeply_are_a_located_error_not_a_recursion_error():
    text = _nested_relu(1000)
    with pytest.raises(MtscError) as err:
        import_text(text, "deep.prototxt")
    assert err.value.message == "nested too deeply: more than 100 levels of { }"
    # The layer's brace is the first level, so the 100th `foo {` is the 101st.
    hundredth = text.split("\n")[5].index("foo {") + 4 + 6 * 99
    assert (err.value.span.line, err.value.span.column) == (6, hundredth + 1)


def test_blocks_nested_to_the_limit_import():
    imported = import_text(_nested_relu(99), "deep.prototxt")
    assert [n.op for _, n in imported.graph.nodes()] == [Op.INPUT, Op.RELU]


def test_a_blob_two_layers_share_by_name_is_said_to_be_given_to_each():
    conv = 'param {{ name: "{w}" lr_mult: 1 }} convolution_param {{ num_output: 3 kernel_size: 1 }}'
    text = INPUT + (
        layer("a", "Convolution", "data", body=conv.format(w="tower_w"))
        + layer("b", "Convolution", "a", body=conv.format(w="tower_w"))
        + layer("c", "Convolution", "b", body=conv.format(w="own_w"))
    )
    imported = import_text(text, "net.prototxt")
    (warning,) = imported.warnings
    assert warning.message == (
        "layer 'b' (Convolution): Caffe shares the blob 'tower_w' with layer 'a'; mtsc gives "
        "each layer weights of its own"
    )
    assert (warning.span.line, warning.span.column) == (line_of(text, 'name: "b"') + 4, 3)
    v1 = INPUT + "".join(
        f'layers {{ name: "{n}" type: CONVOLUTION bottom: "{b}" top: "{n}" param: "w" '
        "convolution_param { num_output: 3 kernel_size: 1 } }\n"
        for n, b in (("a", "data"), ("b", "a"))
    )
    (warning,) = import_text(v1, "net.prototxt").warnings
    assert warning.message.startswith("layer 'b' (Convolution): Caffe shares the blob 'w' with")
