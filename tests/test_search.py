"""The policy search end to end on a tiny model: `mtsc search` and the Python API, the run
folder's files, determinism, SIGKILL and `--resume`, user errors, the parameter budget,
deriving by sampling, DDP with two processes on the CPU, and TensorBoard events."""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtsc.api import head_shapes, load_supermodel, search
from mtsc.cli import main
from mtsc.errors import MtscError
from mtsc.runtime.checkpoint import save_checkpoint
from mtsc.runtime.data import open_dataset
from mtsc.runtime.policy_format import CHOICES
from mtsc.runtime.search import derive_policy

MODEL = Path(__file__).parent / "models" / "two_tasks.mtl"
TINY = MODEL.read_text()
TASKS = ["segment", "depth"]
ROUTED = ["a.conv1", "b.conv1"]
STEPS = {
    "warmup_steps": 12,
    "search_steps": 40,
    "batch_size": 4,
    "eval_every": 15,
    "eval_batches": 2,
    "checkpoint_every": 2,
    "log_every": 1,
}
SEED = 3
# SearchConfig's defaults for the temperature schedule
TAU_INIT, TAU_DECAY, TAU_MIN = 5.0, 0.8, 0.1


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def records(path: Path) -> list[dict]:
    """The complete lines of a metrics log (a writer may be in the middle of the last one)."""
    try:
        lines = path.read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines]


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def mtsc_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "mtsc", *map(str, args)]


def run_mtsc(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        mtsc_command(*args), capture_output=True, text=True, env=cli_env(), timeout=timeout
    )


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def model_file() -> Path:
    return MODEL


@pytest.fixture(scope="module")
def data_options(workdir) -> dict:
    return {
        "size": 16,
        "n_train": 64,
        "n_val": 16,
        "n_test": 16,
        "tasks": TASKS,
        "cache_dir": str(workdir / "shapes"),
    }


@pytest.fixture(scope="module")
def datasets(data_options):
    """The train and val splits (rendering them fills the cache the subprocesses read)."""
    return tuple(open_dataset("shapes", split, **data_options) for split in ("train", "val"))


