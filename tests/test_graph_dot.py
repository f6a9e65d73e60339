"""`mtsc graph`'s pictures of the supermodel (with and without a policy) and of the pruned
tree: golden `.dot` files, so that a lost edge, cluster or task colour shows as a diff."""

import json

import pytest

REFRESH = "pytest tests/test_graph_dot.py --accept"
MINI_POLICY = {
    "model": "mini_tasks",
    "tasks": ["segment", "depth"],
    "choices": {
        "body.conv1": {"segment": "shared", "depth": "skip"},
        "dw.conv1": {"segment": "specific", "depth": "shared"},
        "down.conv1": {"segment": "skip", "depth": "specific"},
        "valid.conv1": {"segment": "shared", "depth": "shared"},
        "fc.linear1": {"segment": "specific", "depth": "specific"},
        "linear1": {"segment": "shared", "depth": "skip"},
    },
}
DEPLOY_POLICY = {
    "model": "deploy_mini",
    "tasks": ["segment", "depth"],
    "choices": {
        "stem.conv1": {"segment": "shared", "depth": "shared"},
        "res.conv1": {"segment": "shared", "depth": "specific"},
        "res.conv2": {"segment": "skip", "depth": "specific"},
    },
}
CASES = {  # golden file: (model, stage, policy)
    "mini_supermodel.dot": ("mini_tasks.mtl", "supermodel", None),
    "mini_supermodel_policy.dot": ("mini_tasks.mtl", "supermodel", MINI_POLICY),
    "deploy_mini_pruned.dot": ("deploy_mini.mtl", "pruned", DEPLOY_POLICY),
    "deploy_mini_pruned_specific.dot": ("deploy_mini.mtl", "pruned", "specific"),
    # per-task batchnorm: the shared convs after it run once per task, on shared weights
    "deploy_mini_pruned_shared.dot": ("deploy_mini.mtl", "pruned", "shared"),
}


@pytest.mark.parametrize("golden", sorted(CASES))
def test_golden_dot(golden, tmp_path, run_mtsc, check_golden):
    model, stage, policy = CASES[golden]
    if isinstance(policy, dict):
        (tmp_path / "policy.json").write_text(json.dumps(policy))
        policy = str(tmp_path / "policy.json")
    out = tmp_path / "graph.dot"
    args = ["graph", f"tests/models/{model}", "--stage", stage, "-o", out]
    proc = run_mtsc(*args, *(["--policy", policy] if policy else []))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {out}\n"
    check_golden(out.read_text(), golden, REFRESH)


def test_pruned_stage_needs_a_policy(tmp_path, run_mtsc):
    out = tmp_path / "g.dot"
    proc = run_mtsc("graph", "examples/resnet_tiny.mtl", "--stage", "pruned", "-o", out)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --stage pruned needs --policy (a policy.json, shared or specific)"
    )
    assert not out.exists()
