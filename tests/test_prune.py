"""Prune and deploy (issue 8): the pruned model against the supermodel in hard mode, its size
against an independent count, fold_batchnorm, and the generated `model.py` itself (golden
file, linter, torch.export, torch.compile).

The reference for every output is the generated supermodel with the same weights and the
policy loaded, in hard mode; the reference for every size is what the policy keeps, counted
from the supermodel's own modules. BN statistics are randomised so that a batchnorm carried
from the wrong task or folded wrongly shows.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mtsc.codegen.torch_backbone import emit_backbone
from mtsc.codegen.torch_pruned import emit_pruned
from mtsc.codegen.torch_supermodel import emit_supermodel
from mtsc.deploy import (
    Pruned,
    baselines,
    carry_weights,
    fold_summary,
    fold_text,
    prune_model,
    size_report,
)
from mtsc.driver import load_backbone, load_supermodel
from mtsc.errors import MtscError
from mtsc.ir.ops import Op
from mtsc.ir.passes.insert_routing import RoutingOptions
from mtsc.ir.passes.prune import prune
from mtsc.policy import routed_ops
from mtsc.runtime.policy_format import CHOICES

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "tests" / "models"
RESIDUAL = MODELS / "deploy_residual.mtl"  # residuals, concat, depthwise, no-skip conv
LINEAR = MODELS / "deploy_linear.mtl"  # routed linear layers, linear heads
MINI = MODELS / "deploy_mini.mtl"  # the golden file's model
TINY = MODELS / "tiny.mtl"  # sharing pins, scale, max, gate, upsample, prelu
RESNET_TINY = REPO / "examples" / "resnet_tiny.mtl"
TWIN_HEADS = MODELS / "deploy_twin_heads.mtl"  # identical heads: stacked whole in the supermodel
STACKED = MODELS / "stacked_heads.mtl"  # heads stacked but for their class scores: every op kind
STACKED_LINEAR = MODELS / "stacked_linear_heads.mtl"  # stacked hidden linear + PReLU
MULTISCALE = MODELS / "multiscale_heads.mtl"  # heads that read a tensor inside the backbone
CONTEXT = MODELS / "context_blocks.mtl"  # C x 1 x 1 values added, subtracted and multiplied
# Every example with a backbone (resnet_blocks.mtl only holds blocks for the others).
EXAMPLES = sorted(
    p for p in (REPO / "examples").glob("*.mtl") if re.search(r"^backbone\b", p.read_text(), re.M)
)
# Models that run at any input size use 32x32; the linear one needs its declared 8x8.
SMALL = [
    (RESIDUAL, 32),
    (LINEAR, 8),
    (TINY, 32),
    (RESNET_TINY, 32),
    (TWIN_HEADS, 16),
    (STACKED, 16),
    (STACKED_LINEAR, 8),
    (MULTISCALE, 16),
    (CONTEXT, 12),
]
BIG = [p for p in EXAMPLES if p != RESNET_TINY]
TOL = {"rtol": 1e-5, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- helpers


def random_policy(path: Path, seed: int, *, share_bn: bool = False) -> dict:
    """Each task picks shared, specific or (where the op has one) skip at random."""
    sm = load_supermodel(path, RoutingOptions(share_bn=share_bn))
    tasks = [t.name for t in sm.tasks]
    rng = random.Random(seed)
    choices = {
        op: {t: rng.choice(CHOICES if has_skip else CHOICES[:2]) for t in tasks}
        for op, has_skip in routed_ops(sm).items()
    }
    return {"model": sm.name, "tasks": tasks, "choices": choices}


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclasses.dataclass
class Deployed:
    pruned: Pruned
    supermodel: nn.Module  # the policy loaded, hard mode, eval, randomised batchnorms
    model: nn.Module  # MultiTaskModel with the carried weights, eval
    source: str  # the text of model.py


@pytest.fixture
def deploy(tmp_path: Path, load_generated, randomize_norms) -> Callable[..., Deployed]:
    """`deploy(path, policy, share_bn=False, fold_bn=False, seed=0)`."""
    count = itertools.count()

    def make(path: Path, policy, *, share_bn=False, fold_bn=False, seed=0) -> Deployed:
        folder = tmp_path / f"deploy{next(count)}"
        folder.mkdir()
        pruned = prune_model(
            path, policy, routing=RoutingOptions(share_bn=share_bn), fold_bn=fold_bn
        )
        sm_file = folder / "supermodel.py"
        sm_file.write_text(emit_supermodel(pruned.supermodel, source_name=path.name).text)
        torch.manual_seed(seed)
        supermodel = load_generated(sm_file).Supermodel()
        randomize_norms(supermodel, seed)
        supermodel.load_policy(pruned.policy).set_mode("hard").eval()
        source = emit_pruned(pruned.model, source_name=path.name, policy_name="policy.json").text
        (folder / "model.py").write_text(source)
        model = load_generated(folder / "model.py").MultiTaskModel()
        model.load_state_dict(carry_weights(pruned, supermodel.state_dict()), strict=True)
        return Deployed(pruned, supermodel, model.eval(), source)

    return make


def image(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_equivalent(d: Deployed, x: torch.Tensor) -> None:
    """Every task's output equals the supermodel's; one task's path alone gives the same."""
    with torch.no_grad():
        expected = d.supermodel(x)
        got = d.model(x)
        assert list(got) == list(d.supermodel.TASKS)
        for task, want in expected.items():
            torch.testing.assert_close(got[task], want, **TOL)
            torch.testing.assert_close(d.model.forward_task(x, task), got[task], rtol=0, atol=0)
            torch.testing.assert_close(getattr(d.model, f"forward_{task}")(x), got[task])


