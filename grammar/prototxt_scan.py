"""Source positions in a Caffe prototxt. Protobuf's text parser reports none, so scan the text.

The scan finds the top-level fields (`input: "data"`) and the `layer { ... }` (or V1
`layers { ... }`) blocks in file order, which is the order of the parsed repeated field, with
the position of each block's own fields (`type:`, `bottom:`), so that an error points at the
line at fault, and of the fields one level down (`num_output:` in `convolution_param { ... }`),
which the importer checks against the schema. It runs after the text has parsed, so it may
assume the text is well formed.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from mtsc.ir.errors import Span

LAYER_KEYS = ("layer", "layers")

_TOKEN = re.compile(
    r"""(?P<skip>\s+|\#[^\n]*)
      | (?P<value>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<open>[{<])
      | (?P<close>[}>])
      | (?P<colon>:)
      | (?P<punct>[\[\],;])
      | (?P<word>[^\s{}<>:\[\],;"'\#]+)""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Block:
    """One `layer { ... }` block: where it starts, and where each of its own fields is."""

    span: Span
    fields: dict[str, tuple[Span, ...]]
    # The fields inside the block's sub-blocks, by the sub-block's name: `convolution_param`
    # -> `num_output` -> its spans. Repeated sub-blocks (`param { } param { }`) share one entry.
    inner: dict[str, dict[str, tuple[Span, ...]]]

    def field_span(self, name: str, index: int = 0) -> Span:
        """The span of the `index`-th `name:` line of the block, or the block's own span."""
        spans = self.fields.get(name, ())
        return spans[index] if index < len(spans) else self.span


@dataclass(frozen=True, slots=True)
class Layout:
    top: dict[str, tuple[Span, ...]]  # top-level fields, one span per occurrence
    blocks: dict[str, tuple[Block, ...]]  # "layer" and "layers" blocks, in file order

    def top_span(self, name: str, index: int = 0) -> Span | None:
        spans = self.top.get(name, ())
        return spans[index] if index < len(spans) else None


class _Positions:
    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def span(self, start: int, end: int) -> Span:
        line = bisect.bisect_right(self.starts, start)
        end_line = bisect.bisect_right(self.starts, end)
        return Span(
            self.file,
            line,
            start - self.starts[line - 1] + 1,
            end_line,
            end - self.starts[end_line - 1] + 1,
            source=self.text,
        )


def scan(text: str, file: str) -> Layout:
    pos = _Positions(text, file)
    top: dict[str, list[Span]] = defaultdict(list)
    blocks: dict[str, list[Block]] = defaultdict(list)
    fields: dict[str, list[Span]] | None = None  # the fields of the open layer block
    inner: dict[str, dict[str, list[Span]]] = {}  # the fields of its sub-blocks
    field_key = ""  # the last key of the open layer block
    sub: dict[str, list[Span]] | None = None  # the fields of the open sub-block
    block_key: str | None = None
    block_span: Span | None = None
    depth = 0
    prev = ""  # the previous token's kind: "key", "colon", "[", ",", ...
    top_key: tuple[str, Span] | None = None  # the last key at the top level
    last_field: tuple[list[Span], int] | None = None  # where a following value extends to
    for m in _tokens(text):
        kind = m.lastgroup
        if kind == "word" and prev not in ("colon", "[", ","):
            span = pos.span(m.start(), m.end())
            if depth == 0:
                top_key = (m.group(), span)
            elif depth == 1:
                field_key = m.group()
            target = {0: top, 1: fields, 2: sub}.get(depth)
            last_field = None
            if target is not None:
                target[m.group()].append(span)
                last_field = (target[m.group()], len(target[m.group()]) - 1)
            prev = "key"
            continue
        if kind in ("word", "value") and prev == "colon" and last_field is not None:
            spans, i = last_field
            if spans[i].line == pos.span(m.start(), m.end()).line:
                spans[i] = pos.span(_offset(pos, spans[i]), m.end())
        if kind == "open":
            if depth == 0 and top_key is not None and top_key[0] in LAYER_KEYS:
                block_key = top_key[0]
                direct = prev in ("key", "colon")
                block_span = top_key[1] if direct else pos.span(m.start(), m.end())
                fields, inner = defaultdict(list), {}
            elif depth == 1 and fields is not None:
                sub = inner.setdefault(field_key, defaultdict(list))
            depth += 1
        elif kind == "close":
            depth -= 1
            if depth == 1:
                sub = None
            if depth == 0 and fields is not None:
                nested = {k: _frozen(v) for k, v in inner.items()}
                blocks[block_key].append(Block(block_span, _frozen(fields), nested))
                fields = None
        last_field = last_field if kind == "colon" else None
        prev = kind if kind != "punct" else m.group()
    return Layout(_frozen(top), {k: tuple(v) for k, v in blocks.items()})


def bare_fields(text: str, key: str) -> list[tuple[int, int, str]]:
    """Every `key: VALUE` field whose value is unquoted, at any depth: (offset of the key, end
    of the value, the value), as the enum names of V1 layers' `type: CONVOLUTION`. Unlike
    `scan`, it runs before the parse, on any text."""
    found = []
    before: list[re.Match | None] = [None, None]  # the two previous tokens
    for m in _tokens(text):
        first, colon = before
        if (
            m.lastgroup == "word"
            and first is not None
            and (first.lastgroup, first.group()) == ("word", key)
            and colon is not None
            and colon.lastgroup == "colon"
        ):
            found.append((first.start(), m.end(), m.group()))
        before = [colon, m]
    return found


def too_deep(text: str, file: str, limit: int) -> Span | None:
    """Where the first brace that opens a block more than `limit` deep is, if one does. Runs
    before the parse, on any text."""
    depth = 0
    for m in _tokens(text):
        if m.lastgroup == "open":
            depth += 1
            if depth > limit:
                return _Positions(text, file).span(m.start(), m.end())
        elif m.lastgroup == "close":
            depth = max(0, depth - 1)
    return None


def _tokens(text: str) -> Iterator[re.Match]:
    """The tokens of `text`, without whitespace and comments; a character no token starts
    with (not well-formed text) is stepped over."""
    offset = 0
    while offset < len(text):
        m = _TOKEN.match(text, offset)
        offset = m.end() if m else offset + 1
        if m is not None and m.lastgroup != "skip":
            yield m


def _frozen(spans: dict[str, list[Span]]) -> dict[str, tuple[Span, ...]]:
    return {k: tuple(v) for k, v in spans.items()}


def _offset(pos: _Positions, span: Span) -> int:
    return pos.starts[span.line - 1] + span.column - 1
