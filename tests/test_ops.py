"""The op registry: each op's generated PyTorch against a direct computation, shape rules against
what torch computes, parameter and MAC counts against hand formulas and torch, attribute checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mtsc.driver import build, load_backbone
from mtsc.ir.ops import (
    Op,
    OpError,
    did_you_mean,
    infer_shape,
    mac_count,
    param_count,
    spec_of,
)
from mtsc.ir.stats import summarize

# ---------------------------------------------------------------- one-op models vs direct math


def _bn(x, m: nn.BatchNorm2d, eps=1e-5):
    shape = (1, -1, 1, 1)
    y = (x - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + eps)
    if m.weight is not None:
        y = y * m.weight.view(shape) + m.bias.view(shape)
    return y


def _conv(x, m, **kw):
    return F.conv2d(x, m.weight, m.bias, **kw)


def _nearest2(x):
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _avg_no_pad(x):
    # 3x3 windows, stride 2, padding 1, averaging only the cells inside the input.
    ones = torch.ones_like(x[:, :1])
    total = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2, divisor_override=1)
    count = F.avg_pool2d(F.pad(ones, (1, 1, 1, 1)), 3, stride=2, divisor_override=1)
    return total / count


# (id, inputs {name: C x H x W}, backbone expression, reference(modules, *inputs))
CASES = [
    ("conv", {"a": (4, 9, 11)}, "conv(a, 6, k=3)", lambda m, a: _conv(a, m["conv1"])),
    (
        "conv_all_attrs",
        {"a": (4, 9, 11)},
        "conv(a, 8, k=(3, 2), s=(2, 1), p=(1, 0), d=(2, 1), g=2, bias=true)",
        lambda m, a: _conv(a, m["conv1"], stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2),
    ),
    (
        "conv_long_names",
        {"a": (4, 9, 11)},
        "conv(a, channels=4, kernel=1, stride=2, groups=4)",
        lambda m, a: _conv(a, m["conv1"], stride=2, groups=4),
    ),
    ("bn", {"a": (5, 4, 6)}, "bn(a)", lambda m, a: _bn(a, m["bn1"])),
    (
        "bn_no_affine",
        {"a": (5, 4, 6)},
        "batchnorm(a, eps=0.001, affine=false)",
        lambda m, a: _bn(a, m["bn1"], eps=1e-3),
    ),
    (
        "scale",
        {"a": (5, 4, 6)},
        "scale(a)",
        lambda m, a: a * m["scale1"].weight.view(1, -1, 1, 1) + m["scale1"].bias.view(1, -1, 1, 1),
    ),
    ("relu", {"a": (3, 4, 5)}, "relu(a)", lambda m, a: a.clamp(min=0)),
    ("relu6", {"a": (3, 4, 5)}, "relu6(a * a * a)", lambda m, a: (a**3).clamp(0, 6)),
    ("sigmoid", {"a": (3, 4, 5)}, "sigmoid(a)", lambda m, a: 1 / (1 + torch.exp(-a))),
    (
        "tanh",
        {"a": (3, 4, 5)},
        "tanh(a)",
        lambda m, a: (1 - torch.exp(-2 * a)) / (1 + torch.exp(-2 * a)),
    ),
    ("silu", {"a": (3, 4, 5)}, "silu(a)", lambda m, a: a / (1 + torch.exp(-a))),
    (
        "hardswish",
        {"a": (3, 4, 5)},
        "hardswish(a * a * a)",
        lambda m, a: a**3 * (a**3 + 3).clamp(0, 6) / 6,
    ),
    (
        "leaky_relu",
        {"a": (3, 4, 5)},
        "leaky_relu(a, slope=0.3)",
        lambda m, a: torch.where(a > 0, a, 0.3 * a),
    ),
    (
        "elu",
        {"a": (3, 4, 5)},
        "elu(a, alpha=0.5)",
        lambda m, a: torch.where(a > 0, a, 0.5 * (torch.exp(a) - 1)),
    ),
    ("abs", {"a": (3, 4, 5)}, "abs(a)", lambda m, a: torch.where(a < 0, -a, a)),
    (
        "power",
        {"a": (3, 4, 5)},
        "power(a, power=3, scale=0.5, shift=-1)",
        lambda m, a: (0.5 * a - 1) * (0.5 * a - 1) * (0.5 * a - 1),
    ),
    ("power_affine", {"a": (3, 4, 5)}, "power(a, shift=2)", lambda m, a: a + 2),
    (
        "hard_sigmoid_by_arithmetic",
        {"a": (3, 4, 5)},
        "relu6(a + 3) / 6",
        lambda m, a: (a + 3).clamp(0, 6) / 6,
    ),
    ("tensor_minus_tensor", {"a": (3, 4, 5)}, "a - a * a", lambda m, a: a - a * a),
    ("negated_tensor", {"a": (3, 4, 5)}, "relu(-a)", lambda m, a: (-a).clamp(min=0)),
    (
        "number_and_tensor",
        {"a": (3, 4, 5)},
        "1 - 2 * a ** 2 - 0.5",
        lambda m, a: 1 - 2 * a * a - 0.5,
    ),
    (
        "unpool",
        {"a": (3, 4, 6)},
        "unpool(maxpool(a, k=2) * 2, a, k=2)",
        # the doubled maxima back in their places: a 2x2 window's largest value, zeros elsewhere
        lambda m, a: torch.where(
            a == F.max_pool2d(a, 2).repeat_interleave(2, 2).repeat_interleave(2, 3), 2 * a, 0.0
        ),
    ),
    (
        "unpool_ceil_and_stride",
        {"a": (2, 5, 5)},
        "unpool(maxpool(a, k=3, s=2, ceil=true), a, k=3, s=2, ceil=true)",
        lambda m, a: F.max_unpool2d(
            *F.max_pool2d(a, 3, 2, ceil_mode=True, return_indices=True), 3, 2, output_size=(5, 5)
        ),
    ),
    (
        "clip",
        {"a": (3, 4, 5)},
        "clip(a, min=-0.5, max=0.25)",
        lambda m, a: torch.minimum(torch.maximum(a, torch.tensor(-0.5)), torch.tensor(0.25)),
    ),
    (
        "channel_shuffle",
        {"a": (6, 4, 5)},
        "channel_shuffle(a, 3)",
        # channel c = i * 2 + j (group i of 3, position j of 2) moves to j * 3 + i
        lambda m, a: a[:, [0, 2, 4, 1, 3, 5]],
    ),
    (
        "prelu",
        {"a": (3, 4, 5)},
        "prelu(a)",
        lambda m, a: torch.where(a > 0, a, m["prelu1"].weight.view(1, -1, 1, 1) * a),
    ),
    (
        "prelu_one_slope_on_features",
        {"a": (3, 4, 5)},
        "prelu(flatten(a), channel_shared=true)",
        lambda m, a: torch.where(a > 0, a, m["prelu1"].weight * a).flatten(1),
    ),
    (
        "maxpool_ceil",
        {"a": (2, 6, 7)},
        "maxpool(a, k=2, s=2, ceil=true)",
        # ceil mode: the last, partial window of the odd width is kept.
        lambda m, a: (
            F.pad(a, (0, 1), value=-math.inf).unfold(2, 2, 2).unfold(3, 2, 2).amax((-1, -2))
        ),
    ),
    (
        "maxpool_global",
        {"a": (2, 6, 7)},
        "maxpool(a, global=true)",
        lambda m, a: a.amax(dim=(2, 3), keepdim=True),
    ),
    (
        "avgpool",
        {"a": (2, 6, 8)},
        "avgpool(a, k=2)",
        lambda m, a: a.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)),
    ),
    (
        "avgpool_count_pad_false",
        {"a": (2, 7, 7)},
        "avgpool(a, k=3, s=2, p=1, count_pad=false)",
        lambda m, a: _avg_no_pad(a),
    ),
    (
        "avgpool_global",
        {"a": (2, 6, 7)},
        "avgpool(a, global=true)",
        lambda m, a: a.mean(dim=(2, 3), keepdim=True),
    ),
    ("add", {"a": (3, 4, 5), "b": (3, 4, 5)}, "a + b", lambda m, a, b: a + b),
    (
        "add_coeffs",
        {"a": (3, 4, 5), "b": (3, 4, 5)},
        "add(a, b, a, coeffs=[1, 0.5, -2])",
        lambda m, a, b: a + 0.5 * b - 2 * a,
    ),
    ("add_context", {"a": (3, 4, 5), "g": (3, 1, 1)}, "a + g", lambda m, a, g: a + g),
    ("context_minus", {"g": (3, 1, 1), "a": (3, 4, 5)}, "g - a", lambda m, g, a: g - a),
    (
        "add_coeffs_context",
        {"a": (3, 4, 5), "g": (3, 1, 1)},
        "add(g, a, coeffs=[0.5, 2])",
        lambda m, a, g: 0.5 * g + 2 * a,
    ),
    ("mul", {"a": (3, 4, 5), "b": (3, 4, 5)}, "a * b", lambda m, a, b: a * b),
    ("mul_gate", {"a": (3, 4, 5), "g": (3, 1, 1)}, "a * g", lambda m, a, g: a * g),
    ("mul_gate_first", {"g": (3, 1, 1), "a": (3, 4, 5)}, "g * a", lambda m, g, a: g * a),
    (
        "max",
        {"a": (3, 4, 5), "b": (3, 4, 5)},
        "max(a, b, relu(a))",
        lambda m, a, b: torch.stack([a, b, a.clamp(min=0)]).amax(0),
    ),
    (
        "concat",
        {"a": (3, 4, 5), "b": (2, 4, 5)},
        "concat(a, b, a)",
        lambda m, a, b: torch.cat([a, b, a], dim=1),
    ),
    (
        "linear",
        {"a": (3, 4, 5)},
        "flatten(a) | linear(7)",
        lambda m, a: a.reshape(len(a), -1) @ m["linear1"].weight.T + m["linear1"].bias,
    ),
    (
        "linear_no_bias",
        {"a": (3, 4, 5)},
        "flatten(a) | fc(features=7, bias=false)",
        lambda m, a: a.reshape(len(a), -1) @ m["linear1"].weight.T,
    ),
    ("slice", {"a": (6, 4, 5)}, "slice(a, 1, 4)", lambda m, a: a[:, 1:4]),
    (
        "slice_features",
        {"a": (3, 4, 5)},
        "flatten(a) | slice(start=10, end=25)",
        lambda m, a: a.reshape(len(a), -1)[:, 10:25],
    ),
    (
        "reshape_gate",
        {"a": (3, 4, 5)},
        "a * (avgpool(a, global=true) | flatten | reshape((3, 1, 1)))",
        lambda m, a: a * a.mean(dim=(2, 3), keepdim=True),
    ),
    (
        "lrn_across",
        {"a": (6, 4, 5)},
        "lrn(a, size=3, alpha=0.5, beta=0.6, k=2)",
        lambda m, a: _lrn_across(a, 3, 0.5, 0.6, 2.0),
    ),
    (
        "lrn_within",
        {"a": (3, 4, 5)},
        'lrn(a, size=3, alpha=0.5, beta=0.6, region="within")',
        lambda m, a: _lrn_within(a, 3, 0.5, 0.6),
    ),
    (
        "l2norm",
        {"a": (6, 4, 5)},
        "l2norm(a)",
        lambda m, a: a / a.pow(2).sum(1, keepdim=True).add(1e-10).sqrt(),
    ),
    (
        "l2norm_across_spatial",
        {"a": (3, 4, 5)},
        "l2norm(a, across_spatial=true, eps=0.5)",
        lambda m, a: a / a.pow(2).sum((1, 2, 3), keepdim=True).add(0.5).sqrt(),
    ),
    (
        "l2norm_features",
        {"a": (3, 4, 5)},
        "flatten(a) | l2norm",
        lambda m, a: F.normalize(a.reshape(len(a), -1), eps=0),
    ),
    ("dropout_eval", {"a": (3, 4, 5)}, "dropout(a, p=0.3)", lambda m, a: a),
    ("upsample_nearest", {"a": (3, 4, 5)}, "upsample(a, scale=2)", lambda m, a: _nearest2(a)),
    (
        "upsample_to_reference",
        {"a": (3, 4, 5), "b": (1, 8, 10)},
        "upsample(a, b)",
        lambda m, a, b: _nearest2(a),
    ),
    (
        "upsample_bilinear",
        {"a": (3, 4, 5)},
        'interpolate(a, scale=2, mode="bilinear")',
        lambda m, a: F.interpolate(a, size=(8, 10), mode="bilinear", align_corners=False),
    ),
    (
        "interp_shrink_then_zoom",
        {"a": (3, 9, 6)},
        "interp(a, zoom=3, shrink=2)",
        # (9 - 1) // 2 * 3 + 1 = 13, (6 - 1) // 2 * 3 + 1 = 7
        lambda m, a: F.interpolate(a, size=(13, 7), mode="bilinear", align_corners=True),
    ),
    (
        "interp_size",
        {"a": (3, 4, 5)},
        "interp(a, size=(7, 3))",
        lambda m, a: F.interpolate(a, size=(7, 3), mode="bilinear", align_corners=True),
    ),
    (
        "interp_to_reference",
        {"a": (3, 4, 5), "b": (1, 6, 2)},
        "interp(a, b)",
        lambda m, a, b: F.interpolate(a, size=(6, 2), mode="bilinear", align_corners=True),
    ),
]


def _lrn_across(a: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Caffe's formula, loop by loop: x / (k + alpha / size * sum of nearby squares)^beta."""
    half, channels = size // 2, a.shape[1]
    sums = torch.stack(
        [(a[:, max(0, c - half) : c + half + 1] ** 2).sum(1) for c in range(channels)], dim=1
    )
    return a / (k + alpha / size * sums) ** beta


