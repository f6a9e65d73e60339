"""The `stack_heads` pass: the ops every task head has run once over the task-stacked batch.

The pruned models of heads stacked this way are checked numerically against the supermodel
in test_prune.py (resnet_tiny: partly stacked heads; deploy_twin_heads.mtl: whole heads;
deploy_linear.mtl and stacked_linear_heads.mtl: stacked linear layers; stacked_heads.mtl:
pools, dropout, batchnorm, PReLU, a transposed conv, a scale and a resize to the image)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtsc.api import import_generated
from mtsc.codegen.torch_pruned import emit_pruned
from mtsc.codegen.torch_supermodel import emit_supermodel
from mtsc.deploy import carry_weights, prune_model, prune_pipeline
from mtsc.driver import load, load_supermodel, run_pipeline
from mtsc.ir.graph import Graph, Role
from mtsc.ir.ops import Op
from mtsc.ir.passes.insert_routing import RoutingOptions, insert_routing
from mtsc.ir.passes.stack_heads import stack_heads
from mtsc.ir.verify import verify

REPO = Path(__file__).resolve().parent.parent
RESNET_TINY = REPO / "examples" / "resnet_tiny.mtl"
MODELS = REPO / "tests" / "models"
TASKS = ("a", "b", "c")

MODEL = """\
input image: 3x8x8

backbone {{
    x = conv(image, 4, k=3, p=1) | bn | relu
    return x
}}