def policy_param_count(supermodel: nn.Module, policy: dict) -> int:
    """What the policy keeps, from the supermodel's modules: a routed op's shared weights
    once if any task shares them; a task-specific copy or skip projection once per task that
    chose it; every other module whole (a per-task batchnorm holds one copy per task)."""
    tasks = len(supermodel.TASKS)
    total = 0
    candidates = set()
    for op, _, _ in supermodel.ROUTED:
        key = op.replace(".", "_")
        names = {"shared": key, "specific": f"{key}_specific", "skip": f"{key}_skip"}
        candidates |= set(names.values())
        picks = list(policy["choices"][op].values())
        if "shared" in picks:
            total += numel(getattr(supermodel, key))
        for choice in ("specific", "skip"):
            module = getattr(supermodel, names[choice], None)  # no module: identity skip
            if module is not None:
                total += picks.count(choice) * numel(module) // tasks
    others = [m for name, m in supermodel.named_children() if name not in candidates]
    return total + sum(numel(m) for m in others if m is not supermodel.policy)


def header_params(source: str) -> int:
    return int(re.search(r"; ([\d,]+) parameters", source).group(1).replace(",", ""))


class OpCounter:
    """MACs and parameters of the modules a forward call runs, counted from the modules'
    own shapes (conv: output elements x input channels per group x kernel area; transposed
    conv: input elements x output channels per group x kernel area; batchnorm: output
    elements; linear: in x out features), per sample."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def run(self, call: Callable[[], object], batch: int) -> tuple[int, int]:
        macs = 0
        used: dict[int, nn.Module] = {}

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            nonlocal macs
            used[id(module)] = module
            per_sample = output.numel() // batch
            if isinstance(module, nn.Conv2d):
                area = math.prod(module.kernel_size)
                macs += per_sample * module.in_channels // module.groups * area
            elif isinstance(module, nn.ConvTranspose2d):
                area = math.prod(module.kernel_size)
                macs += inputs[0].numel() // batch * module.out_channels // module.groups * area
            elif isinstance(module, nn.BatchNorm2d):
                macs += per_sample
            elif isinstance(module, nn.Linear):
                macs += module.in_features * module.out_features

        handles = [m.register_forward_hook(hook) for m in self.net.modules() if m is not self.net]
        try:
            with torch.no_grad():
                call()
        finally:
            for h in handles:
                h.remove()
        params = sum(p.numel() for m in used.values() for p in m.parameters(recurse=False))
        return macs, params


def backbone_and_heads(path: Path, supermodel: nn.Module, tmp_path: Path, load_generated):
    """Parameters of the single-task backbone (compiled on its own) and of each head."""
    file = tmp_path / f"{path.stem}_backbone.py"
    file.write_text(emit_backbone(load_backbone(path), source_name=path.name).text)
    backbone = load_generated(file).Backbone()
    tasks = supermodel.TASKS
    head_modules = [(n, m) for n, m in supermodel.named_children() if n.startswith("heads_")]
    # the ops all heads have in common are stacked: one module holding every task's weights
    stacked = sum(
        numel(m) for n, m in head_modules if not any(n.startswith(f"heads_{t}_") for t in tasks)
    )
    heads = {
        t: stacked // len(tasks)
        + sum(numel(m) for n, m in head_modules if n.startswith(f"heads_{t}_"))
        for t in tasks
    }
    return backbone, heads


# ---------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    ("seed", "share_bn"), [(0, False), (1, False), (2, True)], ids=["s0", "s1", "s2-share-bn"]
)
@pytest.mark.parametrize(("path", "size"), SMALL, ids=[p.stem for p, _ in SMALL])
def test_small_models_equal_the_supermodel_in_hard_mode(deploy, path, size, seed, share_bn):
    policy = random_policy(path, seed, share_bn=share_bn)
    d = deploy(path, policy, share_bn=share_bn, seed=seed)
    assert_equivalent(d, image(size, seed=seed))


@pytest.mark.parametrize("path", BIG, ids=[p.stem for p in BIG])
def test_every_example_equals_the_supermodel_and_keeps_what_the_policy_says(deploy, path):
    """One random policy per big example, batch 1 at 32x32 (one deployment, both checks:
    building these models is what costs)."""
    policy = random_policy(path, seed=7)
    d = deploy(path, policy, seed=7)
    assert_equivalent(d, image(32, batch=1, seed=7))
    expected = policy_param_count(d.supermodel, policy)
    assert numel(d.model) == expected
    assert size_report(d.pruned.model).total_params == expected


def test_equivalence_tells_the_policies_apart(deploy):
    """The reference is discriminating: changing one task's choice at one op changes that
    task's supermodel output and leaves the other tasks' alone."""
    policy = random_policy(RESIDUAL, seed=0)
    d = deploy(RESIDUAL, policy)
    other = {**policy, "choices": {op: dict(c) for op, c in policy["choices"].items()}}
    old = other["choices"]["block1.conv1"]["segment"]
    other["choices"]["block1.conv1"]["segment"] = "specific" if old != "specific" else "shared"
    d.supermodel.load_policy(other).set_mode("hard")
    x = image(32)
    with torch.no_grad():
        changed, ours = d.supermodel(x), d.model(x)
    assert (changed["segment"] - ours["segment"]).abs().max() > 1e-3
    for task in ("depth", "normal"):
        torch.testing.assert_close(changed[task], ours[task], **TOL)


def test_forward_task_rejects_an_unknown_task(deploy):
    d = deploy(MINI, "shared")
    with pytest.raises(ValueError) as err:
        d.model.forward_task(image(16), "edges")
    assert str(err.value) == "unknown task 'edges'; this model's tasks are segment, depth"


def test_torchscript_keeps_the_per_task_methods(deploy):
    """`torch.jit.script` compiles `forward` and what it calls; the per-task methods are
    exported too, with the same results, and the unknown-task error."""
    d = deploy(RESIDUAL, random_policy(RESIDUAL, seed=1))
    scripted = torch.jit.script(d.model.eval())
    x = image(32)
    with torch.no_grad():
        expected = d.model(x)
        for task, value in scripted(x).items():
            torch.testing.assert_close(value, expected[task], **TOL)
            torch.testing.assert_close(scripted.forward_task(x, task), expected[task], **TOL)
            method = getattr(scripted, f"forward_{task}")
            torch.testing.assert_close(method(x), expected[task], **TOL)
    with pytest.raises(torch.jit.Error, match="unknown task 'edges'; this model's tasks are"):
        scripted.forward_task(x, "edges")


# ---------------------------------------------------------------------- sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("path", [p for p, _ in SMALL], ids=[p.stem for p, _ in SMALL])
def test_parameter_count_is_what_the_policy_keeps(deploy, path, seed):
    share_bn = seed == 2
    policy = random_policy(path, seed, share_bn=share_bn)
    d = deploy(path, policy, share_bn=share_bn, seed=seed)
    expected = policy_param_count(d.supermodel, policy)
    assert numel(d.model) == expected
    assert size_report(d.pruned.model).total_params == expected
    assert header_params(d.source) == expected


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("path", [RESIDUAL, LINEAR, TINY], ids=["residual", "linear", "tiny"])
def test_report_macs_and_task_sizes_match_what_forward_runs(deploy, path, seed):
    """At the declared input size: `forward` runs each op once (total MACs), and
    `forward_task` runs exactly the task's path (its MACs and parameters)."""
    d = deploy(path, random_policy(path, seed), seed=seed)
    report = size_report(d.pruned.model)
    x = torch.randn(1, *d.pruned.model.node(d.pruned.model.input_ids()[0]).shape)
    counter = OpCounter(d.model)
    macs, params = counter.run(lambda: d.model(x), 1)
    assert (macs, params) == (report.total_macs, report.total_params)
    for task in d.supermodel.TASKS:
        macs, params = counter.run(lambda t=task: d.model.forward_task(x, t), 1)
        assert (macs, params) == (report.task_macs[task], report.task_params[task])


