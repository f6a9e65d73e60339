"""The compiler driver: frontends, the pass pipeline, and the build outputs."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mtsc.codegen.dot import emit_dot, emit_supermodel_dot
from mtsc.codegen.torch_backbone import emit_backbone
from mtsc.codegen.torch_supermodel import emit_supermodel
from mtsc.errors import MtscError
from mtsc.fsutil import check_not_a_folder, remove_stale, undone_on_failure, write_atomic
from mtsc.ir.errors import Diagnostic
from mtsc.ir.graph import Graph
from mtsc.ir.passes.eliminate_dead import drop_unused_values, eliminate_dead
from mtsc.ir.passes.extract_backbone import extract_backbone
from mtsc.ir.passes.infer_shapes import infer_shapes
from mtsc.ir.passes.insert_routing import RoutingOptions, insert_routing
from mtsc.ir.passes.stack_heads import stack_heads
from mtsc.ir.stats import Summary, summarize
from mtsc.render import dot_available, finish_render, how_to_render, start_render

Pass = Callable[[Graph], Graph]

# The passes every model goes through after its frontend, in order.
FRONTEND_PIPELINE: tuple[Pass, ...] = (infer_shapes,)
# From the model (backbone + task heads) to the backbone alone.
BACKBONE_PIPELINE: tuple[Pass, ...] = (
    extract_backbone,
    eliminate_dead,
)


def run_pipeline(g: Graph, pipeline: tuple[Pass, ...]) -> Graph:
    for stage in pipeline:
        g = stage(g)
    return g


def _load_mtl(path: Path, options: dict) -> Graph:
    from mtsc.grammar.lower import lower_file

    if options.get("output"):
        raise MtscError(
            None, f"{path}: --output cuts .prototxt networks; a .mtl backbone ends at its return"
        )
    g = lower_file(path)
    warn(drop_unused_values(g))
    return g


def _load_prototxt(path: Path, options: dict) -> Graph:
    from mtsc.grammar.prototxt import import_prototxt

    imported = import_prototxt(path, output=options.get("output"))
    warn(imported.warnings)
    return imported.graph


def warn(warnings: Iterable[Diagnostic]) -> None:
    for warning in warnings:
        print(warning.render(), file=sys.stderr)


FRONTENDS: dict[str, Callable[[Path, dict], Graph]] = {
    ".mtl": _load_mtl,
    ".prototxt": _load_prototxt,
}


def model_suffix(path: Path) -> str:
    """The model file's kind: its suffix, with OpenCV's `deploy.prototxt.txt` a .prototxt."""
    return ".prototxt" if path.name.endswith(".prototxt.txt") else path.suffix


def load(path: str | Path, **options) -> Graph:
    """Run the frontend for the file's type and the frontend pipeline: the whole model."""
    path = Path(path)
    if path.is_dir():
        raise MtscError(None, f"{path} is a folder; give a model file (.mtl or .prototxt)")
    frontend = FRONTENDS.get(model_suffix(path))
    if frontend is None:
        kinds = ", ".join(sorted(FRONTENDS))
        raise MtscError(None, f"{path}: unknown model file type {path.suffix!r} (expected {kinds})")
    if not path.is_file():
        raise MtscError(None, f"{path}: no such file")
    return run_pipeline(frontend(path, options), FRONTEND_PIPELINE)


def model_graph(model: str | Path | Graph) -> Graph:
    """The model a command works on: a model file, loaded (its warnings printed), or a Graph a
    caller loaded once, copied (the passes change the graph they are given)."""
    return model.copy() if isinstance(model, Graph) else load(model)


def load_backbone(path: str | Path, **options) -> Graph:
    return run_pipeline(load(path, **options), BACKBONE_PIPELINE)


def supermodel_pipeline(options: RoutingOptions) -> tuple[Pass, ...]:
    """From the model to the multi-task supermodel."""
    return (functools.partial(insert_routing, options=options), stack_heads)


def load_supermodel(model: str | Path | Graph, options: RoutingOptions | None = None) -> Graph:
    return run_pipeline(model_graph(model), supermodel_pipeline(options or RoutingOptions()))


BUILD_OUTPUTS = tuple(
    f"{stem}{suffix}" for stem in ("backbone", "supermodel") for suffix in (".py", ".dot", ".svg")
)
"""Every file `build` may write to its folder."""


@dataclass
class BuildResult:
    graph: Graph
    summary: Summary
    supermodel: Graph | None = None
    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build(
    path: str | Path,
    out_dir: str | Path | None,
    *,
    render: bool = True,
    routing: RoutingOptions | None = None,
    output: str | None = None,
) -> BuildResult:
    """Compile a model. With `out_dir`, write backbone.py/.dot/.svg and, when the model has
    tasks, supermodel.py/.dot/.svg. Every file is written whole or not at all; then those of
    `BUILD_OUTPUTS` not written this time (an earlier build's) are removed. `output` cuts a
    prototxt network at that blob."""
    model = load(path, output=output)
    backbone = run_pipeline(model.copy(), BACKBONE_PIPELINE)
    result = BuildResult(backbone, summarize(backbone))
    if model.tasks:
        result.supermodel = run_pipeline(model, supermodel_pipeline(routing or RoutingOptions()))
    if out_dir is None:
        return result
    out_dir = Path(out_dir)
    # The graphs first, so Graphviz renders them in the background while the sources are made.
    graphs = {"backbone": emit_dot(backbone, title=f"{backbone.name} backbone")}
    if result.supermodel is not None:
        sm = result.supermodel
        graphs["supermodel"] = emit_supermodel_dot(sm, title=f"{sm.name} supermodel")
    suffixes = (".py", ".dot", ".svg") if render and dot_available() else (".py", ".dot")
    # checked before the first is written: a folder in the way must not leave some of them
    for stem in graphs:
        for suffix in suffixes:
            check_not_a_folder(out_dir / f"{stem}{suffix}")
    renders = {stem: start_render(dot, "svg") if render else None for stem, dot in graphs.items()}
    sources = {"backbone": emit_backbone(backbone, source_name=str(path)).text}
    if result.supermodel is not None:
        sources["supermodel"] = emit_supermodel(result.supermodel, source_name=str(path)).text
    files: dict[str, str | bytes] = {}
    for stem, py in sources.items():
        files |= {f"{stem}.py": py, f"{stem}.dot": graphs[stem]}
    for stem, proc in renders.items():
        if proc is not None:  # every picture made before the first file is replaced
            files[f"{stem}.svg"] = finish_render(proc, out_dir / f"{stem}.svg")
    with undone_on_failure(out_dir):  # a write failing midway (a full disk) removes the new files
        for name, data in files.items():
            write_atomic(out_dir / name, data)
            result.written.append(out_dir / name)
    unrendered = [out_dir / f"{stem}.dot" for stem, p in renders.items() if p is None]
    if render and unrendered:
        result.notes.append(how_to_render(*unrendered))
    result.removed = remove_stale(out_dir, BUILD_OUTPUTS, result.written)
    return result
