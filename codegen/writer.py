"""An indentation-aware source builder that remembers which IR node each line came from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mtsc.codegen.pyliteral import comment_text, docstring_text


class SourceWriter:
    def __init__(self, indent: str = "    ") -> None:
        self._lines: list[str] = []
        self._level = 0
        self._indent = indent
        self.line_nodes: dict[int, int] = {}  # 1-based line number -> node id

    def line(self, text: str = "", *, node: int | None = None) -> None:
        self._lines.append(f"{self._indent * self._level}{text}" if text else "")
        if node is not None:
            self.line_nodes[len(self._lines)] = node

    def comment(self, text: str) -> None:
        """A `#` comment line; names in `text` may hold anything, a newline included."""
        self.line(f"# {comment_text(text)}")

    def docstring(self, text: str) -> None:
        """A one-line docstring whose value is `text`, whatever names it holds."""
        self.line(f'"""{docstring_text(text)}"""')

    def blank(self) -> None:
        if self._lines and self._lines[-1]:
            self._lines.append("")

    @contextmanager
    def indent(self) -> Iterator[None]:
        self._level += 1
        try:
            yield
        finally:
            self._level -= 1

    def extend(self, other: SourceWriter) -> None:
        """Append another writer's lines (at their own indentation) and their node map."""
        offset = len(self._lines)
        self._lines.extend(other._lines)
        for line, node in other.line_nodes.items():
            self.line_nodes[line + offset] = node

    def text(self) -> str:
        return "\n".join(self._lines).rstrip("\n") + "\n"