@pytest.mark.parametrize(
    "path", [RESIDUAL, LINEAR, RESNET_TINY], ids=["residual", "linear", "resnet_tiny"]
)
def test_all_shared_with_shared_bn_is_the_hard_sharing_model(
    deploy, path, tmp_path, load_generated
):
    d = deploy(path, "shared", share_bn=True)
    backbone, heads = backbone_and_heads(path, d.supermodel, tmp_path, load_generated)
    expected = numel(backbone) + sum(heads.values())
    report = size_report(d.pruned.model)
    assert numel(d.model) == report.total_params == expected
    assert report.shared_params == numel(backbone)
    assert report.task_params == {t: numel(backbone) + heads[t] for t in heads}
    assert baselines(path, RoutingOptions(share_bn=True))["shared"].total_params == expected
    # One trunk: every backbone module runs once for all tasks together.
    calls: dict[str, int] = {}
    handles = [
        m.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
        for name, m in d.model.named_children()
    ]
    size = 8 if path == LINEAR else 32
    with torch.no_grad():
        d.model(image(size))
    for h in handles:
        h.remove()
    trunk = {n: c for n, c in calls.items() if not n.startswith("heads_")}
    assert trunk and set(trunk.values()) == {1}
    assert_equivalent(d, image(size))


@pytest.mark.parametrize("path", [RESIDUAL, LINEAR], ids=["residual", "linear"])
def test_all_specific_is_one_network_per_task(deploy, path, tmp_path, load_generated):
    d = deploy(path, "specific")
    backbone, heads = backbone_and_heads(path, d.supermodel, tmp_path, load_generated)
    tasks = len(heads)
    expected = tasks * numel(backbone) + sum(heads.values())
    report = size_report(d.pruned.model)
    assert numel(d.model) == report.total_params == expected
    assert report.shared_params == 0
    assert report.task_params == {t: numel(backbone) + heads[t] for t in heads}
    assert report.total_macs == sum(report.task_macs.values())
    assert baselines(path)["specific"].total_params == expected