@pytest.fixture(scope="module")
def config_file(workdir, data_options, datasets) -> Path:
    path = workdir / "search.toml"
    lines = [f"{k} = {v}" for k, v in STEPS.items()] + ["[data]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in data_options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def cli_run(workdir, model_file, config_file) -> tuple[Path, str]:
    """One complete `mtsc search` in a subprocess: the reference of several tests."""
    out = workdir / "cli"
    done = run_mtsc(
        "search",
        model_file,
        "--config",
        config_file,
        "--seed",
        SEED,
        "--out",
        out,
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def api_search(model_file, datasets, run_dir: Path, **overrides):
    """The Python API's search from freshly (and reproducibly) initialised weights."""
    torch.manual_seed(0)
    model = load_supermodel(model_file, out_dir=run_dir)
    config = {**STEPS, "seed": SEED, **overrides}
    return model, search(model, *datasets, run_dir, progress=False, **config)


@pytest.fixture(scope="module")
def api_run(workdir, model_file, datasets):
    return api_search(model_file, datasets, workdir / "api")


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------- complete runs


def test_cli_search_writes_policy_table_checkpoint_and_log(cli_run, load_generated):
    out, stdout = cli_run
    policy = json.loads((out / "policy.json").read_text())
    assert set(policy) == {"model", "tasks", "choices"}
    assert policy["model"] == "two_tasks" and policy["tasks"] == TASKS
    assert list(policy["choices"]) == ROUTED
    assert all(set(per_task) == set(TASKS) for per_task in policy["choices"].values())
    assert all(c in CHOICES for per_task in policy["choices"].values() for c in per_task.values())

    state = load(out / "last.pt")
    assert state["policy"] == policy and state["stage"] == "done"
    supermodel = load_generated(out / "supermodel.py").Supermodel()
    supermodel.load_state_dict(state["model"])  # strict: exactly the supermodel's tensors

    # argmax derivation and the table's probabilities, recomputed from the saved logits
    table = (out / "policy.txt").read_text().splitlines()
    assert table[0].split() == ["op", *TASKS]
    for op in ROUTED:
        probs = softmax(state["model"]["policy." + op.replace(".", "_")].double().numpy())
        row = next(line for line in table if line.startswith(op + " ")).split()
        for t, task in enumerate(TASKS):
            choice = CHOICES[int(np.argmax(probs[t]))]
            assert policy["choices"][op][task] == choice
            assert row[1 + 2 * t : 3 + 2 * t] == [choice, f"{probs[t].max():.2f}"]
    assert "\n".join(table) in stdout and f"wrote {out / 'supermodel.py'}, " in stdout

    logged = records(out / "metrics.jsonl")
    steps = [(r["stage"], r["step"]) for r in logged if "loss" in r]
    warmup, search = STEPS["warmup_steps"], STEPS["search_steps"]
    assert steps == [("warmup", s) for s in range(1, warmup + 1)] + [
        ("search", s) for s in range(1, search + 1)
    ]
    for r in logged:
        if "loss" in r:
            assert math.isclose(r["loss"], r["loss_segment"] + r["loss_depth"], rel_tol=1e-5)
        if r["stage"] == "search" and "loss" in r:  # a policy step after every weight step
            tau = max(TAU_MIN, TAU_INIT * TAU_DECAY ** ((r["step"] - 1) / 100))
            assert math.isclose(r["tau"], tau, rel_tol=1e-9)
            assert {"policy_loss", "regularizer"} <= set(r)
    val = [(r["stage"], r["step"]) for r in logged if "val" in r]
    assert val == [("warmup", 12), ("search", 15), ("search", 30), ("search", 40)]
    last_val = next(r["val"] for r in reversed(logged) if "val" in r)
    assert 0 <= last_val["segment"]["miou"] <= 1 and last_val["depth"]["abs_err"] >= 0
    assert state["metrics"] == last_val

    umask = os.umask(0)
    os.umask(umask)
    for name in ("policy.json", "policy.txt", "last.pt"):  # not mkstemp's 0600
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_api_search_returns_the_policy_and_fills_the_run_folder(api_run):
    model, result = api_run
    assert result.policy == json.loads((result.run_dir / "policy.json").read_text())
    assert result.policy == model.export_policy()  # argmax of the trained logits
    # the model comes back as the searched network, ready to evaluate
    assert model.mode == "hard" and not model.training
    state = load(result.run_dir / "last.pt")
    assert state["policy"] == result.policy
    assert_same_weights(state["model"], model.state_dict())
    assert set(result.metrics) == set(TASKS) and result.metrics == state["metrics"]
    assert all(isinstance(r["step"], int) for r in records(result.run_dir / "metrics.jsonl"))


def test_api_search_keeps_the_models_source_in_the_run_folder(workdir, model_file, datasets):
    """As `mtsc search` does: supermodel.py beside last.pt, so the run can be resumed and its
    weights loaded, whichever folder the model was generated in."""
    model = load_supermodel(model_file)  # generated in the cache folder
    run_dir = workdir / "api-source"
    search(model, *datasets, run_dir, progress=False, **{**STEPS, "search_steps": 1})
    generated = Path(inspect.getsourcefile(type(model))).read_text()
    assert (run_dir / "supermodel.py").read_text() == generated


def test_a_loaded_supermodel_pickles_across_processes(own_cache_folder, model_file, tmp_path):
    """Without out_dir the code goes into the cache folder, one file per distinct code, in a
    module named after its digest: another process that loads the same model can unpickle
    a saved one."""
    model = load_supermodel(model_file)
    source = Path(inspect.getsourcefile(type(model)))
    assert source.parent.parent == own_cache_folder / "mtsc" / "supermodels"
    folders = set(source.parent.parent.iterdir())
    again = load_supermodel(model_file, seed=1)
    assert Path(inspect.getsourcefile(type(again))) == source
    assert set(source.parent.parent.iterdir()) == folders
    torch.save(model, tmp_path / "whole.pt")
    expected = model.eval()(torch.ones(1, 3, 16, 16))["segment"]
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from mtsc.api import load_supermodel\n"
        f"load_supermodel({str(model_file)!r})\n"
        f"model = torch.load({str(tmp_path / 'whole.pt')!r}, weights_only=False)\n"
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "got = model.eval()(torch.ones(1, 3, 16, 16))['segment']\n"
        "sys.exit(0 if torch.allclose(got, expected, atol=1e-5) else 1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_api_search_refuses_a_folder_of_another_models_run(workdir, model_file, datasets):
    run_dir = workdir / "api-other"
    run_dir.mkdir()
    (run_dir / "supermodel.py").write_text("# Generated by mtsc from x.mtl.\nclass Other: ...\n")
    with pytest.raises(MtscError) as err:
        search(load_supermodel(model_file), *datasets, run_dir, progress=False)
    assert err.value.message == (
        f"{run_dir} holds a run of another model, or one an earlier mtsc compiled (its "
        "supermodel.py differs): resume it with that mtsc, or start a new run"
    )
    assert sorted(p.name for p in run_dir.iterdir()) == ["supermodel.py"]


def test_search_is_deterministic_with_a_seed(api_run, workdir, model_file, datasets):
    model, result = api_run
    again, again_result = api_search(model_file, datasets, workdir / "api-again")
    assert again_result.policy == result.policy
    assert_same_weights(again.state_dict(), model.state_dict())

    other, _ = api_search(model_file, datasets, workdir / "api-seed", seed=SEED + 1)
    assert not torch.equal(other.policy["a_conv1"], model.policy["a_conv1"])


# ---------------------------------------------------------------------- kill and resume


def test_sigkill_mid_stage_then_resume_ends_like_an_uninterrupted_run(
    cli_run, workdir, model_file, config_file
):
    out = workdir / "killed"
    # a checkpoint after every step, so that the kill often comes during or near a write
    args = ["search", model_file, "--config", config_file, "--seed", SEED, "--no-progress",
            "--set", "checkpoint_every=1"]  # fmt: skip
    proc = subprocess.Popen(
        mtsc_command(*args, "--out", out), env=cli_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        if any(r["stage"] == "search" and r["step"] >= 3 for r in records(out / "metrics.jsonl")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own: {stderr.decode()}"

    interrupted = load(out / "last.pt")  # whole, whenever the kill came
    assert interrupted["stage"] == "search" and 2 <= interrupted["step"] < STEPS["search_steps"]
    assert not (out / "policy.json").exists()

    done = run_mtsc(*args, "--resume", out)
    assert done.returncode == 0, done.stderr
    reference, resumed = load(cli_run[0] / "last.pt"), load(out / "last.pt")
    assert resumed["policy"] == reference["policy"]
    assert_same_weights(resumed["model"], reference["model"])
    assert (out / "policy.json").read_text() == (cli_run[0] / "policy.json").read_text()


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


# ---------------------------------------------------------------------- user errors


def test_data_without_a_task_of_the_model(workdir, model_file, data_options):
    options = {**data_options, "tasks": ["segment"]}
    splits = tuple(open_dataset("shapes", s, **options) for s in ("train", "val"))
    with pytest.raises(MtscError) as err:
        api_search(model_file, splits, workdir / "no-depth")
    assert err.value.message == (
        "the training set has no targets for task(s) depth: its info names segment; the "
        "model's tasks are segment, depth"
    )


def test_a_head_with_fewer_classes_than_the_data(workdir, datasets):
    few = workdir / "few_classes.mtl"
    few.write_text(TINY.replace("classes=7", "classes=4"))
    with pytest.raises(MtscError) as err:
        api_search(few, datasets, workdir / "few-classes")
    assert err.value.message == (
        "segment: the model's head gives 4 channels, but shapes has 6 classes "
        "(set classes=6 in the tasks section)"
    )


def test_the_api_checks_what_the_heads_give_not_their_options(workdir, datasets):
    """The API has no model file to read: one forward of a validation image shows what each
    head gives, here a depth head that never upsamples to the images' size."""
    raw = workdir / "raw_head.mtl"
    head = "block raw(x, input, classes) {\n    return conv(x, classes, k=1)\n}\ntasks {"
    raw.write_text(TINY.replace("tasks {", head).replace("conv1x1(classes=1)", "raw(classes=1)"))
    with pytest.raises(MtscError) as err:
        api_search(raw, datasets, workdir / "raw-head")
    size = datasets[1][0][0].shape[1]
    assert err.value.message == (
        f"depth: the model's head gives 1x{size // 2}x{size // 2} on the shapes images "
        f"({size}x{size}); depth needs a map of the images' size (end the head with "
        "upsample(y, input))"
    )


def test_head_shapes_draws_no_random_numbers_and_keeps_the_mode(workdir, model_file, datasets):
    model = load_supermodel(model_file, out_dir=workdir / "probe").set_mode("search").train()
    state = torch.random.get_rng_state()
    image = datasets[1][0][0]
    shapes = head_shapes(model, image)
    assert shapes == {"segment": (7, *image.shape[1:]), "depth": (1, *image.shape[1:])}
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training


def test_head_shapes_says_when_the_images_do_not_fit(workdir, model_file):
    model = load_supermodel(model_file, out_dir=workdir / "probe-grey")
    with pytest.raises(MtscError) as err:
        head_shapes(model, torch.randn(1, 16, 16))
    assert err.value.message.startswith("the model cannot run on the data's 1x16x16 images: ")


def test_resume_with_another_model_file_is_refused(cli_run, tmp_path, config_file, capsys):
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    other = tmp_path / "two_tasks.mtl"
    other.write_text(TINY.replace("conv(x, 8, k=3", "conv(x, 12, k=3"))
    code = main(["search", str(other), "--config", str(config_file), "--resume", str(run)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: {run} holds a run of another model (its supermodel.py has another model "
        "fingerprint)\n"
    )


def test_api_resume_checks_the_model_against_the_checkpoint(cli_run, tmp_path, datasets):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(cli_run[0] / "last.pt", run / "last.pt")
    renamed = tmp_path / "other.mtl"
    renamed.write_text(TINY)  # the same network under another name
    with pytest.raises(MtscError) as err:
        search(load_supermodel(renamed), *datasets, run, resume=True, progress=False, **STEPS)
    assert err.value.message == (
        f"{run / 'last.pt'} is a search of model 'two_tasks' with tasks ['segment', 'depth'], "
        "not of 'other' with ['segment', 'depth'] (a model takes its file's name)"
    )

    wider = tmp_path / "wider" / "two_tasks.mtl"
    wider.parent.mkdir()
    wider.write_text(TINY.replace("conv(x, 16, k=3", "conv(x, 24, k=3"))
    with pytest.raises(MtscError) as err:
        search(load_supermodel(wider), *datasets, run, resume=True, progress=False, **STEPS)
    assert (
        err.value.message
        == f"{run / 'last.pt'} holds weights of a different network than this model"
    )


def test_api_resume_of_a_train_run_is_refused(tmp_path, model_file, datasets):
    """A training's checkpoint (its one optimizer tells it) is not a search's of no model."""
    run = tmp_path / "run"
    save_checkpoint(run / "last.pt", {"model": {}, "tasks": TASKS, "optimizer": {}, "step": 1})
    with pytest.raises(MtscError) as err:
        search(load_supermodel(model_file), *datasets, run, resume=True, progress=False, **STEPS)
    assert err.value.message == (
        f"{run / 'last.pt'} is a train run, not a search run; "
        f"`mtsc train MODEL --resume {run}` continues it"
    )


def test_existing_run_folder_needs_resume(cli_run, tmp_path, model_file, config_file, capsys):
    run = tmp_path / "run"
    shutil.copytree(cli_run[0], run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = tmp_path / "other.mtl"
    other.write_text(TINY.replace("conv(x, 8, k=3", "conv(x, 12, k=3"))
    code = main(["search", str(other), "--config", str(config_file), "--out", str(run)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: {run} already holds a run; use --resume to continue it\n"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # still resumable


def test_api_existing_run_folder_needs_resume(cli_run, tmp_path, model_file, datasets):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(cli_run[0] / "last.pt", run / "last.pt")
    with pytest.raises(MtscError) as err:
        search(load_supermodel(model_file), *datasets, run, progress=False, **STEPS)
    assert err.value.message == f"{run} already holds a run; use resume=True to continue it"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: give the run folder: --out DIR (or --resume DIR)\n"),
        (["--resume", "{tmp}"], "error: nothing to resume: {tmp}/last.pt does not exist\n"),
        (
            ["--resume", "{tmp}/run/last.pt"],
            "error: --resume takes the run's folder, not a file: --resume {tmp}/run\n",
        ),
    ],
)
def test_search_command_needs_a_run_folder(tmp_path, model_file, capsys, args, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")  # where a checkpoint would be
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["search", str(model_file), *args]) == 2
    assert capsys.readouterr().err == message.format(tmp=tmp_path)


class PoisonedDepth(torch.utils.data.Dataset):
    """The wrapped samples, with an infinite depth target from the `after`-th read on."""

    def __init__(self, dataset, after: int) -> None:
        self.dataset, self.after, self.reads = dataset, after, 0
        self.info = dataset.info

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, targets = self.dataset[index]
        self.reads += 1
        if self.reads > self.after:
            targets["depth"] = torch.full_like(targets["depth"], math.inf)
        return image, targets


def test_non_finite_loss_stops_naming_the_task_and_keeps_the_last_checkpoint(
    tmp_path, model_file, datasets
):
    train, val = datasets
    batch = STEPS["batch_size"]
    # the sixth batch, step index 5, after the read of item 0 that checks the data
    poisoned = PoisonedDepth(train, after=5 * batch + 1)
    with pytest.raises(MtscError) as err:
        api_search(model_file, (poisoned, val), tmp_path)
    assert err.value.message == (
        "the loss of task(s) depth is not finite at step 5; stopped, the last checkpoint "
        "written, if any, is kept (lower the learning rate or check the data)"
    )
    state = load(tmp_path / "last.pt")
    assert (state["stage"], state["step"]) == ("warmup", 4)
    assert all(v.isfinite().all() for v in state["model"].values() if v.is_floating_point())


def test_diverging_learning_rate_is_reported_by_the_command(
    tmp_path, model_file, config_file, capsys
):
    code = main(["search", str(model_file), "--config", str(config_file), "--out", str(tmp_path),
                 "--set", "weight_lr=1e30", "--no-progress"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the loss of task(s) ") and " is not finite at step " in err


# ---------------------------------------------------------------------- budget and derive


def test_budget_regularizer_matches_a_direct_computation(model_file):
    torch.manual_seed(1)
    model = load_supermodel(model_file)
    with torch.no_grad():
        for p in model.policy_parameters():
            p.copy_(torch.randn_like(p) * 2)
    sd = {k: v.numel() for k, v in model.state_dict().items()}
    tasks = len(TASKS)
    # parameters of each candidate, counted from the modules: (shared, one task's copy, one
    # task's skip); a.conv1 keeps the shape (identity skip), b.conv1 projects (1x1 conv + BN)
    cost = {
        "a_conv1": (sd["a_conv1.weight"], sd["a_conv1_specific.weight"] / tasks, 0),
        "b_conv1": (
            sd["b_conv1.weight"],
            sd["b_conv1_specific.weight"] / tasks,
            (sd["b_conv1_skip.0.weight"] + sd["b_conv1_skip.1.weight"]
             + sd["b_conv1_skip.1.bias"]) / tasks,
        ),
    }  # fmt: skip
    expected = 0.0
    for key, (shared, specific, skip) in cost.items():
        p = softmax(model.policy[key].detach().double().numpy())
        expected += (
            shared * (1 - np.prod(1 - p[:, 0])) + (specific * p[:, 1] + skip * p[:, 2]).sum()
        )
    fraction = expected / (tasks * sum(c[1] for c in cost.values()))
    for budget in (0.5, 0.2):
        reg = model.budget_regularizer(budget)
        assert math.isclose(reg.item(), (fraction - budget) ** 2, rel_tol=1e-5)
    reg.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy_parameters())


def test_budget_search_runs(tmp_path, model_file, datasets):
    _, result = api_search(
        model_file, datasets, tmp_path, budget=0.5, budget_weight=2.0, search_steps=6
    )
    logged = [r["regularizer"] for r in records(tmp_path / "metrics.jsonl") if "regularizer" in r]
    assert len(logged) == 6
    # the first policy step sees the untouched (flat) logits: the budget term, not the depth one
    flat = load_supermodel(model_file).budget_regularizer(0.5).item()
    assert math.isclose(logged[0], 2.0 * flat, rel_tol=1e-6)
    assert all(0 <= r <= 2.0 * 0.25 for r in logged)  # (fraction - 0.5) ** 2, fraction in [0, 1]
    assert logged[-1] != logged[0]
    assert load(tmp_path / "last.pt")["config"]["budget"] == 0.5
    assert result.policy == json.loads((tmp_path / "policy.json").read_text())


def test_derive_by_sampling(model_file):
    model = load_supermodel(model_file)  # all logits zero: a flat distribution
    argmax = derive_policy(model, "argmax")
    assert all(c == "shared" for per_task in argmax["choices"].values() for c in per_task.values())
    sampled = derive_policy(model, "sample", seed=7)
    assert sampled == derive_policy(model, "sample", seed=7)
    assert sampled != argmax
    assert set(sampled) == {"model", "tasks", "choices"} and list(sampled["choices"]) == ROUTED

    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    with torch.no_grad():
        model.policy["a_conv1"].copy_(torch.tensor(np.log(probs)))
    draws = [derive_policy(model, "sample", seed=s)["choices"]["a.conv1"] for s in range(400)]
    for t, task in enumerate(TASKS):
        counts = np.array([sum(d[task] == c for d in draws) for c in CHOICES]) / len(draws)
        assert np.abs(counts - probs[t]).max() < 0.08, (task, counts)

    with pytest.raises(ValueError, match="derive must be 'argmax' or 'sample', got 'best'"):
        derive_policy(model, "best")


# ---------------------------------------------------------------------- distributed

DDP_SCRIPT = """\
import os
import sys

import torch

import mtsc.runtime.search as search_module
import mtsc.runtime.trainer as trainer_module
from mtsc.cli import main

searched, saves = [], []
real_search, real_save = search_module.search, trainer_module.save_checkpoint


def spy_search(model, *args, **kwargs):
    searched.append(model)
    return real_search(model, *args, **kwargs)


def spy_save(path, state):
    saves.append(str(path))
    real_save(path, state)


search_module.search = spy_search
trainer_module.save_checkpoint = spy_save
code = main(sys.argv[1:])
params = {k: v.detach().clone() for k, v in searched[0].named_parameters()}
dump = os.path.join(os.environ["DUMP_DIR"], f"rank{os.environ['RANK']}.pt")
torch.save({"code": code, "params": params, "saves": saves}, dump)
"""


def test_two_processes_stay_in_sync_and_rank_0_writes(cli_run, tmp_path, model_file, config_file):
    script = tmp_path / "ddp_search.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        script, "search", model_file, "--config", config_file, "--seed", SEED, "--out", out,
        "--no-progress", "--set", "eval_batches=1",  # rank 1 evaluates no batch at all
    ]  # fmt: skip
    proc = subprocess.Popen(
        list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**cli_env(), "DUMP_DIR": str(tmp_path)},
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        # torchrun's workers live in sessions of their own: on SIGTERM it ends them itself
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the two processes hung: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    ranks = [load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["code"] for r in ranks] == [0, 0]
    assert_same_weights(ranks[0]["params"], ranks[1]["params"])  # policy logits included
    assert not torch.equal(ranks[0]["params"]["policy.a_conv1"], torch.zeros(2, 3))  # it learned

    assert ranks[1]["saves"] == [] and ranks[0]["saves"]
    assert set(ranks[0]["saves"]) == {str(out / "last.pt")}
    state = load(out / "last.pt")
    for name, value in ranks[0]["params"].items():
        assert torch.equal(state["model"][name], value)
    assert state["policy"] == json.loads((out / "policy.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == [
        "last.pt", "metrics.jsonl", "policy.json", "policy.txt", "supermodel.py",
    ]  # fmt: skip

    # one record per step and evaluation, as in a single process: rank 1 wrote none
    keys = [(r["stage"], r["step"], "val" in r) for r in records(out / "metrics.jsonl")]
    single = [(r["stage"], r["step"], "val" in r) for r in records(cli_run[0] / "metrics.jsonl")]
    assert keys == single
    last_eval = f"[search {STEPS['search_steps']}]"
    assert stdout.count("wrote ") == 1 and stdout.count(last_eval) == 1


# ---------------------------------------------------------------------- tensorboard


def test_tensorboard_events_are_written_when_installed(tmp_path, model_file, datasets):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pytest.skip("tensorboard is not installed")
    api_search(model_file, datasets, tmp_path, warmup_steps=2, search_steps=2)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_outputs_mixing_searches_like_the_default_weights_mixing(
    api_run, workdir, model_file, datasets
):
    """On a CPU the default ("auto") folds the mixture into the weights; mixing outputs (the
    fused mix3 on a GPU) is the same search: the same policy, and weights that differ by
    float32 rounding only."""
    model, result = api_run
    assert model.mixing == "weights"
    mixed, mixed_result = api_search(model_file, datasets, workdir / "api-o", mixing="outputs")
    assert mixed.mixing == "outputs"
    assert mixed_result.policy == result.policy
    expected = model.state_dict()
    for name, value in mixed.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-3, atol=1e-4, msg=name)


def test_cli_mixing_outputs_derives_the_cli_runs_policy(cli_run, workdir, model_file, config_file):
    out = workdir / "cli-outputs"
    done = run_mtsc(
        "search", model_file, "--config", config_file, "--seed", SEED, "--out", out,
        "--mixing", "outputs", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reference, _ = cli_run
    assert load(reference / "last.pt")["config"]["mixing"] == "auto"
    assert load(out / "last.pt")["config"]["mixing"] == "outputs"
    policy = json.loads((out / "policy.json").read_text())
    assert policy == json.loads((reference / "policy.json").read_text())


# ---------------------------------------------------------------------- MTSC_ROUTING


def triton_runs_here() -> bool:
    from mtsc.runtime import routing

    return routing.triton is not None and torch.cuda.is_available()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bogus", "error: MTSC_ROUTING must be 'triton', 'torch' or 'auto', got 'bogus'"),
        (
            "triton",
            "error: MTSC_ROUTING=triton needs CUDA tensors, got cpu; to run the kernels on the "
            "CPU, set TRITON_INTERPRET=1 before this module is imported",
        ),
    ],
)
def test_a_routing_setting_the_run_cannot_take_is_refused_up_front(
    value, message, tmp_path, model_file, config_file
):
    """Checked before the first step, in either mixing: with weights mixing (the CPU default)
    the mixture may never run, and a bad value used to pass unnoticed."""
    if value == "triton" and triton_runs_here():
        pytest.skip("triton runs on this machine's GPU")
    out = tmp_path / "run"
    done = subprocess.run(
        mtsc_command("search", model_file, "--config", config_file, "--out", out, "--no-progress"),
        capture_output=True,
        text=True,
        env={**cli_env(), "MTSC_ROUTING": value, "TRITON_INTERPRET": ""},
        timeout=120,
    )
    assert (done.returncode, done.stderr.strip()) == (2, message)
    assert not out.exists()
