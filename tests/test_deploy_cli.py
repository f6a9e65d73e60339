"""`mtsc prune` and `mtsc stats`: the files a deployment consists of, the standalone model
(run where mtsc cannot be imported), the size table, and the errors users can make."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from mtsc.cli import main
from mtsc.codegen.torch_supermodel import emit_supermodel
from mtsc.deploy import baselines, baselines_json, prune_model, report_table, size_report
from mtsc.driver import load_supermodel
from mtsc.ir.passes.insert_routing import RoutingOptions
from mtsc.policy import routed_ops
from mtsc.report import human
from mtsc.runtime.policy_format import CHOICES

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "tests" / "models" / "deploy_residual.mtl"
OTHER_MODEL = REPO / "tests" / "models" / "deploy_linear.mtl"
TASKS = ("segment", "depth", "normal")


pytestmark = pytest.mark.usefixtures("one_thread")


def random_policy(seed: int) -> dict:
    sm = load_supermodel(MODEL)
    rng = random.Random(seed)
    choices = {
        op: {t: rng.choice(CHOICES if has_skip else CHOICES[:2]) for t in TASKS}
        for op, has_skip in routed_ops(sm).items()
    }
    return {"model": sm.name, "tasks": list(TASKS), "choices": choices}


def trained_supermodel(folder: Path, load_generated, model: Path = MODEL) -> nn.Module:
    """A supermodel with random weights and batchnorm statistics, as a search leaves it."""
    file = folder / "supermodel.py"
    file.write_text(emit_supermodel(load_supermodel(model), source_name=model.name).text)
    torch.manual_seed(0)
    sm = load_generated(file).Supermodel()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in sm.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return sm


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """`mtsc ARGS` in this process (the CLI's own entry point, exit status included)."""
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---------------------------------------------------------------------- prune


def test_prune_with_weights_writes_the_deployment(tmp_path, load_generated, run_mtsc):
    sm = trained_supermodel(tmp_path, load_generated)
    torch.save({"model": sm.state_dict(), "step": 7}, tmp_path / "last.pt")
    policy = random_policy(seed=1)
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    out = tmp_path / "deploy"
    result = run_mtsc(
        "prune", MODEL, "--policy", tmp_path / "policy.json",
        "--weights", tmp_path / "last.pt", "-o", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = {"model.py", "model.pt", "model.dot", "report.txt", "policy.json"}
    if shutil.which("dot"):
        written.add("model.svg")
        assert "<svg" in (out / "model.svg").read_text()
    assert {p.name for p in out.iterdir()} == written
    assert (out / "model.dot").read_text().startswith("digraph")
    assert json.loads((out / "policy.json").read_text()) == policy
    # listed in the order the files are written
    order = ["model.py", "model.dot", "policy.json", "model.pt", "report.txt", "model.svg"]
    listed = next(line for line in result.stdout.splitlines() if line.startswith("wrote "))
    assert listed == "wrote " + ", ".join(str(out / n) for n in order if n in written)

    pruned = prune_model(MODEL, policy)
    table = report_table(size_report(pruned.model), baselines(MODEL))
    assert (out / "report.txt").read_text() == table + "\n"
    assert table in result.stdout

    net = load_generated(out / "model.py").MultiTaskModel()
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sm.load_policy(policy).set_mode("hard").eval()
    with torch.no_grad():
        want, got = sm(x), net.eval()(x)
    for task in TASKS:
        torch.testing.assert_close(got[task], want[task], rtol=1e-5, atol=1e-5)

    # The same files, where mtsc cannot be imported: only torch.
    torch.save(x, tmp_path / "x.pt")
    standalone = textwrap.dedent(
        """
        import importlib.util
        import sys

        import torch

        assert importlib.util.find_spec("mtsc") is None, "mtsc is importable"
        folder = sys.argv[1]
        spec = importlib.util.spec_from_file_location("model", folder + "/model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        net = module.MultiTaskModel()
        net.load_state_dict(torch.load(folder + "/model.pt", weights_only=True), strict=True)
        net.eval()
        x = torch.load(sys.argv[2], weights_only=True)
        with torch.no_grad():
            outputs = net(x)
            alone = {t: net.forward_task(x, t) for t in net.TASKS}
        torch.save({"all": outputs, "alone": alone}, sys.argv[3])
        """
    )
    (tmp_path / "standalone.py").write_text(standalone)
    site = Path(torch.__file__).resolve().parent.parent
    # -S: no site-packages processing, so no .pth file installs mtsc's editable finder;
    # PYTHONPATH gives torch back. The folder is outside the repository.
    done = subprocess.run(
        [sys.executable, "-S", "standalone.py", str(out), "x.pt", "y.pt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = torch.load(tmp_path / "y.pt", weights_only=True)
    for task in TASKS:
        torch.testing.assert_close(result["all"][task], want[task], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result["alone"][task], result["all"][task], rtol=0, atol=0)


def test_prune_shared_needs_no_weights(tmp_path, capsys, load_generated):
    out = tmp_path / "hps"
    status, stdout, _ = run(["prune", MODEL, "--policy", "shared", "-o", out, "--no-svg"], capsys)
    assert status == 0
    assert "no --weights given: model.pt not written" in stdout
    assert not (out / "model.pt").exists()
    assert "this model is 1.00x its size" in (out / "report.txt").read_text()
    net = load_generated(out / "model.py").MultiTaskModel().eval()
    with torch.no_grad():
        outputs = net(torch.zeros(1, 3, 32, 32))
    assert {t: tuple(v.shape) for t, v in outputs.items()} == {
        "segment": (1, 5, 32, 32), "depth": (1, 1, 32, 32), "normal": (1, 3, 32, 32)
    }  # fmt: skip


def test_prune_json_reports_the_sizes(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["prune", MODEL, "--policy", "specific", "-o", out, "--no-svg", "--json"]
    status, stdout, _ = run(args, capsys)
    assert status == 0
    data = json.loads(stdout)
    report = size_report(prune_model(MODEL, "specific").model)
    assert data["total_params"] == report.total_params
    assert data["task_params"] == report.task_params
    assert sorted(Path(p).name for p in data["written"]) == sorted(
        ["model.py", "model.dot", "policy.json", "report.txt"]
    )
    assert (
        data["baselines"] == json.loads(json.dumps(baselines_json(baselines(MODEL))))["baselines"]
    )


def test_fold_bn_compares_with_folded_extremes(tmp_path, capsys):
    """All-shared with --fold-bn is the all-shared extreme itself, folded the same way."""
    out = tmp_path / "d"
    args = ["prune", MODEL, "--policy", "shared", "-o", out, "--no-svg", "--json", "--fold-bn"]
    status, stdout, _ = run(args, capsys)
    assert status == 0
    data = json.loads(stdout)
    folded = size_report(prune_model(MODEL, "shared", fold_bn=True).model)
    assert data["total_params"] == folded.total_params
    assert data["baselines"]["shared"]["total_params"] == folded.total_params
    assert folded.total_params < baselines(MODEL)["shared"].total_params  # the check has teeth
    assert "this model is 1.00x its size" in (out / "report.txt").read_text().splitlines()[7]


# ---------------------------------------------------------------------- stats


def test_stats_prints_the_table(capsys):
    status, stdout, _ = run(["stats", MODEL, "--policy", "specific"], capsys)
    assert status == 0
    report = size_report(prune_model(MODEL, "specific").model)
    assert stdout == report_table(report, baselines(MODEL)) + "\n"
    lines = stdout.splitlines()
    assert lines[0].split() == ["params", "MACs"]
    for task in TASKS:
        assert any(line.split()[:3] == [task, *human(report.task_params[task]).split()]
                   for line in lines)  # fmt: skip
    assert "this model is 1.00x its size" in lines[-1]  # all-specific against itself
    assert "(a task's row is its whole path, shared ops included)" in lines


def test_stats_json_has_the_baselines(capsys):
    status, stdout, _ = run(["stats", MODEL, "--policy", "shared", "--json", "--share-bn"], capsys)
    assert status == 0
    data = json.loads(stdout)
    shared = size_report(prune_model(MODEL, "shared", routing=RoutingOptions(share_bn=True)).model)
    assert data["total_params"] == shared.total_params
    assert data["baselines"]["shared"]["total_params"] == shared.total_params
    assert data["baselines"]["specific"]["total_params"] > shared.total_params


# ---------------------------------------------------------------------- errors


def _bad_policies() -> dict[str, tuple[object, list[str]]]:
    """name -> (policy file content, lines the error must hold)."""
    good = random_policy(seed=0)

    def edited(change) -> dict:
        policy = json.loads(json.dumps(good))
        change(policy)
        return policy

    return {
        "unknown op": (
            edited(
                lambda p: p["choices"].__setitem__("nope.conv1", dict.fromkeys(TASKS, "shared"))
            ),
            ["the policy does not match", "note: unknown ops nope.conv1"],
        ),
        "missing op": (
            edited(lambda p: p["choices"].pop("fuse.conv1")),
            ["note: no choice for ops fuse.conv1"],
        ),
        "wrong tasks": (
            edited(lambda p: p.__setitem__("tasks", ["segment", "edges"])),
            ["note: its tasks are ['segment', 'edges'], the model's are"],
        ),
        "missing task": (
            edited(lambda p: p["choices"]["stem.conv1"].pop("depth")),
            ["note: stem.conv1: needs one choice for each of ['segment', 'depth', 'normal']"],
        ),
        "bad choice": (
            edited(lambda p: p["choices"]["stem.conv1"].__setitem__("depth", "maybe")),
            ["note: stem.conv1/depth: 'maybe' is not one of ('shared', 'specific', 'skip')"],
        ),
        "skip without candidate": (
            edited(lambda p: p["choices"]["valid.conv1"].__setitem__("normal", "skip")),
            [
                "note: valid.conv1/normal: this op has no skip (no projection gives its output at "
                "every input size)"
            ],
        ),
        "other model": (
            edited(lambda p: p.__setitem__("model", "resnet34")),
            [
                "note: it is for model 'resnet34', not 'deploy_residual' (a model takes its "
                "file's name)"
            ],
        ),
        "not an object": ([1, 2], ['note: a policy is {"model": ..., "tasks": [...], "choices"']),
        "invalid json": (
            '{"model": "deploy_residual",\n  choices: {}}',
            [":2:3: error: invalid JSON: Expecting property name", "  choices: {}}", "  ^"],
        ),
    }


@pytest.mark.parametrize("command", ["prune", "stats"])
@pytest.mark.parametrize("case", sorted(_bad_policies()))
def test_bad_policy_is_a_user_error(tmp_path, capsys, case, command):
    content, expected = _bad_policies()[case]
    file = tmp_path / "policy.json"
    file.write_text(content if isinstance(content, str) else json.dumps(content))
    extra = ["-o", tmp_path / "out", "--no-svg"] if command == "prune" else []
    status, stdout, stderr = run([command, MODEL, "--policy", file, *extra], capsys)
    assert status == 2
    assert stderr.startswith(f"{file}:" if case == "invalid json" else f"error: {file}")
    for line in expected:
        assert line in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text", ['{"model": ' + "1" * 5000 + "}", "[" * 100_000 + "]" * 100_000], ids=["long", "deep"]
)
def test_policy_json_python_cannot_read_is_invalid_json(text, tmp_path, capsys):
    policy = tmp_path / "p.json"
    policy.write_text(text)
    status, _, stderr = run(["stats", MODEL, "--policy", policy], capsys)
    assert status == 2 and stderr.startswith(f"error: {policy}: invalid JSON: ")


def test_missing_policy_file(tmp_path, capsys):
    status, _, stderr = run(["stats", MODEL, "--policy", tmp_path / "none.json"], capsys)
    assert status == 2
    assert (
        stderr == f"error: cannot read policy {tmp_path / 'none.json'}: No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("word", "hint"),
    [("sharde", " (did you mean 'shared'?)"), ("mine", " (shorthands: shared, specific)")],
)
def test_a_policy_that_is_a_bare_word_and_no_file_names_the_shorthands(
    word, hint, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    status, _, stderr = run(["stats", MODEL, "--policy", word], capsys)
    assert (status, stderr) == (
        2,
        f"error: cannot read policy {word}: No such file or directory{hint}\n",
    )


def test_bad_policy_exits_with_status_2_from_the_shell(tmp_path, run_mtsc):
    (tmp_path / "policy.json").write_text("{")
    result = run_mtsc("prune", MODEL, "--policy", tmp_path / "policy.json", "-o", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.startswith(f"{tmp_path / 'policy.json'}:1:2: error: invalid JSON")
    assert "Traceback" not in result.stderr


class Trap:
    """Unpickling this runs `os.mkdir(path)`: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_checkpoint_that_runs_code_is_refused_unrun(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    torch.save({"model": Trap(marker)}, tmp_path / "evil.pt")
    args = ["prune", MODEL, "--policy", "shared", "--weights", tmp_path / "evil.pt"]
    status, _, stderr = run([*args, "-o", tmp_path / "out", "--no-svg"], capsys)
    assert status == 2
    assert stderr.startswith(
        f"error: cannot load {tmp_path / 'evil.pt'} as a weights-only checkpoint"
    )
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # The trap is real: a full unpickling would have run it.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "expected a state dict or a dict with a 'model' state dict"),
        ({"model": {"stem_conv1.weight": 3}}, "the checkpoint's stem_conv1.weight is not a tensor"),
        ({"model": {"x.weight": torch.zeros(2)}}, "the checkpoint has no weights for stem_conv1"),
    ],
    ids=["list", "not-a-tensor", "no-weights"],
)
def test_checkpoint_without_the_weights(tmp_path, capsys, content, message):
    torch.save(content, tmp_path / "last.pt")
    args = ["prune", MODEL, "--policy", "shared", "--weights", tmp_path / "last.pt"]
    status, _, stderr = run([*args, "-o", tmp_path / "out", "--no-svg"], capsys)
    assert status == 2
    assert message in stderr
    assert "Traceback" not in stderr


def test_checkpoint_of_another_model(tmp_path, capsys, load_generated):
    sm = trained_supermodel(tmp_path, load_generated, OTHER_MODEL)
    torch.save({"model": sm.state_dict()}, tmp_path / "last.pt")
    args = ["prune", MODEL, "--policy", "shared", "--weights", tmp_path / "last.pt"]
    status, _, stderr = run([*args, "-o", tmp_path / "out", "--no-svg"], capsys)
    assert status == 2
    assert stderr == (
        "error: the checkpoint's stem_conv1.weight has shape [4, 3, 3, 3], which does not fit "
        "stem.conv1: is it a checkpoint of this model?\n"
    )


@pytest.mark.parametrize(
    ("saved", "flags", "message"),
    [
        (
            {"model_name": "deploy_linear", "tasks": ["a", "b"]},
            [],
            "is a search of model 'deploy_linear' with tasks ['a', 'b'], not of "
            "'deploy_residual' with ['segment', 'depth', 'normal'] (a model takes its file's name)",
        ),
        (
            {"model_name": "deploy_residual", "tasks": ["segment", "depth"]},
            [],
            "is a search of model 'deploy_residual' with tasks ['segment', 'depth'], not of "
            "'deploy_residual' with ['segment', 'depth', 'normal']",
        ),
        ({"command": {"share_bn": True}}, [], "was searched with --share-bn: give the same here"),
        (
            {"command": {"share_bn": False}},
            ["--share-bn"],
            "was searched without --share-bn: give the same here",
        ),
    ],
    ids=["model", "tasks", "share-bn", "no-share-bn"],
)
def test_a_search_checkpoint_says_what_it_was_searched_for(
    saved, flags, message, tmp_path, capsys, load_generated
):
    """last.pt records the model, its tasks and --share-bn: a mismatch is named by them, not
    by the first tensor that does not fit."""
    sm = trained_supermodel(tmp_path, load_generated)
    checkpoint = tmp_path / "last.pt"
    torch.save({"model": sm.state_dict(), **saved}, checkpoint)
    args = ["prune", MODEL, "--policy", "shared", "--weights", checkpoint, *flags]
    status, _, stderr = run([*args, "-o", tmp_path / "out", "--no-svg"], capsys)
    assert (status, stderr) == (2, f"error: {checkpoint} {message}\n")
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint(tmp_path, capsys):
    args = ["prune", MODEL, "--policy", "shared", "--weights", tmp_path / "none.pt"]
    status, _, stderr = run([*args, "-o", tmp_path / "out", "--no-svg"], capsys)
    assert status == 2
    assert stderr == f"error: no such checkpoint: {tmp_path / 'none.pt'}\n"
