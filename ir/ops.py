"""The op registry: for every operator, its attributes, shape rule, parameter and MAC counts,
and how it is written in PyTorch. Adding an op is adding one `_register(OpSpec(...))` entry.

Shapes are per-sample: `(C, H, W)` for feature maps, `(F,)` after `flatten`/`linear`.
MACs count multiply-accumulates of conv2d, linear and batchnorm (one per element); activations,
pooling and element-wise ops are counted as free, as most papers in the field do.
"""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtsc.ir.errors import describe_value

Shape = tuple[int, ...]


class Op(enum.Enum):
    INPUT = "input"
    CONV2D = "conv2d"
    DECONV2D = "deconv2d"
    BATCHNORM = "batchnorm"
    SCALE = "scale"
    RELU = "relu"
    RELU6 = "relu6"
    LEAKY_RELU = "leaky_relu"
    PRELU = "prelu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    SILU = "silu"
    HARDSWISH = "hardswish"
    ELU = "elu"
    ABS = "abs"
    POWER = "power"
    CLIP = "clip"
    CHANNEL_SHUFFLE = "channel_shuffle"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    UNPOOL = "unpool"
    ADD = "add"
    MUL = "mul"
    MAX = "max"
    CONCAT = "concat"
    LINEAR = "linear"
    FLATTEN = "flatten"
    DROPOUT = "dropout"
    UPSAMPLE = "upsample"
    INTERP = "interp"
    CROP = "crop"
    SLICE = "slice"
    RESHAPE = "reshape"
    LRN = "lrn"
    L2NORM = "l2norm"
    # Structure of the multi-task supermodel, inserted by `insert_routing`.
    TASK_STACK = "task_stack"
    TASK_SLICE = "task_slice"
    ROUTE = "route"


# The DSL's usual spelling of an op, where it is not the op's own name: calls in emitted .mtl
# and the base of generated node names (`stem.conv1`).
DSL_SPELLING = {Op.CONV2D: "conv", Op.DECONV2D: "deconv", Op.BATCHNORM: "bn"}
# Ops whose computation the supermodel routes per task (shared / task-specific / skip).
ROUTABLE = frozenset({Op.CONV2D, Op.LINEAR})
# Ops with learned parameters or running statistics.
PARAMETRIC = frozenset({Op.CONV2D, Op.DECONV2D, Op.BATCHNORM, Op.SCALE, Op.LINEAR, Op.PRELU})


class OpError(Exception):
    """An op's attributes or input shapes are invalid; the caller adds the source location."""


# ----------------------------------------------------------------------------- attributes


class Kind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "string"
    PAIR = "int or (h, w) pair"
    SHAPE = "shape"
    FLOATS = "list of numbers"


_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class Attr:
    name: str
    kind: Kind
    default: Any = _REQUIRED
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def convert(self, value: Any) -> Any:
        if value is None and not self.required and self.default is None:
            return None
        kind = self.kind
        if kind is Kind.BOOL:
            if not isinstance(value, bool):
                raise OpError(f"{self.name} must be true or false, got {describe_value(value)}")
            return value
        if kind is Kind.INT:
            if isinstance(value, bool) or not isinstance(value, int):
                hint = " (`//` divides to an integer)" if isinstance(value, float) else ""
                raise OpError(f"{self.name} must be an integer, got {describe_value(value)}{hint}")
            self._check_min(value)
            return value
        if kind is Kind.FLOAT:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OpError(f"{self.name} must be a number, got {describe_value(value)}")
            if not math.isfinite(value):  # generated code has no literal for inf or nan
                raise OpError(f"{self.name} must be a finite number, got {describe_value(value)}")
            self._check_min(value)
            return float(value)
        if kind is Kind.STR:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise OpError(f"{self.name} must be one of {', '.join(map(repr, self.choices))}")
            return value
        if kind is Kind.PAIR:
            pair = (
                (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
            )
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            ):
                raise OpError(
                    f"{self.name} must be an integer or an (h, w) pair, got {describe_value(value)}"
                )
            for v in pair:
                self._check_min(v)
            return pair
        if kind is Kind.SHAPE:
            if not isinstance(value, tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
            ):
                hint = " (one dimension is written (n,))" if isinstance(value, int) else ""
                raise OpError(
                    f"{self.name} must be a shape of positive integers, "
                    f"got {describe_value(value)}{hint}"
                )
            return value
        if kind is Kind.FLOATS:
            if not isinstance(value, tuple) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value
            ):
                raise OpError(
                    f"{self.name} must be a tuple of finite numbers, got {describe_value(value)}"
                )
            return tuple(float(v) for v in value)
        raise AssertionError(kind)

    def _check_min(self, value: float) -> None:
        if self.minimum is not None and value < self.minimum:
            raise OpError(f"{self.name} must be at least {self.minimum:g}, got {value}")


# ----------------------------------------------------------------------------- torch forms


@dataclass(frozen=True, slots=True)
class TorchModule:
    """The op is an `nn.Module` attribute called on its inputs.

    `args(attrs, in_shapes)` returns the constructor's positional and keyword arguments as
    plain Python values (ints, floats, bools, strings, tuples), never source text.
    """

    cls: str | Callable[[Mapping[str, Any]], str]  # a callable picks the class from attributes
    args: Callable[[Mapping[str, Any], Sequence[Shape]], tuple[tuple, dict]]


@dataclass(frozen=True, slots=True)
class TorchExpr:
    """The op is an inline expression over its inputs' variable names (no module, no state)."""

    build: Callable[[Mapping[str, Any], Sequence[str]], str]


