"""The prototxt frontend: a Caffe network description (protobuf text format) -> the IR.

1. Parse the text against our schema, grammar/caffe.proto (unknown fields are skipped).
2. Scan the text for where each layer and field is, for error spans and node locations.
   Layers whose `include` / `exclude` rules leave them out of Caffe's TEST network (or the
   network of the file's `state`) are left out and listed in the notes.
3. Declare the inputs (`input` + `input_dim`, `input` + `input_shape`, or `Input` layers).
4. Trace what each bottom reads: a blob name means the value its latest writer produced, so
   in-place layers and layers writing a top again need nothing special; a Split's tops name
   its bottom's value.
5. Choose the backbone output: `output` (a blob name) if given, else the one blob no layer
   reads, a final Softmax dropped.
6. Convert the layers that output needs, in file order, fusing BatchNorm + Scale pairs and
   reading a squeeze-and-excitation gate reshaped to N x C as the N x C x 1 x 1 blob it was;
   what it does not need is left out and listed in the notes. Unknown fields that a converted
   layer may depend on (in its parameter block) are warnings, located by the scan.

Node names are layer names (input nodes are named after their blob); every node's `loc` is its
layer's line, and `meta["var"]` its top blob, which generated code uses as variable name.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from mtsc.fsutil import read_model
from mtsc.grammar.caffe_layers import (
    BOTTOMS,
    CAFFE_LAYER_FIELDS,
    CONVERTERS,
    GATES,
    PARAM_FIELDS,
    SUPPORTED_TYPES,
    V1_TYPES,
    Layer,
    Step,
    is_quiet,
    unpooling,
)
from mtsc.grammar.proto_schema import message_class
from mtsc.grammar.prototxt_scan import Block, Layout, bare_fields, scan, too_deep
from mtsc.ir.errors import Diagnostic, InternalError, MtscError, Span, source_lines
from mtsc.ir.graph import Graph, Node
from mtsc.ir.ops import Op, OpError, Shape, did_you_mean, infer_shape, spec_of

SCHEMA = Path(__file__).with_name("caffe.proto")
# The deepest `{ }` nesting read; Caffe's own files go four deep.
MAX_NESTING = 100


@dataclass(frozen=True, slots=True)
class Imported:
    graph: Graph
    notes: tuple[str, ...] = ()  # what was left out, for the header of an emitted .mtl
    warnings: tuple[Diagnostic, ...] = ()


def import_prototxt(path: str | Path, *, output: str | None = None) -> Imported:
    """Import a `.prototxt` file; `output` cuts the backbone at that blob."""
    path = Path(path)
    return import_text(read_model(path), str(path), output=output)


def import_text(text: str, file: str, *, output: str | None = None) -> Imported:
    """Import prototxt source text; `file` names it in spans and messages."""
    net, forks_types = _parse(text, file)
    layout = scan(text, file)
    layers, phase_notes, outside = _layers(net, layout, forks_types)
    flow = None
    try:
        inputs = _declared_inputs(net, layout)
        flow = _trace(layers, inputs, outside)
        out = _choose_output(layers, flow, output, file)
        needed = _needed(flow, out)
        graph = _Builder(file, layers, flow, out, needed).build()
    except MtscError as err:
        # what the import skipped or assumed may be why it failed (`num_ouput`)
        skipped = [w for layer in layers for w in _unknown_fields(layer)]
        err.warnings = (*(flow.warnings if flow else ()), *skipped, *err.warnings)
        raise
    decls = [flow.values[v].input for v in sorted(needed)]
    assumed = [d.assumed for d in decls if d is not None and d.assumed]
    notes = (*phase_notes, *assumed, *_dropped_notes(layers, flow, out, needed))
    used = [layers[i] for i in _used(flow, needed)]
    unknown = [w for layer in used for w in _unknown_fields(layer)]
    warnings = [*flow.warnings, *unknown, *_shared_blobs(used)]
    return Imported(graph, notes, tuple(warnings))


# ----------------------------------------------------------------------------- reading


def _parse(text: str, file: str) -> tuple[Message, dict[tuple[int, int], str]]:
    """The parsed network, and the V1 types of forks that the parse could not read."""
    net = message_class(SCHEMA, "caffe.NetParameter")()
    deep = too_deep(text, file, MAX_NESTING)
    if deep is not None:  # protobuf's parser recurses per level, and would run out of stack
        raise MtscError(deep, f"nested too deeply: more than {MAX_NESTING} levels of {{ }}")
    parsed, forks_types = _without_forks_v1_types(text)
    try:
        text_format.Parse(parsed, net, allow_unknown_field=True)
    except text_format.ParseError as err:
        line, column = err.GetLine() or 1, err.GetColumn() or 1
        message = str(err).split(" : ", 1)[-1]
        lines = source_lines(parsed)  # protobuf quotes the line it parsed, split at \n
        quoted = f"'{lines[line - 1]}': " if line <= len(lines) else ""
        message = message.removeprefix(quoted)
        span = Span(file, line, column, source=text)
        raise MtscError(span, f"not a valid prototxt: {message}") from None
    return net, forks_types


def _without_forks_v1_types(text: str) -> tuple[str, dict[tuple[int, int], str]]:
    """The text with each `type: NAME` field whose NAME Caffe's V1 enum lacks (a fork's:
    DeepLab's INTERP, IMAGE_SEG_DATA) blanked out, so that the file parses (the layer's type is
    then NONE) and the layer can be named, cut off with --output or dropped; and those names,
    by the (line, column) of their field. Blanks keep every other position where it was."""
    known = _v1_type_enum().values_by_name
    parts, last, names = [], 0, {}
    for start, end, name in bare_fields(text, "type"):
        if name in known or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            continue  # Caffe's own, or not a V1 type name at all (the parse says so)
        line = text.count("\n", 0, start) + 1
        names[line, start - text.rfind("\n", 0, start)] = name
        parts += [text[last:start], re.sub(r"[^\n]", " ", text[start:end])]
        last = end
    return "".join(parts) + text[last:], names


def _v1_type_enum() -> EnumDescriptor:
    layer = message_class(SCHEMA, "caffe.V1LayerParameter")
    return layer.DESCRIPTOR.fields_by_name["type"].enum_type


def _layers(
    net: Message, layout: Layout, forks_types: dict[tuple[int, int], str]
) -> tuple[list[Layer], tuple[str, ...], dict[str, str]]:
    """The layers of the network Caffe would build (by the file's state and each layer's
    rules), each with a name of its own; notes on what was renamed and left out; and, for
    each blob only left-out layers give, which of them does (for a bottom's error)."""
    if net.layer and net.layers:
        raise MtscError(
            layout.blocks["layers"][0].span,
            "the file mixes `layer` blocks with Caffe's old `layers` blocks; use one kind",
        )
    v1 = bool(net.layers)
    params = net.layers if v1 else net.layer
    blocks: tuple[Block, ...] = layout.blocks.get("layers" if v1 else "layer", ())
    if len(blocks) != len(params):
        raise InternalError(
            f"prototxt scan found {len(blocks)} layer blocks, protobuf {len(params)}"
        )
    layers, left_out = [], []
    outside: dict[str, str] = {}  # blob -> the first left-out layer giving it
    taken = set(net.input)  # the names of the inputs and of the layers so far
    renamed = []
    for i, (p, block) in enumerate(zip(params, blocks, strict=True)):
        if v1 and "layer" in block.fields:
            raise MtscError(
                block.field_span("layer"),
                "Caffe's V0 format (`layers { layer { ... } bottom: ... }`) is not supported; "
                "upgrade the file with Caffe's tools/upgrade_net_proto_text first",
            )
        if v1:
            v1_name = _v1_type_enum().values_by_number[p.type].name
            if v1_name == "NONE" and "type" in block.fields:  # a fork's type: as written
                where = block.field_span("type")
                v1_name = forks_types.get((where.line, where.column), v1_name)
                if v1_name not in V1_TYPES and v1_name in SUPPORTED_TYPES:
                    raise MtscError(
                        where,
                        f"layer {p.name!r}: type {v1_name} in a V1 `layers` block; mtsc reads "
                        f"the V1 types {', '.join(sorted(V1_TYPES))}; write the layer in a "
                        "`layer { }` block",
                    )
            type_ = V1_TYPES.get(v1_name, v1_name)
        else:
            type_ = p.type
        name = p.name or f"layer{i + 1}"
        if _in_network(p, block, net.state):
            if type_ == "Input":  # no op of its own: its tops name the inputs
                taken.update(p.top)
            else:  # Caffe allows a name twice; an op's name must be its own
                unique = _unique_name(name, taken)
                if unique != name:
                    renamed.append(f"{name} (line {block.span.line}) as {unique}")
                name = unique
                taken.add(name)
            layers.append(Layer(len(layers), name, type_, tuple(p.bottom), tuple(p.top), p, block))
        else:
            left_out.append((name, type_, block.span.line))
            for blob in p.top:
                outside.setdefault(blob, f"layer {name!r} (line {block.span.line})")
    network = _network_name(net.state)
    notes: tuple[str, ...] = ()
    if renamed:
        shown = ", ".join(renamed)
        notes = (f"Renamed layers whose name an input or an earlier layer has: {shown}.",)
    if left_out:
        kept = {layer.name for layer in layers}  # a TRAIN twin of a TEST layer: told by its line
        named = [
            f"{name} ({type_}, line {line})" if name in kept else f"{name} ({type_})"
            for name, type_, line in left_out
        ]
        notes += (f"Not imported: outside {network}: {', '.join(named)}.",)
    hints = {
        blob: f"; {layer} gives it, but its include/exclude rules leave it outside {network}"
        for blob, layer in outside.items()
    }
    return layers, notes, hints


def _unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    return next(f"{name}_{k}" for k in itertools.count(2) if f"{name}_{k}" not in taken)


def _in_network(param: Message, block: Block, state: Message) -> bool:
    """Whether Caffe builds the layer into the network of `state` (its NetState: TEST,
    level 0, no stages unless the file says otherwise): with `include` rules, when one
    matches; with `exclude` rules, when none does."""
    if param.include and param.exclude:
        raise MtscError(
            block.field_span("exclude"),
            f"layer {param.name!r}: give `include` or `exclude` rules, not both (as Caffe says)",
        )
    if param.include:
        return any(_rule_matches(rule, state) for rule in param.include)
    return not any(_rule_matches(rule, state) for rule in param.exclude)


def _rule_matches(rule: Message, state: Message) -> bool:
    """Caffe's StateMeetsRule: every condition the rule sets holds for the state."""
    return (
        (not rule.HasField("phase") or rule.phase == state.phase)
        and (not rule.HasField("min_level") or state.level >= rule.min_level)
        and (not rule.HasField("max_level") or state.level <= rule.max_level)
        and all(stage in state.stage for stage in rule.stage)
        and not any(stage in state.stage for stage in rule.not_stage)
    )


def _network_name(state: Message) -> str:
    phase = state.DESCRIPTOR.fields_by_name["phase"].enum_type.values_by_number[state.phase]
    name = f"Caffe's {phase.name} network"
    if state.level:
        name += f" at level {state.level}"
    if state.stage:
        name += f" with stage {', '.join(state.stage)}"
    return name


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    dims: tuple[int, ...]  # as declared (N x C x H x W when usable): checked once it is used
    span: Span | None
    dims_span: Span | None  # where the dims are written
    assumed: str = ""  # what a data layer's settings leave open, said once the input is used

    def shape(self) -> Shape:
        return _feature_shape(self.dims, self.dims_span, f"input {self.name!r}")


def _feature_shape(dims: tuple[int, ...], span: Span | None, what: str) -> Shape:
    if len(dims) != 4 or any(d <= 0 for d in dims):
        shown = "x".join(map(str, dims)) or "empty"
        raise MtscError(span, f"{what} has shape {shown}; mtsc needs N x C x H x W, all positive")
    return tuple(dims[1:])


def _declared_inputs(net: Message, layout: Layout) -> list[_Input]:
    names = list(net.input)
    if net.input_shape and net.input_dim:
        raise MtscError(
            layout.top_span("input_dim"), "give the inputs input_shape or input_dim, not both"
        )
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise MtscError(
                layout.top_span("input_shape"),
                f"{len(names)} input(s) but {len(net.input_shape)} input_shape(s); "
                "give one per input",
            )
        dims = [tuple(s.dim) for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise MtscError(
                layout.top_span("input_dim"),
                f"input_dim needs 4 values (N, C, H, W) per input: {len(names)} input(s), "
                f"{len(net.input_dim)} values",
            )
        dims = [tuple(net.input_dim[4 * i : 4 * i + 4]) for i in range(len(names))]
    elif names:
        raise MtscError(
            layout.top_span("input"),
            f"input {names[0]!r} has no shape: add input_shape {{ dim: 1 dim: 3 dim: 224 "
            "dim: 224 }, or four input_dim values",
        )
    spans = [layout.top_span("input", i) for i in range(len(names))]
    return [_Input(name, dims[i], spans[i], spans[i]) for i, name in enumerate(names)]


def _input_layer_dims(layer: Layer) -> list[tuple[int, ...]]:
    shapes = layer.param.input_param.shape if layer.param.HasField("input_param") else []
    if len(shapes) not in (1, len(layer.tops)):
        raise layer.error(
            f"needs one input_param shape, or one per top ({len(layer.tops)}); got {len(shapes)}",
            "input_param" if shapes else None,
        )
    return [tuple(shapes[min(t, len(shapes) - 1)].dim) for t in range(len(layer.tops))]


def _data_layer_input(layer: Layer) -> _Input | None:
    """The network input a data layer gives as its first top, where its settings say the
    images' shape: MemoryData's and DummyData's dimensions, or the square `crop_size` (else
    ImageData's `new_height` and `new_width`) with ImageData's colour, 3 channels when the
    layer does not say (an LMDB's images). None where nothing gives the size."""
    p, name = layer.param, layer.tops[0] if layer.tops else ""
    if p.HasField("memory_data_param"):
        m = p.memory_data_param
        dims, where = (1, m.channels, m.height, m.width), "memory_data_param"
        return _Input(name, dims, layer.block.span, layer.block.field_span(where))
    if p.HasField("dummy_data_param"):
        d, where = p.dummy_data_param, layer.block.field_span("dummy_data_param")
        if d.shape:
            return _Input(name, tuple(d.shape[0].dim), layer.block.span, where)
        if d.num and d.channels and d.height and d.width:
            dims = (d.num[0], d.channels[0], d.height[0], d.width[0])
            return _Input(name, dims, layer.block.span, where)
        return None
    image = p.image_data_param
    crop = p.transform_param.crop_size
    if crop:
        (h, w), where, given = (crop, crop), "transform_param", "its crop_size"
    elif image.new_height and image.new_width:
        (h, w), where, given = (image.new_height, image.new_width), "image_data_param", "its size"
    else:
        return None
    channels = 3 if image.is_color else 1
    assumed = ""
    if not p.HasField("image_data_param"):
        assumed = (
            f"layer {layer.name!r} ({layer.type}): the input {name!r} is taken as "
            f"{channels} x {h} x {w} ({given}; {channels} channels, which a data layer does "
            "not say); if that is wrong, declare the input with an Input layer instead"
        )
    dims = (1, channels, h, w)
    return _Input(name, dims, layer.block.span, layer.block.field_span(where), assumed)


def _unknown_fields(layer: Layer) -> list[Diagnostic]:
    """Warnings for what the parse skipped and the layer may depend on: an unknown field of
    the layer (`botom`, `includ`, `relu_parm`: Caffe would refuse the file) or of its own
    parameter block (a fork's setting). Fillers, `engine`, `param { }` and other types'
    blocks stay silent: they do not change what the layer computes."""
    known = layer.param.DESCRIPTOR.fields_by_name
    prefix = f"layer {layer.name!r} ({layer.type}): "
    own = PARAM_FIELDS.get(layer.type)
    warnings = []
    lacks_own = own in known and own not in layer.block.fields
    for name, spans in layer.block.fields.items():
        if name in known or name in CAFFE_LAYER_FIELDS:
            continue
        hint = did_you_mean(name, sorted({*known, *CAFFE_LAYER_FIELDS}), 0.8)
        if "_par" in name:  # a fork's block, or a misspelt one: news where the layer lacks its own
            if not lacks_own:
                continue
            why = f"if it holds the layer's settings (it has no {own}), the imported layer is wrong"
        else:
            why = "Caffe would refuse the file"
        message = f"{prefix}mtsc does not know the field {name}{hint} and ignored it; {why}"
        warnings.append(Diagnostic(spans[0], message))
    if own is None or own not in known:
        return warnings
    own_known = known[own].message_type.fields_by_name
    warnings += [
        Diagnostic(
            spans[0],
            f"{prefix}mtsc does not know {own}.{name}{did_you_mean(name, sorted(own_known), 0.8)}"
            " and ignored it; if it changes the layer (a fork's dilation, padding or rounding), "
            "the imported layer is wrong",
        )
        for name, spans in layer.block.inner.get(own, {}).items()
        if name not in own_known and not is_quiet(name)
    ]
    return sorted(warnings, key=lambda w: (w.span.line, w.span.column))


def _shared_blobs(layers: list[Layer]) -> list[Diagnostic]:
    """A warning for each layer that names a weight blob (`param { name: "w" }`) an earlier
    layer named: Caffe shares it between them (Siamese towers), mtsc gives each layer its own
    weights, so the imported network has more parameters and trains them apart."""
    owner: dict[str, str] = {}
    warnings = []
    for layer in layers:
        for k, spec in enumerate(layer.param.param):
            name = spec if isinstance(spec, str) else spec.name  # V1 layers list bare names
            if not name:
                continue
            if name not in owner:
                owner[name] = layer.name
                continue
            warnings.append(
                Diagnostic(
                    layer.block.field_span("param", k),
                    f"layer {layer.name!r} ({layer.type}): Caffe shares the blob {name!r} "
                    f"with layer {owner[name]!r}; mtsc gives each layer weights of its own",
                )
            )
    return warnings


# ----------------------------------------------------------------------------- data flow


@dataclass(frozen=True, slots=True)
class _Value:
    blob: str
    layer: int | None  # the layer that writes it; None for an `input:` declaration
    input: _Input | None = None  # set for network inputs


@dataclass(slots=True)
class _Flow:
    values: list[_Value] = field(default_factory=list)
    reads: list[list[int]] = field(default_factory=list)  # per layer: values of its bottoms
    writes: list[list[int]] = field(default_factory=list)  # per layer: values of its tops
    final: dict[str, int] = field(default_factory=dict)  # blob name -> its last value
    warnings: list[Diagnostic] = field(default_factory=list)

    def new(self, value: _Value) -> int:
        self.values.append(value)
        self.final[value.blob] = len(self.values) - 1
        return len(self.values) - 1


def _trace(layers: list[Layer], inputs: list[_Input], outside: dict[str, str]) -> _Flow:
    """Which value each layer reads and writes (a blob written again is a new value).
    `outside`: for a blob only left-out layers give, the end of the error for reading it."""
    flow = _Flow()
    for decl in inputs:
        flow.new(_Value(decl.name, None, decl))
    written_by = {}  # blob -> the first layer that writes it
    for layer in layers:
        for blob in layer.tops:
            written_by.setdefault(blob, layer)
    first_reader = True
    for layer in layers:
        reads = []
        for k, blob in enumerate(layer.bottoms):
            v = flow.final.get(blob)
            later = written_by.get(blob)
            if v is None and later is not None and later.index > layer.index:
                raise layer.error(
                    f"bottom {blob!r} is the top of a later layer, {later.name!r} (line "
                    f"{later.block.span.line}); Caffe runs the layers in the file's order, so "
                    "a layer comes after those whose tops it reads",
                    "bottom",
                    k,
                )
            if v is None and first_reader and len(inputs) == 1:
                # AutoMTL's files declare `blob1` and start reading `data`.
                v = flow.final[blob] = flow.final[inputs[0].name]
                flow.warnings.append(
                    Diagnostic(
                        layer.block.field_span("bottom", k),
                        f"layer {layer.name!r} reads blob {blob!r}, which is never declared; "
                        f"using the only input, {inputs[0].name!r}",
                    )
                )
            if v is None:
                raise layer.error(
                    f"bottom {blob!r} is neither an input nor the top of an earlier layer"
                    + outside.get(blob, did_you_mean(blob, sorted(flow.final))),
                    "bottom",
                    k,
                )
            reads.append(v)
        first_reader = first_reader and not layer.bottoms
        if _passes_through(layer):  # each top is the bottom's value again: no node, no copy
            _check_bottom_count(layer)
            for blob in layer.tops:
                flow.final[blob] = reads[0]
            flow.reads.append(reads)
            flow.writes.append([])
            continue
        decls: list[_Input | None] = [None] * len(layer.tops)
        if layer.type == "Input":
            where = layer.block.field_span("input_param")
            dims = _input_layer_dims(layer)
            decls = [
                _Input(blob, dims[t], layer.block.span, where) for t, blob in enumerate(layer.tops)
            ]
        elif _is_source(layer) and layer.tops:
            decls[0] = _data_layer_input(layer)  # its other tops are labels
        writes = [
            flow.new(_Value(blob, layer.index, decl))
            for blob, decl in zip(layer.tops, decls, strict=True)
        ]
        flow.reads.append(reads)
        flow.writes.append(writes)
    return flow


def _passes_through(layer: Layer) -> bool:
    """A Split, or a Concat of one bottom (Caffe shares its data): each top is the bottom."""
    return layer.type == "Split" or (layer.type == "Concat" and len(layer.bottoms) == 1)


def _check_bottom_count(layer: Layer) -> None:
    low, high = BOTTOMS.get(layer.type, (1, 1))
    n = len(layer.bottoms)
    if n < low or (high is not None and n > high):
        want = str(low) if low == high else f"at least {low}"
        raise layer.error(f"takes {want} bottom(s), got {n}", "bottom" if n else None)


def _choose_output(layers: list[Layer], flow: _Flow, output: str | None, file: str) -> int:
    if output is not None:
        out = flow.final.get(output)
        if out is None:
            raise MtscError(
                None,
                f"{file}: --output {output!r}: the network has no blob of that name"
                + did_you_mean(output, sorted(flow.final)),
            )
        producer = flow.values[out].layer
        if producer is not None and layers[producer].type == "Softmax" and flow.reads[producer]:
            out = flow.reads[producer][0]  # dropped, as at the end of any network
            flow.warnings.append(
                Diagnostic(
                    layers[producer].block.field_span("type"),
                    f"--output {output!r} is a Softmax's top; mtsc drops a final Softmax, so "
                    f"the backbone ends at its bottom, {flow.values[out].blob!r}",
                )
            )
    else:
        # What only top-less layers read (Silence, DeepLab's MAT_WRITE) ends the network too.
        read = {v for i, reads in enumerate(flow.reads) if layers[i].tops for v in reads}
        ends = []
        for v in sorted(set(flow.final.values()) - read):
            producer = flow.values[v].layer
            if producer is not None and (
                _is_source(layers[producer])
                or (v != flow.writes[producer][0] and layers[producer].type == "Pooling")
            ):
                continue  # a data layer's label, a max-pooling mask: not network results
            # A final Softmax turns scores into probabilities, and a loss or an accuracy layer
            # scores them against labels: the backbone ends at the scores.
            if (
                producer is not None
                and (layers[producer].type == "Softmax" or _is_evaluation(layers[producer]))
                and flow.reads[producer]
            ):
                v = flow.reads[producer][0]
            if flow.values[v].input is None and v not in ends:
                ends.append(v)
        if not ends:
            raise MtscError(None, f"{file}: the network has no layers to import")
        if len(ends) > 1:
            blobs = ", ".join(repr(flow.values[v].blob) for v in ends)
            raise MtscError(
                layers[flow.values[ends[1]].layer].block.span,
                f"the network has {len(ends)} outputs ({blobs}); choose the backbone's "
                "with --output BLOB",
            )
        out = ends[0]
    declared = flow.values[out].input
    if declared is not None:
        raise MtscError(
            declared.span, f"the output {flow.values[out].blob!r} is an input of the network"
        )
    return out


def _is_evaluation(layer: Layer) -> bool:
    """A loss or an accuracy layer (SoftmaxWithLoss, V1 SOFTMAX_LOSS, DeepLab's SEG_ACCURACY):
    training and testing read it, the network's function does not."""
    kind = layer.type.replace("_", "").lower()
    return kind.endswith(("loss", "accuracy"))


def _misspelled_type(name: str) -> str:
    """A supported type `name` may be a slip for: the same letters in another case (Caffe's
    types are case-sensitive), or one or two letters off at the same length give or take one.
    Forks' layers are often a supported name plus a prefix (Unpooling), so not just any close
    name."""
    same = [t for t in SUPPORTED_TYPES if t.lower() == name.lower()]
    alike = [t for t in SUPPORTED_TYPES if abs(len(t) - len(name)) <= 1]
    return did_you_mean(name, same, cutoff=0) if same else did_you_mean(name, alike, cutoff=0.8)


def _is_source(layer: Layer) -> bool:
    """A data layer (Data, ImageData, a Python layer, ...): a type mtsc does not know, reading
    no blob."""
    return not layer.bottoms and layer.type not in SUPPORTED_TYPES


def _needed(flow: _Flow, out: int) -> set[int]:
    """The values the output depends on, itself included."""
    needed: set[int] = set()
    stack = [out]
    while stack:
        v = stack.pop()
        if v in needed:
            continue
        needed.add(v)
        producer = flow.values[v].layer
        if producer is not None:
            stack.extend(flow.reads[producer])
    return needed


def _used(flow: _Flow, needed: set[int]) -> list[int]:
    """The layers the output needs, in file order."""
    return sorted({flow.values[v].layer for v in needed} - {None})


def _dropped_notes(layers: list[Layer], flow: _Flow, out: int, needed: set[int]) -> tuple[str, ...]:
    used = {flow.values[v].layer for v in needed}
    dropped = [
        f"{layer.name} ({layer.type})"
        for layer in layers
        if layer.index not in used and not _passes_through(layer)  # it makes no value
    ]
    unused = [
        flow.values[v].blob
        for v in range(len(flow.values))
        if flow.values[v].layer is None and v not in needed
    ]
    notes = []
    if dropped:
        notes.append(
            f"Not imported: the backbone ends at blob {flow.values[out].blob!r}, "
            f"which does not need {', '.join(dropped)}."
        )
    if unused:
        notes.append(f"Not imported: the unused input(s) {', '.join(map(repr, unused))}.")
    return tuple(notes)


# ----------------------------------------------------------------------------- building


class _Builder:
    def __init__(
        self, file: str, layers: list[Layer], flow: _Flow, out: int, needed: set[int]
    ) -> None:
        # OpenCV's samples name theirs `deploy.prototxt.txt`: the model is `deploy`
        self.graph = Graph(Path(file.removesuffix(".txt")).stem, source=file)
        self.layers = layers
        self.flow = flow
        self.out = out
        self.needed = needed
        self.node_of: dict[int, int] = {}  # value -> the node computing it
        # Gates reshaped to N x C that the IR keeps as C x 1 x 1: value -> (Caffe's shape, note)
        self.views: dict[int, tuple[Shape, str]] = {}
        self.names: dict[str, Span | None] = {}
        self.readers: dict[int, list[int]] = {}  # value -> the needed layers reading it
        for i, reads in enumerate(flow.reads):
            if any(w in needed for w in flow.writes[i]):
                for v in reads:
                    self.readers.setdefault(v, []).append(i)

    def build(self) -> Graph:
        used = [self.layers[i] for i in _used(self.flow, self.needed)]
        for layer in used:  # every layer first: an unsupported one is the news, not the inputs
            if not self._gives_inputs(layer):
                self._check_supported(layer)
        for v, value in enumerate(self.flow.values):
            if value.layer is None and v in self.needed:
                self._add_input(v, value.input)
        for layer in used:
            self._convert(layer)
        self.graph.outputs["backbone"] = self.node_of[self.out]
        return self.graph

    def _claim(self, name: str, span: Span | None) -> None:
        if name in self.names:
            first = self.names[name]
            where = f" (first at line {first.line})" if first else ""
            raise MtscError(span, f"the name {name!r} is used twice{where}")
        self.names[name] = span

    def _gives_inputs(self, layer: Layer) -> bool:
        """An Input layer, or a data layer whose settings give its images' shape."""
        first = self.flow.writes[layer.index][:1]
        return layer.type == "Input" or (
            _is_source(layer) and bool(first) and self.flow.values[first[0]].input is not None
        )

    def _add_input(self, v: int, decl: _Input) -> None:
        self._claim(decl.name, decl.span)
        shape = decl.shape()
        if decl.assumed:
            self.flow.warnings.append(Diagnostic(decl.dims_span, decl.assumed))
        node = Node(Op.INPUT, decl.name, {"shape": shape}, shape, decl.span)
        self.node_of[v] = self.graph.add(node)

    def _convert(self, layer: Layer) -> None:
        writes = self.flow.writes[layer.index]
        if self._gives_inputs(layer):
            for t, v in enumerate(writes):
                decl = self.flow.values[v].input
                if v in self.needed and decl is None:
                    raise layer.error(
                        f"top {layer.tops[t]!r} is read, but mtsc takes only a data layer's "
                        "first top (the images), as the network's input",
                        "top",
                        t,
                    )
                if v in self.needed:
                    self._add_input(v, decl)
            return
        if layer.type == "Upsample":
            self.node_of[writes[0]] = self._unpool(layer)
            return
        reads = self.flow.reads[layer.index]
        ins = [self.node_of[v] for v in reads]
        fused = self._fuse_scale(layer, ins)
        if fused is not None:
            self.node_of[writes[0]] = fused
            return
        caffe_shapes = [self.views[v][0] if v in self.views else self._shape(v) for v in reads]
        steps = CONVERTERS[layer.type](layer, caffe_shapes)
        if self._is_gate_view(layer, steps):
            channels = self.graph.node(ins[0]).shape[0]
            note = (
                f"{layer.name}: {layer.type} of the gate {layer.bottoms[0]!r} to N x {channels} "
                f"left out; mul reads it as N x {channels} x 1 x 1"
            )
            self.views[writes[0]] = ((channels,), note)
            self.node_of[writes[0]] = ins[0]
            return
        ins = self._gate_as_map(layer, ins)
        notes = [self.views[v][1] for v in dict.fromkeys(reads) if v in self.views]
        for top, v in enumerate(writes):
            top_steps = [step for step in steps if step.top == top]
            if top_steps and v in self.needed:
                self.node_of[v] = self._add_steps(layer, top_steps, ins, notes)

    def _add_steps(self, layer: Layer, steps: list[Step], ins: list[int], notes: list[str]) -> int:
        """The nodes of one top's steps, chained; returns the last."""
        last: int | None = None
        for step in steps:
            picked = ins if step.inputs is None else [ins[k] for k in step.inputs]
            if last is not None:
                picked = [last] if step.inputs is None else [last, *picked]
            shapes = [self.graph.node(n).shape for n in picked]
            name = layer.name + step.suffix
            try:
                attrs = spec_of(step.op).normalize(step.attrs)
            except OpError as err:  # a setting out of range: at the layer's parameter block
                raise layer.error(str(err), PARAM_FIELDS.get(layer.type)) from None
            try:
                shape = infer_shape(step.op, attrs, shapes)
            except OpError as err:
                raise layer.error(str(err)) from None
            self._claim(name, layer.block.field_span("name"))
            meta = {"var": layer.tops[step.top]}
            if notes and last is None:
                meta["note"] = "; ".join(notes)
            node = Node(step.op, name, attrs, shape, layer.block.span, meta=meta)
            last = self.graph.add(node, picked)
        return last

    def _shape(self, v: int) -> Shape:
        return self.graph.node(self.node_of[v]).shape

    def _is_gate_view(self, layer: Layer, steps: list[Step]) -> bool:
        """A flatten of N x C x 1 x 1 to N x C that only gates read (SE-BN-Inception reshapes
        its gate for Scale): the IR's mul takes the C x 1 x 1 blob, so no op is needed."""
        v = self.flow.writes[layer.index][0]
        readers = self.readers.get(v, [])
        if [s.op for s in steps] != [Op.FLATTEN] or v == self.out or not readers:
            return False
        source = self._shape(self.flow.reads[layer.index][0])
        if len(source) != 3 or source[1:] != (1, 1):
            return False
        for r in readers:
            reader = self.layers[r]
            uses = [k for k, read in enumerate(self.flow.reads[r]) if read == v]
            if reader.type not in GATES or uses != [GATES[reader.type][0]]:
                return False
        return True

    def _gate_as_map(self, layer: Layer, ins: list[int]) -> list[int]:
        """A per-channel gate in the rank of what it gates. A flat N x C gate of a feature map
        (InnerProduct excitations, as in SE-MobileNet) multiplies each channel: the IR's mul
        takes it as N x C x 1 x 1. A gate reshaped to N x C, which the IR keeps as N x C x 1 x 1
        (see _is_gate_view), gating a flat N x C blob is taken back to N x C."""
        reads = self.flow.reads[layer.index]
        if layer.type not in GATES or GATES[layer.type][0] >= len(reads):
            return ins
        k, gated = GATES[layer.type]
        gate, target = self._shape(reads[k]), self._shape(reads[gated])
        channels = gate[0]
        want = (channels, 1, 1) if len(target) == 3 else (channels,)
        if gate == want or math.prod(gate) != channels or len(target) not in (1, 3):
            return ins
        name = f"{layer.name}.gate"
        self._claim(name, layer.block.field_span("name"))
        shown = " x ".join(map(str, ("N", *want)))
        note = f"{name}: the gate {layer.bottoms[k]!r} as {shown}"
        meta = {"var": f"{layer.bottoms[k]}_{'map' if len(want) == 3 else 'flat'}", "note": note}
        node = Node(Op.RESHAPE, name, {"shape": want}, want, layer.block.span, meta=meta)
        return [self.graph.add(node, [n]) if i == k else n for i, n in enumerate(ins)]

    def _check_supported(self, layer: Layer) -> None:
        if layer.type == "Softmax":
            cut = (
                f" (--output {layer.bottoms[0]} imports the network up to it)"
                if layer.bottoms
                else ""
            )
            raise layer.error(
                f"a Softmax is supported only at the end of the network, where it is dropped{cut}",
                "type",
            )
        if _is_source(layer):
            raise layer.error(
                f"a data layer ({layer.type}) without transform_param's crop_size (or "
                "image_data_param's new_height and new_width) does not give the input's shape; "
                "declare the input with an Input layer (input_param { shape { dim: 1 dim: 3 "
                "dim: 224 dim: 224 } }) or with input and input_shape",
                "type",
            )
        if layer.type not in SUPPORTED_TYPES:
            raise layer.error(
                f"unsupported layer type {layer.type!r}{_misspelled_type(layer.type)}; "
                "mtsc supports "
                f"{', '.join(SUPPORTED_TYPES)} (to import the network up to a blob before "
                "this layer, use --output BLOB)",
                "type",
            )
        # SegNet's max pooling writes the argmax as a second top, the mask for unpooling.
        pooling = layer.param.pooling_param
        mask = layer.type == "Pooling" and pooling.pool == pooling.MAX and len(layer.tops) == 2
        if len(set(layer.tops)) != len(layer.tops):
            raise layer.error("writes a top twice; each top of a layer needs its own name", "top")
        if len(layer.tops) != 1 and not mask and layer.type != "Slice":
            raise layer.error(f"has {len(layer.tops)} tops; mtsc needs exactly one", "top")
        if mask and self.flow.writes[layer.index][1] in self.needed:
            v = self.flow.writes[layer.index][1]
            misread = [  # (a reader of a type mtsc lacks is named as that, when checked)
                f"layer {self.layers[r].name!r} ({self.layers[r].type})"
                for r in self.readers.get(v, [])
                if self.layers[r].type in SUPPORTED_TYPES
                and (self.layers[r].type != "Upsample" or self.flow.reads[r][1:] != [v])
            ]
            if misread or v == self.out:
                raise layer.error(
                    f"top {layer.tops[1]!r} is the max-pooling mask, which only the second "
                    "bottom of an Upsample layer (max unpooling) can read, not "
                    + (misread[0] if misread else "the network's output"),
                    "top",
                    1,
                )
        _check_bottom_count(layer)
        if layer.type == "Upsample":
            self._mask_pooling(layer)

    def _mask_pooling(self, layer: Layer) -> Layer:
        """The max Pooling layer whose mask an Upsample layer reads (its second bottom)."""
        v = self.flow.reads[layer.index][1]
        producer = self.flow.values[v].layer
        pooling = self.layers[producer] if producer is not None else None
        if pooling is None or pooling.type != "Pooling" or self.flow.writes[producer][1:] != [v]:
            raise layer.error(
                f"bottom {layer.bottoms[1]!r} must be the mask of a max Pooling layer (its second "
                "top): mtsc supports Upsample as SegNet's max unpooling",
                "bottom",
                1,
            )
        return pooling

    def _unpool(self, layer: Layer) -> int:
        """SegNet's Upsample: unpool bottom 0 where the pooling found the maxima of its input."""
        pooling = self._mask_pooling(layer)
        x, before = self.flow.reads[layer.index][0], self.flow.reads[pooling.index][0]
        steps = unpooling(layer, pooling, [self._shape(x), self._shape(before)])
        return self._add_steps(layer, steps, [self.node_of[x], self.node_of[before]], [])

    def _fuse_scale(self, layer: Layer, ins: list[int]) -> int | None:
        """A Scale with bias right after a BatchNorm is that batchnorm's affine part."""
        if layer.type != "Scale":
            return None
        p = layer.param.scale_param
        if len(ins) != 1 or not p.bias_term or p.axis != 1 or p.num_axes != 1:
            return None
        v = self.flow.reads[layer.index][0]
        producer = self.flow.values[v].layer
        if producer is None or self.layers[producer].type != "BatchNorm":
            return None
        node = self.graph.node(ins[0])
        if node.attrs["affine"] or v == self.out or self.readers.get(v) != [layer.index]:
            return None
        note = f"{node.name} + {layer.name}: BatchNorm and Scale fused into one affine batchnorm"
        attrs = {**node.attrs, "affine": True}
        self.graph.update(ins[0], attrs=attrs, meta={"var": layer.tops[0], "note": note})
        return ins[0]
