"""Diagnostics: source spans, the user-facing `MtscError` and `Diagnostic` (a warning), and
`InternalError` for our own bugs.

Lives in `ir/` because every layer raises these and `ir` imports nothing of ours;
`mtsc.errors` re-exports them as the public names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# How much of a long list or string a message shows: a message must stay readable whatever
# value a typo made.
_SHOWN_ITEMS = 8
_SHOWN_CHARS = 40
# How much of a long source line an error quotes, and how much of it comes before the caret.
_SHOWN_LINE = 100
_SHOWN_BEFORE = 20


def source_lines(text: str) -> list[str]:
    """The lines as the lexers count them: split at `\\n` only. (`str.splitlines` also
    breaks at form feeds and Unicode separators, which would quote the wrong line.)"""
    return text.split("\n")


def describe_value(value: Any, describe_item: Callable[[Any], str] | None = None) -> str:
    """A compile-time value as the DSL writes it, for messages; long lists and strings are cut
    short. `describe_item` renders the items of a list (the DSL's lists hold tensors too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > _SHOWN_CHARS:
            return f'"{value[:_SHOWN_CHARS]}..." ({len(value)} characters)'
        return f'"{value}"'
    if isinstance(value, tuple):
        describe = describe_item or describe_value
        shown = [describe(v) for v in value[:_SHOWN_ITEMS]]
        if len(value) > _SHOWN_ITEMS:
            shown.append(f"... ({len(value)} items)")
        return f"({shown[0]},)" if len(value) == 1 else f"({', '.join(shown)})"
    return repr(value)


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file: 1-based line and column, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None
    # The full text, kept so errors can quote the line; left out of repr and comparisons.
    source: str | None = field(default=None, repr=False, compare=False)

    def source_line(self) -> str | None:
        if self.source is None:
            return None
        lines = source_lines(self.source)
        if 1 <= self.line <= len(lines):
            return lines[self.line - 1]
        return None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def _window(line: str, column: int) -> tuple[str, int]:
    """The part of a long line an error quotes, starting a little before `column`, with "..."
    where it was cut; and the column within it."""
    start = max(0, min(column - 1 - _SHOWN_BEFORE, len(line) - _SHOWN_LINE))
    end = start + _SHOWN_LINE
    head = "..." if start else ""
    tail = "..." if end < len(line) else ""
    return head + line[start:end] + tail, column - start + len(head)


class MtscError(Exception):
    """A mistake in the user's input: rendered as `file:line:col: message`, the line, a caret."""

    def __init__(self, span: Span | None, message: str, *, notes: tuple[str, ...] = ()):
        super().__init__(message)
        self.span = span
        self.message = message
        self.notes = notes
        # what was assumed on the way, which may be why it failed: rendered first
        self.warnings: tuple[Diagnostic, ...] = ()

    def render(self) -> str:
        before = "".join(w.render() + "\n" for w in self.warnings)
        return before + self._render_error()

    def _render_error(self) -> str:
        if self.span is None:
            head = f"error: {self.message}"
            return "\n".join((head, *(f"note: {n}" for n in self.notes)))
        parts = [f"{self.span}: error: {self.message}"]
        line = self.span.source_line()
        if line is not None:
            line = line.rstrip()
            column = self.span.column
            width = 1
            if self.span.end_line == self.span.line and self.span.end_column:
                width = max(1, self.span.end_column - column)
            if len(line) > _SHOWN_LINE:
                line, column = _window(line, column)
            width = min(width, max(1, len(line) - column + 1))
            # Tabs are copied into the caret's indent so it lines up however tabs are shown.
            before = line[: column - 1].ljust(column - 1)
            indent = "".join(c if c == "\t" else " " for c in before)
            parts.append("    " + line)
            parts.append("    " + indent + "^" * width)
        parts.extend(f"note: {n}" for n in self.notes)
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A warning: the command went on, but the user should know what was assumed."""

    span: Span | None
    message: str

    def render(self) -> str:
        # Same layout as an error (location, source line, caret), labelled as a warning.
        return MtscError(self.span, self.message)._render_error().replace("error: ", "warning: ", 1)


class InternalError(Exception):
    """A bug in mtsc itself (a pass broke an invariant), never a user mistake."""