@dataclass(frozen=True, slots=True)
class OpSpec:
    op: Op
    attrs: tuple[Attr, ...]
    shape: Callable[[Mapping[str, Any], Sequence[Shape]], Shape]
    torch: TorchModule | TorchExpr | None
    min_inputs: int = 1
    max_inputs: int | None = 1  # None: any number
    positional: tuple[str, ...] = ()  # attributes that may follow the inputs positionally
    params: Callable[[Mapping[str, Any], Sequence[Shape], Shape], int] = lambda a, i, o: 0
    macs: Callable[[Mapping[str, Any], Sequence[Shape], Shape], int] = lambda a, i, o: 0
    finish: Callable[[dict[str, Any]], None] = lambda attrs: None  # derived defaults
    doc: str = ""
    _by_alias: dict[str, Attr] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for a in self.attrs:
            for key in (a.name, *a.aliases):
                self._by_alias[key] = a

    def attr_names(self) -> list[str]:
        return sorted(self._by_alias)

    def resolve_attr(self, key: str) -> Attr:
        attr = self._by_alias.get(key)
        if attr is None:
            raise OpError(
                f"{DSL_SPELLING.get(self.op, self.op.value)} has no attribute {key!r}"
                + did_you_mean(key, self.attr_names())
            )
        return attr

    def normalize(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical attribute dict: aliases resolved, values checked, defaults filled."""
        out: dict[str, Any] = {}
        written = DSL_SPELLING.get(self.op, self.op.value)  # as the user calls it
        for key, value in given.items():
            attr = self.resolve_attr(key)
            if attr.name in out:
                raise OpError(f"{written}: attribute {attr.name!r} given twice")
            try:
                out[attr.name] = attr.convert(value)
            except OpError as err:
                raise OpError(f"{written}: {err}") from None
        for attr in self.attrs:
            if attr.name not in out:
                if attr.required:
                    raise OpError(f"{written}: missing required attribute {attr.name!r}")
                out[attr.name] = attr.default
        self.finish(out)
        return out


def did_you_mean(word: str, candidates: Sequence[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------- shape helpers


def _spatial(op: str, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise OpError(f"{op}: needs a feature map (C x H x W), got a flat vector of {shape[0]}")
    return shape


def _window_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    span = d * (k - 1) + 1
    if ceil:
        out = -(-(size + 2 * p - span) // s) + 1
        # PyTorch's rule: the last window must start inside the input or its left padding.
        if (out - 1) * s >= size + p:
            out -= 1
        return out
    return (size + 2 * p - span) // s + 1


def _fmt_pair(pair: tuple[int, int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def _windowed(op: str, a: Mapping[str, Any], shape: Shape, ceil: bool) -> tuple[int, int]:
    _, h, w = _spatial(op, shape)
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    dh, dw = a.get("dilation", (1, 1))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out = _window_out(h, kh, sh, ph, dh, ceil), _window_out(w, kw, sw, pw, dw, ceil)
    # Ceil mode keeps a last, partial window, so a kernel may overhang a small input (as in torch).
    if min(out) < 1:
        dilated = f" (dilated {_fmt_pair(span)})" if (dh, dw) != (1, 1) else ""
        raise OpError(
            f"{op}: kernel {_fmt_pair((kh, kw))}{dilated} larger than the padded input "
            f"{h + 2 * ph}x{w + 2 * pw}"
        )
    return out


def _same_shapes(op: str, shapes: Sequence[Shape]) -> Shape:
    first = shapes[0]
    for other in shapes[1:]:
        if len(other) != len(first):
            raise OpError(f"{op}: cannot combine a feature map with a flat vector")
        if other[0] != first[0]:
            # an attention map (CBAM's 1 x H x W) is a likely intent: torch would broadcast it
            hint = (
                " (a C x 1 x 1 value applies to every position, but a 1-channel map does not "
                "apply to every channel)"
                if 1 in (first[0], other[0]) and len(first) == 3 and first[1:] == other[1:]
                else ""
            )
            raise OpError(f"{op}: {first[0]} vs {other[0]} channels{hint}")
        if other[1:] != first[1:]:
            raise OpError(
                f"{op}: spatial size {'x'.join(map(str, first[1:]))} vs "
                f"{'x'.join(map(str, other[1:]))}"
            )
    return first


def _numel(shape: Shape) -> int:
    return math.prod(shape)


# ----------------------------------------------------------------------------- the registry

REGISTRY: dict[Op, OpSpec] = {}


def _register(spec: OpSpec) -> None:
    REGISTRY[spec.op] = spec


def spec_of(op: Op) -> OpSpec:
    return REGISTRY[op]


def op_by_name(name: str) -> Op | None:
    try:
        return Op(name)
    except ValueError:
        return None


def infer_shape(op: Op, attrs: Mapping[str, Any], in_shapes: Sequence[Shape]) -> Shape:
    check_input_count(op, len(in_shapes))
    return REGISTRY[op].shape(attrs, in_shapes)


def check_input_count(op: Op, n: int) -> None:
    spec = REGISTRY[op]
    if spec.min_inputs <= n and (spec.max_inputs is None or n <= spec.max_inputs):
        return
    if spec.max_inputs is None:
        want = f"at least {spec.min_inputs}"
    elif spec.min_inputs == spec.max_inputs:
        want = str(spec.min_inputs)
    else:
        want = f"{spec.min_inputs} to {spec.max_inputs}"
    raise OpError(f"{op.value}: takes {want} input(s), got {n}")


def param_count(op: Op, attrs: Mapping[str, Any], in_shapes: Sequence[Shape], out: Shape) -> int:
    return REGISTRY[op].params(attrs, in_shapes, out)


def mac_count(op: Op, attrs: Mapping[str, Any], in_shapes: Sequence[Shape], out: Shape) -> int:
    return REGISTRY[op].macs(attrs, in_shapes, out)


# input ---------------------------------------------------------------------------------

_register(
    OpSpec(
        Op.INPUT,
        attrs=(Attr("shape", Kind.SHAPE),),
        shape=lambda a, i: a["shape"],
        torch=None,
        min_inputs=0,
        max_inputs=0,
        doc="a model input; `shape` is the declared per-sample size (C, H, W)",
    )
)

# conv2d --------------------------------------------------------------------------------


def _conv_finish(a: dict[str, Any]) -> None:
    if a["out"] < 1:
        raise OpError("conv2d: out channels must be positive")


# The attributes of conv2d and deconv2d.
_CONV_ATTRS = (
    Attr("out", Kind.INT, aliases=("channels",), minimum=1),
    Attr("kernel", Kind.PAIR, aliases=("k",), minimum=1),
    Attr("stride", Kind.PAIR, (1, 1), aliases=("s",), minimum=1),
    Attr("padding", Kind.PAIR, (0, 0), aliases=("p",), minimum=0),
    Attr("dilation", Kind.PAIR, (1, 1), aliases=("d",), minimum=1),
    Attr("groups", Kind.INT, 1, aliases=("g",), minimum=1),
    Attr("bias", Kind.BOOL, False),
)


def _grouped_channels(op: str, a: Mapping[str, Any], shape: Shape) -> tuple[int, int, int]:
    """The input's (C, H, W), its channels and the output's divisible by the groups."""
    c, h, w = _spatial(op, shape)
    g = a["groups"]
    if c % g:
        raise OpError(f"{op}: {c} input channels not divisible by groups={g}")
    if a["out"] % g:
        raise OpError(f"{op}: {a['out']} output channels not divisible by groups={g}")
    return c, h, w


def _conv_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    _grouped_channels("conv2d", a, ins[0])
    h, w = _windowed("conv2d", a, ins[0], ceil=False)
    return (a["out"], h, w)


def _conv_params(a: Mapping[str, Any], ins: Sequence[Shape], out: Shape) -> int:
    kh, kw = a["kernel"]
    weights = a["out"] * (ins[0][0] // a["groups"]) * kh * kw
    return weights + (a["out"] if a["bias"] else 0)


def _conv_macs(a: Mapping[str, Any], ins: Sequence[Shape], out: Shape) -> int:
    kh, kw = a["kernel"]
    return _numel(out) * (ins[0][0] // a["groups"]) * kh * kw


def _conv_args(a: Mapping[str, Any], ins: Sequence[Shape]) -> tuple[tuple, dict]:
    kw: dict[str, Any] = {"kernel_size": _short(a["kernel"])}
    if a["stride"] != (1, 1):
        kw["stride"] = _short(a["stride"])
    if a["padding"] != (0, 0):
        kw["padding"] = _short(a["padding"])
    if a["dilation"] != (1, 1):
        kw["dilation"] = _short(a["dilation"])
    if a["groups"] != 1:
        kw["groups"] = a["groups"]
    kw["bias"] = a["bias"]
    return (ins[0][0], a["out"]), kw


def _short(pair: tuple[int, int]) -> int | tuple[int, int]:
    return pair[0] if pair[0] == pair[1] else pair


_register(
    OpSpec(
        Op.CONV2D,
        attrs=_CONV_ATTRS,
        shape=_conv_shape,
        torch=TorchModule("nn.Conv2d", _conv_args),
        positional=("out",),
        params=_conv_params,
        macs=_conv_macs,
        finish=_conv_finish,
        doc="2-D convolution",
    )
)

# deconv2d (a transposed convolution, Caffe's Deconvolution) ------------------------------


def _deconv_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    _, h, w = _grouped_channels("deconv2d", a, ins[0])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = a["kernel"], a["stride"], a["padding"], a["dilation"]
    # The inverse of the convolution's rule: each input pixel spreads a dilated kernel.
    out = ((h - 1) * sh - 2 * ph + dh * (kh - 1) + 1, (w - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
    if min(out) < 1:
        raise OpError(
            f"deconv2d: padding {_fmt_pair((ph, pw))} leaves no output "
            f"(its size would be {_fmt_pair(out)})"
        )
    return (a["out"], *out)


def _deconv_macs(a: Mapping[str, Any], ins: Sequence[Shape], out: Shape) -> int:
    kh, kw = a["kernel"]
    return _numel(ins[0]) * (a["out"] // a["groups"]) * kh * kw


_register(
    OpSpec(
        Op.DECONV2D,
        attrs=_CONV_ATTRS,
        shape=_deconv_shape,
        torch=TorchModule("nn.ConvTranspose2d", _conv_args),
        positional=("out",),
        params=_conv_params,  # in x out / groups x kernel area (+ bias), as a conv
        macs=_deconv_macs,
        doc="2-D transposed convolution (upsampling by `stride`)",
    )
)

# batchnorm / scale ---------------------------------------------------------------------


def _channels(op: str) -> Callable[[Mapping[str, Any], Sequence[Shape]], Shape]:
    def rule(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
        return _spatial(op, ins[0])

    return rule


_register(
    OpSpec(
        Op.BATCHNORM,
        attrs=(
            Attr("eps", Kind.FLOAT, 1e-5, minimum=0),
            Attr("momentum", Kind.FLOAT, 0.1, minimum=0),
            Attr("affine", Kind.BOOL, True),
        ),
        shape=_channels("batchnorm"),
        torch=TorchModule(
            "nn.BatchNorm2d",
            lambda a, ins: (
                (ins[0][0],),
                {
                    k: v
                    for k, v in (
                        ("eps", a["eps"]),
                        ("momentum", a["momentum"]),
                        ("affine", a["affine"]),
                    )
                    if v != {"eps": 1e-5, "momentum": 0.1, "affine": True}[k]
                },
            ),
        ),
        params=lambda a, ins, out: 2 * out[0] if a["affine"] else 0,
        macs=lambda a, ins, out: _numel(out),
        doc="batch normalisation over channels",
    )
)

# A learned per-channel affine map (Caffe's Scale layer alone): a depthwise 1x1 conv.
_register(
    OpSpec(
        Op.SCALE,
        attrs=(Attr("bias", Kind.BOOL, True),),
        shape=_channels("scale"),
        torch=TorchModule(
            "nn.Conv2d",
            lambda a, ins: (
                (ins[0][0], ins[0][0]),
                {"kernel_size": 1, "groups": ins[0][0], "bias": a["bias"]},
            ),
        ),
        params=lambda a, ins, out: out[0] * (2 if a["bias"] else 1),
        macs=lambda a, ins, out: _numel(out),
        doc="per-channel scale (and bias)",
    )
)

# activations ---------------------------------------------------------------------------


def _same_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    return ins[0]


def _activation(op: Op, cls: str, doc: str) -> None:
    _register(
        OpSpec(
            op, attrs=(), shape=_same_shape, torch=TorchModule(cls, lambda a, i: ((), {})), doc=doc
        )
    )


_activation(Op.RELU, "nn.ReLU", "max(x, 0)")
_activation(Op.RELU6, "nn.ReLU6", "min(max(x, 0), 6)")
_activation(Op.SIGMOID, "nn.Sigmoid", "logistic sigmoid")
_activation(Op.TANH, "nn.Tanh", "hyperbolic tangent")
_activation(Op.SILU, "nn.SiLU", "x * sigmoid(x)")
_activation(Op.HARDSWISH, "nn.Hardswish", "MobileNetV3's hard swish")

_register(
    OpSpec(
        Op.LEAKY_RELU,
        attrs=(Attr("slope", Kind.FLOAT, 0.01, aliases=("negative_slope",)),),
        shape=_same_shape,
        torch=TorchModule("nn.LeakyReLU", lambda a, i: ((a["slope"],), {})),
        doc="x if x > 0 else slope * x",
    )
)


_register(
    OpSpec(
        Op.ELU,
        attrs=(Attr("alpha", Kind.FLOAT, 1.0),),
        shape=_same_shape,
        torch=TorchModule("nn.ELU", lambda a, i: ((a["alpha"],) if a["alpha"] != 1.0 else (), {})),
        doc="x if x > 0 else alpha * (exp(x) - 1)",
    )
)

_register(
    OpSpec(
        Op.ABS,
        attrs=(),
        shape=_same_shape,
        torch=TorchExpr(lambda a, xs: f"{xs[0]}.abs()"),
        doc="|x|",
    )
)


def _divisor(scale: float) -> float | None:
    """d where `scale` is the float 1 / d for a whole d that reads shorter: the DSL's `x / 6`
    is emitted as `x / 6.0`, not `0.16666666666666666 * x`; `x * 0.1` stays as written."""
    if scale == 0.0 or abs(scale) > 0.5:
        return None
    d = float(round(1.0 / scale))
    return d if 1.0 / d == scale and len(repr(d)) < len(repr(scale)) else None


def _power_expr(a: Mapping[str, Any], xs: Sequence[str]) -> str:
    x, scale, shift = xs[0], a["scale"], a["shift"]
    divisor = _divisor(scale)
    if scale == 1.0:
        expr = x
    elif scale == -1.0:
        expr = f"-{x}"
    elif divisor is not None:
        expr = f"{x} / {divisor!r}"
    else:
        expr = f"{scale!r} * {x}"
    if shift != 0.0 and scale == -1.0:
        expr = f"{shift!r} - {x}"
    elif shift != 0.0:
        expr = f"{expr} {'-' if shift < 0 else '+'} {abs(shift)!r}"
    if a["power"] == 1.0:
        return expr
    base = expr if expr == x else f"({expr})"
    return f"{base} ** {a['power']!r}"


_register(
    OpSpec(
        Op.POWER,
        attrs=(
            Attr("power", Kind.FLOAT, 1.0),
            Attr("scale", Kind.FLOAT, 1.0),
            Attr("shift", Kind.FLOAT, 0.0),
        ),
        shape=_same_shape,
        torch=TorchExpr(_power_expr),
        doc="(shift + scale * x) ** power (Caffe's Power layer)",
    )
)


def _clip_finish(a: dict[str, Any]) -> None:
    if a["min"] > a["max"]:
        raise OpError(f"clip: min {a['min']:g} is above max {a['max']:g}")


_register(
    OpSpec(
        Op.CLIP,
        attrs=(Attr("min", Kind.FLOAT), Attr("max", Kind.FLOAT)),
        shape=_same_shape,
        torch=TorchExpr(lambda a, xs: f"{xs[0]}.clamp({a['min']!r}, {a['max']!r})"),
        finish=_clip_finish,
        doc="x limited to [min, max]",
    )
)


def _shuffle_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    _spatial("channel_shuffle", ins[0])
    if ins[0][0] % a["groups"]:
        raise OpError(
            f"channel_shuffle: {ins[0][0]} channels do not split into {a['groups']} groups"
        )
    return ins[0]


_register(
    OpSpec(
        Op.CHANNEL_SHUFFLE,
        attrs=(Attr("groups", Kind.INT, aliases=("g", "group"), minimum=1),),
        shape=_shuffle_shape,
        torch=TorchModule("nn.ChannelShuffle", lambda a, i: ((a["groups"],), {})),
        positional=("groups",),
        doc="ShuffleNet's channel shuffle: groups x (C / groups) channels read out transposed",
    )
)


def _prelu_slopes(a: Mapping[str, Any], ins: Sequence[Shape]) -> int:
    return 1 if a["channel_shared"] else ins[0][0]


_register(
    OpSpec(
        Op.PRELU,
        attrs=(Attr("channel_shared", Kind.BOOL, False),),
        shape=_same_shape,
        torch=TorchModule("nn.PReLU", lambda a, ins: ((_prelu_slopes(a, ins),), {})),
        params=lambda a, ins, out: _prelu_slopes(a, ins),
        doc="x if x > 0 else a * x, a learned slope per channel (or one for all)",
    )
)

# pooling -------------------------------------------------------------------------------


def _pool_finish(op: str) -> Callable[[dict[str, Any]], None]:
    def finish(a: dict[str, Any]) -> None:
        if a["global"]:
            window = a["kernel"] or a["stride"] or a["padding"] != (0, 0) or a["ceil"]
            if window:  # said nothing: the whole map is the window
                raise OpError(f"{op}: global=true pools the whole map; drop k, s, p and ceil")
            return
        if a["kernel"] is None:
            raise OpError(f"{op}: needs a kernel size (k=...) or global=true")
        _finish_window(op, a)

    return finish


def _finish_window(op: str, a: dict[str, Any]) -> None:
    """A pooling window's rules: the stride defaults to the kernel, the padding is at most
    half of it."""
    if a["stride"] is None:
        a["stride"] = a["kernel"]
    for p, k in zip(a["padding"], a["kernel"], strict=True):
        if 2 * p > k:
            raise OpError(
                f"{op}: padding {p} must be at most half the kernel size {k} (as PyTorch pools)"
            )


def _pool_shape(op: str) -> Callable[[Mapping[str, Any], Sequence[Shape]], Shape]:
    def rule(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
        c, _, _ = _spatial(op, ins[0])
        if a["global"]:
            return (c, 1, 1)
        h, w = _windowed(op, a, ins[0], ceil=a["ceil"])
        return (c, h, w)

    return rule


def _pool_args(extra: Callable[[Mapping[str, Any]], dict]) -> Callable:
    def args(a: Mapping[str, Any], ins: Sequence[Shape]) -> tuple[tuple, dict]:
        kw: dict[str, Any] = {"kernel_size": _short(a["kernel"])}
        if a["stride"] != a["kernel"]:
            kw["stride"] = _short(a["stride"])
        if a["padding"] != (0, 0):
            kw["padding"] = _short(a["padding"])
        if a["ceil"]:
            kw["ceil_mode"] = True
        kw.update(extra(a))
        return (), kw

    return args


def _pool_attrs(*extra: Attr) -> tuple[Attr, ...]:
    return (
        Attr("kernel", Kind.PAIR, None, aliases=("k",), minimum=1),
        Attr("stride", Kind.PAIR, None, aliases=("s",), minimum=1),
        Attr("padding", Kind.PAIR, (0, 0), aliases=("p",), minimum=0),
        Attr("ceil", Kind.BOOL, False, aliases=("ceil_mode",)),
        Attr("global", Kind.BOOL, False),
        *extra,
    )


def _pool_torch(windowed: str, adaptive: str, extra: Callable) -> TorchModule:
    window_args = _pool_args(extra)

    def args(a: Mapping[str, Any], ins: Sequence[Shape]) -> tuple[tuple, dict]:
        return ((1,), {}) if a["global"] else window_args(a, ins)

    return TorchModule(lambda a: adaptive if a["global"] else windowed, args)


_register(
    OpSpec(
        Op.MAXPOOL,
        attrs=_pool_attrs(),
        shape=_pool_shape("maxpool"),
        torch=_pool_torch("nn.MaxPool2d", "nn.AdaptiveMaxPool2d", lambda a: {}),
        finish=_pool_finish("maxpool"),
        doc="max pooling (global=true: over the whole map)",
    )
)

_register(
    OpSpec(
        Op.AVGPOOL,
        attrs=_pool_attrs(Attr("count_pad", Kind.BOOL, True, aliases=("count_include_pad",))),
        shape=_pool_shape("avgpool"),
        torch=_pool_torch(
            "nn.AvgPool2d",
            "nn.AdaptiveAvgPool2d",
            lambda a: {} if a["count_pad"] else {"count_include_pad": False},
        ),
        finish=_pool_finish("avgpool"),
        doc="average pooling (global=true: over the whole map)",
    )
)


# max unpooling (SegNet's decoder) ---------------------------------------------------------


def _unpool_finish(a: dict[str, Any]) -> None:
    if a["kernel"] is None:
        raise OpError("unpool: needs the kernel size (k=...) of the max pooling it undoes")
    _finish_window("unpool", a)  # the pooling's own rules


def _unpool_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    x, before = ins
    c, h, w = _spatial("unpool", before)
    pooled = (c, *_windowed("unpool", a, before, ceil=a["ceil"]))
    if _spatial("unpool", x) != pooled:
        raise OpError(
            f"unpool: places {'x'.join(map(str, x))} values, but max pooling its second input "
            f"({c}x{h}x{w}) gives {'x'.join(map(str, pooled))}"
        )
    return before


def _unpool_expr(a: Mapping[str, Any], xs: Sequence[str]) -> str:
    x, before = xs
    window = str(_short(a["kernel"]))
    if a["stride"] != a["kernel"]:
        window += f", {_short(a['stride'])}"
    if a["padding"] != (0, 0):
        window += f", padding={_short(a['padding'])}"
    ceil = ", ceil_mode=True" if a["ceil"] else ""
    # the positions of the maxima: the pooling's own indices, found again on its input
    where = f"F.max_pool2d({before}, {window}{ceil}, return_indices=True)[1]"
    return f"F.max_unpool2d({x}, {where}, {window}, output_size={before}.shape[-2:])"


_register(
    OpSpec(
        Op.UNPOOL,
        attrs=tuple(a for a in _pool_attrs() if a.name != "global"),
        shape=_unpool_shape,
        torch=TorchExpr(_unpool_expr),
        min_inputs=2,
        max_inputs=2,
        finish=_unpool_finish,
        doc="SegNet's max unpooling: `unpool(x, before, k=2)` puts each value of x where max "
        "pooling `before` (with the same window) found its maximum, zeros elsewhere",
    )
)


def torch_class(op: Op, attrs: Mapping[str, Any]) -> str:
    """The nn class of a module-form op (pooling picks its adaptive form when global)."""
    form = REGISTRY[op].torch
    assert isinstance(form, TorchModule)
    return form.cls if isinstance(form.cls, str) else form.cls(attrs)


# element-wise and concat ---------------------------------------------------------------


def _add_expr(a: Mapping[str, Any], xs: Sequence[str]) -> str:
    coeffs = a["coeffs"]
    if coeffs is None:
        return " + ".join(xs)
    if len(coeffs) != len(xs):
        raise OpError(f"add: {len(coeffs)} coefficients for {len(xs)} inputs")
    expr = ""
    for c, x in zip(coeffs, xs, strict=True):
        term = x if abs(c) == 1.0 else f"{abs(c)!r} * {x}"
        if not expr:
            expr = term if c >= 0 else f"-{term}"
        else:
            expr += f" - {term}" if c < 0 else f" + {term}"
    return expr


def _is_channel_gate(shape: Shape) -> bool:
    return len(shape) == 3 and shape[1:] == (1, 1)


def _gated_shape(op: str, ins: Sequence[Shape]) -> Shape:
    """Element-wise, where a C x 1 x 1 input may also apply to every position of C x H x W
    ones, as torch broadcasts it: the gate of squeeze-and-excitation blocks (`x * gate`), the
    global context added back in GCNet (`x + context`)."""
    maps = [s for s in ins if not _is_channel_gate(s)]
    if not maps:
        return _same_shapes(op, ins)
    shape = _same_shapes(op, maps)
    for gate in (s for s in ins if _is_channel_gate(s)):
        if len(shape) != 3:
            raise OpError(f"{op}: cannot combine a feature map with a flat vector")
        if gate[0] != shape[0]:
            raise OpError(f"{op}: {shape[0]} vs {gate[0]} channels")
    return shape


def _add_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    if a["coeffs"] is not None and len(a["coeffs"]) != len(ins):
        raise OpError(f"add: {len(a['coeffs'])} coefficients for {len(ins)} inputs")
    return _gated_shape("add", ins)


def _fold(fn: str) -> Callable[[Mapping[str, Any], Sequence[str]], str]:
    def build(a: Mapping[str, Any], xs: Sequence[str]) -> str:
        expr = xs[0]
        for x in xs[1:]:
            expr = f"{fn}({expr}, {x})"
        return expr

    return build


_register(
    OpSpec(
        Op.ADD,
        attrs=(Attr("coeffs", Kind.FLOATS, None),),
        shape=_add_shape,
        torch=TorchExpr(_add_expr),
        min_inputs=2,
        max_inputs=None,
        doc="element-wise sum (optionally weighted by coeffs); a C x 1 x 1 input adds to each "
        "channel of C x H x W ones",
    )
)


_register(
    OpSpec(
        Op.MUL,
        attrs=(),
        shape=lambda a, ins: _gated_shape("mul", ins),
        torch=TorchExpr(lambda a, xs: " * ".join(xs)),
        min_inputs=2,
        max_inputs=None,
        doc="element-wise product; a C x 1 x 1 input scales each channel of C x H x W ones",
    )
)
_register(
    OpSpec(
        Op.MAX,
        attrs=(),
        shape=lambda a, ins: _same_shapes("max", ins),
        torch=TorchExpr(_fold("torch.maximum")),
        min_inputs=2,
        max_inputs=None,
        doc="element-wise maximum",
    )
)


def _concat_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    first = ins[0]
    if len(first) == 1:
        if any(len(s) != 1 for s in ins):
            raise OpError("concat: cannot combine a feature map with a flat vector")
        return (sum(s[0] for s in ins),)
    for s in ins[1:]:
        _spatial("concat", s)
        if s[1:] != first[1:]:
            raise OpError(f"concat: spatial size {first[1]}x{first[2]} vs {s[1]}x{s[2]}")
    return (sum(s[0] for s in ins), first[1], first[2])


_register(
    OpSpec(
        Op.CONCAT,
        attrs=(),
        shape=_concat_shape,
        torch=TorchExpr(lambda a, xs: f"torch.cat([{', '.join(xs)}], dim=1)"),
        min_inputs=2,
        max_inputs=None,
        doc="concatenation along channels",
    )
)

# linear, flatten, dropout --------------------------------------------------------------


def _linear_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    if len(ins[0]) != 1:
        raise OpError(
            f"linear: needs a flat input (use flatten first), got {'x'.join(map(str, ins[0]))}"
        )
    return (a["out"],)


_register(
    OpSpec(
        Op.LINEAR,
        attrs=(
            Attr("out", Kind.INT, aliases=("features",), minimum=1),
            Attr("bias", Kind.BOOL, True),
        ),
        shape=_linear_shape,
        torch=TorchModule(
            "nn.Linear",
            lambda a, ins: ((ins[0][0], a["out"]), {} if a["bias"] else {"bias": False}),
        ),
        positional=("out",),
        params=lambda a, ins, out: ins[0][0] * a["out"] + (a["out"] if a["bias"] else 0),
        macs=lambda a, ins, out: ins[0][0] * a["out"],
        doc="fully connected layer",
    )
)

_register(
    OpSpec(
        Op.FLATTEN,
        attrs=(),
        shape=lambda a, ins: (_numel(ins[0]),),
        torch=TorchModule("nn.Flatten", lambda a, i: ((), {})),
        doc="flatten C x H x W to one vector per sample",
    )
)

_register(
    OpSpec(
        Op.DROPOUT,
        attrs=(Attr("p", Kind.FLOAT, 0.5, minimum=0),),
        shape=_same_shape,
        torch=TorchModule("nn.Dropout", lambda a, i: ((a["p"],), {})),
        finish=lambda a: (
            None if a["p"] < 1 else _raise(f"dropout: p must be below 1, got {a['p']}")
        ),
        doc="dropout (identity in eval mode)",
    )
)


def _raise(message: str) -> None:
    raise OpError(message)


# local response normalisation -----------------------------------------------------------


def _lrn_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    if a["region"] == "within" and a["size"] % 2 == 0:
        raise OpError(
            f"lrn: a window within a channel is centred, so size must be odd, got {a['size']}"
        )
    return _spatial("lrn", ins[0])


def _lrn_expr(a: Mapping[str, Any], xs: Sequence[str]) -> str:
    (x,) = xs
    size, alpha, beta = a["size"], a["alpha"], a["beta"]
    if a["region"] == "within":
        # Caffe's WITHIN_CHANNEL: the mean square over a size x size window (zero-padded,
        # always divided by size * size), as 1 + alpha * mean, to the power -beta
        mean = f"F.avg_pool2d({x} * {x}, {size}, stride=1, padding={size // 2})"
        return f"{x} * (1 + {alpha!r} * {mean}).pow({-beta!r})"
    defaults = {"alpha": 1e-4, "beta": 0.75, "k": 1.0}
    given = "".join(f", {k}={a[k]!r}" for k, v in defaults.items() if a[k] != v)
    return f"F.local_response_norm({x}, {size}{given})"


_register(
    OpSpec(
        Op.LRN,
        attrs=(
            Attr("size", Kind.INT, minimum=1),
            Attr("alpha", Kind.FLOAT, 1e-4, minimum=0),
            Attr("beta", Kind.FLOAT, 0.75, minimum=0),
            Attr("k", Kind.FLOAT, 1.0, minimum=0),
            Attr("region", Kind.STR, "across", choices=("across", "within")),
        ),
        shape=_lrn_shape,
        torch=TorchExpr(_lrn_expr),
        doc="local response normalisation across `size` neighbouring channels (GoogLeNet), or "
        'with region="within" over a size x size window of each channel',
    )
)

# L2 normalisation ----------------------------------------------------------------------


def _l2norm_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    if a["across_spatial"]:
        return _spatial("l2norm with across_spatial=true", ins[0])
    return ins[0]


def _l2norm_expr(a: Mapping[str, Any], xs: Sequence[str]) -> str:
    # Caffe's Normalize (SSD, ParseNet): eps is added to the sum of squares, under the root
    (x,) = xs
    dims = "(1, 2, 3)" if a["across_spatial"] else "1"
    return f"{x} / (({x} * {x}).sum({dims}, keepdim=True) + {a['eps']!r}).sqrt()"


_register(
    OpSpec(
        Op.L2NORM,
        attrs=(
            Attr("eps", Kind.FLOAT, 1e-10, minimum=0),
            Attr("across_spatial", Kind.BOOL, False),
        ),
        shape=_l2norm_shape,
        torch=TorchExpr(_l2norm_expr),
        doc="each position's channel vector (or a flat vector) divided by its L2 norm, "
        "sqrt(sum of squares + eps); across_spatial=true: each sample's whole C x H x W",
    )
)

# upsample ------------------------------------------------------------------------------


def _upsample_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    c, h, w = _spatial("upsample", ins[0])
    if len(ins) == 2:
        _, rh, rw = _spatial("upsample", ins[1])
        return (c, rh, rw)
    if a["scale"] is None:
        raise OpError("upsample: needs scale=... or a reference input to take the size from")
    out_h, out_w = int(math.floor(h * a["scale"])), int(math.floor(w * a["scale"]))
    if out_h < 1 or out_w < 1:
        raise OpError(f"upsample: scale={a['scale']:g} makes {h}x{w} empty ({out_h}x{out_w})")
    return (c, out_h, out_w)


def _upsample_expr(a: Mapping[str, Any], xs: Sequence[str]) -> str:
    corners = ", align_corners=False" if a["mode"] == "bilinear" else ""
    if len(xs) == 2:
        size = f"size={xs[1]}.shape[-2:]"
    else:
        size = f"scale_factor={a['scale']!r}"
    return f'F.interpolate({xs[0]}, {size}, mode="{a["mode"]}"{corners})'


_register(
    OpSpec(
        Op.UPSAMPLE,
        attrs=(
            Attr("scale", Kind.FLOAT, None, minimum=0),
            Attr("mode", Kind.STR, "nearest", choices=("nearest", "bilinear")),
        ),
        shape=_upsample_shape,
        torch=TorchExpr(_upsample_expr),
        max_inputs=2,
        doc="resize by `scale`, or to the size of a second input",
    )
)


def _interp_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    c, h, w = _spatial("interp", ins[0])
    if len(ins) == 2:
        if a["size"] is not None or a["zoom"] != 1 or a["shrink"] != 1:
            raise OpError("interp: give a reference input or size/zoom/shrink, not both")
        return (c, *_spatial("interp", ins[1])[1:])
    if a["size"] is not None:
        if a["zoom"] != 1 or a["shrink"] != 1:
            raise OpError("interp: give size or zoom/shrink, not both")
        return (c, *a["size"])
    return (c, *(((n - 1) // a["shrink"]) * a["zoom"] + 1 for n in (h, w)))


def _interp_expr(a: Mapping[str, Any], xs: Sequence[str]) -> str:
    if len(xs) == 2:
        size = f"{xs[1]}.shape[-2:]"
    elif a["size"] is not None:
        size = repr(a["size"])
    else:
        shrink = f" // {a['shrink']}" if a["shrink"] != 1 else ""
        zoom = f" * {a['zoom']}" if a["zoom"] != 1 else ""
        h, w = (f"({xs[0]}.shape[{d}] - 1){shrink}{zoom} + 1" for d in (-2, -1))
        size = f"({h}, {w})"
    return f'F.interpolate({xs[0]}, size={size}, mode="bilinear", align_corners=True)'


_register(
    OpSpec(
        Op.INTERP,
        attrs=(
            Attr("zoom", Kind.INT, 1, minimum=1),
            Attr("shrink", Kind.INT, 1, minimum=1),
            Attr("size", Kind.PAIR, None, minimum=1),
        ),
        shape=_interp_shape,
        torch=TorchExpr(_interp_expr),
        max_inputs=2,
        doc="Caffe's Interp: bilinear with corners aligned, to (n - 1) // shrink * zoom + 1 "
        "per side, to `size`, or to the size of a second input",
    )
)


# crop (Caffe's Crop: FCN aligns its upsampled scores with the image) ----------------------


def _crop_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    c, h, w = _spatial("crop", ins[0])
    _, rh, rw = _spatial("crop", ins[1])
    (oh, ow) = a["offset"]
    if oh + rh > h or ow + rw > w:
        raise OpError(
            f"crop: offset {_fmt_pair((oh, ow))} and the reference's {_fmt_pair((rh, rw))} "
            f"reach past the input's {_fmt_pair((h, w))}"
        )
    return (c, rh, rw)


def _crop_expr(a: Mapping[str, Any], xs: Sequence[str]) -> str:
    x, ref = xs
    (oh, ow) = a["offset"]
    rows = f"{oh} : {oh} + {ref}.shape[-2]" if oh else f": {ref}.shape[-2]"
    cols = f"{ow} : {ow} + {ref}.shape[-1]" if ow else f": {ref}.shape[-1]"
    return f"{x}[:, :, {rows}, {cols}]"


_register(
    OpSpec(
        Op.CROP,
        attrs=(Attr("offset", Kind.PAIR, (0, 0), minimum=0),),
        shape=_crop_shape,
        torch=TorchExpr(_crop_expr),
        min_inputs=2,
        max_inputs=2,
        doc="the first input cut to the height and width of the second, from `offset`",
    )
)


# slice (Caffe's Slice: each top a range of the channels) ---------------------------------


def _slice_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    (shape,) = ins
    start, end = a["start"], a["end"]
    if not start < end <= shape[0]:
        raise OpError(f"slice: channels {start} to {end} are not a range of the input's {shape[0]}")
    return (end - start, *shape[1:])


_register(
    OpSpec(
        Op.SLICE,
        attrs=(Attr("start", Kind.INT, minimum=0), Attr("end", Kind.INT, minimum=1)),
        shape=_slice_shape,
        torch=TorchExpr(lambda a, xs: f"{xs[0]}[:, {a['start']}:{a['end']}]"),
        positional=("start", "end"),
        doc="channels `start` (included) to `end` (excluded) of the input",
    )
)


# reshape (a flat squeeze-and-excitation gate as the C x 1 x 1 map a mul broadcasts) ------


def _reshape_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    if len(a["shape"]) not in (1, 3):
        raise OpError(
            f"reshape: a sample is a vector (F) or a map (C x H x W), not "
            f"{'x'.join(map(str, a['shape']))}"
        )
    if _numel(a["shape"]) != _numel(ins[0]):
        raise OpError(
            f"reshape: {'x'.join(map(str, ins[0]))} has {_numel(ins[0])} values per sample, "
            f"{'x'.join(map(str, a['shape']))} holds {_numel(a['shape'])}"
        )
    return a["shape"]


_register(
    OpSpec(
        Op.RESHAPE,
        attrs=(Attr("shape", Kind.SHAPE),),
        shape=_reshape_shape,
        torch=TorchExpr(lambda a, xs: f"{xs[0]}.reshape(-1, {', '.join(map(str, a['shape']))})"),
        positional=("shape",),
        doc="the same values per sample in another shape (a flat gate as C x 1 x 1)",
    )
)


# multi-task structure ---------------------------------------------------------------------
# These have no single-network PyTorch form: the supermodel emitter writes them.

_register(
    OpSpec(
        Op.TASK_STACK,
        attrs=(),
        shape=_same_shape,
        torch=None,
        doc="one copy of the input per task, stacked along the batch",
    )
)
_register(
    OpSpec(
        Op.TASK_SLICE,
        attrs=(Attr("task", Kind.STR),),
        shape=_same_shape,
        torch=None,
        doc="one task's part of a task-stacked value",
    )
)


def _route_shape(a: Mapping[str, Any], ins: Sequence[Shape]) -> Shape:
    if len(set(ins)) != 1:
        raise OpError(f"route: candidates disagree in shape: {', '.join(map(str, ins))}")
    return ins[0]


_register(
    OpSpec(
        Op.ROUTE,
        attrs=(
            Attr("op", Kind.STR),  # the routed op's name: the policy slot
            Attr("depth", Kind.INT, minimum=1),  # 1-based position among routed ops
            Attr("skip", Kind.BOOL),  # whether the skip candidate exists
        ),
        shape=_route_shape,
        torch=None,
        min_inputs=2,
        max_inputs=3,
        doc="per-task mixture of shared, task-specific and skip candidates",
    )
)
