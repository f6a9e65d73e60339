"""Retraining the pruned model: `mtsc train` writes model.py, model.pt and eval.json; with
`--weights` it starts exactly where the searched supermodel is; runs are reproducible; user
mistakes get messages."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtsc.api import load_supermodel, search
from mtsc.cli import main
from mtsc.errors import MtscError
from mtsc.runtime import train as train_module
from mtsc.runtime.config import TrainConfig
from mtsc.runtime.data import open_dataset

TASKS = ["segment", "depth"]
# TrainConfig's defaults and the --quick values
LR, QUICK_STEPS = 0.05, 40


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def model_file(models_dir) -> Path:
    return models_dir / "two_tasks.mtl"


@pytest.fixture(scope="module")
def data_options(workdir) -> dict:
    options = {"size": 16, "n_train": 64, "n_val": 16, "n_test": 16, "tasks": TASKS,
               "cache_dir": str(workdir / "shapes")}  # fmt: skip
    for split in ("train", "val"):  # render once, before any subprocess reads the cache
        open_dataset("shapes", split, **options)
    return options


@pytest.fixture(scope="module")
def config_file(workdir, data_options) -> Path:
    path = workdir / "train.toml"
    lines = ["[data]"] + [f"{k} = {json.dumps(v)}" for k, v in data_options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def searched(workdir, model_file, data_options) -> Path:
    """A short search: its run folder has supermodel.py and last.pt."""
    run = workdir / "search"
    splits = [open_dataset("shapes", s, **data_options) for s in ("train", "val")]
    torch.manual_seed(0)
    model = load_supermodel(model_file, out_dir=run)
    search(model, *splits, run, progress=False, warmup_steps=8, search_steps=4, batch_size=4,
           eval_every=0, checkpoint_every=100)  # fmt: skip
    return run


def test_two_processes_train_and_rank_0_alone_writes_and_reports(workdir, model_file, config_file):
    """Under torchrun, as the search: one "validation:" and one "wrote" line, and the run's
    files written once (by rank 0), the weights those both ranks hold."""
    out = workdir / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "mtsc", "train", model_file, "--policy", "shared", "--config", config_file,
        "--out", out, "--no-progress", "--set", "steps=4", "--set", "eval_every=4",
        "--set", "eval_batches=1", "--set", "batch_size=4",
    ]  # fmt: skip
    done = subprocess.run(
        list(map(str, command)), capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("validation: ") == 1 and done.stdout.count("wrote ") == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "eval.json", "last.pt", "metrics.jsonl", "model.pt", "model.py", "policy.json",
    ]  # fmt: skip
    weights, state = load(out / "model.pt"), load(out / "last.pt")
    for key, value in weights.items():
        assert torch.equal(state["model"][key], value)


def test_quick_train_command_writes_model_weights_and_report(
    workdir, model_file, config_file, load_generated
):
    out = workdir / "quick"
    done = subprocess.run(
        [sys.executable, "-m", "mtsc", "train", str(model_file), "--policy", "shared", "--quick",
         "--config", str(config_file), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {out / 'model.py'}, {out / 'model.pt'}, {out / 'last.pt'}" in done.stdout

    source = (out / "model.py").read_text()
    assert "mtsc" not in "".join(line for line in source.splitlines() if "import" in line)
    net = load_generated(out / "model.py").MultiTaskModel()
    weights = load(out / "model.pt")
    net.load_state_dict(weights)  # strict: exactly the model's tensors
    net.eval()
    outputs = net(torch.zeros(2, 3, 16, 16))
    assert outputs["segment"].shape == (2, 7, 16, 16) and outputs["depth"].shape == (2, 1, 16, 16)

    logged = records(out / "metrics.jsonl")
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30, 40]
    for r in steps:  # the cosine schedule, from the learning rate down to 0
        expected = LR * 0.5 * (1 + math.cos(math.pi * r["step"] / QUICK_STEPS))
        assert math.isclose(r["lr"], expected, rel_tol=1e-6, abs_tol=1e-12)
    state = load(out / "last.pt")
    assert (state["stage"], state["step"]) == ("done", QUICK_STEPS)
    for key, value in weights.items():
        assert torch.equal(state["model"][key], value)

    report = json.loads((out / "eval.json").read_text())
    assert report["metrics"] == next(r["val"] for r in reversed(logged) if "val" in r)
    params = {name: p.numel() for name, p in net.named_parameters()}
    assert report["params"] == sum(params.values())
    for task in TASKS:  # all shared: the trunk, plus the task's own batchnorms and head
        own = [n for n in params if any(t in n for t in TASKS)]
        expected = sum(v for n, v in params.items() if n not in own or task in n)
        assert report["task_params"][task] == expected


MIXED = {
    "model": "two_tasks",
    "tasks": TASKS,
    "choices": {
        "a.conv1": {"segment": "specific", "depth": "shared"},
        "b.conv1": {"segment": "skip", "depth": "specific"},
    },
}


def test_weights_from_the_search_start_where_the_supermodel_is(
    searched, tmp_path, model_file, config_file, load_generated
):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(MIXED))  # every kind of candidate
    out = tmp_path / "run"
    code = main(["train", str(model_file), "--policy", str(policy_file), "--weights",
                 str(searched / "last.pt"), "--config", str(config_file), "--out", str(out),
                 "--set", "steps=0", "--no-progress"])  # fmt: skip
    assert code == 0
    net = load_generated(out / "model.py").MultiTaskModel()
    net.load_state_dict(load(out / "model.pt"))
    supermodel = load_generated(searched / "supermodel.py").Supermodel()
    supermodel.load_state_dict(load(searched / "last.pt")["model"])
    supermodel.load_policy(MIXED).set_mode("hard")
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = supermodel.eval()(images)
        got = net.eval()(images)
        fresh = load_generated(out / "model.py").MultiTaskModel().eval()(images)
    for task in TASKS:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fresh[task], expected[task], atol=1e-3)  # the check has teeth
    header = (out / "model.py").read_text().split("\n", 1)[0]
    assert header.endswith("Do not edit: rebuild with `mtsc train`.")
    # steps=0 trains nothing but still validates the weights it starts from
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(entry["step"], sorted(entry["val"])) for entry in logged] == [(0, sorted(TASKS))]
    assert json.loads((out / "eval.json").read_text())["metrics"] == logged[0]["val"]


def test_training_is_reproducible_with_a_seed(tmp_path, model_file, config_file):
    outs = [tmp_path / name for name in ("one", "two")]
    for out in outs:
        code = main(["train", str(model_file), "--policy", "specific", "--config",
                     str(config_file), "--out", str(out), "--seed", "4", "--set", "steps=3",
                     "--set", "batch_size=4", "--no-progress"])  # fmt: skip
        assert code == 0
    first, second = (load(out / "model.pt") for out in outs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_training_moves_every_weight(tmp_path, model_file, config_file):
    def weights_after(steps: int) -> dict:
        out = tmp_path / f"steps{steps}"
        code = main(["train", str(model_file), "--policy", "specific", "--config",
                     str(config_file), "--out", str(out), "--seed", "4", "--set",
                     f"steps={steps}", "--set", "batch_size=4", "--no-progress"])  # fmt: skip
        assert code == 0
        return load(out / "model.pt")

    start, trained = weights_after(0), weights_after(3)
    unmoved = [name for name in trainable(start) if torch.equal(start[name], trained[name])]
    assert not unmoved, f"training left {unmoved} unchanged"


def trainable(state: dict) -> list[str]:
    """The names of a saved model's parameters: all its tensors but batchnorm's statistics."""
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    return [name for name in state if not name.endswith(statistics)]


def test_an_interrupted_training_resumes_like_an_uninterrupted_one(
    tmp_path, model_file, config_file, run_cut_short
):
    args = ["train", str(model_file), "--policy", str(tmp_path / "policy.json"), "--config",
            str(config_file), "--seed", "3", "--set", "steps=6", "--set", "batch_size=4",
            "--set", "checkpoint_every=1", "--set", "eval_every=3", "--no-progress"]  # fmt: skip
    (tmp_path / "policy.json").write_text(json.dumps(MIXED))
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    # steps 1..4 done and checkpointed
    cut = [*args, "--out", str(tmp_path / "cut")]
    run_cut_short(cut, train_module, "_step", lambda run: run.step == 4)
    assert load(tmp_path / "cut" / "last.pt")["step"] == 4

    assert main([*args, "--resume", str(tmp_path / "cut")]) == 0
    whole, resumed = (load(tmp_path / run / "last.pt") for run in ("whole", "cut"))
    assert (resumed["stage"], resumed["step"]) == ("done", 6)
    assert resumed["metrics"] == whole["metrics"]
    for name, value in whole["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    for name, value in load(tmp_path / "whole" / "model.pt").items():
        assert torch.equal(load(tmp_path / "cut" / "model.pt")[name], value), name


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "{tmp}/none.pt"], "error: no such checkpoint: {tmp}/none.pt"),
        (["--policy", "{tmp}/bad.json"], "error: {tmp}/bad.json: the policy does not match "),
        ([], "error: give the run folder: --out DIR (or --resume DIR)"),
        (["--resume", "{tmp}"], "error: nothing to resume: {tmp}/last.pt does not exist"),
    ],
)
def test_train_command_errors(tmp_path, model_file, config_file, capsys, extra, message):
    (tmp_path / "bad.json").write_text(json.dumps({**MIXED, "model": "other"}))
    extra = [a.format(tmp=tmp_path) for a in extra]
    args = ["train", str(model_file), "--policy", "shared", "--config", str(config_file), *extra]
    if "--resume" not in extra and extra:
        args += ["--out", str(tmp_path / "run"), "--set", "steps=0"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(message.format(tmp=tmp_path))


def test_train_refuses_an_existing_run_without_resume(tmp_path, model_file, config_file, capsys):
    args = ["train", str(model_file), "--policy", "shared", "--config", str(config_file),
            "--out", str(tmp_path), "--set", "steps=0", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path} already holds a run; use --resume to continue it\n"
    )


def test_api_resume_of_a_search_run_is_refused(
    searched, tmp_path, model_file, config_file, data_options, load_generated
):
    """A search's checkpoint (its policy's optimizer tells it) is not a training's of another
    model."""
    out = tmp_path / "trained"
    assert main(["train", str(model_file), "--policy", "shared", "--config", str(config_file),
                 "--out", str(out), "--set", "steps=0", "--no-progress"]) == 0  # fmt: skip
    net = load_generated(out / "model.py").MultiTaskModel()
    run = Path(shutil.copytree(searched, tmp_path / "search"))
    splits = [open_dataset("shapes", s, **data_options) for s in ("train", "val")]
    with pytest.raises(MtscError) as err:
        train_module.train(net, *splits, TrainConfig(steps=1, batch_size=4), run, resume=True,
                           progress=False)  # fmt: skip
    assert err.value.message == (
        f"{run / 'last.pt'} is a search run, not a train run; "
        f"`mtsc search MODEL --resume {run}` continues it"
    )


def test_each_command_prints_a_model_warning_once(tmp_path, model_file, config_file, capsys):
    """A command loads its model once: search, train and the pruned graph each print the
    unused value's warning once, and so does a second command in the same process."""
    spare = "    spare: y = conv(x, 4, k=1)\n    return x"
    text = model_file.read_text().replace("    return x", spare)
    unused = tmp_path / "unused.mtl"
    unused.write_text(text)
    steps = ["--set", "warmup_steps=1", "--set", "search_steps=1", "--set", "batch_size=4"]
    commands = [
        ["search", unused, "--config", config_file, "--out", tmp_path / "s", *steps,
         "--set", "eval_every=0"],
        ["train", unused, "--policy", "shared", "--config", config_file, "--out", tmp_path / "t",
         "--set", "steps=0"],
        ["graph", unused, "--stage", "pruned", "--policy", "shared", "-o", tmp_path / "g.dot"],
    ]  # fmt: skip
    for command in commands + commands[-1:]:
        flags = ["--no-progress"] if command[0] != "graph" else []
        assert main([str(arg) for arg in command] + flags) == 0
        err = capsys.readouterr().err
        assert err.count("spare is never used") == 1, (command[0], err)
