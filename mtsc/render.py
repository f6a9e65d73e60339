"""Rendering .dot files with Graphviz's `dot`, which is optional."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mtsc.errors import MtscError
from mtsc.fsutil import write_atomic

FORMATS = ("svg", "png", "pdf")
GRAPH_FILES = ".svg, .png, .pdf or .dot"


def graph_format(out: Path) -> str:
    """The format `out`'s extension names, in any case: "dot" or one of FORMATS."""
    if out.is_dir():
        raise MtscError(None, f"{out} is a folder; name a {GRAPH_FILES} file to draw into")
    fmt = out.suffix.lower().lstrip(".")
    if not fmt:
        raise MtscError(None, f"{out} has no extension; name a {GRAPH_FILES} file")
    if fmt != "dot" and fmt not in FORMATS:
        raise MtscError(None, f"{out}: cannot draw a graph as .{fmt}; name a {GRAPH_FILES} file")
    return fmt


def dot_available() -> bool:
    return shutil.which("dot") is not None


def how_to_render(*dot_paths: Path, fmt: str = "svg") -> str:
    """One line: which .dot files were written instead of pictures, and how to render them."""
    first = dot_paths[0]
    written = ", ".join(str(p) for p in dot_paths)
    return (
        f"graphviz's `dot` is not installed; wrote {written} only. Render with "
        f"`dot -T{fmt} {first} -o {first.with_suffix('.' + fmt)}` "
        "(apt-get install graphviz / brew install graphviz)"
    )


def start_render(dot_text: str, fmt: str) -> subprocess.Popen | None:
    """Start `dot` in the background (it runs while the caller does other work)."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    proc = subprocess.Popen(
        [exe, f"-T{fmt}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(dot_text.encode())
    proc.stdin.close()
    return proc


def finish_render(proc: subprocess.Popen, out: Path) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    data = proc.stdout.read()
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise MtscError(None, f"dot failed to render {out}: {err.decode(errors='replace').strip()}")
    write_atomic(out, data)


def render(dot_text: str, out: Path) -> None:
    """Write the graph to `out` in the format its extension names (.dot as it is)."""
    fmt = graph_format(out)
    if fmt == "dot":
        write_atomic(out, dot_text)
        return
    proc = start_render(dot_text, fmt)
    if proc is None:
        raise MtscError(
            None, f"graphviz's `dot` is needed to write {out}; write a .dot file instead"
        )
    finish_render(proc, out)