tasks {{
{tasks}
}}
"""


def model_text(heads: list[tuple[int, int]]) -> str:
    """One `fcn(classes, width)` head per task."""
    lines = [
        f"    {t}: fcn(classes={classes}, width={width}) loss=l1 metric=depth"
        for t, (classes, width) in zip(TASKS, heads, strict=False)
    ]
    return MODEL.format(tasks="\n".join(lines))


def stacked_names(g: Graph) -> set[str]:
    return {n.name for _, n in g.nodes() if "task_names" in n.meta}


def test_the_ops_before_the_class_scores_are_stacked():
    g = load_supermodel(RESNET_TINY)
    verify(g, after="stack_heads")
    names = g.by_name()
    assert stacked_names(g) == {"heads.conv1", "heads.bn1", "heads.relu1"}
    assert g.node(names["heads.conv1"]).role is Role.SPECIFIC
    assert g.node(names["heads.bn1"]).role is Role.SPECIFIC
    assert g.node(names["heads.relu1"]).role is Role.SHARED
    assert g.node(names["heads.conv1"]).meta["task_names"] == (
        "heads.segment.conv1",
        "heads.depth.conv1",
        "heads.normal.conv1",
    )
    assert "heads.segment.conv1" not in names
    for task in ("segment", "depth", "normal"):
        conv2 = names[f"heads.{task}.conv2"]
        (src,) = g.inputs(conv2)
        assert g.node(src).op is Op.TASK_SLICE
        assert g.node(src).attrs == {"task": task}
        assert g.inputs(src) == [names["heads.relu1"]]


def test_the_supermodel_runs_stacked_ops_as_one_grouped_call(tmp_path, load_generated):
    g = load_supermodel(RESNET_TINY)
    file = tmp_path / "supermodel.py"
    file.write_text(emit_supermodel(g, source_name=RESNET_TINY.name).text)
    model = load_generated(file).Supermodel()
    assert type(model.heads_conv1).__name__ == "TaskConv2d"
    assert model.heads_conv1.weight.shape == (3 * 32, 64, 3, 3)
    assert model.heads_conv1.groups == 3
    assert type(model.heads_bn1).__name__ == "TaskBatchNorm2d"
    assert model.heads_segment_conv2.weight.shape == (6, 32, 1, 1)


def test_one_task_keeps_its_head_as_it_is():
    g = insert_routing(load(RESNET_TINY), tasks=("depth",))
    before = {n.name for _, n in g.nodes()}
    assert {n.name for _, n in stack_heads(g).nodes()} == before


def test_a_stacked_name_the_trunk_has_keeps_the_heads_per_task(write_model):
    """A backbone statement labelled `heads` takes `heads.conv1`: the heads' first conv, and
    all after it, stay per task rather than clash."""
    path = write_model(
        model_text([(2, 4), (1, 4)]).replace(
            "    x = conv(image, 4, k=3, p=1)", "    heads: x = conv(image, 4, k=3, p=1)"
        )
    )
    g = load_supermodel(path)
    verify(g, after="stack_heads")
    assert stacked_names(g) == set()
    assert {"heads.a.conv1", "heads.b.conv1", "heads.conv1"} <= set(g.by_name())


def test_a_task_subset_stacks_its_own_heads():
    g = stack_heads(insert_routing(load(RESNET_TINY), tasks=("depth", "segment")))
    verify(g, after="stack_heads")
    assert g.node(g.by_name()["heads.conv1"]).meta["task_names"] == (
        "heads.depth.conv1",
        "heads.segment.conv1",
    )


@pytest.mark.parametrize(
    "model",
    [
        RESNET_TINY,
        MODELS / "deploy_twin_heads.mtl",
        MODELS / "stacked_heads.mtl",
        MODELS / "stacked_linear_heads.mtl",
    ],
    ids=lambda p: p.stem,
)
@pytest.mark.parametrize("policy", ["shared", "specific"])
@pytest.mark.parametrize("share_bn", [False, True])
def test_the_pruned_model_is_the_one_of_unstacked_heads(model, policy, share_bn):
    """Stacking changes the supermodel only: each task's pruned head has its own ops, named
    and stored as before (a stateless op too, so that a dropout draws a mask per task)."""
    options = RoutingOptions(share_bn=share_bn)
    pruned = prune_model(model, policy, routing=options)
    unstacked = insert_routing(load(model), options=options)
    plain = run_pipeline(unstacked, prune_pipeline(pruned.policy))
    assert stacked_names(pruned.supermodel), "nothing was stacked: the test tests nothing"

    def source(g: Graph) -> str:
        return emit_pruned(g, source_name=model.name, policy_name="policy.json").text

    assert source(pruned.model) == source(plain)


@settings(max_examples=12, deadline=None)
@given(
    heads=st.lists(
        st.tuples(st.sampled_from([1, 2]), st.sampled_from([4, 8])), min_size=2, max_size=3
    ),
    data=st.data(),
)
def test_stacked_heads_compute_the_per_task_heads(tmp_path_factory, heads, data):
    """Which ops stack follows from the options alone, and the supermodel then computes what
    the pruned model's separate heads compute (hard mode, all-shared or all-specific)."""
    folder = tmp_path_factory.mktemp("heads")
    path = folder / "model.mtl"
    path.write_text(model_text(heads))
    g = load_supermodel(path)
    verify(g, after="stack_heads")
    expected = set()
    if len({w for _, w in heads}) == 1:
        expected = {"heads.conv1", "heads.bn1", "heads.relu1"}
        if len(set(heads)) == 1:
            expected |= {"heads.conv2", "heads.upsample1"}
    assert stacked_names(g) == expected
    for task in TASKS[: len(heads)]:
        out = g.node(g.outputs[task])
        assert out.task == task and out.shape == (heads[TASKS.index(task)][0], 8, 8)

    policy = data.draw(st.sampled_from(["shared", "specific"]))
    pruned = prune_model(path, policy)
    (folder / "supermodel.py").write_text(emit_supermodel(pruned.supermodel, source_name="m").text)
    torch.manual_seed(0)
    supermodel = import_generated(folder / "supermodel.py", "stacked_heads_sm").Supermodel()
    supermodel.load_policy(pruned.policy).set_mode("hard").eval()
    source = emit_pruned(pruned.model, source_name="m", policy_name="policy.json").text
    (folder / "model.py").write_text(source)
    model = import_generated(folder / "model.py", "stacked_heads_model").MultiTaskModel()
    model.load_state_dict(carry_weights(pruned, supermodel.state_dict()), strict=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want, got = supermodel(x), model.eval()(x)
    for task in want:
        torch.testing.assert_close(got[task], want[task], rtol=1e-5, atol=1e-5)
