"""Caffe layer types -> IR ops: one converter per supported type, in one table.

A converter reads a layer's parameters and its inputs' shapes (Caffe's, per sample) and returns
the IR steps that compute it (usually one op; InnerProduct on a feature map is flatten + linear,
Axpy is mul + add). It raises `MtscError` at the field at fault for what mtsc cannot express;
the importer adds the nodes, and the op registry checks attributes and shapes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from mtsc.grammar.prototxt_scan import Block
from mtsc.ir.errors import MtscError
from mtsc.ir.ops import Op, Shape, infer_shape, spec_of


@dataclass(frozen=True, slots=True)
class Layer:
    index: int
    name: str
    type: str  # Caffe's type name; V1 enum names are mapped to it
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    param: Message  # the LayerParameter (or V1LayerParameter)
    block: Block

    def error(self, message: str, field: str | None = None, index: int = 0) -> MtscError:
        span = self.block.field_span(field, index) if field else self.block.span
        return MtscError(span, f"layer {self.name!r} ({self.type}): {message}")


@dataclass(frozen=True, slots=True)
class Step:
    """One IR op of a converted layer; `suffix` extends the layer name for helper ops.

    `inputs` picks the layer's bottoms the op reads, by position; a later step reads them after
    the previous step's output. None: the first step reads every bottom, a later one only the
    previous step's output. `top`: which of the layer's tops the step computes (only Slice has
    more than one); each top's steps start afresh from the bottoms.
    """

    op: Op
    attrs: dict[str, Any] = field(default_factory=dict)
    suffix: str = ""
    inputs: tuple[int, ...] | None = None
    top: int = 0


Converter = Callable[[Layer, Sequence[Shape]], list[Step]]


def f32(value: float) -> float:
    """The shortest decimal that is the same 32-bit float: 1e-05, not 9.999999747378752e-06."""
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.unpack("f", struct.pack("f", short))[0] == value:
            return short
    return value


def _pair(
    layer: Layer,
    param: Message,
    base: str,
    *,
    h: str | None = None,
    w: str | None = None,
    default: int | None = None,
    one_sided: bool = False,
) -> tuple[int, int]:
    """Caffe's spatial settings: `base` once (both), twice (h, w), or as `h` and `w` fields;
    with `one_sided` (a convolution's padding), `h` or `w` alone, the other 0."""
    where = _param_field(layer)
    raw = getattr(param, base)
    if isinstance(raw, int):
        values = [raw] if param.HasField(base) else []
    else:
        values = list(raw)
    has_h = h is not None and param.HasField(h)
    has_w = w is not None and param.HasField(w)
    if has_h or has_w:
        if not (has_h and has_w or one_sided):
            raise layer.error(f"{h} and {w} must be given together", where)
        if values:
            raise layer.error(f"give {base} or {h} and {w}, not both", where)
        return getattr(param, h), getattr(param, w)
    if not values:
        if default is None:
            raise layer.error(f"needs {base}", where)
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise layer.error(f"{base} has {len(values)} values; a 2-D layer takes 1 or 2", where)


# The block of settings each type reads (Caffe's layers read no other block).
PARAM_FIELDS = {
    "BN": "bn_param",
    "BatchNorm": "batch_norm_param",
    "Clip": "clip_param",
    "Concat": "concat_param",
    "Convolution": "convolution_param",
    "ConvolutionDepthwise": "convolution_param",
    "Crop": "crop_param",
    "Deconvolution": "convolution_param",
    "DepthwiseConvolution": "convolution_param",
    "Dropout": "dropout_param",
    "ELU": "elu_param",
    "Eltwise": "eltwise_param",
    "Flatten": "flatten_param",
    "InnerProduct": "inner_product_param",
    "Interp": "interp_param",
    "LRN": "lrn_param",
    "Normalize": "norm_param",
    "Pooling": "pooling_param",
    "Power": "power_param",
    "PReLU": "prelu_param",
    "ReLU": "relu_param",
    "Reshape": "reshape_param",
    "Scale": "scale_param",
    "ShuffleChannel": "shuffle_channel_param",
    "Slice": "slice_param",
    "Upsample": "upsample_param",
}

# Fields of those blocks that never change what the network computes, missing from the schema
# (an `engine` enum would refuse the forks' engine names): how weights start, which
# implementation runs, AutoMTL's PyTorch `inplace`, and the BN forks' training switches. The
# importer reads past them without a warning; see `is_quiet`.
QUIET_FIELDS = frozenset(
    {"bn_mode", "engine", "force_nd_im2col", "frozen", "inplace", "stable_prod_grad"}
)


# The layer-level fields of upstream Caffe's LayerParameter and V1LayerParameter that are not
# `*_param` blocks (caffe.proto here keeps only what mtsc reads): a field outside these and
# the blocks is one Caffe would refuse, most likely a misspelling.
CAFFE_LAYER_FIELDS = frozenset(
    {
        "name", "type", "bottom", "top", "phase", "loss_weight", "param", "blobs",
        "propagate_down", "include", "exclude", "blob_share_mode", "blobs_lr", "weight_decay",
        "layer",
    }
)  # fmt: skip


def is_quiet(field: str) -> bool:
    """A parameter-block field that mtsc may ignore without a word: a filler, or QUIET_FIELDS."""
    return field in QUIET_FIELDS or field.endswith("filler")


def _param_field(layer: Layer) -> str:
    return PARAM_FIELDS[layer.type]


def _params(layer: Layer) -> Message:
    return getattr(layer.param, _param_field(layer))


def _caffe_axis(axis: int, shape: Shape) -> int:
    """A Caffe axis of a blob whose per-sample shape is `shape`, counted from the batch axis
    (0): 1 is channels (features); a negative one counts from the end."""
    return axis + len(shape) + 1 if axis < 0 else axis


def _axis(layer: Layer, axis: int, shape: Shape, what: str) -> None:
    if _caffe_axis(axis, shape) != 1:
        raise layer.error(
            f"only {what} along the channel axis (1) is supported, not {axis}", _param_field(layer)
        )


# ----------------------------------------------------------------------------- converters


def _convolution_attrs(layer: Layer, ins: Sequence[Shape]) -> dict:
    """The attributes of a Convolution or Deconvolution (one parameter block for both)."""
    p = _params(layer)
    where = _param_field(layer)
    if not p.num_output:
        raise layer.error("needs num_output", where)
    _axis(layer, p.axis, ins[0], "convolution")
    return {
        "out": p.num_output,
        "kernel": _pair(layer, p, "kernel_size", h="kernel_h", w="kernel_w"),
        "stride": _pair(layer, p, "stride", h="stride_h", w="stride_w", default=1),
        "padding": _pair(layer, p, "pad", h="pad_h", w="pad_w", default=0, one_sided=True),
        "dilation": _dilation(layer, p),
        "groups": p.group,
        "bias": p.bias_term,
    }


def convolution(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    return [Step(Op.CONV2D, _convolution_attrs(layer, ins))]


def crop(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """FCN's Crop: the first bottom cut to the second's height and width."""
    p = _params(layer)
    if _caffe_axis(p.axis, ins[0]) != 2:
        raise layer.error(
            f"only cropping from axis 2 (height and width) is supported, not {p.axis}", "crop_param"
        )
    offsets = tuple(p.offset)
    if len(offsets) > 2:
        raise layer.error(
            f"offset has {len(offsets)} values; a crop from axis 2 takes 1 or 2", "crop_param"
        )
    offset = offsets * 2 if len(offsets) == 1 else offsets or (0, 0)
    return [Step(Op.CROP, {"offset": offset})]


def depthwise_convolution(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """The forks' DepthwiseConvolution and ConvolutionDepthwise (MobileNet ports): a
    Convolution with one group per input channel, whether or not its `group` says so."""
    channels = ins[0][0]
    p = _params(layer)
    if p.HasField("group") and p.group != channels:
        raise layer.error(
            f"group {p.group} on {channels} input channels; a depthwise convolution has one "
            "group per channel",
            _param_field(layer),
        )
    return [Step(Op.CONV2D, {**_convolution_attrs(layer, ins), "groups": channels})]


def deconvolution(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """FCN's upsampling; its usual bilinear weight filler is an initialisation, not kept."""
    return [Step(Op.DECONV2D, _convolution_attrs(layer, ins))]


def _dilation(layer: Layer, p: Message) -> tuple[int, int]:
    if not any(p.HasField(f) for f in ("hole", "hole_h", "hole_w")):
        return _pair(layer, p, "dilation", default=1)
    if p.dilation:
        raise layer.error("give dilation or DeepLab's hole, not both", _param_field(layer))
    return _pair(layer, p, "hole", h="hole_h", w="hole_w")


def batch_norm(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """Caffe's BatchNorm only normalises (a Scale layer adds the affine part); AutoMTL's
    files, recognisable by PyTorch's field names, mean PyTorch's BatchNorm2d."""
    p = _params(layer)
    attrs: dict[str, Any] = {"eps": f32(p.eps)}
    if any(p.HasField(f) for f in ("affine", "momentum", "track_running_stats")):
        attrs["affine"] = p.affine
        attrs["momentum"] = f32(p.momentum)
    else:
        attrs["affine"] = False
        if p.HasField("moving_average_fraction"):
            attrs["momentum"] = round(1.0 - f32(p.moving_average_fraction), 12)
    return [Step(Op.BATCHNORM, attrs)]


def bn(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """The `BN` layer of Caffe forks (SegNet, PSPNet, ENet): a batchnorm with its own scale
    and shift, so an affine one."""
    p = _params(layer)
    attrs: dict[str, Any] = {"eps": f32(p.eps), "affine": True}
    if p.HasField("momentum"):
        attrs["momentum"] = round(1.0 - f32(p.momentum), 12)
    return [Step(Op.BATCHNORM, attrs)]


def scale(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    p = _params(layer)
    if len(ins) == 2:
        return _scale_by_blob(layer, ins[0], ins[1])
    if p.axis != 1 or p.num_axes != 1:
        raise layer.error(
            "only a per-channel scale (axis: 1, num_axes: 1) is supported", "scale_param"
        )
    return [Step(Op.SCALE, {"bias": p.bias_term})]


def _shown(shape: Shape) -> str:
    return " x ".join(["N", *map(str, shape)])


def _scale_by_blob(layer: Layer, x: Shape, s: Shape) -> list[Step]:
    """Caffe's Scale by a second bottom: its axes must equal bottom 0's from `axis` on, and it
    is broadcast over the rest. Squeeze-and-excitation blocks (SE-BN-Inception) reshape their
    N x C x 1 x 1 gate to N x C and scale with axis 0: a per-channel gate, the IR's mul. (With
    per-sample shapes C x H x W or F, the only other match is a blob of the same shape.)"""
    p = _params(layer)
    if _caffe_axis(p.axis, x) != 0:
        raise layer.error(
            f"the second bottom ({_shown(s)}) starts with the batch axis, which Caffe lines up "
            f"with bottom 0's axis {p.axis} ({_shown(x)}); a per-channel gate needs axis: 0",
            "scale_param",
        )
    if x[: len(s)] != s:
        hint = ""
        if len(s) == 3 and s[1:] == (1, 1) and s[0] == x[0]:
            hint = (
                "; for a per-channel gate, reshape it to N x C first (reshape_param "
                "{ shape { dim: 0 dim: 0 } }), as SE-BN-Inception does"
            )
        raise layer.error(
            f"Caffe cannot scale {_shown(x)} by {_shown(s)}: with axis 0 the second bottom's "
            f"shape must begin bottom 0's{hint}",
            "bottom",
            1,
        )
    if p.bias_term:
        raise layer.error(
            "bias_term with a second bottom learns a bias shaped like that bottom "
            f"({_shown(s)}), batch axis included; mtsc cannot express it (set bias_term: "
            "false and add the bias with a layer of its own)",
            "scale_param",
        )
    return [Step(Op.MUL)]


def axpy(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """SENet's Axpy (hujie-frank/SENet): a * x + y, with a per-channel gate `a` (N x C x 1 x 1
    or N x C) and x, y of one shape: the gated branch plus the shortcut of SE-ResNet blocks."""
    a, x, y = ins
    if x != y:
        raise layer.error(
            f"x ({_shown(x)}) and y ({_shown(y)}), the second and third bottoms, must have "
            "the same shape",
            "bottom",
            2,
        )
    if a[0] != x[0] or (len(a) == 3 and a[1:] != (1, 1)) or len(a) not in (1, 3):
        raise layer.error(
            f"the first bottom ({_shown(a)}) must be a gate of N x {x[0]} x 1 x 1 or "
            f"N x {x[0]}, one value per channel of x ({_shown(x)})",
            "bottom",
        )
    return [Step(Op.MUL, suffix=".scale", inputs=(1, 0)), Step(Op.ADD, inputs=(2,))]


def relu(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    slope = f32(layer.param.relu_param.negative_slope)
    return [Step(Op.LEAKY_RELU, {"slope": slope})] if slope else [Step(Op.RELU)]


def prelu(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    return [Step(Op.PRELU, {"channel_shared": _params(layer).channel_shared})]


def elu(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    return [Step(Op.ELU, {"alpha": f32(_params(layer).alpha)})]


def power(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    p = _params(layer)
    return [Step(Op.POWER, {k: f32(getattr(p, k)) for k in ("power", "scale", "shift")})]


def clip(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    p = _params(layer)
    missing = [k for k in ("min", "max") if not p.HasField(k)]
    if missing:
        raise layer.error(f"clip_param needs {' and '.join(missing)}", "clip_param")
    return [Step(Op.CLIP, {"min": f32(p.min), "max": f32(p.max)})]


def shuffle_channel(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    return [Step(Op.CHANNEL_SHUFFLE, {"groups": _params(layer).group})]


def unpooling(layer: Layer, pooling: Layer, ins: Sequence[Shape]) -> list[Step]:
    """SegNet's Upsample of bottom 0 by the mask of the max `pooling` layer (bottom 1): the IR's
    unpool, with the pooling's window, reading the pooling's input (`ins[1]`), whose size the
    output takes. Caffe's size (upsample_h and _w, else the input's times scale) must be it."""
    p = _params(layer)
    (pool,) = CONVERTERS["Pooling"](pooling, ins[1:])
    attrs = {k: v for k, v in pool.attrs.items() if k != "global"}
    pooled = infer_shape(Op.MAXPOOL, spec_of(Op.MAXPOOL).normalize(pool.attrs), ins[1:])
    if tuple(ins[0]) != pooled:
        raise layer.error(
            f"bottom {layer.bottoms[0]!r} is {_shown(ins[0])}, but the mask of {pooling.name!r} "
            f"is for its output, {_shown(pooled)}",
            "bottom",
        )
    _, h, w = ins[0]
    scale_h, scale_w = p.scale_h or p.scale, p.scale_w or p.scale
    size = (
        p.upsample_h or h * scale_h - int(p.pad_out_h),
        p.upsample_w or w * scale_w - int(p.pad_out_w),
    )
    if size != tuple(ins[1][1:]):
        raise layer.error(
            f"gives {size[0]}x{size[1]} in Caffe, but the input of {pooling.name!r}, whose "
            f"mask places the values, is {ins[1][1]}x{ins[1][2]}; set upsample_h: {ins[1][1]} "
            f"and upsample_w: {ins[1][2]}",
            "upsample_param",
        )
    return [Step(Op.UNPOOL, attrs)]


def _simple(op: Op) -> Converter:
    def convert(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
        return [Step(op)]

    return convert


def pooling(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    p = _params(layer)
    where = _param_field(layer)
    kinds = {p.MAX: Op.MAXPOOL, p.AVE: Op.AVGPOOL}
    if p.pool not in kinds:
        raise layer.error("only MAX and AVE pooling are supported", where)
    op = kinds[p.pool]
    stride = _pair(layer, p, "stride", h="stride_h", w="stride_w", default=1)
    pad = _pair(layer, p, "pad", h="pad_h", w="pad_w", default=0)
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise layer.error("global_pooling takes no kernel size", where)
        if pad != (0, 0) or stride != (1, 1):
            raise layer.error("global_pooling needs pad 0 and stride 1", where)
        return [Step(op, {"global": True})]
    kernel = _pair(layer, p, "kernel_size", h="kernel_h", w="kernel_w")
    for name, pair in (("kernel_size", kernel), ("stride", stride)):
        if min(pair) < 1:
            raise layer.error(f"{name} must be at least 1, got {min(pair)}", where)
    if p.HasField("ceil_mode"):
        if p.HasField("round_mode"):
            raise layer.error("give round_mode or ceil_mode, not both", where)
        ceil = p.ceil_mode
    else:
        ceil = p.round_mode == p.CEIL
    _check_caffe_rounding(layer, ins[0], kernel, stride, pad, ceil)
    return [Step(op, {"kernel": kernel, "stride": stride, "padding": pad, "ceil": ceil})]


def pooled_size(size: int, k: int, s: int, p: int, *, ceil: bool, clip: bool) -> int:
    """Caffe's and PyTorch's pooled size: rounded up or down; with `clip`, a last window that
    would start in the right padding is dropped (PyTorch always clips, Caffe only when padded)."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if clip and (out - 1) * s >= size + p:
        out -= 1
    return out


def _check_caffe_rounding(
    layer: Layer,
    shape: Shape,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    ceil: bool,
) -> None:
    if len(shape) != 3 or not ceil:
        return  # flat inputs fail in the op registry; floor rounding agrees everywhere
    padded = pad != (0, 0)
    for size, k, s, p in zip(shape[1:], kernel, stride, pad, strict=True):
        if size + 2 * p < k:
            return  # the op registry reports the kernel being too large
        caffe = pooled_size(size, k, s, p, ceil=True, clip=padded)
        torch = pooled_size(size, k, s, p, ceil=True, clip=True)
        if caffe != torch:
            raise layer.error(
                f"Caffe's rounding gives {caffe} windows over {size} pixels here, the last one "
                f"starting outside the input (stride {s} > kernel {k}, no padding); PyTorch "
                "drops that window. Use round_mode: FLOOR, or a stride no larger than the kernel",
                "pooling_param",
            )


def eltwise(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    p = _params(layer)
    # Caffe checks the bottoms' shapes are equal; the IR's ops would broadcast a C x 1 x 1 one
    other = next((shape for shape in ins[1:] if shape != ins[0]), None)
    if other is not None:
        shapes = " and ".join("x".join(map(str, shape)) for shape in (ins[0], other))
        raise layer.error(f"bottoms of shapes {shapes}; Eltwise takes bottoms of one shape")
    coeffs = [f32(c) for c in p.coeff]
    if p.operation != p.SUM:
        if coeffs:
            raise layer.error("coefficients apply only to operation: SUM", "eltwise_param")
        return [Step(Op.MUL if p.operation == p.PROD else Op.MAX)]
    if coeffs and len(coeffs) != len(ins):
        raise layer.error(f"{len(coeffs)} coefficients for {len(ins)} bottoms", "eltwise_param")
    if all(c == 1.0 for c in coeffs):
        return [Step(Op.ADD)]
    return [Step(Op.ADD, {"coeffs": tuple(coeffs)})]


def concat(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    p = _params(layer)
    axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
    _axis(layer, axis, ins[0], "concatenation")
    return [Step(Op.CONCAT)]


def inner_product(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    p = _params(layer)
    if not p.num_output:
        raise layer.error("needs num_output", _param_field(layer))
    _axis(layer, p.axis, ins[0], "an inner product")
    # `transpose` only changes how Caffe stores the weights, which the IR does not hold.
    linear = Step(Op.LINEAR, {"out": p.num_output, "bias": p.bias_term})
    # Caffe flattens C x H x W implicitly; the IR says so with an op of its own.
    return [Step(Op.FLATTEN, suffix=".flatten"), linear] if len(ins[0]) > 1 else [linear]


def flatten(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    if "flatten_param" not in layer.param.DESCRIPTOR.fields_by_name:
        return [Step(Op.FLATTEN)]  # Caffe's first format has no flatten settings
    p = _params(layer)
    if p.axis != 1 or _caffe_axis(p.end_axis, ins[0]) != len(ins[0]):
        raise layer.error(
            "only flattening everything after the batch axis is supported", "flatten_param"
        )
    return [Step(Op.FLATTEN)]


def slice_(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """Caffe's Slice along the channels: one `slice` op per top, named `<layer>.<top>`."""
    p = _params(layer)
    if p.HasField("axis") and p.HasField("slice_dim"):
        raise layer.error("give axis or slice_dim, not both", "slice_param")
    _axis(layer, p.slice_dim if p.HasField("slice_dim") else p.axis, ins[0], "slicing")
    channels, tops = ins[0][0], len(layer.tops)
    points = list(p.slice_point)
    if not points:
        if channels % tops:
            raise layer.error(
                f"{channels} channels do not split into {tops} equal tops; give slice_point",
                "slice_param",
            )
        points = [channels // tops * k for k in range(1, tops)]
    if len(points) != tops - 1:
        raise layer.error(
            f"{len(points)} slice_point(s) for {tops} tops; give one fewer than the tops",
            "slice_param",
        )
    bounds = [0, *points, channels]
    if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise layer.error(
            f"slice_point {', '.join(map(str, points))} must rise strictly within the "
            f"input's {channels} channels",
            "slice_param",
        )
    return [
        Step(Op.SLICE, {"start": a, "end": b}, suffix=f".{top}", top=k)
        for k, (top, a, b) in enumerate(zip(layer.tops, bounds, bounds[1:], strict=False))
    ]


def reshape(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """Caffe's Reshape where it is a flatten: N x C x H x W (or N x F) -> N x (C * H * W)."""
    p = _params(layer)
    where = _param_field(layer)
    axes: list[int | None] = [None, *ins[0]]  # None: the batch axis, whose size is not known
    start = p.axis if p.axis >= 0 else len(axes) + p.axis + 1
    end = len(axes) if p.num_axes == -1 else start + p.num_axes
    if not 0 <= start <= end <= len(axes):
        raise layer.error(
            f"axis {p.axis} with num_axes {p.num_axes} is outside the input's {len(axes)} axes",
            where,
        )
    dims = list(p.shape.dim)
    if not dims:
        raise layer.error("Reshape needs its shape: reshape_param { shape { dim: ... } }", where)
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise layer.error("shape dims must be positive, 0 (copy) or one -1 (inferred)", where)
    if any(d == 0 and start + i >= len(axes) for i, d in enumerate(dims)):
        raise layer.error(f"a dim of 0 copies an axis the {len(axes)}-axis input lacks", where)
    new = [*axes[:start], *(axes[start + i] if d == 0 else d for i, d in enumerate(dims))]
    new += axes[end:]
    size = math.prod(ins[0])
    if new[0] == -1 and None not in new and math.prod(new[1:]) == size:
        new[0] = None  # -1 first, one sample's values after it: the batch axis
    known = math.prod(d for d in new if d is not None and d != -1)
    if -1 in new and size % known == 0:
        new[new.index(-1)] = size // known
    shown = " x ".join("N" if d is None else str(d) for d in new)
    if new[0] is not None or None in new[1:] or math.prod(new[1:]) != size:
        raise layer.error(
            f"gives {shown}, which does not keep the batch axis and {size} values per sample",
            where,
        )
    if len(new) != 2:
        raise layer.error(f"gives {shown}; only N x {size} (a flatten) is supported", where)
    return [Step(Op.FLATTEN)]


def dropout(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    return [Step(Op.DROPOUT, {"p": f32(layer.param.dropout_param.dropout_ratio)})]


def interp(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """DeepLab's bilinear resize (corners aligned), sized as Caffe's InterpLayer sizes it: by
    the factors if either is given, else to height x width, else to the second bottom."""
    p = _params(layer)
    where = _param_field(layer)
    if p.pad_beg or p.pad_end:
        raise layer.error("pad_beg and pad_end (cropping the input) are not supported", where)
    if p.HasField("zoom_factor") or p.HasField("shrink_factor"):
        attrs = {"zoom": p.zoom_factor, "shrink": p.shrink_factor}
        values = {"zoom_factor": p.zoom_factor, "shrink_factor": p.shrink_factor}
    elif p.HasField("height") and p.HasField("width"):
        attrs = {"size": (p.height, p.width)}
        values = {"height": p.height, "width": p.width}
    elif len(ins) == 2:
        return [Step(Op.INTERP)]
    else:
        raise layer.error(
            "give zoom_factor, shrink_factor, height and width, or a second bottom", where
        )
    for name, value in values.items():
        if value < 1:
            raise layer.error(f"{name} must be at least 1, got {value}", where)
    # as in Caffe, a second bottom is then not read
    return [Step(Op.INTERP, attrs, inputs=(0,))]


def lrn(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """Across channels, or WITHIN_CHANNEL over a local_size x local_size window; Caffe's
    within-channel form has no `k` (it adds 1), so k is not read there, as Caffe does not."""
    p = _params(layer)
    if p.local_size % 2 == 0:
        raise layer.error(f"local_size must be odd, got {p.local_size}", "lrn_param")
    attrs = {"size": p.local_size, "alpha": f32(p.alpha), "beta": f32(p.beta)}
    if p.norm_region == p.WITHIN_CHANNEL:
        return [Step(Op.LRN, {**attrs, "region": "within"})]
    return [Step(Op.LRN, {**attrs, "k": f32(p.k)})]


def normalize(layer: Layer, ins: Sequence[Shape]) -> list[Step]:
    """SSD's Normalize (ParseNet's): an L2 normalisation, then a learned scale per channel."""
    p = _params(layer)
    if p.channel_shared:
        raise layer.error(
            "one scale for all channels (channel_shared: true, the default) is not supported; "
            "mtsc learns one per channel, as SSD does: set channel_shared: false",
            "norm_param",
        )
    if len(ins[0]) != 3:
        raise layer.error(f"takes a feature map (N x C x H x W), got {_shown(ins[0])}")
    attrs = {"eps": f32(p.eps), "across_spatial": p.across_spatial}
    return [Step(Op.L2NORM, attrs, suffix=".l2norm"), Step(Op.SCALE, {"bias": False})]


# The types the importer converts; Input and Softmax are handled by the importer itself.
CONVERTERS: dict[str, Converter] = {
    "AbsVal": _simple(Op.ABS),
    "Axpy": axpy,
    "BN": bn,
    "BatchNorm": batch_norm,
    "Clip": clip,
    "Concat": concat,
    "Convolution": convolution,
    "ConvolutionDepthwise": depthwise_convolution,
    "Crop": crop,
    "Deconvolution": deconvolution,
    "DepthwiseConvolution": depthwise_convolution,
    "Dropout": dropout,
    "ELU": elu,
    "Eltwise": eltwise,
    "Flatten": flatten,
    "InnerProduct": inner_product,
    "Interp": interp,
    "LRN": lrn,
    "Normalize": normalize,
    "Pooling": pooling,
    "Power": power,
    "PReLU": prelu,
    "ReLU": relu,
    "ReLU6": _simple(Op.RELU6),
    "Reshape": reshape,
    "Scale": scale,
    "ShuffleChannel": shuffle_channel,
    "Sigmoid": _simple(Op.SIGMOID),
    "Slice": slice_,
    "TanH": _simple(Op.TANH),
}
# Split computes nothing: its tops are its bottom again (the importer's data flow says so).
# Upsample (max unpooling) reads its pooling layer too: the importer calls `unpooling` itself.
SUPPORTED_TYPES = tuple(sorted({*CONVERTERS, "Input", "Softmax", "Split", "Upsample"}))

# How many bottoms each type takes: (at least, at most); None is "any number".
BOTTOMS: dict[str, tuple[int, int | None]] = {
    "Crop": (2, 2),
    "Eltwise": (2, None),
    "Concat": (1, None),
    "Axpy": (3, 3),
    "Interp": (1, 2),
    "Scale": (1, 2),
    "Upsample": (2, 2),
}

# Per-channel gates, by type: (the gate's bottom, the gated bottom). The importer reads an N x C
# gate reshaped from N x C x 1 x 1 as the C x 1 x 1 blob it came from (the IR's mul takes that).
GATES: dict[str, tuple[int, int]] = {"Axpy": (0, 1), "Scale": (1, 0)}

# Caffe's first format names types with an enum; these are the supported ones.
V1_TYPES = {
    "ABSVAL": "AbsVal",
    "CONCAT": "Concat",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "ELTWISE": "Eltwise",
    "FLATTEN": "Flatten",
    "INNER_PRODUCT": "InnerProduct",
    "INTERP": "Interp",  # DeepLab v1's fork
    "LRN": "LRN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SLICE": "Slice",
    "SOFTMAX": "Softmax",
    "SPLIT": "Split",
    "TANH": "TanH",
}
