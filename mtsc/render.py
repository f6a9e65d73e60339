"""Rendering .dot files with Graphviz's `dot`, which is optional."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Rendering:
    """A `dot` started by `start_render`, and whether it took the whole graph: one that
    stopped reading early (a crash, a broken install) must not leave a picture of part of it."""

    proc: subprocess.Popen
    read_all: bool


def start_render(dot_text: str, fmt: str) -> Rendering | None:
    """Start `dot` in the background (it runs while the caller does other work)."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    proc = subprocess.Popen(
        [exe, f"-T{fmt}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(dot_text.encode())
        proc.stdin.flush()
        read_all = True
    except BrokenPipeError:
        read_all = False  # finish_render reports it, with what dot said
    with contextlib.suppress(BrokenPipeError):  # close() flushes what the failed write left
        proc.stdin.close()
    return Rendering(proc, read_all)


def finish_render(rendering: Rendering, out: Path) -> bytes:
    """The rendered picture, for the caller to write with the rest of its files (`out` only
    names it in an error): a failed render must not leave some of them replaced."""
    proc = rendering.proc
    assert proc.stdout is not None and proc.stderr is not None
    data = proc.stdout.read()
    said = proc.stderr.read().decode(errors="replace").strip()
    status = proc.wait()
    if status != 0 or not rendering.read_all:
        raise MtscError(None, f"dot failed to render {out}: {said or why_silent(rendering)}")
    return data


def why_silent(rendering: Rendering) -> str:
    """What went wrong with a `dot` that failed without a word on stderr."""
    unread = "" if rendering.read_all else " before reading the whole graph"
    return f"it exited with status {rendering.proc.returncode}{unread}"


def render(dot_text: str, out: Path) -> None:
    """Write the graph to `out` in the format its extension names (.dot as it is)."""
    fmt = graph_format(out)
    if fmt == "dot":
        write_atomic(out, dot_text)
        return
    rendering = start_render(dot_text, fmt)
    if rendering is None:
        raise MtscError(
            None, f"graphviz's `dot` is needed to write {out}; write a .dot file instead"
        )
    write_atomic(out, finish_render(rendering, out))