def test_all_specific_keeps_pinned_ops_shared(deploy, tmp_path, load_generated):
    """resnet_tiny pins its stem `@shared`: T networks that share the stem."""
    d = deploy(RESNET_TINY, "specific")
    backbone, heads = backbone_and_heads(RESNET_TINY, d.supermodel, tmp_path, load_generated)
    stem = sum(numel(m) for n, m in backbone.named_children() if n.startswith("stem_"))
    tasks = len(heads)
    expected = tasks * numel(backbone) - (tasks - 1) * stem + sum(heads.values())
    report = size_report(d.pruned.model)
    assert stem > 0
    assert numel(d.model) == report.total_params == expected
    assert report.shared_params == stem


# ---------------------------------------------------------------------- fold_batchnorm


def batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def convs(net: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in net.modules())


@pytest.mark.parametrize(
    ("path", "share_bn"),
    [(RESIDUAL, False), (RESIDUAL, True), (TINY, False), (RESNET_TINY, False)],
    ids=["residual", "residual-share-bn", "tiny", "resnet_tiny"],
)
def test_fold_batchnorm_keeps_the_outputs(deploy, path, share_bn):
    policy = random_policy(path, seed=3, share_bn=share_bn)
    folded = deploy(path, policy, share_bn=share_bn, fold_bn=True, seed=3)
    plain = deploy(path, policy, share_bn=share_bn, seed=3)
    assert batchnorms(folded.model) < batchnorms(plain.model)
    # Folding never copies a conv's weights (it may add a bias per conv).
    assert convs(folded.model) == convs(plain.model)
    assert numel(folded.model) == size_report(folded.pruned.model).total_params
    assert_equivalent(folded, image(32, seed=3))


