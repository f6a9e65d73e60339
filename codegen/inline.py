"""Copying runtime source files into generated code, so generated files stay standalone.

A runtime file meant for inlining imports only the standard library, torch and (guarded)
triton. If it has a `# --- mtsc: inline below ---` marker, what is above is its docstring
and imports: the imports are hoisted to the top of the generated file, except those of mtsc
itself (the inlined code defines those names). Without a marker, the whole file after its
docstring is split the same way at the first line that is not an import.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from importlib import resources

MARKER = "# --- mtsc: inline below ---"


@dataclass(frozen=True, slots=True)
class InlineSource:
    imports: tuple[str, ...]  # top-level import statements (each possibly several lines)
    body: str


def runtime_source(filename: str) -> str:
    return resources.files("mtsc.runtime").joinpath(filename).read_text()


def split_inline(text: str) -> InlineSource:
    """Separate a runtime file's imports from the code to copy."""
    lines = text.splitlines()
    marker = next((i for i, line in enumerate(lines) if line.strip() == MARKER), None)
    # Only the part above the marker needs parsing (the whole file is slower to parse).
    head = "\n".join(lines[:marker]) if marker is not None else text
    imports: list[str] = []
    body_start = len(lines)
    for stmt in ast.parse(head).body:
        if _is_docstring(stmt):
            continue
        if _is_import_stmt(stmt):
            if not _imports_mtsc(stmt):
                imports.append("\n".join(lines[stmt.lineno - 1 : stmt.end_lineno]))
            continue
        body_start = stmt.lineno - 1
        break
    if marker is not None:
        body_start = marker + 1
    body = "\n".join(lines[body_start:]).strip("\n") + "\n"
    return InlineSource(tuple(imports), body)


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _is_import_stmt(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return True
    # A guarded optional import: try: import triton ... except ImportError: ...
    return (
        isinstance(stmt, ast.Try)
        and all(isinstance(s, (ast.Import, ast.ImportFrom, ast.Assign)) for s in stmt.body)
        and any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in stmt.body)
    )


def _imports_mtsc(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.ImportFrom):
        return (stmt.module or "").split(".")[0] == "mtsc"
    if isinstance(stmt, ast.Import):
        return any(alias.name.split(".")[0] == "mtsc" for alias in stmt.names)
    return False


def merge_imports(*groups: tuple[str, ...]) -> list[str]:
    """Imports of several inlined files, each once, in isort's order: standard library, then
    third party (each: `import x` before `from x import y`), then guarded imports."""
    seen: list[str] = []
    for group in groups:
        for imp in group:
            if imp not in seen:
                seen.append(imp)
    plain = [i for i in seen if "\n" not in i]
    guarded = [i for i in seen if "\n" in i]

    def module(imp: str) -> str:
        return imp.split()[1]

    def order(imps: list[str]) -> list[str]:
        straight = sorted((i for i in imps if i.startswith("import ")), key=module)
        froms = sorted((i for i in imps if i.startswith("from ")), key=module)
        return straight + froms

    stdlib = [i for i in plain if module(i).split(".")[0] in sys.stdlib_module_names]
    third = [i for i in plain if i not in stdlib]
    out = order(stdlib)
    if stdlib and third:
        out.append("")
    out += order(third)
    if guarded:
        out += ["", *guarded]
    return out
