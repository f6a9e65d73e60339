"""Diagnostics: source spans, the user-facing `MtscError`, and `InternalError` for our own bugs.

Lives in `ir/` because every layer raises these and `ir` imports nothing of ours;
`mtsc.errors` re-exports them as the public names.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def source_lines(text: str) -> list[str]:
    """The lines as the lexers count them: split at `\\n` only. (`str.splitlines` also
    breaks at form feeds and Unicode separators, which would quote the wrong line.)"""
    return text.split("\n")


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


class MtscError(Exception):
    """A mistake in the user's input: rendered as `file:line:col: message`, the line, a caret."""

    def __init__(self, span: Span | None, message: str, *, notes: tuple[str, ...] = ()):
        super().__init__(message)
        self.span = span
        self.message = message
        self.notes = notes

    def render(self) -> str:
        if self.span is None:
            head = f"error: {self.message}"
            return "\n".join((head, *(f"note: {n}" for n in self.notes)))
        parts = [f"{self.span}: error: {self.message}"]
        line = self.span.source_line()
        if line is not None:
            width = 1
            if self.span.end_line == self.span.line and self.span.end_column:
                width = max(1, self.span.end_column - self.span.column)
            width = min(width, max(1, len(line) - self.span.column + 1))
            # Tabs are copied into the caret's indent so it lines up however tabs are shown.
            before = line[: self.span.column - 1].ljust(self.span.column - 1)
            indent = "".join(c if c == "\t" else " " for c in before)
            parts.append("    " + line.rstrip())
            parts.append("    " + indent + "^" * width)
        parts.extend(f"note: {n}" for n in self.notes)
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()


class InternalError(Exception):
    """A bug in mtsc itself (a pass broke an invariant), never a user mistake."""
