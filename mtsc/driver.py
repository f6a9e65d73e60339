"""The compiler driver: frontends, the pass pipeline, and the build outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mtsc.codegen.dot import emit_dot
from mtsc.codegen.torch_backbone import emit_backbone
from mtsc.errors import MtscError
from mtsc.fsutil import write_atomic
from mtsc.ir.graph import Graph
from mtsc.ir.passes.eliminate_dead import eliminate_dead
from mtsc.ir.passes.infer_shapes import infer_shapes
from mtsc.ir.stats import Summary, summarize
from mtsc.render import finish_render, how_to_render, start_render

Pass = Callable[[Graph], Graph]

# The passes every backbone goes through after its frontend, in order.
BACKBONE_PIPELINE: tuple[Pass, ...] = (
    infer_shapes,
    eliminate_dead,
)


def _load_mtl(path: Path, options: dict) -> Graph:
    from mtsc.grammar.lower import lower_file

    return lower_file(path)


FRONTENDS: dict[str, Callable[[Path, dict], Graph]] = {
    ".mtl": _load_mtl,
}


def load(path: str | Path, **options) -> Graph:
    """Run the frontend for the file's type and the backbone pipeline."""
    path = Path(path)
    frontend = FRONTENDS.get(path.suffix)
    if frontend is None:
        kinds = ", ".join(sorted(FRONTENDS))
        raise MtscError(None, f"{path}: unknown model file type {path.suffix!r} (expected {kinds})")
    if not path.is_file():
        raise MtscError(None, f"{path}: no such file")
    g = frontend(path, options)
    for stage in BACKBONE_PIPELINE:
        g = stage(g)
    return g


@dataclass
class BuildResult:
    graph: Graph
    summary: Summary
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build(path: str | Path, out_dir: str | Path | None, *, render: bool = True) -> BuildResult:
    """Compile a model; with `out_dir`, write backbone.py, backbone.dot and backbone.svg."""
    g = load(path)
    result = BuildResult(g, summarize(g))
    if out_dir is None:
        return result
    out_dir = Path(out_dir)
    dot_text = emit_dot(g, title=f"{g.name} backbone")
    proc = start_render(dot_text, "svg") if render else None
    source = emit_backbone(g, source_name=str(path))
    for name, text in (("backbone.py", source.text), ("backbone.dot", dot_text)):
        write_atomic(out_dir / name, text)
        result.written.append(out_dir / name)
    if proc is not None:
        finish_render(proc, out_dir / "backbone.svg")
        result.written.append(out_dir / "backbone.svg")
    elif render:
        result.notes.append(how_to_render(out_dir / "backbone.dot"))
    return result