def test_fold_batchnorm_folds_everything_when_batchnorm_is_shared(deploy):
    d = deploy(RESIDUAL, "specific", share_bn=True, fold_bn=True)
    assert batchnorms(d.model) == 0
    assert_equivalent(d, image(32))


def test_fold_batchnorm_folds_a_skip_projection_and_the_ops_own_batchnorm(deploy):
    """A task that skips a strided op runs its projection (1x1 conv + batchnorm), then the
    op's batchnorm: both fold into the projection's conv, one after the other."""
    sm = load_supermodel(RESIDUAL)
    tasks = [t.name for t in sm.tasks]
    choices = {
        op: {t: "skip" if has_skip else "specific" for t in tasks}
        for op, has_skip in routed_ops(sm).items()
    }
    policy = {"model": sm.name, "tasks": tasks, "choices": choices}
    d = deploy(RESIDUAL, policy, fold_bn=True)
    g = d.pruned.model
    twice = [n for n in g.node_ids() if len(g.node(n).meta.get("fold_bn", ())) == 2]
    assert twice and all(".skip.conv" in g.node(n).name for n in twice)
    # what stays follows an identity skip (the op's input: a ReLU here)
    assert fold_summary(g) == (
        sum(len(g.node(n).meta.get("fold_bn", ())) for n in g.node_ids()),
        {"after an op that is not a conv": batchnorms(d.model)},
    )
    assert_equivalent(d, image(32))


def test_fold_batchnorm_says_why_a_batchnorm_stays(deploy):
    d = deploy(RESNET_TINY, "shared", fold_bn=True)
    folded, unfolded = fold_summary(d.pruned.model)
    assert folded > 0
    assert unfolded == {
        "after a conv whose weights tasks share, each with its own batchnorm": batchnorms(d.model)
    }
    assert fold_text(folded, unfolded) == (
        f"--fold-bn: folded {folded} batchnorms into convs; {batchnorms(d.model)} stay: "
        f"{batchnorms(d.model)} after a conv whose weights tasks share, each with its own "
        "batchnorm"
    )


def test_fold_batchnorm_does_not_copy_shared_weights_per_task(deploy):
    """All-shared convs read each task's own batchnorm output; folding those per-task
    batchnorms would give each task a copy of the conv: they stay, the model stays small."""
    plain = deploy(RESNET_TINY, "shared")
    folded = deploy(RESNET_TINY, "shared", fold_bn=True)
    assert convs(folded.model) == convs(plain.model)
    assert numel(folded.model) <= numel(plain.model)
    assert size_report(folded.pruned.model).total_params == numel(folded.model)
    assert_equivalent(folded, image(32))


