"""Policy files as users write them: read as UTF-8 text, tasks in any order, choices for pinned
ops told apart from unknown ones, "model" and "tasks" required; and `mtsc --version`."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib

import pytest
import torch

from mtsc.driver import build, load_supermodel
from mtsc.policy import pinned_ops, routed_ops
from mtsc.runtime.policy_format import check_policy, uniform_policy

MINI = "mini_tasks.mtl"
TASKS = ["segment", "depth"]
POLICY = {
    "model": "mini_tasks",
    "tasks": TASKS,
    "choices": {
        "body.conv1": {"segment": "shared", "depth": "skip"},
        "dw.conv1": {"segment": "specific", "depth": "shared"},
        "down.conv1": {"segment": "skip", "depth": "specific"},
        "valid.conv1": {"segment": "shared", "depth": "specific"},
        "fc.linear1": {"segment": "specific", "depth": "skip"},
        "linear1": {"segment": "shared", "depth": "skip"},
    },
}
PINNED_NOTE = (
    "pinned by the model (@shared or @specific), so they take no choice: pinned.conv1, stem.conv1"
)


def reordered(policy: dict) -> dict:
    """The same policy with its tasks, and each op's choices, listed the other way round."""
    choices = {op: dict(reversed(per_task.items())) for op, per_task in policy["choices"].items()}
    return {**policy, "tasks": policy["tasks"][::-1], "choices": choices}


def without(policy: dict, key: str) -> dict:
    return {k: v for k, v in policy.items() if k != key}


@pytest.fixture(scope="module")
def mini_graph(models_dir):
    return load_supermodel(models_dir / MINI)


def problems(policy: dict, g) -> list[str]:
    tasks = tuple(t.name for t in g.tasks)
    return check_policy(policy, g.name, tasks, routed_ops(g), pinned_ops(g))


def stats_error(run_mtsc, models_dir, policy_file) -> str:
    """stderr of `mtsc stats` on a policy it must refuse with status 2."""
    proc = run_mtsc("stats", models_dir / MINI, "--policy", policy_file)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    return proc.stderr


# ---------------------------------------------------------------------- reading the file


def test_a_policy_that_is_not_utf8_is_a_user_error(tmp_path, models_dir, run_mtsc):
    data = json.dumps(POLICY).replace("segment", "s\u00e9gment").encode("latin-1")
    file = tmp_path / "policy.json"
    file.write_bytes(data)
    offset = data.index(b"\xe9")
    stderr = stats_error(run_mtsc, models_dir, file)
    assert stderr == f"error: {file}: not UTF-8 text (byte 0xe9 at offset {offset})\n"


def test_a_policy_with_a_byte_order_mark_is_read(tmp_path, models_dir, run_mtsc):
    file = tmp_path / "policy.json"
    file.write_bytes(b"\xef\xbb\xbf" + json.dumps(POLICY).encode())
    proc = run_mtsc("stats", models_dir / MINI, "--policy", file)
    assert proc.returncode == 0, proc.stderr


def test_a_policy_that_cannot_be_read_keeps_its_message(tmp_path, models_dir, run_mtsc):
    stderr = stats_error(run_mtsc, models_dir, tmp_path)  # a folder, not a file
    assert stderr == f"error: cannot read policy {tmp_path}: Is a directory\n"


# ---------------------------------------------------------------------- tasks in any order


def test_tasks_in_another_order_are_accepted(mini_graph):
    assert problems(reordered(POLICY), mini_graph) == []


@pytest.mark.parametrize(
    ("tasks", "shown"),
    [
        (["depth"], "['depth']"),
        (["depth", "segment", "depth"], "['depth', 'segment', 'depth']"),
        (["depth", "edges"], "['depth', 'edges']"),
        ("segment,depth", "'segment,depth'"),
        ([["segment"], "depth"], "[['segment'], 'depth']"),
    ],
)
def test_a_different_task_set_is_rejected(tasks, shown, mini_graph):
    assert problems({**POLICY, "tasks": tasks}, mini_graph) == [
        f"its tasks are {shown}, the model's are ['segment', 'depth']"
    ]


def misspelled(policy: dict, ops, task: str = "depth", typo: str = "dpeth") -> dict:
    choices = {
        op: {(typo if t == task and op in ops else t): c for t, c in per_task.items()}
        for op, per_task in policy["choices"].items()
    }
    return {**policy, "choices": choices}


def test_a_misspelled_task_in_every_op_is_one_problem(tmp_path, models_dir, run_mtsc):
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(misspelled(POLICY, POLICY["choices"])))
    assert stats_error(run_mtsc, models_dir, file) == (
        f"error: {file}: the policy does not match {models_dir / MINI}\n"
        "note: all 6 routed ops need one choice for each of ['segment', 'depth']; they have a "
        "choice for unknown task 'dpeth' and no choice for task 'depth'\n"
    )


