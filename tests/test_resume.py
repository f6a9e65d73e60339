"""`--resume RUN` keeps the settings a run was started with (its config, `--data` and
`--share-bn`, saved in RUN/last.pt): a resumed run need not repeat its flags, a flag given
again with another value is refused, and the metrics log holds each step once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtsc.cli import main
from mtsc.runtime import search as search_module
from mtsc.runtime import train as train_module
from mtsc.runtime.checkpoint import save_checkpoint
from mtsc.runtime.data import open_dataset
from mtsc.runtime.trainer import RunLogger

TASKS = ["segment", "depth"]
FP16_WARNING = "warning: fp16 autocast is slow on a CPU; bf16 is the CPU's mixed precision"

pytestmark = pytest.mark.usefixtures("one_thread")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def logged(path: Path) -> list[dict]:
    """The metrics log without what differs between two runs of the same steps."""
    drop = ("time", "images_per_s")
    lines = path.read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


@pytest.fixture(scope="module")
def model_file(models_dir) -> Path:
    return models_dir / "two_tasks.mtl"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume")
    options = {"size": 16, "n_train": 32, "n_val": 8, "n_test": 8, "tasks": TASKS,
               "cache_dir": str(folder / "shapes")}  # fmt: skip
    for split in ("train", "val"):
        open_dataset("shapes", split, **options)
    path = folder / "run.toml"
    lines = ["batch_size = 4", "log_every = 1", "eval_batches = 1", "[data]"]
    path.write_text("\n".join(lines + [f"{k} = {json.dumps(v)}" for k, v in options.items()]))
    return path


def search_args(model_file, config_file) -> list[str]:
    return ["search", str(model_file), "--config", str(config_file), "--seed", "3",
            "--set", "warmup_steps=3", "--set", "search_steps=8", "--set", "eval_every=4",
            "--set", "checkpoint_every=3", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def interrupted_search(
    tmp_path_factory, model_file, config_file, run_cut_short
) -> tuple[Path, Path]:
    """(a whole search, the same search stopped after search step 5: checkpointed at step 3,
    steps 4 and 5 logged after it)."""
    folder = tmp_path_factory.mktemp("search")
    args = search_args(model_file, config_file)
    assert main([*args, "--out", str(folder / "whole")]) == 0

    run_cut_short(
        [*args, "--out", str(folder / "cut")],
        search_module,
        "_weight_step",
        lambda run: run.stage == "search" and run.step == 5,  # steps 1..5 done
    )
    state = load(folder / "cut" / "last.pt")
    assert (state["stage"], state["step"]) == ("search", 3)
    assert state["command"] == {"data": "shapes", "share_bn": False}
    assert [r["step"] for r in logged(folder / "cut" / "metrics.jsonl")][-2:] == [4, 5]
    return folder / "whole", folder / "cut"


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_a_resumed_search_keeps_its_settings_and_ends_like_the_whole_run(
    interrupted_search, model_file, tmp_path, capsys
):
    whole, cut = interrupted_search
    cut = copy_run(cut, tmp_path / "cut")
    assert main(["search", str(model_file), "--resume", str(cut), "--no-progress"]) == 0
    reference, resumed = load(whole / "last.pt"), load(cut / "last.pt")
    assert resumed["config"] == reference["config"]
    assert resumed["policy"] == reference["policy"]
    for name, value in reference["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert logged(cut / "metrics.jsonl") == logged(whole / "metrics.jsonl")  # each step once


def test_giving_the_same_settings_again_is_fine(
    interrupted_search, model_file, config_file, tmp_path
):
    cut = copy_run(interrupted_search[1], tmp_path / "cut")
    args = search_args(model_file, config_file)
    assert main([*args, "--data", "shapes", "--resume", str(cut)]) == 0
    assert load(cut / "last.pt")["policy"] == load(interrupted_search[0] / "last.pt")["policy"]


@pytest.mark.parametrize(
    ("extra", "differ"),
    [
        (["--set", "search_steps=150"], "search_steps (8 there, 150 here)"),
        (
            ["--quick", "--seed", "4"],
            "seed (3 there, 4 here), batch_size (4 there, 8 here), warmup_steps (3 there, "
            "30 here), search_steps (8 there, 30 here), derive_seed (3 there, 4 here), "
            "eval_every (4 there, 30 here), eval_batches (1 there, 4 here), "
            "checkpoint_every (3 there, 20 here)",
        ),
        (
            ["--amp", "bf16", "--derive", "sample"],
            "derive (argmax there, sample here), amp (none there, bf16 here)",
        ),  # fmt: skip
        (
            ["--data", "nyuv2:/data/nyuv2", "--share-bn"],
            "--data (shapes there, nyuv2:/data/nyuv2 here), --share-bn (false there, true here)",
        ),  # fmt: skip
    ],
)
def test_resume_refuses_other_settings(interrupted_search, model_file, capsys, extra, differ):
    cut = interrupted_search[1]
    before = (cut / "last.pt").read_bytes()
    code = main(["search", str(model_file), "--resume", str(cut), "--no-progress", *extra])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: --resume keeps the run's settings; these differ from {cut / 'last.pt'}: {differ}\n"
    )
    assert (cut / "last.pt").read_bytes() == before


@pytest.mark.parametrize("saved", ["none", "empty"])
def test_a_checkpoint_that_does_not_record_its_data_resumes_given_it(
    interrupted_search, model_file, tmp_path, capsys, saved
):
    """An API run records no --data (its datasets are objects), nor did an older mtsc:
    the data is asked for, not taken to be the built-in default."""
    cut = copy_run(interrupted_search[1], tmp_path / "cut")
    state = load(cut / "last.pt")
    if saved == "none":
        del state["command"]  # as written before --data was saved
    else:
        state["command"] = {}  # as mtsc.api.search writes it
    save_checkpoint(cut / "last.pt", state)
    resume = ["search", str(model_file), "--resume", str(cut), "--no-progress"]
    assert main(resume) == 2
    assert capsys.readouterr().err == (
        f"error: {cut / 'last.pt'} does not record the run's data (a run started from Python, "
        "or by an older mtsc): give --data as the run was started with\n"
    )
    assert main([*resume, "--data", "shapes"]) == 0
    assert capsys.readouterr().err == ""
    assert load(cut / "last.pt")["policy"] == load(interrupted_search[0] / "last.pt")["policy"]


def test_an_optimizer_state_that_does_not_fit_is_a_clear_error(
    interrupted_search, model_file, tmp_path, capsys
):
    """A checkpoint whose SGD state has other parameter groups (an mtsc from before PReLU
    slopes went undecayed, for one) is refused with its path, not a traceback."""
    cut = copy_run(interrupted_search[1], tmp_path / "cut")
    state = load(cut / "last.pt")
    groups = state["weight_opt"]["param_groups"]
    state["weight_opt"]["param_groups"] = groups + [{**groups[0], "params": []}]
    save_checkpoint(cut / "last.pt", state)
    assert main(["search", str(model_file), "--resume", str(cut), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cut / 'last.pt'}: its optimizer state does not fit this run (")
    assert err.endswith("); start a new run\n")


def _damage_config(state):
    state["config"] = [1, 2]


def _damage_command(state):
    state["command"] = {"data": 7, "share_bn": False}


def _damage_stage(state):
    state["stage"] = "polish"


def _damage_model(state):
    del state["model"]


def _damage_rng(state):
    state["rng"] = {}


def _damage_stream(state):
    state["streams"]["weights"] = {"epoch": "one"}


def _damage_tau(state):
    state["tau"] = "hot"


DAMAGES = {
    _damage_config: "its 'config' should be dict, not list",
    _damage_command: "its command setting data=7",
    _damage_stage: "its stage 'polish' is none of warmup, search, done",
    _damage_model: "it has no 'model'; start a new run",
    _damage_rng: "(KeyError: 'torch')",
    _damage_stream: "(ValueError: invalid literal for int() with base 10: 'one')",
    _damage_tau: "its 'tau' should be int or float, not str",
}


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.removeprefix("_damage_"))
def test_a_damaged_checkpoint_is_a_clear_error(
    interrupted_search, model_file, tmp_path, capsys, damage
):
    """A last.pt with a field missing or of the wrong type (damaged, or edited by hand) is an
    error naming the file and the field, at exit 2, not a traceback."""
    cut = copy_run(interrupted_search[1], tmp_path / "cut")
    state = load(cut / "last.pt")
    damage(state)
    save_checkpoint(cut / "last.pt", state)
    assert main(["search", str(model_file), "--resume", str(cut), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cut / 'last.pt'} is damaged")
    assert DAMAGES[damage] in err


def test_run_logger_rewinds_to_a_checkpoint(tmp_path):
    steps = [("warmup", 2), ("warmup", 4), ("search", 1), ("search", 2), ("search", 3)]
    lines = [{"stage": s, "step": n} for s, n in steps]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"stage": "sea'  # a torn last line
    (tmp_path / "metrics.jsonl").write_text(text)
    RunLogger(tmp_path).rewind(("warmup", "search", "done"), "search", 2)
    assert logged(tmp_path / "metrics.jsonl") == lines[:4]


# ---------------------------------------------------------------------- train


def train_args(model_file, config_file) -> list[str]:
    return ["train", str(model_file), "--config", str(config_file), "--seed", "3",
            "--set", "steps=6", "--set", "checkpoint_every=2", "--set", "eval_every=3",
            "--no-progress"]  # fmt: skip


def test_a_resumed_training_needs_no_policy_nor_its_flags(
    model_file, config_file, tmp_path, run_cut_short
):
    args = [*train_args(model_file, config_file), "--policy", "specific"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    # steps 1..5 done, checkpointed at step 4
    cut = [*args, "--out", str(tmp_path / "cut")]
    run_cut_short(cut, train_module, "_step", lambda run: run.step == 5)

    assert main(["train", str(model_file), "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    whole, resumed = (load(tmp_path / run / "last.pt") for run in ("whole", "cut"))
    assert (resumed["stage"], resumed["step"]) == ("done", 6)
    assert resumed["config"] == whole["config"] and resumed["metrics"] == whole["metrics"]
    for name, value in whole["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert logged(tmp_path / "cut" / "metrics.jsonl") == logged(
        tmp_path / "whole" / "metrics.jsonl"
    )


def test_train_policy_errors(model_file, config_file, tmp_path, capsys):
    args = train_args(model_file, config_file)
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "error: give the policy to train: --policy policy.json (or shared / specific)\n"
    )
    assert not (tmp_path / "run").exists()

    assert main([*args, "--policy", "specific", "--set", "steps=0", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main([*args, "--policy", "shared", "--resume", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume keeps the run's settings; these differ from {tmp_path / 'last.pt'}: "
        "steps (0 there, 6 here)\n"
    )
    assert main([*args, "--policy", "shared", "--set", "steps=0", "--resume", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume keeps the run's policy; --policy shared differs from "
        f"{tmp_path / 'policy.json'}\n"
    )


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_fp16_on_the_cpu_warns_once(model_file, config_file, tmp_path, capsys, amp):
    args = ["train", str(model_file), "--policy", "shared", "--config", str(config_file),
            "--set", "steps=1", "--set", "eval_every=0", "--amp", amp, "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "train")]) == 0
    search = ["search", str(model_file), "--config", str(config_file), "--set",
              "warmup_steps=1", "--set", "search_steps=1", "--set", "eval_every=0", "--amp", amp,
              "--no-progress"]  # fmt: skip
    assert main([*search, "--out", str(tmp_path / "search")]) == 0
    expected = f"{FP16_WARNING}\n" * 2 if amp == "fp16" else ""
    assert capsys.readouterr().err == expected


def test_the_api_resumes_with_the_runs_config(interrupted_search, model_file, tmp_path):
    from mtsc.api import load_supermodel, search
    from mtsc.errors import MtscError
    from mtsc.runtime.config import SearchConfig

    cut = copy_run(interrupted_search[1], tmp_path / "cut")
    data = load(cut / "last.pt")["config"]["data"]
    splits = [open_dataset("shapes", s, **data) for s in ("train", "val")]
    with pytest.raises(MtscError) as err:
        search(load_supermodel(model_file), *splits, cut, resume=True, search_steps=9)
    assert err.value.message == (
        f"--resume keeps the run's settings; these differ from {cut / 'last.pt'}: "
        "search_steps (8 there, 9 here)"
    )
    result = search(load_supermodel(model_file), *splits, cut, resume=True, progress=False)
    assert result.policy == load(interrupted_search[0] / "last.pt")["policy"]
    assert load(cut / "last.pt")["config"] == load(interrupted_search[0] / "last.pt")["config"]
    assert SearchConfig().search_steps != 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schedule": None}, "it has no 'schedule'; start a new run"),
        ({"step": True}, "its 'step' should be int, not bool"),
        ({"step": -1}, "its step or model weights are not valid"),
        ({"model": {"w": [1.0]}}, "its step or model weights are not valid"),
    ],
)
def test_a_damaged_training_checkpoint_is_named(tmp_path, change, message):
    from mtsc.errors import MtscError
    from mtsc.runtime.trainer import load_resumable

    state = {"model": {"w": torch.zeros(2)}, "tasks": TASKS, "optimizer": {}, "schedule": {},
             "step": 4, "stream": {}, "rng": {}}  # fmt: skip
    path = tmp_path / "last.pt"
    save_checkpoint(path, {**state, **change})
    with pytest.raises(MtscError) as err:
        load_resumable(path, "train")
    assert err.value.message == f"{path} is damaged: {message}"


def test_a_run_resumes_when_a_later_mtsc_writes_the_same_model_differently(
    interrupted_search, model_file, tmp_path
):
    """The run folder's supermodel.py is compared by its model fingerprint, not its text: the
    code of the same model may change between mtsc versions (and is then rewritten)."""
    cut = copy_run(interrupted_search[1], tmp_path / "cut")
    kept = cut / "supermodel.py"
    fresh = kept.read_text()
    assert "\n# model fingerprint: " in fresh
    kept.write_text(fresh.replace("\nimport ", "\n# as an older mtsc wrote it\nimport ", 1))
    assert main(["search", str(model_file), "--resume", str(cut), "--no-progress"]) == 0
    assert kept.read_text() == fresh
    assert load(cut / "last.pt")["policy"] == load(interrupted_search[0] / "last.pt")["policy"]


def test_a_fresh_run_into_a_killed_runs_folder_logs_from_an_empty_file(
    interrupted_search, model_file, config_file, tmp_path
):
    """A run killed before its first checkpoint leaves its log; the next run into the folder
    (allowed: there is nothing to resume) must not log after those lines."""
    run = tmp_path / "killed"
    run.mkdir()
    stale = {"time": 0.0, "stage": "warmup", "step": 7, "loss": 1.0}
    (run / "metrics.jsonl").write_text(json.dumps(stale) + "\n")
    assert main([*search_args(model_file, config_file), "--out", str(run)]) == 0
    assert logged(run / "metrics.jsonl") == logged(interrupted_search[0] / "metrics.jsonl")


def test_the_data_folder_is_recorded_absolute_so_a_resume_finds_it_from_anywhere(
    tmp_path, monkeypatch
):
    from mtsc.commands.search import absolute_data_spec

    monkeypatch.chdir(tmp_path)
    assert absolute_data_spec("shapes:sd") == f"shapes:{tmp_path / 'sd'}"
    assert absolute_data_spec("nyuv2:~/nyu") == f"nyuv2:{Path.home() / 'nyu'}"
    assert absolute_data_spec("shapes") == "shapes"


def test_a_checkpoint_write_removes_what_a_killed_write_left(tmp_path):
    killed = tmp_path / ".last.pt.x1y2.tmp"  # a kill between mkstemp and the rename
    killed.write_bytes(b"half a checkpoint")
    other = tmp_path / ".model.pt.a1b2.tmp"
    other.write_bytes(b"another file's")
    save_checkpoint(tmp_path / "last.pt", {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.pt.a1b2.tmp", "last.pt"]
