"""Python source for the plain values an op's constructor takes, and for user text (model,
file and layer names) in generated comments and docstrings."""

from __future__ import annotations

from typing import Any


def _escaped(text: str, *, quotes: bool) -> str:
    """`text` with each unprintable character (a newline, a NUL) written as its escape and,
    with `quotes`, backslashes and double quotes escaped too."""
    out = []
    for ch in text:
        if quotes and ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def comment_text(text: str) -> str:
    """`text` fit for one `#` comment line: `a<newline>b` -> `a\\nb`."""
    return _escaped(text, quotes=False)


def docstring_text(text: str) -> str:
    """`text` fit inside a `\"\"\"` docstring, whose value it then is."""
    return _escaped(text, quotes=True)


def py_literal(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return f'"{_escaped(value, quotes=True)}"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(py_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    raise TypeError(f"no literal for {type(value).__name__}")


def call_args(args: tuple, kwargs: dict[str, Any]) -> str:
    parts = [py_literal(a) for a in args]
    parts += [f"{k}={py_literal(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)