def test_ops_whose_tasks_are_wrong_the_same_way_are_named_together(mini_graph):
    policy = misspelled(POLICY, ["body.conv1", "dw.conv1"])
    policy["choices"]["down.conv1"] = {"segment": "skip", "depth": "specific", "edges": "skip"}
    policy["choices"]["valid.conv1"] = "shared"
    policy["choices"]["linear1"] = {"segment": "maybe", "depth": "skip"}
    assert problems(policy, mini_graph) == [
        "2 ops (body.conv1, dw.conv1) need one choice for each of ['segment', 'depth']; they "
        "have a choice for unknown task 'dpeth' and no choice for task 'depth'",
        "down.conv1: needs one choice for each of ['segment', 'depth']; it has a choice for "
        "unknown task 'edges'",
        "valid.conv1: needs one choice for each of ['segment', 'depth'], as {task: choice}",
        "linear1/segment: 'maybe' is not one of ('shared', 'specific', 'skip')",
    ]


def test_prune_does_not_depend_on_the_task_order(tmp_path, models_dir, run_mtsc):
    models = []
    for name, policy in (("in_order", POLICY), ("reordered", reordered(POLICY))):
        (tmp_path / name).mkdir()
        file = tmp_path / name / "policy.json"
        file.write_text(json.dumps(policy))
        out = tmp_path / name / "deploy"
        proc = run_mtsc("prune", models_dir / MINI, "--policy", file, "-o", out, "--no-svg")
        assert proc.returncode == 0, proc.stderr
        models.append((out / "model.py").read_text())
    assert models[0] == models[1]


def test_load_policy_does_not_depend_on_the_task_order(tmp_path, models_dir, load_generated):
    build(models_dir / MINI, tmp_path, render=False)
    module = load_generated(tmp_path / "supermodel.py")
    in_order = module.Supermodel().load_policy(POLICY)
    other = module.Supermodel().load_policy(reordered(POLICY))
    assert other.export_policy() == in_order.export_policy() == POLICY
    for name, logits in in_order.policy.items():
        assert torch.equal(other.policy[name], logits)


# ---------------------------------------------------------------------- pinned and unknown ops


def test_a_choice_for_a_pinned_op_says_it_is_pinned(tmp_path, models_dir, run_mtsc):
    policy = json.loads(json.dumps(POLICY))
    for op in ("stem.conv1", "pinned.conv1", "segment.linear1"):
        policy["choices"][op] = {"segment": "shared", "depth": "shared"}
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(policy))
    stderr = stats_error(run_mtsc, models_dir, file)
    assert stderr == (
        f"error: {file}: the policy does not match {models_dir / MINI}\n"
        "note: unknown ops segment.linear1\n"  # a head's op: not in the trunk at all
        f"note: {PINNED_NOTE}\n"
    )


def test_pinned_ops_are_the_trunks_unrouted_convs_and_linears(mini_graph):
    assert pinned_ops(mini_graph) == ["stem.conv1", "pinned.conv1"]


def test_the_generated_supermodel_tells_pinned_ops_from_unknown_ones(
    tmp_path, models_dir, load_generated
):
    build(models_dir / MINI, tmp_path, render=False)
    policy = json.loads(json.dumps(POLICY))
    policy["choices"]["stem.conv1"] = {"segment": "shared", "depth": "shared"}
    policy["choices"]["stem.conv9"] = {"segment": "shared", "depth": "shared"}
    with pytest.raises(ValueError) as err:
        load_generated(tmp_path / "supermodel.py").Supermodel().load_policy(policy)
    assert str(err.value) == (
        "policy does not match the model: unknown ops stem.conv9; pinned by the model "
        "(@shared or @specific), so they take no choice: stem.conv1"
    )


# ---------------------------------------------------------------------- required keys


@pytest.mark.parametrize(
    ("key", "note"),
    [
        ("model", "it has no \"model\" key (this model is 'mini_tasks')"),
        ("tasks", "it has no \"tasks\" key (the model's tasks are ['segment', 'depth'])"),
    ],
)
def test_a_policy_without_model_or_tasks_is_rejected(key, note, tmp_path, models_dir, run_mtsc):
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(without(POLICY, key)))
    stderr = stats_error(run_mtsc, models_dir, file)
    assert stderr == (
        f"error: {file}: the policy does not match {models_dir / MINI}\nnote: {note}\n"
    )


def test_every_policy_mtsc_writes_has_model_and_tasks(tmp_path, models_dir, run_mtsc, mini_graph):
    ops = list(routed_ops(mini_graph))
    for choice in ("shared", "specific"):
        assert problems(uniform_policy("mini_tasks", TASKS, ops, choice), mini_graph) == []
        out = tmp_path / choice
        proc = run_mtsc("prune", models_dir / MINI, "--policy", choice, "-o", out, "--no-svg")
        assert proc.returncode == 0, proc.stderr
        written = json.loads((out / "policy.json").read_text())
        assert problems(written, mini_graph) == []


def test_an_exported_policy_passes_the_checks(tmp_path, models_dir, load_generated, mini_graph):
    build(models_dir / MINI, tmp_path, render=False)
    torch.manual_seed(0)
    exported = load_generated(tmp_path / "supermodel.py").Supermodel().export_policy()
    assert problems(json.loads(json.dumps(exported)), mini_graph) == []


# ---------------------------------------------------------------------- mtsc --version


def test_version_comes_from_the_package_metadata(repo, run_mtsc):
    proc = run_mtsc("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"mtsc {importlib.metadata.version('mtsc')}\n"
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert proc.stdout == f"mtsc {project['version']}\n"  # one source of truth: pyproject