def test_the_code_says_where_a_task_skipped_ops(tmp_path):
    """An identity skip leaves no op: a comment before the op that reads its value says
    which (two in a row, both); a projection skip is an op of its own."""
    model = tmp_path / "chain.mtl"
    model.write_text(
        "input image: 3x8x8\nbackbone {\n    x = conv(image, 4, k=3, p=1) | relu\n"
        "    x = conv(x, 4, k=3, p=1)\n    x = conv(x, 4, k=3, p=1)\n    return relu(x)\n}\n"
        "tasks {\n    a: fcn(classes=2)\n    b: fcn(classes=2)\n}\n"
    )
    policy = {"model": "chain", "tasks": ["a", "b"], "choices": {}}
    policy["choices"] = {
        op: {"a": "skip", "b": "shared"} for op in routed_ops(load_supermodel(model))
    }
    policy["choices"]["conv1"]["a"] = "shared"
    pruned = prune_model(model, policy).model
    source = emit_pruned(pruned, source_name="chain.mtl", policy_name="p.json").text
    comments = [line.strip() for line in source.splitlines() if "skipped" in line]
    assert comments == ["# conv2: skipped (identity)", "# conv3: skipped (identity)"] * 2


# ---------------------------------------------------------------------- errors


def test_prune_rejects_a_skip_where_the_op_has_none():
    sm = load_supermodel(RESIDUAL)
    policy = random_policy(RESIDUAL, seed=0)
    policy["choices"]["valid.conv1"]["depth"] = "skip"
    with pytest.raises(MtscError, match=r"valid\.conv1: depth cannot skip this op"):
        prune(sm, policy)


def test_prune_rejects_a_policy_without_a_choice():
    sm = load_supermodel(RESIDUAL)
    policy = random_policy(RESIDUAL, seed=0)
    del policy["choices"]["fuse.conv1"]["normal"]
    with pytest.raises(MtscError, match=r"the policy has no choice for fuse\.conv1 / normal"):
        prune(sm, policy)


def test_carry_weights_rejects_a_checkpoint_without_the_weights():
    pruned = prune_model(RESIDUAL, "shared")
    with pytest.raises(MtscError, match=r"the checkpoint has no weights for stem_conv1"):
        carry_weights(pruned, {"other.weight": torch.zeros(3)})


@pytest.mark.parametrize(
    ("trained_share_bn", "share_bn", "shape"),
    [(True, False, "[8]"), (False, True, "[24]")],
    ids=["shared-bn-checkpoint", "per-task-bn-checkpoint"],
)
def test_carry_weights_rejects_batchnorms_of_the_other_kind(
    load_generated, tmp_path, trained_share_bn, share_bn, shape
):
    """A checkpoint of a supermodel built with --share-bn pruned without it, or the other
    way round: an error naming the tensor (8 channels, 3 tasks), not a wrong slice."""
    trained = prune_model(RESIDUAL, "shared", routing=RoutingOptions(share_bn=trained_share_bn))
    (tmp_path / "sm.py").write_text(emit_supermodel(trained.supermodel, source_name="m").text)
    state = load_generated(tmp_path / "sm.py").Supermodel().state_dict()
    pruned = prune_model(RESIDUAL, "shared", routing=RoutingOptions(share_bn=share_bn))
    with pytest.raises(MtscError) as err:
        carry_weights(pruned, state)
    assert err.value.message == (
        f"the checkpoint's stem_bn1.weight has shape {shape}, which does not fit stem.bn1: "
        "is it a checkpoint of this model, built with the same --share-bn?"
    )