def _lrn_within(a: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Caffe's WITHIN_CHANNEL: x / (1 + alpha / size^2 * sum of squares in the zero-padded
    size x size window)^beta."""
    half = size // 2
    squares = F.pad(a**2, (half, half, half, half))
    h, w = a.shape[2:]
    sums = sum(squares[:, :, i : i + h, j : j + w] for i in range(size) for j in range(size))
    return a / (1 + alpha / size**2 * sums) ** beta


def _module_names(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_children())


def _randomize(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for module in model.modules():
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)


@pytest.mark.parametrize(
    ("inputs", "expr", "reference"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_op_matches_direct_computation(
    inputs, expr, reference, write_model, load_generated, tmp_path
):
    decls = "".join(f"input {k}: {'x'.join(map(str, v))}\n" for k, v in inputs.items())
    path = write_model(f"{decls}backbone {{\n    return {expr}\n}}\n")
    result = build(path, tmp_path / "out", render=False)
    model = load_generated(tmp_path / "out" / "backbone.py").Backbone()
    gen = torch.Generator().manual_seed(0)
    _randomize(model, gen)
    model.eval()
    tensors = [torch.randn(2, *shape, generator=gen) for shape in inputs.values()]
    with torch.no_grad():
        actual = model(*tensors)
        expected = reference(_module_names(model), *tensors)
    assert tuple(actual.shape[1:]) == result.summary.outputs["backbone"]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == result.summary.params


# ---------------------------------------------------------------- shape rules vs torch


def _ir_shape(op: Op, attrs: dict, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return infer_shape(op, spec_of(op).normalize(attrs), [shape])
    except OpError:
        return None


def _torch_shape(fn, *args, **kw) -> tuple[int, ...] | None:
    try:
        return tuple(fn(*args, **kw).shape[1:])
    except RuntimeError:
        return None


windows = st.fixed_dictionaries(
    {
        "h": st.integers(1, 14),
        "w": st.integers(1, 14),
        "k": st.integers(1, 5),
        "s": st.integers(1, 4),
        "p": st.integers(0, 3),
        "d": st.integers(1, 3),
    }
)


@settings(max_examples=150, deadline=None)
@given(windows)
def test_conv_shape_rule_matches_torch(case) -> None:
    h, w, k, s, p, d = (case[key] for key in "hwkspd")
    ir = _ir_shape(Op.CONV2D, {"out": 2, "k": k, "s": s, "p": p, "d": d}, (1, h, w))
    x, weight = torch.zeros(1, 1, h, w), torch.zeros(2, 1, k, k)
    assert ir == _torch_shape(F.conv2d, x, weight, stride=s, padding=p, dilation=d)


@settings(max_examples=150, deadline=None)
@given(windows, st.integers(1, 3))
def test_deconv_shape_rule_matches_torch(case, groups) -> None:
    """Torch also returns an empty map where padding eats the output; mtsc refuses that."""
    h, w, k, s, p, d = (case[key] for key in "hwkspd")
    attrs = {"out": 2 * groups, "k": k, "s": s, "p": p, "d": d, "g": groups}
    ir = _ir_shape(Op.DECONV2D, attrs, (groups, h, w))
    x, weight = torch.zeros(1, groups, h, w), torch.zeros(groups, 2, k, k)
    expected = _torch_shape(
        F.conv_transpose2d, x, weight, stride=s, padding=p, dilation=d, groups=groups
    )
    assert ir == (None if expected is None or 0 in expected else expected)


@settings(max_examples=200, deadline=None)
@given(windows, st.booleans(), st.sampled_from(["maxpool", "avgpool"]))
def test_pool_shape_rule_matches_torch_with_ceil_mode(case, ceil, kind) -> None:
    h, w, k, s, p = (case[key] for key in "hwksp")
    op = Op.MAXPOOL if kind == "maxpool" else Op.AVGPOOL
    ir = _ir_shape(op, {"k": k, "s": s, "p": p, "ceil": ceil}, (1, h, w))
    fn = F.max_pool2d if kind == "maxpool" else F.avg_pool2d
    x = torch.zeros(1, 1, h, w)
    assert ir == _torch_shape(fn, x, k, stride=s, padding=p, ceil_mode=ceil)


def test_ceil_mode_keeps_a_window_that_overhangs_a_small_input() -> None:
    # torch keeps the one window that starts inside the 1x3 input; floor mode has none.
    x = torch.zeros(1, 1, 1, 3)
    assert _ir_shape(Op.MAXPOOL, {"k": 2, "ceil": True}, (1, 1, 3)) == (1, 1, 2)
    assert tuple(F.max_pool2d(x, 2, ceil_mode=True).shape[1:]) == (1, 1, 2)
    assert _ir_shape(Op.MAXPOOL, {"k": 2}, (1, 1, 3)) is None


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.05, 4.0))
def test_upsample_shape_rule_matches_torch(h, w, scale) -> None:
    ir = _ir_shape(Op.UPSAMPLE, {"scale": scale}, (1, h, w))
    torch_shape = _torch_shape(F.interpolate, torch.zeros(1, 1, h, w), scale_factor=float(scale))
    if torch_shape is not None and 0 in torch_shape:
        torch_shape = None  # torch returns an empty tensor; the compiler rejects it
    assert ir == torch_shape


# ---------------------------------------------------------------- parameter and MAC counts


def _counts(op: Op, attrs: dict, in_shapes: list[tuple[int, ...]]) -> tuple[int, int, tuple]:
    normalized = spec_of(op).normalize(attrs)
    out = infer_shape(op, normalized, in_shapes)
    return (
        param_count(op, normalized, in_shapes, out),
        mac_count(op, normalized, in_shapes, out),
        out,
    )


@pytest.mark.parametrize(
    ("attrs", "cin", "h", "w"),
    [
        ({"out": 16, "k": 3, "p": 1}, 8, 10, 12),
        ({"out": 12, "k": (3, 5), "s": 2, "p": (2, 1), "d": 2, "g": 4, "bias": True}, 8, 17, 9),
        ({"out": 32, "k": 3, "g": 32, "p": 1}, 32, 7, 7),  # depthwise
    ],
)
def test_conv_counts_match_hand_formulas(attrs, cin, h, w) -> None:
    params, macs, out = _counts(Op.CONV2D, attrs, [(cin, h, w)])
    kh, kw = attrs["k"] if isinstance(attrs["k"], tuple) else (attrs["k"], attrs["k"])
    groups, bias = attrs.get("g", 1), attrs.get("bias", False)
    cout, ho, wo = out
    assert params == cout * (cin // groups) * kh * kw + (cout if bias else 0)
    assert macs == cout * ho * wo * (cin // groups) * kh * kw
    conv = nn.Conv2d(
        cin,
        cout,
        (kh, kw),
        stride=attrs.get("s", 1),
        padding=attrs.get("p", 0),
        dilation=attrs.get("d", 1),
        groups=groups,
        bias=bias,
    )
    assert params == sum(p.numel() for p in conv.parameters())
    assert out == tuple(conv(torch.zeros(1, cin, h, w)).shape[1:])


def test_linear_bn_scale_counts_match_hand_formulas() -> None:
    assert _counts(Op.LINEAR, {"out": 10}, [(300,)])[:2] == (300 * 10 + 10, 300 * 10)
    assert _counts(Op.LINEAR, {"out": 10, "bias": False}, [(300,)])[:2] == (3000, 3000)
    assert _counts(Op.BATCHNORM, {}, [(64, 5, 7)])[:2] == (2 * 64, 64 * 5 * 7)
    assert _counts(Op.BATCHNORM, {"affine": False}, [(64, 5, 7)])[:2] == (0, 64 * 5 * 7)
    assert _counts(Op.SCALE, {}, [(64, 5, 7)])[:2] == (2 * 64, 64 * 5 * 7)
    assert _counts(Op.RELU, {}, [(64, 5, 7)])[:2] == (0, 0)
    assert _counts(Op.PRELU, {}, [(64, 5, 7)])[:2] == (64, 0)
    assert _counts(Op.PRELU, {"channel_shared": True}, [(64,)])[:2] == (1, 0)
    assert _counts(Op.MAXPOOL, {"k": 2}, [(64, 6, 6)]) == (0, 0, (64, 3, 3))


EXAMPLES_WITH_BACKBONES = [
    "efficientnet_b0.mtl",
    "mnasnet.mtl",
    "mobilenetv2.mtl",
    "resnet18.mtl",
    "resnet34.mtl",
    "resnet_tiny.mtl",
    "segnet.mtl",
]


# Each trunk's published parameter count: torchvision's model less its 1000-class classifier
# (resnet: fc 513,000; the others: 1,281,000). The DeepLab-style ResNet-34 only dilates, which
# changes no parameter.
PUBLISHED_PARAMS = {
    "efficientnet_b0.mtl": 5_288_548 - 1_281_000,
    "mnasnet.mtl": 4_383_312 - 1_281_000,
    "mobilenetv2.mtl": 3_504_872 - 1_281_000,
    "resnet18.mtl": 11_689_512 - 513_000,
    "resnet34.mtl": 21_797_672 - 513_000,
    # SegNet's Caffe model (segnet_inference.prototxt, 11 classes) less its classifier conv.
    "segnet.mtl": 29_449_355 - (64 * 11 * 9 + 11),
}


@pytest.mark.parametrize("example", sorted(PUBLISHED_PARAMS))
def test_examples_have_the_published_parameter_counts(example, examples_dir) -> None:
    assert summarize(load_backbone(examples_dir / example)).params == PUBLISHED_PARAMS[example]


@pytest.mark.parametrize("example", EXAMPLES_WITH_BACKBONES)
def test_example_counts_match_torch(example, examples_dir, tmp_path, load_generated) -> None:
    """Parameters: the generated module's own count. MACs: torch's FLOP counter (2 per MAC of
    conv and linear) plus one per batchnorm output element, run on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    result = build(examples_dir / example, tmp_path, render=False)
    summary = result.summary
    module = load_generated(tmp_path / "backbone.py")
    with torch.device("meta"):
        model = module.Backbone().eval()
    assert sum(p.numel() for p in model.parameters()) == summary.params
    bn_elements = []
    for sub in model.modules():
        if isinstance(sub, nn.BatchNorm2d):
            sub.register_forward_hook(lambda mod, args, out: bn_elements.append(out.numel()))
    [(c, h, w)] = summary.inputs.values()
    with FlopCounterMode(display=False) as counter:
        y = model(torch.empty(1, c, h, w, device="meta"))
    assert tuple(y.shape[1:]) == summary.outputs["backbone"]
    assert counter.get_total_flops() // 2 + sum(bn_elements) == summary.macs
    assert summary == summarize(result.graph)


