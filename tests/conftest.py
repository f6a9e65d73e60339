"""Shared fixtures: the repository's folders, compiling `.mtl` text, importing generated code,
random batchnorm statistics, running the `mtsc` command, golden files and the `--accept` flag
that refreshes them, the linter for generated code, and one torch thread for modules of tiny
tensors."""

from __future__ import annotations

import difflib
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from mtsc.api import import_generated

REPO = Path(__file__).resolve().parent.parent
_module_ids = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--accept",
        action="store_true",
        help="rewrite the golden files under tests/golden/ from the current output",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `@pytest.mark.gpu` tests without CUDA (torch is imported only if there are any)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mtsc.api.load_supermodel` without `out_dir` writes into the cache folder: the
    tests' own, never the user's (subprocesses inherit it)."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return REPO / "examples"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return REPO / "tests" / "models"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return REPO / "tests" / "golden"


@pytest.fixture
def accept(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--accept"))


@pytest.fixture
def check_golden(golden_dir: Path, accept: bool) -> Callable[[str, str, str], None]:
    """`check_golden(actual, name, refresh)`: `actual` must equal `tests/golden/<name>` (with
    `--accept`, it becomes that file); a failure shows the diff and the `refresh` command."""

    def check(actual: str, name: str, refresh: str) -> None:
        golden = golden_dir / name
        if accept:
            golden.write_text(actual)
            return
        assert golden.exists(), f"{golden} is missing: create it with `{refresh}`"
        expected = golden.read_text()
        if actual != expected:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    actual.splitlines(keepends=True),
                    fromfile=str(golden),
                    tofile="generated",
                )
            )
            pytest.fail(
                f"the generated code differs from {name}. If the change is intended, refresh "
                f"the golden files with `{refresh}` and review their diff.\n{diff[:4000]}"
            )

    return check


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    more intra-op threads gain nothing there and contend with other processes for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def write_model(tmp_path: Path) -> Callable[..., Path]:
    """`write_model(text, name="model.mtl")` writes a model file into the test's tmp folder."""

    def write(text: str, name: str = "model.mtl") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def compile_text(write_model: Callable[..., Path]):
    """`compile_text(text)` runs the frontend and the backbone pipeline; returns the Graph."""
    from mtsc.driver import load

    def compile_(text: str, name: str = "model.mtl"):
        return load(write_model(text, name))

    return compile_


def import_path(path: Path) -> ModuleType:
    """Import a Python file under a fresh module name (generated files all share a name)."""
    return import_generated(path, f"mtsc_generated_{next(_module_ids)}")


@pytest.fixture(scope="session")
def load_generated() -> Callable[[Path], ModuleType]:
    return import_path


def randomize_statistics(net, seed: int) -> None:
    """Seeded random batchnorm statistics and affine parameters (not the identity), and
    random PReLU slopes (every task's different)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) - 0.5)


@pytest.fixture(scope="session")
def randomize_norms() -> Callable[..., None]:
    return randomize_statistics


def signature(g) -> list[tuple]:
    """A graph's nodes in topological order by what they compute and are called (no spans),
    then its outputs and tasks: equal signatures mean the same model."""
    rows = []
    for nid, node in g.nodes():
        inputs = tuple(g.node(i).name for i in g.inputs(nid))
        rows.append((node.op, node.name, node.attrs, node.shape, inputs, node.sharing, node.task))
    outputs = {key: g.node(nid).name for key, nid in g.outputs.items()}
    tasks = [(t.name, str(t.head), str(t.loss), str(t.metric), t.weight) for t in g.tasks]
    return [*rows, ("outputs", outputs), ("tasks", tasks)]


@pytest.fixture(scope="session")
def graph_signature():
    return signature


@pytest.fixture(scope="session")
def run_mtsc() -> Callable[..., subprocess.CompletedProcess]:
    """`run_mtsc(*args, cwd=None, env=None)`: `python -m mtsc ARGS` as a subprocess."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
        return subprocess.run(
            [sys.executable, "-m", "mtsc", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd or REPO,
            env={**os.environ, **(env or {})},
            timeout=120,
        )

    return run


class Interrupted(Exception):
    """Raised inside a run to cut it off, as a crash or ^C would."""


@pytest.fixture(scope="session")
def run_cut_short() -> Callable[..., None]:
    """`run_cut_short(args, module, step_name, stop)`: `mtsc ARGS` in this process, stopped
    just before the step function `module.step_name` would run on a `run` where `stop(run)`."""
    from mtsc.cli import main

    def run(args: list[str], module: ModuleType, step_name: str, stop: Callable) -> None:
        step = getattr(module, step_name)

        def step_then_stop(state):
            if stop(state):
                raise Interrupted
            return step(state)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, step_name, step_then_stop)
            with pytest.raises(Interrupted):
                main(args)

    return run


@pytest.fixture(scope="session")
def ruff_check() -> Callable[..., None]:
    """`ruff_check(*files, cwd=None)`: the files pass `ruff check` with its default rules
    (not the project's configuration: generated code is checked as a user's project would)."""
    beside = Path(sys.executable).with_name("ruff")
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    assert ruff, "ruff is a dev dependency (pip install -e '.[dev]')"

    def check(*files: Path | str, cwd: Path | None = None) -> None:
        proc = subprocess.run(
            [ruff, "check", "--isolated", "--no-cache", *map(str, files)],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    return check
