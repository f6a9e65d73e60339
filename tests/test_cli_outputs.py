"""What the commands leave behind and say when they fail: no half-written run or output folder,
a `dot` that stops reading, a file where a folder should be, weights files that are not a
supermodel's checkpoint, --resume with --out, another command's folder or run, heads that do
not fit the data, every file `mtsc train` and `mtsc search` write in their "wrote" line, and the
outputs of an earlier build or prune that a new one removes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mtsc.cli import main
from mtsc.codegen.torch_supermodel import emit_supermodel
from mtsc.commands import refuse_another_commands_folder
from mtsc.driver import load_supermodel
from mtsc.errors import MtscError
from mtsc.runtime.data import open_dataset

MODEL = Path(__file__).parent / "models" / "two_tasks.mtl"
NO_TASKS = Path(__file__).parent / "fixtures" / "prototxt" / "small_numeric.prototxt"
TINY = MODEL.read_text()
SEARCH = ["--set", "warmup_steps=1", "--set", "search_steps=1", "--no-progress"]
TRAIN = ["--set", "steps=2", "--no-progress"]
OUT_OF_MEMORY = "cat >/dev/null\necho 'dot: out of memory' >&2\nexit 1\n"
PRUNED_WEIGHTS = (
    "error: {path} holds the weights of a pruned model, not of a supermodel\n"
    "note: --weights takes a search checkpoint, such as RUN/last.pt of `mtsc search`\n"
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def model_file() -> Path:
    return MODEL


@pytest.fixture(scope="module")
def config_file(workdir) -> Path:
    """Tiny `shapes` splits, rendered once into the module's cache; batches of 2."""
    data = {"size": 16, "n_train": 8, "n_val": 4, "n_test": 4, "cache_dir": str(workdir)}
    for split in ("train", "val"):
        open_dataset("shapes", split, **data)
    path = workdir / "run.toml"
    lines = ["batch_size = 2", "[data]"] + [f"{k} = {json.dumps(v)}" for k, v in data.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(workdir, model_file, config_file, run_mtsc):
    """One short `mtsc train`: its run folder (model.pt, last.pt: a pruned model's weights)
    and the finished process."""
    run = workdir / "trained"
    args = ["train", model_file, "--policy", "specific", "--config", config_file, *TRAIN]
    proc = run_mtsc(*args, "--out", run, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return run, proc


def fails(proc, stderr: str) -> None:
    assert (proc.returncode, proc.stderr) == (2, stderr), proc.stderr


def cli(args: list, capsys) -> tuple[int, str]:
    """`mtsc ARGS` in this process: the exit status and stderr."""
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err


def fake_dot(folder: Path, script: str = OUT_OF_MEMORY) -> dict[str, str]:
    """An environment whose `dot` fails, as a broken Graphviz would, after the sources are made
    (by default after reading the whole graph)."""
    folder.mkdir()
    dot = folder / "dot"
    dot.write_text(f"#!/bin/sh\n{script}")
    dot.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def long_backbone(layers: int = 600) -> str:
    """A model whose DOT text (about 190 KB) overfills a pipe's buffer: a `dot` that reads
    none of it makes the writer's next write fail, every time."""
    convs = [
        f"    x = conv({'x' if i else 'image'}, 8, k=3, p=1) | bn | relu" for i in range(layers)
    ]
    return "\n".join(["input image: 3x16x16", "backbone {", *convs, "    return x", "}", ""])


# ---------------------------------------------------------------------- nothing half-written


def test_a_search_failing_before_its_first_checkpoint_leaves_no_run_and_a_retry_works(
    tmp_path, model_file, config_file, run_mtsc, capsys
):
    run = tmp_path / "run"
    args = ["search", model_file, "--config", config_file, "--out", run, *SEARCH]
    failed = run_mtsc(*args, "--set", "batch_size=64")
    fails(
        failed,
        "error: the training split less its held-out part (held_out=0.2) has 6 samples, too "
        "few for batches of 64 on 1 process(es); use a smaller batch_size or more data\n",
    )
    assert not run.exists()
    assert cli(args, capsys) == (0, "")  # the retry (in this process: it is faster)
    assert (run / "last.pt").is_file() and (run / "supermodel.py").is_file()


def test_a_model_with_every_op_pinned_has_no_policy_to_search(tmp_path, config_file, capsys):
    model = tmp_path / "pinned.mtl"
    model.write_text(
        "input image: 3x16x16\n@specific\nbackbone {\n    @shared\n"
        "    a: x = conv(image, 8, k=3, p=1)\n    return x\n}\n"
        "tasks {\n    depth: fcn(classes=1, width=8)\n    normal: fcn(classes=3, width=8)\n}\n"
    )
    run = tmp_path / "run"
    args = ["search", model, "--config", config_file, "--out", run, *SEARCH]
    assert cli(args, capsys) == (
        2,
        "error: the supermodel routes no op (every conv and linear is pinned @shared or "
        "@specific): there is no policy to search; `mtsc train MODEL --policy shared` trains "
        "it as it is\n",
    )
    assert not run.exists()


def test_a_failed_search_in_a_folder_removes_only_what_it_added(tmp_path, model_file, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    data = tmp_path / "nyuv2"
    args = ["search", model_file, "--data", f"nyuv2:{data}", "--out", tmp_path, *SEARCH]
    assert cli(args, capsys) == (2, f"error: nyuv2: {data} does not exist\n")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_search_failing_after_a_checkpoint_keeps_its_run_to_resume(
    tmp_path, model_file, config_file, capsys
):
    run = tmp_path / "run"
    args = ["search", model_file, "--config", config_file, "--out", run, *SEARCH]
    diverging = ["--set", "weight_lr=1e30", "--set", "checkpoint_every=1"]
    status, err = cli([*args, "--set", "warmup_steps=4", *diverging], capsys)
    assert status == 2 and " is not finite at step 1;" in err
    assert {p.name for p in run.iterdir()} >= {"supermodel.py", "last.pt"}


@pytest.mark.parametrize("command", ["search", "train"])
def test_resume_without_a_checkpoint_writes_nothing(command, tmp_path, model_file, capsys):
    run = tmp_path / "run"
    policy = ["--policy", "shared"] if command == "train" else []
    status, err = cli([command, model_file, *policy, "--resume", run], capsys)
    assert (status, err) == (2, f"error: nothing to resume: {run / 'last.pt'} does not exist\n")
    assert not run.exists()


def test_a_train_failing_on_its_data_leaves_no_folder(tmp_path, model_file, run_mtsc):
    run, data = tmp_path / "run", tmp_path / "nyuv2"
    args = ["train", model_file, "--policy", "shared", "--data", f"nyuv2:{data}", "--out", run]
    fails(run_mtsc(*args, *TRAIN), f"error: nyuv2: {data} does not exist\n")
    assert not run.exists()


def test_a_held_out_part_too_small_for_a_batch_is_named(tmp_path, model_file, config_file, capsys):
    args = ["search", model_file, "--config", config_file, "--out", tmp_path / "run", *SEARCH]
    assert cli([*args, "--set", "batch_size=4"], capsys) == (
        2,
        "error: the held-out part of the training split (held_out=0.2) has 2 samples, too few "
        "for batches of 4 on 1 process(es); use a smaller batch_size or more data\n",
    )


def test_a_failed_train_in_a_folder_removes_only_what_it_added(
    tmp_path, model_file, config_file, capsys
):
    (tmp_path / "notes.txt").write_text("mine\n")
    args = ["train", model_file, "--policy", "shared", "--config", config_file, *TRAIN]
    status, err = cli([*args, "--out", tmp_path, "--set", "batch_size=64"], capsys)
    assert (status, err) == (
        2,
        "error: the training split has 8 samples, too few for batches of 64 on 1 process(es); "
        "use a smaller batch_size or more data\n",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_prune_whose_drawing_fails_leaves_no_folder(tmp_path, model_file, run_mtsc):
    out = tmp_path / "deploy"
    proc = run_mtsc(
        "prune", model_file, "--policy", "shared", "-o", out, env=fake_dot(tmp_path / "bin")
    )
    fails(proc, f"error: dot failed to render {out / 'model.svg'}: dot: out of memory\n")
    assert not out.exists()


def test_a_build_whose_drawing_fails_leaves_no_folder(tmp_path, model_file, run_mtsc):
    out = tmp_path / "out"
    proc = run_mtsc("build", model_file, "-o", out, env=fake_dot(tmp_path / "bin"))
    fails(proc, f"error: dot failed to render {out / 'backbone.svg'}: dot: out of memory\n")
    assert not out.exists()


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("echo 'dot: cannot load plugins' >&2\nexit 1\n", "dot: cannot load plugins"),
        ("exit 0\n", "it exited with status 0 before reading the whole graph"),
    ],
    ids=["crashed", "silent"],
)
@pytest.mark.parametrize("command", ["graph", "build"])
def test_a_dot_that_stops_reading_is_an_error_and_writes_nothing(
    command, script, said, tmp_path, capsys, monkeypatch
):
    model = tmp_path / "long.mtl"
    model.write_text(long_backbone())
    monkeypatch.setenv("PATH", fake_dot(tmp_path / "bin", script)["PATH"])
    out = tmp_path / ("long.svg" if command == "graph" else "out")
    drawn = out if command == "graph" else out / "backbone.svg"
    stage = ["--stage", "backbone"] if command == "graph" else []
    status, err = cli([command, model, *stage, "-o", out], capsys)
    assert (status, err) == (2, f"error: dot failed to render {drawn}: {said}\n")
    assert not out.exists()


def test_build_checks_every_output_before_writing_one(tmp_path, model_file, run_mtsc):
    (tmp_path / "hw" / "supermodel.py").mkdir(parents=True)
    proc = run_mtsc("build", model_file, "-o", "hw", "--no-svg", cwd=tmp_path)
    fails(proc, "error: cannot write hw/supermodel.py: it is a folder, not a file\n")
    assert [p.name for p in (tmp_path / "hw").iterdir()] == ["supermodel.py"]


@pytest.mark.parametrize(
    ("preview", "message"),
    [
        ("grid.png", "cannot write grid.png: it is a folder, not a file"),
        ("taken/grid.png", "cannot write taken/grid.png: taken is a file, not a folder"),
    ],
    ids=["folder", "below-a-file"],
)
def test_data_checks_the_preview_before_writing_the_dataset(preview, message, tmp_path, run_mtsc):
    (tmp_path / "grid.png").mkdir()
    (tmp_path / "taken").write_text("a file\n")
    args = ["data", "shapes", "--out", "ds", "--n-train", "2", "--n-val", "1", "--n-test", "1"]
    proc = run_mtsc(*args, "--size", "16", "--preview", preview, cwd=tmp_path)
    fails(proc, f"error: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "taken"]


def test_data_checks_that_the_preview_folder_is_writable(tmp_path, capsys, monkeypatch):
    """(As root every folder is writable: the check's answer is simulated.)"""
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    args = ["data", "shapes", "--out", tmp_path / "ds", "--n-train", "2", "--n-val", "1"]
    status, err = cli([*args, "--n-test", "1", "--preview", locked / "grid.png"], capsys)
    assert (status, err) == (
        2,
        f"error: cannot write {locked / 'grid.png'}: {locked} is not writable\n",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["locked"]


# ---------------------------------------------------------------------- a file for a folder


@pytest.mark.parametrize(
    ("command", "out"),
    [
        ("build", ["-o", "taken"]),
        ("prune", ["--policy", "shared", "-o", "taken"]),
        ("train", ["--policy", "shared", "--out", "taken"]),
        ("search", ["--out", "taken"]),
    ],
)
def test_a_file_where_the_output_folder_should_be(
    command, out, tmp_path, model_file, capsys, monkeypatch
):
    (tmp_path / "taken").write_text("a file\n")
    monkeypatch.chdir(tmp_path)
    status, err = cli([command, model_file, *out], capsys)
    assert (status, err) == (2, "error: cannot write to taken: it is a file, not a folder\n")
    assert (tmp_path / "taken").read_text() == "a file\n"


def test_a_file_above_the_output_folder(tmp_path, model_file, run_mtsc):
    (tmp_path / "taken").write_text("a file\n")
    proc = run_mtsc("build", model_file, "-o", "taken/out", cwd=tmp_path)
    fails(proc, "error: cannot write to taken/out: taken is a file, not a folder\n")


# ---------------------------------------------------------------------- --weights


@pytest.mark.parametrize("weights", ["model.pt", "last.pt"])
def test_prune_refuses_a_pruned_models_weights(weights, trained, tmp_path, model_file, capsys):
    path, out = trained[0] / weights, tmp_path / "deploy"
    args = ["prune", model_file, "--policy", "shared", "--weights", path, "-o", out]
    assert cli(args, capsys) == (2, PRUNED_WEIGHTS.format(path=path))
    assert not out.exists()


def test_train_refuses_a_pruned_models_weights(trained, tmp_path, model_file, run_mtsc):
    path, run = trained[0] / "model.pt", tmp_path / "run"
    args = ["train", model_file, "--policy", "shared", "--weights", path, "--out", run]
    fails(run_mtsc(*args, *TRAIN), PRUNED_WEIGHTS.format(path=path))
    assert not run.exists()


def test_a_weights_file_torch_did_not_write(tmp_path, model_file, capsys):
    path, out = tmp_path / "weights.json", tmp_path / "deploy"
    path.write_text('{"conv": [1, 2]}\n')
    args = ["prune", model_file, "--policy", "shared", "--weights", path, "-o", out]
    assert cli(args, capsys) == (
        2,
        f"error: cannot load {path}: it is not a weights file saved by torch, or it is damaged\n",
    )
    assert not out.exists()


class Trap:
    """Unpickling this would run `os.mkdir(path)`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_a_weights_file_holding_code_gets_torchs_reason_in_one_line(tmp_path, model_file, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": Trap(tmp_path / "ran")}, path)
    status, err = cli(["prune", model_file, "--policy", "shared", "--weights", path], capsys)
    assert status == 2
    prefix = f"error: cannot load {path} as a weights-only checkpoint: "
    assert err.startswith(prefix) and err.count("\n") == 1
    assert "posix.mkdir" in err and "Weights only load failed" not in err
    assert not (tmp_path / "ran").exists()


def test_a_folder_given_as_weights(tmp_path, model_file, capsys):
    args = ["prune", model_file, "--policy", "shared", "--weights", tmp_path, "-o", tmp_path / "o"]
    status, err = cli(args, capsys)
    assert (status, err) == (
        2,
        f"error: cannot load {tmp_path}: it is a folder, not a weights file\n",
    )


# ---------------------------------------------------------------------- --resume, --amp


@pytest.mark.parametrize("command", ["search", "train"])
def test_resume_with_another_out_is_refused(command, tmp_path, model_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = ["--policy", "shared"] if command == "train" else []
    status, err = cli([command, model_file, *policy, "--resume", "run", "--out", "other"], capsys)
    assert (status, err) == (
        2,
        "error: --out other with --resume run: a run is resumed in its own folder; drop --out\n",
    )
    assert list(tmp_path.iterdir()) == []


def test_train_resume_with_weights_is_refused(tmp_path, model_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", model_file, "--resume", "run", "--weights", "search/last.pt"]
    assert cli(args, capsys) == (
        2,
        "error: --weights starts a run from a supermodel's weights; a resumed run continues "
        "from run/last.pt: drop --weights\n",
    )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- another command's folder

# The files each command's folder holds here (a prune with --weights and --no-svg)
HELD = {
    "build": "backbone.py, backbone.dot, supermodel.py, supermodel.dot",
    "prune": "model.py, model.dot, policy.json, model.pt, report.txt",
    "train": "model.py, model.pt, last.pt, metrics.jsonl, eval.json, policy.json",
    "search": "supermodel.py, policy.json, policy.txt, last.pt, metrics.jsonl",
}


@pytest.fixture(scope="module")
def searched(workdir, model_file, config_file) -> Path:
    """One short `mtsc search`: its run folder."""
    run = workdir / "searched"
    args = ["search", model_file, "--config", config_file, "--out", run, *SEARCH]
    assert main([str(a) for a in args]) == 0
    return run


@pytest.fixture(scope="module")
def pruned(workdir, model_file, searched) -> Path:
    """`mtsc prune` of the searched policy and weights: its folder."""
    out = workdir / "pruned"
    args = ["prune", model_file, "--policy", searched / "policy.json", "--weights"]
    args += [searched / "last.pt", "-o", out, "--no-svg"]
    assert main([str(a) for a in args]) == 0
    return out


@pytest.fixture(scope="module")
def built(workdir, model_file) -> Path:
    """`mtsc build` of the model: its folder."""
    out = workdir / "built"
    assert main([str(a) for a in ["build", model_file, "-o", out, "--no-svg"]]) == 0
    return out


def folder_of(command: str, request) -> Path:
    """A copy of the folder of `mtsc COMMAND` (the module's: the tests must not change it)."""
    if command == "train":
        folder = request.getfixturevalue("trained")[0]
    else:
        fixture = {"search": "searched", "prune": "pruned", "build": "built"}[command]
        folder = request.getfixturevalue(fixture)
    return Path(shutil.copytree(folder, request.getfixturevalue("tmp_path") / command))


def files_below(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.mark.parametrize(
    ("command", "holder"),
    [
        ("train", "prune"),
        ("search", "prune"),
        ("prune", "train"),
        ("search", "train"),
        ("prune", "search"),
        ("train", "search"),
        ("build", "search"),
        ("build", "train"),
        ("build", "prune"),
        ("search", "build"),
        ("train", "build"),
        ("prune", "build"),
    ],
)
def test_a_command_refuses_another_commands_folder(
    command, holder, request, model_file, config_file, capsys
):
    folder = folder_of(holder, request)
    before = files_below(folder)
    options = {
        "prune": ["--policy", folder / "policy.json", "--no-svg", "-o"],
        "train": ["--policy", "shared", "--config", config_file, *TRAIN, "--out"],
        "search": ["--config", config_file, *SEARCH, "--out"],
        "build": ["--no-svg", "-o"],
    }
    assert cli([command, model_file, *options[command], folder], capsys) == (
        2,
        f"error: {folder} holds the outputs of `mtsc {holder}` ({HELD[holder]}); "
        f"give `mtsc {command}` another folder\n",
    )
    assert files_below(folder) == before


def test_a_users_files_are_no_other_commands(tmp_path, model_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    out_lines(["prune", model_file, "--policy", "shared", "-o", out, "--no-svg"], capsys)
    out_lines(["build", model_file, "-o", out / "build", "--no-svg"], capsys)
    assert {"notes.txt", "model.py", "report.txt", "build/supermodel.py"} <= set(files_below(out))


@pytest.mark.parametrize("command", ["search", "train"])
def test_a_users_own_model_and_policy_alone_are_no_other_commands(command, tmp_path):
    """A model.py or policy.json is what prune writes, but also what users name their own
    files; with prune's report beside them, the folder is prune's."""
    (tmp_path / "model.py").write_text("# mine\n")
    (tmp_path / "policy.json").write_text("{}\n")
    refuse_another_commands_folder(tmp_path, command)
    (tmp_path / "report.txt").write_text("")
    with pytest.raises(MtscError, match=r"holds the outputs of `mtsc prune` \(model.py, policy"):
        refuse_another_commands_folder(tmp_path, command)


@pytest.mark.parametrize(("command", "kind"), [("train", "search"), ("search", "train")])
def test_resuming_another_commands_run_is_refused(
    command, kind, request, model_file, config_file, capsys
):
    run = folder_of(kind, request)
    before = files_below(run)
    steps = TRAIN if command == "train" else SEARCH
    args = [command, model_file, "--config", config_file, *steps, "--resume", run]
    assert cli(args, capsys) == (
        2,
        f"error: {run / 'last.pt'} is a {kind} run, not a {command} run; "
        f"`mtsc {kind} MODEL --resume {run}` continues it\n",
    )
    assert files_below(run) == before


# ---------------------------------------------------------------------- heads and data

# Custom heads: one that ignores its option (always 2 channels), one that never upsamples.
HEADS = (
    "block two(x, input, nc) {\n    return upsample(conv(x, 2, k=1), input)\n}\n"
    "block raw(x, input, classes) {\n    return conv(x, classes, k=1)\n}\n"
)
# (the model's changes, old and new in turn; the first line of the error after the model's
# path; the data is `shapes` at 16x16: 6 classes, depth and normal)
HEAD_MISFITS = {
    "segment classes": (
        ("classes=7", "classes=3"),
        "14:14: error: segment: the model's head gives 3 channels, but shapes has 6 classes "
        "(set classes=6 in the tasks section)",
    ),
    "depth channels": (
        ("conv1x1(classes=1)", "conv1x1(classes=3)"),
        "15:14: error: depth: the model's head gives 3 channels, but depth on shapes needs 1 "
        "channel (set classes=1 in the tasks section)",
    ),
    "normal channels": (
        ("metric=depth\n", "metric=depth\n    normal: conv1x1(classes=1) loss=cosine\n"),
        "16:13: error: normal: the model's head gives 1 channel, but normal on shapes needs 3 "
        "channels (set classes=3 in the tasks section)",
    ),
    "a head's own channels": (
        ("tasks {", HEADS + "tasks {", "conv1x1(classes=7)", "two(nc=6)"),
        "20:14: error: segment: the model's head gives 2 channels, but shapes has 6 classes "
        "(make the head give 6 channels)",
    ),
    "a head that ignores its classes": (
        (
            "tasks {",
            "block fixed(x, input, classes) {\n    return upsample(conv(x, 2, k=1), input)\n}\n"
            "tasks {",
            "conv1x1(classes=7)",
            "fixed(classes=6)",
        ),
        "17:14: error: segment: the model's head gives 2 channels, but shapes has 6 classes (its "
        "block ignores classes=6: make it give 6 channels)",
    ),
    "a head with more channels than the data's classes, and no classes option": (
        (
            "tasks {",
            "block wide(x, input, nc) {\n    return upsample(conv(x, 8, k=1), input)\n}\ntasks {",
            "conv1x1(classes=7)",
            "wide(nc=6)",
        ),
        "17:63: error: segment: miou scores the 6 classes of shapes, but the head gives 8 "
        "channels (give the metric num_classes=8, or make the head give 6)",
    ),
    "a head without upsampling": (
        ("tasks {", HEADS + "tasks {", "conv1x1(classes=1)", "raw(classes=1)"),
        "21:14: error: depth: the model's head gives 1x8x8 on the shapes images (16x16); depth "
        "needs a map of the images' size (end the head with upsample(y, input))",
    ),
    "a head on flat features, declared for other images": (
        (
            "3x16x16",
            "3x8x8",
            "tasks {",
            "block flat(x, input, classes) {\n    return flatten(x) | linear(classes)\n}\ntasks {",
            "conv1x1(classes=7)",
            "flat(classes=7)",
        ),
        "17:14: error: segment: the model's head gives 7 features on the shapes images (16x16); "
        "segment needs a map of the images' size (end the head with upsample(y, input))",
    ),
    "a task the data lacks": (
        ("depth:", "edges:"),
        "15:5: error: task 'edges': shapes has no targets for it; it provides segment, depth, "
        "normal (name the task after one of them)",
    ),
    "a loss for other targets": (
        ("loss=l1", "loss=cross_entropy"),
        "15:38: error: depth: loss=cross_entropy cannot read depth maps, the depth targets of "
        "shapes; use loss=l1",
    ),
    "a metric for other targets": (
        ("metric=miou", "metric=depth"),
        "14:71: error: segment: metric=depth cannot read class labels, the segment targets of "
        "shapes; use metric=miou or metric=segmentation",
    ),
    "features sized by the declared input": (
        (
            "3x16x16",
            "3x8x8",
            "    return x",
            "    gate = flatten(x) | linear(16) | reshape(shape=(16, 1, 1))\n    return x * gate",
        ),
        "10:25: error: on the shapes images (16x16): linear1 would need 16,400 weights, but "
        "the model declares 4,112 at its input's 3x8x8; declare `input image: 3x16x16`, or make "
        "the size fixed before it (avgpool(x, global=true))",
    ),
}


@pytest.mark.parametrize("case", sorted(HEAD_MISFITS))
@pytest.mark.parametrize("command", ["search", "train"])
def test_tasks_that_do_not_fit_the_data_are_named_before_training(
    command, case, tmp_path, config_file, capsys
):
    """Heads, losses and metrics are checked against the data at its image size, so that a
    mistake is an error at the model's line, not a PyTorch traceback in the first step."""
    assert_refused_before_training(command, *HEAD_MISFITS[case], tmp_path, config_file, capsys)


def assert_refused_before_training(
    command, changes, first_line, tmp_path, config_file, capsys, extra=()
) -> None:
    """`mtsc COMMAND` on TINY with `changes` (old and new text in turn) and the `extra`
    arguments exits 2 with `first_line` after the model's path, and makes no run folder."""
    text = TINY
    for old, new in zip(changes[::2], changes[1::2], strict=True):
        assert old in text
        text = text.replace(old, new)
    model, run = tmp_path / "model.mtl", tmp_path / "run"
    model.write_text(text)
    policy = ["--policy", "shared"] if command == "train" else []
    args = [command, model, *policy, "--config", config_file, "--out", run, "--no-progress"]
    args += extra
    code, stderr = cli(args, capsys)
    assert (code, stderr.splitlines()[0]) == (2, f"{model}:{first_line}")
    assert not run.exists()


# (the model's change, the first line of the error after the model's path and line)
INPUT_MISFITS = {
    "grey input": (
        ("3x16x16", "1x16x16"),
        "3:1: error: input 'image' takes 1 channel, but the shapes images have 3 "
        "(declare `input image: 3x16x16`)",
    ),
    "a second input": (
        (
            "input image: 3x16x16\n",
            "input image: 3x16x16\ninput extra: 1x16x16\n",
            "conv(image,",
            "conv(concat(image, extra),",
        ),
        "4:1: error: the model declares 2 inputs (image, extra); `mtsc search` and `mtsc train` "
        "feed it one, the shapes images",
    ),
    "declared larger than the data": (
        ("3x16x16", "3x64x64", "conv(x, 16, k=3, s=2, p=1)", "conv(x, 16, k=20)"),
        "9:12: error: on the shapes images (16x16): b.conv1: conv2d: kernel 20x20 larger than the "
        "padded input 16x16",
    ),
}


@pytest.mark.parametrize("case", sorted(INPUT_MISFITS))
@pytest.mark.parametrize("command", ["search", "train"])
def test_a_model_that_cannot_take_the_datas_images_is_refused_before_training(
    command, case, tmp_path, config_file, capsys
):
    """The data's images are 16x16 RGB (the config): a model for grey images, or one whose
    convolutions need larger images, fails at its own line, not in PyTorch's first forward."""
    assert_refused_before_training(command, *INPUT_MISFITS[case], tmp_path, config_file, capsys)


@pytest.mark.parametrize("command", ["search", "train"])
def test_a_batchnorm_on_pooled_features_is_refused_at_batch_size_one(
    command, tmp_path, config_file, capsys
):
    """A batchnorm over a 1x1 map takes its statistics over the batch alone: at batch_size 1
    PyTorch refuses it in the first step; mtsc names the batchnorm before the run starts."""
    squeeze = "    x = x * (avgpool(x, global=true) | conv(4, k=1) | bn | relu | conv(16, k=1))\n"
    changes = ("    return x\n", squeeze + "    return x\n")
    first_line = (
        "10:55: error: bn1 normalises a 1x1 map on the shapes images, over the batch alone: "
        "batch_size 1 gives it one value per channel, which training cannot normalise; use a "
        "batch_size of 2 or more"
    )
    extra = ("--set", "batch_size=1")
    assert_refused_before_training(
        command, changes, first_line, tmp_path, config_file, capsys, extra
    )


# ---------------------------------------------------------------------- what the runs wrote


def test_train_lists_every_file_it_wrote(trained):
    run, proc = trained
    names = ["model.py", "model.pt", "last.pt", "metrics.jsonl", "eval.json", "policy.json"]
    assert proc.stdout.splitlines()[-1] == "wrote " + ", ".join(str(run / n) for n in names)
    assert {p.name for p in run.iterdir() if p.is_file()} == set(names)


def test_search_lists_every_file_it_wrote(tmp_path, model_file, config_file, capsys):
    run = tmp_path / "run"
    args = ["search", model_file, "--config", config_file, "--out", run, *SEARCH]
    assert main([str(a) for a in args]) == 0
    names = ["supermodel.py", "policy.json", "policy.txt", "last.pt", "metrics.jsonl"]
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[:2] == [
        "train data: shapes (rendered, 16x16) [train]: 8 samples",
        "val data:   shapes (rendered, 16x16) [val]: 4 samples",
    ]
    assert stdout.splitlines()[-1] == "wrote " + ", ".join(str(run / n) for n in names)
    assert {p.name for p in run.iterdir() if p.is_file()} == set(names)


def test_a_data_option_the_data_does_not_take_is_refused_in_the_config_before_the_run(
    tmp_path, model_file, capsys
):
    config = tmp_path / "run.toml"
    config.write_text("batch_size = 2\n[data]\nsize = 16\nclasses = 7\n")
    run = tmp_path / "run"
    status, stderr = cli(["search", model_file, "--config", config, "--out", run], capsys)
    assert (status, stderr.splitlines()[0]) == (
        2,
        f"{config}:4:1: error: bad config: shapes: unknown option 'classes' (accepted: augment, "
        "cache_dir, flip, n_test, n_train, n_val, objects, scales, seed, size, tasks)",
    )
    assert not run.exists()


# ---------------------------------------------------------------------- an earlier run's outputs


def out_lines(args: list, capsys) -> list[str]:
    """`mtsc ARGS` in this process, which must succeed: its stdout's lines."""
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_build_removes_the_outputs_of_an_earlier_one_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "out"
    out_lines(["build", MODEL, "-o", out, "--no-svg"], capsys)
    for name in ("backbone.svg", "supermodel.svg", "notes.txt", "supermodel.txt"):
        (out / name).write_text("an earlier build's, or the user's\n")
    lines = out_lines(["build", NO_TASKS, "-o", out, "--no-svg"], capsys)
    stale = ", ".join(str(out / n) for n in ("backbone.svg", "supermodel.py", "supermodel.dot"))
    assert lines[-2:] == [
        f"wrote {out / 'backbone.py'}, {out / 'backbone.dot'}",
        f"removed {stale}, {out / 'supermodel.svg'} of an earlier build",
    ]
    names = ["backbone.dot", "backbone.py", "notes.txt", "supermodel.txt"]
    assert sorted(p.name for p in out.iterdir()) == names
    lines = out_lines(["build", NO_TASKS, "-o", out, "--no-svg"], capsys)
    assert not lines[-1].startswith("removed")


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_build_changes_nothing_of_an_earlier_one(tmp_path, run_mtsc):
    out = tmp_path / "out"
    assert run_mtsc("build", MODEL, "-o", out, "--no-svg").returncode == 0
    before = folder_contents(out)
    proc = run_mtsc("build", NO_TASKS, "-o", out, env=fake_dot(tmp_path / "bin"))
    fails(proc, f"error: dot failed to render {out / 'backbone.svg'}: dot: out of memory\n")
    assert list(before) == ["backbone.dot", "backbone.py", "supermodel.dot", "supermodel.py"]
    assert folder_contents(out) == before


def test_a_failed_prune_changes_nothing_of_an_earlier_one(tmp_path, model_file, run_mtsc):
    out = tmp_path / "deploy"
    done = run_mtsc("prune", model_file, "--policy", "shared", "-o", out, "--no-svg")
    assert done.returncode == 0, done.stderr
    before = folder_contents(out)
    proc = run_mtsc(
        "prune", model_file, "--policy", "specific", "-o", out, env=fake_dot(tmp_path / "bin")
    )
    fails(proc, f"error: dot failed to render {out / 'model.svg'}: dot: out of memory\n")
    assert folder_contents(out) == before


def test_a_prune_removes_the_weights_and_picture_of_an_earlier_one(
    tmp_path, capsys, load_generated
):
    sm = tmp_path / "supermodel.py"
    sm.write_text(emit_supermodel(load_supermodel(MODEL), source_name=MODEL.name).text)
    weights = tmp_path / "last.pt"
    torch.save({"model": load_generated(sm).Supermodel().state_dict()}, weights)
    out = tmp_path / "deploy"
    out_lines(["prune", MODEL, "--policy", "shared", "--weights", weights, "-o", out], capsys)
    (out / "model.svg").write_text("<svg/>\n")  # as if `dot` drew it
    lines = out_lines(["prune", MODEL, "--policy", "specific", "-o", out, "--no-svg"], capsys)
    assert lines[-3:] == [
        "no --weights given: model.pt not written (the model starts from fresh weights)",
        f"removed {out / 'model.pt'} of an earlier prune (no --weights given)",
        f"removed {out / 'model.svg'} of an earlier prune (--no-svg given)",
    ]
    names = ["model.dot", "model.py", "policy.json", "report.txt"]
    assert sorted(p.name for p in out.iterdir()) == names
    args = ["prune", MODEL, "--policy", "specific", "-o", out, "--no-svg", "--json"]
    assert main([str(a) for a in args]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == []


def test_a_build_whose_write_fails_midway_removes_the_files_it_added(tmp_path, monkeypatch):
    import mtsc.driver

    real_write = mtsc.driver.write_atomic

    def disk_full_at_the_supermodel(path, data):
        if path.name == "supermodel.py":
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(mtsc.driver, "write_atomic", disk_full_at_the_supermodel)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine\n")
    with pytest.raises(OSError, match="No space left"):
        mtsc.driver.build(MODEL, tmp_path / "out", render=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    with pytest.raises(OSError, match="No space left"):
        mtsc.driver.build(MODEL, tmp_path / "new", render=False)
    assert not (tmp_path / "new").exists()