# ---------------------------------------------------------------- attributes


def test_normalize_resolves_aliases_and_fills_defaults() -> None:
    attrs = spec_of(Op.CONV2D).normalize({"channels": 8, "k": 3, "s": (2, 1), "g": 2})
    assert attrs == {
        "out": 8,
        "kernel": (3, 3),
        "stride": (2, 1),
        "padding": (0, 0),
        "dilation": (1, 1),
        "groups": 2,
        "bias": False,
    }
    pool = spec_of(Op.MAXPOOL).normalize({"k": 3, "ceil_mode": True})
    assert pool["stride"] == (3, 3) and pool["ceil"] is True  # stride defaults to the kernel
    assert spec_of(Op.AVGPOOL).normalize({"k": 2, "count_include_pad": False})["count_pad"] is False
    assert spec_of(Op.LEAKY_RELU).normalize({"negative_slope": 1})["slope"] == 1.0


@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        (
            Op.CONV2D,
            {"out": 8, "kernal": 3},
            "conv has no attribute 'kernal' (did you mean 'kernel'?)",
        ),
        (
            Op.CONV2D,
            {"out": 1.5, "k": 1},
            "conv: out must be an integer, got 1.5 (`//` divides to an integer)",
        ),
        (Op.LINEAR, {"out": 0}, "linear: out must be at least 1, got 0"),
        (Op.CONV2D, {"out": 8}, "conv: missing required attribute 'kernel'"),
        (Op.CONV2D, {"out": 8, "k": 3, "kernel": 3}, "conv: attribute 'kernel' given twice"),
        (Op.CONV2D, {"out": 8, "k": 1.5}, "kernel must be an integer or an (h, w) pair, got 1.5"),
        (
            Op.RESHAPE,
            {"shape": (True, 512)},
            "shape must be a shape of positive integers, got (true, 512)",
        ),
        (
            Op.RESHAPE,
            {"shape": 512},
            "shape must be a shape of positive integers, got 512 (one dimension is written (n,))",
        ),
        (Op.CONV2D, {"out": 8, "k": (1, 2, 3)}, "kernel must be an integer or an (h, w) pair"),
        (Op.CONV2D, {"out": 8, "k": 3, "s": 0}, "stride must be at least 1, got 0"),
        (Op.CONV2D, {"out": 8, "k": 3, "bias": 1}, "bias must be true or false, got 1"),
        (Op.CONV2D, {"out": 8.0, "k": 3}, "out must be an integer, got 8.0"),
        (Op.BATCHNORM, {"eps": "small"}, 'eps must be a number, got "small"'),
        (Op.BATCHNORM, {"eps": math.inf}, "eps must be a finite number, got inf"),
        (Op.ADD, {"coeffs": (1, math.nan)}, "coeffs must be a tuple of finite numbers"),
        (Op.UPSAMPLE, {"mode": "cubic"}, "mode must be one of 'nearest', 'bilinear'"),
        (Op.MAXPOOL, {}, "maxpool: needs a kernel size (k=...) or global=true"),
        (
            Op.AVGPOOL,
            {"k": 3, "global": True},
            "avgpool: global=true pools the whole map; drop k, s, p and ceil",
        ),
        (
            Op.MAXPOOL,
            {"ceil": True, "global": True},
            "maxpool: global=true pools the whole map; drop k, s, p and ceil",
        ),
        (
            Op.AVGPOOL,
            {"k": 2, "p": 2},
            "avgpool: padding 2 must be at most half the kernel size 2 (as PyTorch pools)",
        ),
        (Op.DROPOUT, {"p": 1}, "dropout: p must be below 1, got 1.0"),
        (Op.LINEAR, {"out": 0}, "out must be at least 1, got 0"),
        (Op.CLIP, {"min": 1, "max": 0.5}, "clip: min 1 is above max 0.5"),
        (Op.CLIP, {"max": 6}, "clip: missing required attribute 'min'"),
        (Op.CHANNEL_SHUFFLE, {"groups": 0}, "groups must be at least 1, got 0"),
        (Op.UNPOOL, {}, "unpool: needs the kernel size (k=...) of the max pooling it undoes"),
        (
            Op.UNPOOL,
            {"k": 2, "p": 2},
            "unpool: padding 2 must be at most half the kernel size 2 (as PyTorch pools)",
        ),
    ],
)
def test_attribute_errors(op, attrs, message) -> None:
    with pytest.raises(OpError) as err:
        spec_of(op).normalize(attrs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("op", "attrs", "in_shapes", "message"),
    [
        (
            Op.CONV2D,
            {"out": 8, "k": 3, "g": 2},
            [(3, 8, 8)],
            "conv2d: 3 input channels not divisible by groups=2",
        ),
        (
            Op.CONV2D,
            {"out": 6, "k": 3, "g": 4},
            [(8, 8, 8)],
            "conv2d: 6 output channels not divisible by groups=4",
        ),
        (
            Op.CONV2D,
            {"out": 8, "k": 5},
            [(3, 4, 9)],
            "conv2d: kernel 5x5 larger than the padded input 4x9",
        ),
        (
            Op.CONV2D,
            {"out": 8, "k": 3, "d": 3},
            [(3, 6, 6)],
            "conv2d: kernel 3x3 (dilated 7x7) larger than the padded input 6x6",
        ),
        (
            Op.CONV2D,
            {"out": 8, "k": 1},
            [(30,)],
            "conv2d: needs a feature map (C x H x W), got a flat vector of 30",
        ),
        (
            Op.DECONV2D,
            {"out": 4, "k": 2, "g": 3},
            [(6, 4, 4)],
            "deconv2d: 4 output channels not divisible by groups=3",
        ),
        (
            Op.DECONV2D,
            {"out": 4, "k": 2, "g": 4},
            [(6, 4, 4)],
            "deconv2d: 6 input channels not divisible by groups=4",
        ),
        (
            Op.DECONV2D,
            {"out": 4, "k": 1, "p": 1},
            [(6, 1, 3)],
            "deconv2d: padding 1x1 leaves no output (its size would be -1x1)",
        ),
        (
            Op.CROP,
            {"offset": (2, 1)},
            [(4, 8, 8), (3, 7, 6)],
            "crop: offset 2x1 and the reference's 7x6 reach past the input's 8x8",
        ),
        (Op.CROP, {}, [(4, 8, 8)], "crop: takes 2 input(s), got 1"),
        (
            Op.RESHAPE,
            {"shape": (4, 1, 1)},
            [(3,)],
            "reshape: 3 has 3 values per sample, 4x1x1 holds 4",
        ),
        (
            Op.L2NORM,
            {"across_spatial": True},
            [(30,)],
            "l2norm with across_spatial=true: needs a feature map (C x H x W), "
            "got a flat vector of 30",
        ),
        (
            Op.LRN,
            {"size": 4, "region": "within"},
            [(8, 4, 4)],
            "lrn: a window within a channel is centred, so size must be odd, got 4",
        ),
        (
            Op.RESHAPE,
            {"shape": (8, 64)},
            [(8, 8, 8)],
            "reshape: a sample is a vector (F) or a map (C x H x W), not 8x64",
        ),
        (
            Op.SLICE,
            {"start": 2, "end": 9},
            [(8, 4, 4)],
            "slice: channels 2 to 9 are not a range of the input's 8",
        ),
        (
            Op.SLICE,
            {"start": 3, "end": 3},
            [(8, 4, 4)],
            "slice: channels 3 to 3 are not a range of the input's 8",
        ),
        (Op.ADD, {}, [(64, 4, 4), (128, 4, 4)], "add: 64 vs 128 channels"),
        (Op.MUL, {}, [(8, 4, 4), (8, 4, 5)], "mul: spatial size 4x4 vs 4x5"),
        (Op.MUL, {}, [(8, 4, 4), (4, 1, 1)], "mul: 8 vs 4 channels"),
        (
            Op.MUL,
            {},
            [(8, 4, 4), (1, 4, 4)],
            "mul: 8 vs 1 channels (a C x 1 x 1 value applies to every position, but a 1-channel "
            "map does not apply to every channel)",
        ),
        (Op.ADD, {}, [(4, 1, 1), (8, 4, 4)], "add: 8 vs 4 channels"),
        (Op.ADD, {}, [(8,), (8, 1, 1)], "add: cannot combine a feature map with a flat vector"),
        (Op.MUL, {}, [(8,), (8, 1, 1)], "mul: cannot combine a feature map with a flat vector"),
        (
            Op.UNPOOL,
            {"k": 2},
            [(8, 4, 4), (8, 10, 10)],
            "unpool: places 8x4x4 values, but max pooling its second input (8x10x10) gives 8x5x5",
        ),
        (
            Op.UNPOOL,
            {"k": 2},
            [(4, 5, 5), (8, 10, 10)],
            "unpool: places 4x5x5 values, but max pooling its second input (8x10x10) gives 8x5x5",
        ),
        (Op.MUL, {}, [(8, 1, 1), (8, 4, 4), (8, 2, 2)], "mul: spatial size 4x4 vs 2x2"),
        (Op.MAX, {}, [(8, 4, 4), (8,)], "max: cannot combine a feature map with a flat vector"),
        (Op.ADD, {"coeffs": (1, 2, 3)}, [(8, 4, 4), (8, 4, 4)], "add: 3 coefficients for 2 inputs"),
        (Op.CONCAT, {}, [(8, 4, 4), (8, 2, 4)], "concat: spatial size 4x4 vs 2x4"),
        (
            Op.CONCAT,
            {},
            [(8,), (8, 2, 4)],
            "concat: cannot combine a feature map with a flat vector",
        ),
        (Op.CONCAT, {}, [(8, 4, 4)], "concat: takes at least 2 input(s), got 1"),
        (Op.RELU, {}, [(8, 4, 4), (8, 4, 4)], "relu: takes 1 input(s), got 2"),
        (
            Op.UPSAMPLE,
            {},
            [(8, 4, 4), (8, 4, 4), (8, 4, 4)],
            "upsample: takes 1 to 2 input(s), got 3",
        ),
        (
            Op.LINEAR,
            {"out": 4},
            [(8, 4, 4)],
            "linear: needs a flat input (use flatten first), got 8x4x4",
        ),
        (Op.UPSAMPLE, {}, [(8, 4, 4)], "upsample: needs scale=... or a reference input"),
        (Op.UPSAMPLE, {"scale": 0.2}, [(8, 4, 4)], "upsample: scale=0.2 makes 4x4 empty (0x0)"),
    ],
)
def test_shape_errors(op, attrs, in_shapes, message) -> None:
    with pytest.raises(OpError) as err:
        infer_shape(op, spec_of(op).normalize(attrs), in_shapes)
    assert message in str(err.value)


def test_did_you_mean() -> None:
    assert did_you_mean("rellu", ["relu", "relu6", "silu"]) == " (did you mean 'relu'?)"
    assert did_you_mean("zzz", ["relu", "conv"]) == ""


@pytest.mark.parametrize(
    ("expr", "code"),
    [
        ("a / 6", "a / 6.0"),
        ("relu6(a + 3) / 6", "out / 6.0"),
        ("a / -3", "a / -3.0"),
        ("a * 0.1", "0.1 * a"),  # 1 / 10 reads longer: kept as written
        ("a * 0.5", "0.5 * a"),
        ("a / 0.3", "3.3333333333333335 * a"),  # no whole divisor
        ("power(a, scale=0.1666667)", "0.1666667 * a"),  # Caffe's float: not 1 / 6
    ],
)
def test_power_code_says_what_the_dsl_says(expr, code, write_model, tmp_path):
    path = write_model(f"input a: 3x4x4\nbackbone {{\n    return {expr}\n}}\n")
    build(path, tmp_path / "out", render=False)
    source = (tmp_path / "out" / "backbone.py").read_text()
    assert f"out = {code}  #" in source