def test_carry_weights_rejects_a_kernel_of_another_size(load_generated, tmp_path):
    # Only the leading size was checked once: a 5x5 kernel for a 3x3 conv gave a model.pt that
    # did not load.
    pruned = prune_model(RESIDUAL, "shared")
    (tmp_path / "sm.py").write_text(emit_supermodel(pruned.supermodel, source_name="m").text)
    state = load_generated(tmp_path / "sm.py").Supermodel().state_dict()
    state["stem_conv1.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(MtscError) as err:
        carry_weights(pruned, state)
    assert err.value.message == (
        "the checkpoint's stem_conv1.weight has shape [8, 3, 5, 5], which does not fit "
        "stem.conv1: is it a checkpoint of this model?"
    )


@pytest.mark.parametrize("fold_bn", [False, True])
def test_carry_weights_rejects_a_checkpoint_missing_a_buffer(load_generated, tmp_path, fold_bn):
    pruned = prune_model(RESIDUAL, "shared", fold_bn=fold_bn)
    (tmp_path / "sm.py").write_text(emit_supermodel(pruned.supermodel, source_name="m").text)
    state = load_generated(tmp_path / "sm.py").Supermodel().state_dict()
    del state["stem_bn1.running_var"]
    with pytest.raises(MtscError) as err:
        carry_weights(pruned, state)
    assert err.value.message == (
        "the checkpoint lacks stem_bn1.running_var (stem.bn1): is it a checkpoint of this model?"
    )


def test_carry_weights_rejects_a_conv_of_another_width(load_generated, tmp_path):
    pruned = prune_model(RESIDUAL, "specific")
    (tmp_path / "sm.py").write_text(emit_supermodel(pruned.supermodel, source_name="m").text)
    state = load_generated(tmp_path / "sm.py").Supermodel().state_dict()
    state["stem_conv1_specific.weight"] = torch.zeros(18, 3, 3, 3)  # 3 tasks x 6, not x 8
    with pytest.raises(MtscError, match=r"stem_conv1_specific\.weight has shape \[18, 3, 3, 3\]"):
        carry_weights(pruned, state)


def test_carry_weights_rejects_per_task_slopes_of_another_count(load_generated, tmp_path):
    """tiny.mtl's `slope` is one PReLU slope per task (2 tasks); a checkpoint with a slope per
    channel does not fit, and the hint leaves --share-bn out: it changes no PReLU."""
    pruned = prune_model(TINY, "shared")
    (tmp_path / "sm.py").write_text(emit_supermodel(pruned.supermodel, source_name="m").text)
    state = load_generated(tmp_path / "sm.py").Supermodel().state_dict()
    assert state["slope.weight"].shape == (2,)
    state["slope.weight"] = torch.zeros(32)
    with pytest.raises(MtscError) as err:
        carry_weights(pruned, state)
    assert err.value.message == (
        "the checkpoint's slope.weight has shape [32], which does not fit slope: "
        "is it a checkpoint of this model?"
    )


def test_carry_weights_reads_a_deconv_by_its_input_channel_rows(load_generated, tmp_path):
    """tiny.mtl's `lift` deconv (16 -> 16 channels, groups 2) is per task: its weight's rows
    are each task's input channels. A weight with output-channel rows (a conv's) is refused."""
    pruned = prune_model(TINY, "specific")
    (tmp_path / "sm.py").write_text(emit_supermodel(pruned.supermodel, source_name="m").text)
    state = load_generated(tmp_path / "sm.py").Supermodel().state_dict()
    assert state["lift_deconv1.weight"].shape == (2 * 16, 8, 4, 4)
    carried = carry_weights(pruned, state)
    rows = state["lift_deconv1.weight"].split(16)  # segment's input channels, then depth's
    assert torch.equal(carried["segment_lift_deconv1.weight"], rows[0])
    assert torch.equal(carried["depth_lift_deconv1.weight"], rows[1])
    state["lift_deconv1.weight"] = torch.zeros(2 * 8, 16, 4, 4)
    with pytest.raises(MtscError, match=r"lift_deconv1\.weight has shape \[16, 16, 4, 4\]"):
        carry_weights(pruned, state)


# ---------------------------------------------------------------------- model.py itself

MINI_POLICY = {
    "model": "deploy_mini",
    "tasks": ["segment", "depth"],
    "choices": {
        "stem.conv1": {"segment": "shared", "depth": "shared"},
        "res.conv1": {"segment": "shared", "depth": "specific"},
        "res.conv2": {"segment": "skip", "depth": "shared"},
    },
}


def mini_source() -> str:
    pruned = prune_model(MINI, MINI_POLICY, routing=RoutingOptions(share_bn=True))
    return emit_pruned(
        pruned.model, source_name="tests/models/deploy_mini.mtl", policy_name="mini_policy.json"
    ).text


def test_golden_mini_model(check_golden):
    text = mini_source()
    check_golden(text, "mini_model.py", "pytest tests/test_prune.py --accept")
    assert mini_source() == text  # deterministic


def test_golden_mini_model_is_what_the_policy_says(deploy):
    """The golden model's tree: a shared stem, then per-task branches as the policy says."""
    d = deploy(MINI, MINI_POLICY, share_bn=True)
    names = {n for n, _ in d.model.named_children()}
    # a module that one task runs is named for it, as its op is ("segment.res.conv1")
    assert {"stem_conv1", "res_bn1", "depth_res_conv1_specific"} <= names
    assert {"segment_res_conv1", "depth_res_conv2"} <= names
    assert_equivalent(d, image(16))


def test_generated_code_passes_the_linter(tmp_path: Path, ruff_check):
    files = {"mini.py": mini_source()}
    for name, path, policy, fold in (
        ("tiny_random.py", RESNET_TINY, random_policy(RESNET_TINY, 5), False),
        ("tiny_folded.py", RESNET_TINY, random_policy(RESNET_TINY, 6), True),
        ("linear.py", LINEAR, random_policy(LINEAR, 5), True),
        ("pins.py", TINY, "specific", False),
    ):
        g = prune_model(path, policy, fold_bn=fold).model
        files[name] = emit_pruned(g, source_name=path.name, policy_name="p.json").text
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    ruff_check(*sorted(files), cwd=tmp_path)


def test_model_works_with_torch_export(deploy):
    d = deploy(RESIDUAL, random_policy(RESIDUAL, seed=4), seed=4)
    x = image(32, seed=4)
    exported = torch.export.export(d.model, (x,))
    with torch.no_grad():
        got, want = exported.module()(x), d.model(x)
    for task in want:
        torch.testing.assert_close(got[task], want[task], **TOL)


def test_model_works_with_torch_compile(deploy):
    d = deploy(RESIDUAL, random_policy(RESIDUAL, seed=4), seed=4)
    x = image(32, seed=4)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(d.model, backend="eager", fullgraph=True)
        with torch.no_grad():
            got, want = compiled(x), d.model(x)
            alone = torch.compile(d.model.forward_depth, backend="eager", fullgraph=True)(x)
    finally:
        torch._dynamo.reset()
    for task in want:
        torch.testing.assert_close(got[task], want[task], **TOL)
    torch.testing.assert_close(alone, want["depth"], **TOL)


def test_the_test_models_hold_what_they_claim():
    g = load_supermodel(RESIDUAL)
    nodes = [g.node(n) for n in g.node_ids()]
    assert {Op.CONCAT, Op.ADD} <= {n.op for n in nodes}
    depthwise = [n for n in nodes if n.op is Op.CONV2D and n.attrs["groups"] > 1]
    assert depthwise and all(n.attrs["groups"] == n.shape[0] for n in depthwise)
    assert routed_ops(g)["valid.conv1"] is False  # no skip candidate
    assert {(n.attrs["start"], n.attrs["end"]) for n in nodes if n.op is Op.SLICE} == {(4, 12)}
    linear = load_supermodel(LINEAR)
    assert Op.RESHAPE in {n.op for _, n in linear.nodes()}
    assert routed_ops(linear) == {
        "stem.conv1": True,
        "excite.linear1": True,
        "fc1.linear1": True,
        "fc2.linear1": True,
    }
