"""The generated supermodel (`supermodel.py`) against references written here.

The references never run the generated forward: hard-parameter sharing is the generated
backbone plus heads written below; T independent networks are T backbones loaded with each
task's slice of the per-task weights; every other check runs one task's path through the
routed IR with plain torch functions (`run_task`), reading the supermodel's parameters (task
t's rows of a per-task layer) so that gradients land on the same tensors.

Layout of the per-task layers: a TaskConv2d weight is `[T * out, in / groups, k, k]` with task
t's filters at rows `t * out ... (t + 1) * out`, a TaskBatchNorm2d has `T * C` channels
(task-major), a TaskLinear weight is `[T, out, in]`.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtsc.codegen.inline import runtime_source, split_inline
from mtsc.codegen.torch_supermodel import RUNTIME_FILES, emit_supermodel
from mtsc.driver import build, load_supermodel
from mtsc.ir.graph import Graph, Node, Role
from mtsc.ir.ops import Op
from mtsc.ir.passes.insert_routing import RoutingOptions
from mtsc.runtime.policy_format import CHOICES, uniform_policy

MINI = "mini_tasks.mtl"
MINI_INPUT = (2, 3, 12, 12)
TINY_INPUT = (2, 3, 32, 32)  # resnet_tiny, far below its declared 64x64
TOL = {"rtol": 1e-5, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Built:
    graph: Graph  # the routed IR
    supermodel: ModuleType
    backbone: ModuleType
    folder: Path  # where supermodel.py and backbone.py are


def build_model(path: Path, out_dir: Path, load_generated, *, share_bn: bool = False) -> Built:
    result = build(path, out_dir, render=False, routing=RoutingOptions(share_bn=share_bn))
    assert result.supermodel is not None
    return Built(
        result.supermodel,
        load_generated(out_dir / "supermodel.py"),
        load_generated(out_dir / "backbone.py"),
        out_dir,
    )


def mini_text(models_dir: Path, tasks: int) -> str:
    """mini_tasks.mtl with `tasks` readout tasks instead of its two."""
    text = (models_dir / MINI).read_text()
    section = "\n".join(f"    task{i}: readout(classes={2 + i % 3})" for i in range(tasks))
    return text[: text.index("tasks {")] + "tasks {\n" + section + "\n}\n"


@pytest.fixture(scope="module")
def mini(models_dir, tmp_path_factory, load_generated) -> Built:
    return build_model(models_dir / MINI, tmp_path_factory.mktemp("mini"), load_generated)


@pytest.fixture(scope="module")
def mini_shared_bn(models_dir, tmp_path_factory, load_generated) -> Built:
    out = tmp_path_factory.mktemp("mini_bn")
    return build_model(models_dir / MINI, out, load_generated, share_bn=True)


@pytest.fixture(scope="module")
def tiny(examples_dir, tmp_path_factory, load_generated) -> Built:
    return build_model(
        examples_dir / "resnet_tiny.mtl", tmp_path_factory.mktemp("tiny"), load_generated
    )


@pytest.fixture(scope="module")
def multiscale(models_dir, tmp_path_factory, load_generated) -> Built:
    """Heads that read the trunk after its first stage as well as the backbone's output."""
    out = tmp_path_factory.mktemp("multiscale")
    return build_model(models_dir / "multiscale_heads.mtl", out, load_generated)


@pytest.fixture(scope="module")
def context(models_dir, tmp_path_factory, load_generated) -> Built:
    """C x 1 x 1 values, each from a routed conv, added to, subtracted from and multiplied
    with feature maps."""
    out = tmp_path_factory.mktemp("context")
    return build_model(models_dir / "context_blocks.mtl", out, load_generated)


def random_model(built: Built, seed: int = 0) -> nn.Module:
    """A supermodel with random weights, batchnorm statistics and policy logits, in eval mode."""
    torch.manual_seed(seed)
    model = built.supermodel.Supermodel()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, nn.PReLU):  # a slope per task and channel: all different
                module.weight.uniform_(-0.5, 0.5)
        for logits in model.policy_parameters():
            logits.normal_()
    return model.eval()


def random_policy(model: nn.Module, seed: int) -> dict:
    rng = random.Random(seed)
    choices = {
        name: {task: rng.choice(CHOICES if skip else CHOICES[:2]) for task in model.TASKS}
        for name, skip, _ in model.ROUTED
    }
    return {"model": model.MODEL, "tasks": list(model.TASKS), "choices": choices}


def routed_names(model: nn.Module) -> list[str]:
    return [name for name, _, _ in model.ROUTED]


# ---------------------------------------------------------------- the per-task reference

Mixer = Callable[[str, int, list[torch.Tensor]], torch.Tensor]
SKIP_LAYER = {"conv": 0, "bn": 1, "linear": 0}


def attr_name(name: str) -> str:
    return name.replace(".", "_")


def module_of(model: nn.Module, node: Node) -> nn.Module:
    """The supermodel's module of an IR node; a skip projection is `<op>_skip[i]`."""
    if node.role is Role.SKIP:
        op, layer = node.name.rsplit(".skip.", 1)
        return getattr(model, attr_name(op) + "_skip")[SKIP_LAYER[layer]]
    return getattr(model, attr_name(node.name))


def task_part(value: torch.Tensor | None, node: Node, t: int, tasks: int):
    """Task t's part of a parameter or statistic of a per-task layer (the whole otherwise)."""
    if value is None or node.role not in (Role.SPECIFIC, Role.SKIP):
        return value
    if node.op is Op.LINEAR:
        return value[t]
    rows = value.shape[0] // tasks
    return value[t * rows : (t + 1) * rows]


def apply_parametric(
    model: nn.Module, node: Node, t: int, x: torch.Tensor, bn_training: bool
) -> torch.Tensor:
    module = module_of(model, node)
    tasks = len(model.TASKS)

    def part(name: str) -> torch.Tensor | None:
        return task_part(getattr(module, name), node, t, tasks)

    a = node.attrs
    if node.op is Op.CONV2D:
        return F.conv2d(
            x, part("weight"), part("bias"), a["stride"], a["padding"], a["dilation"], a["groups"]
        )
    if node.op is Op.DECONV2D:  # task t's weight rows are its input channels
        return F.conv_transpose2d(
            x,
            part("weight"),
            part("bias"),
            a["stride"],
            a["padding"],
            0,
            a["groups"],
            a["dilation"],
        )
    if node.op is Op.BATCHNORM:
        # Batch statistics must not update the supermodel's buffers a second time.
        mean, var = part("running_mean").clone(), part("running_var").clone()
        return F.batch_norm(
            x, mean, var, part("weight"), part("bias"), bn_training, a["momentum"], a["eps"]
        )
    if node.op is Op.LINEAR:
        return F.linear(x, part("weight"), part("bias"))
    if node.op is Op.PRELU:
        return F.prelu(x, part("weight"))
    raise AssertionError(f"the reference has no parametric op {node.op.value}")


def apply_plain(node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    if node.op in (Op.TASK_STACK, Op.TASK_SLICE, Op.DROPOUT):
        return xs[0]  # one task's path needs no stacking; dropout: eval mode only
    if node.op is Op.RELU:
        return torch.relu(xs[0])
    if node.op is Op.RELU6:
        return xs[0].clamp(0.0, 6.0)
    if node.op is Op.ADD:
        coeffs = a["coeffs"] or [1.0] * len(xs)
        return sum(c * x for c, x in zip(coeffs, xs, strict=True))
    if node.op is Op.MUL:
        return math.prod(xs[1:], start=xs[0])
    if node.op is Op.SIGMOID:
        return torch.sigmoid(xs[0])
    if node.op is Op.CONCAT:
        return torch.cat(xs, dim=1)
    if node.op is Op.FLATTEN:
        return xs[0].flatten(1)
    if node.op is Op.AVGPOOL and a["global"]:
        return xs[0].mean(dim=(2, 3), keepdim=True)
    if node.op is Op.INTERP:
        h, w = node.shape[1:]  # the test images have the declared 12x12: the graph's sizes
        return F.interpolate(xs[0], size=(h, w), mode="bilinear", align_corners=True)
    if node.op is Op.UPSAMPLE and len(xs) == 2:
        corners = False if a["mode"] == "bilinear" else None
        return F.interpolate(xs[0], size=xs[1].shape[-2:], mode=a["mode"], align_corners=corners)
    raise AssertionError(f"the reference has no op {node.op.value}")


def run_task(
    g: Graph,
    model: nn.Module,
    task: str,
    x: torch.Tensor,
    mix: Mixer,
    *,
    bn_training: bool = False,
) -> torch.Tensor:
    """Task `task`'s output: its path alone, each route's candidates mixed by `mix`."""
    t = model.TASKS.index(task)
    values: dict[int, torch.Tensor] = {}
    for nid in g.topo_order():
        node = g.node(nid)
        if node.task not in (None, task):
            continue  # another task's head
        xs = [values[i] for i in g.inputs(nid)]
        if node.op is Op.INPUT:
            values[nid] = x
        elif node.op is Op.ROUTE:
            values[nid] = mix(node.attrs["op"], t, xs)
        elif node.op in (Op.CONV2D, Op.DECONV2D, Op.BATCHNORM, Op.LINEAR, Op.PRELU):
            values[nid] = apply_parametric(model, node, t, xs[0], bn_training)
        else:
            values[nid] = apply_plain(node, xs)
    return values[g.outputs[task]]


def hard_mixer(policy: dict, tasks: tuple[str, ...]) -> Mixer:
    def mix(op: str, t: int, candidates: list[torch.Tensor]) -> torch.Tensor:
        return candidates[CHOICES.index(policy["choices"][op][tasks[t]])]

    return mix


def weighted_mixer(weights: dict[str, torch.Tensor]) -> Mixer:
    """`weights[op]` is [T, 3]; an op without skip has two candidates."""

    def mix(op: str, t: int, candidates: list[torch.Tensor]) -> torch.Tensor:
        return sum(weights[op][t, j] * c for j, c in enumerate(candidates))

    return mix


def gumbel_weights(model: nn.Module, noise: dict, tau: float) -> dict[str, torch.Tensor]:
    """w = softmax((logits + noise) / tau) over the choices an op has, per task."""
    weights = {}
    for name, has_skip, _ in model.ROUTED:
        n = 3 if has_skip else 2
        logits = model.policy[attr_name(name)] + noise[name]
        weights[name] = F.pad(torch.softmax(logits[:, :n] / tau, dim=1), (0, 3 - n))
    return weights


def equal_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    tasks = len(model.TASKS)
    return {
        name: torch.tensor([1 / 3] * 3 if skip else [0.5, 0.5, 0.0]).expand(tasks, 3)
        for name, skip, _ in model.ROUTED
    }


def fixed_noise(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    uniform = {n: torch.rand(len(model.TASKS), 3, generator=gen) for n in routed_names(model)}
    return {n: -torch.log(-torch.log(u.clamp(1e-6, 1 - 1e-6))) for n, u in uniform.items()}


def check_against_reference(built: Built, model: nn.Module, x: torch.Tensor, mix: Mixer) -> None:
    out = model(x)
    assert list(out) == list(model.TASKS)
    for task in model.TASKS:
        expected = run_task(built.graph, model, task, x, mix)
        torch.testing.assert_close(out[task], expected, **TOL)


# ---------------------------------------------------------------- hard sharing, independent nets


class Readout(nn.Module):
    """The `readout` head of mini_tasks.mtl."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.linear1(x)


class Fcn(nn.Module):
    """The built-in `fcn` head: conv-bn-relu, a 1x1 classifier, bilinear upsampling."""

    def __init__(self, features: int, classes: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return F.interpolate(y, size=image.shape[-2:], mode="bilinear", align_corners=False)


def reference_head(model: nn.Module, task: str, features: int) -> nn.Module:
    name, kwargs = model.TASK_SPECS[task]["head"]
    head = Readout(features, **kwargs) if name == "readout" else Fcn(features, **kwargs)
    state, t, tasks = model.state_dict(), model.TASKS.index(task), len(model.TASKS)
    # an op every head has is stacked (`heads_<name>`, all tasks' weights); the rest per task
    loaded = {
        k: state[f"heads_{task}_{k}"]
        if f"heads_{task}_{k}" in state
        else slice_like(state[f"heads_{k}"], like, t, tasks)
        for k, like in head.state_dict().items()
    }
    head.load_state_dict(loaded)
    return head.eval()


def slice_like(value: torch.Tensor, like: torch.Tensor, t: int, tasks: int) -> torch.Tensor:
    """Task t's part of a supermodel tensor for a single-task layer's tensor `like`."""
    if value.shape == like.shape:
        return value
    if value.dim() == like.dim() + 1:  # TaskLinear: [T, out, in]
        return value[t]
    rows = like.shape[0]
    assert value.shape[0] == tasks * rows
    return value[t * rows : (t + 1) * rows]


def task_network(built: Built, model: nn.Module, t: int, choice: str) -> nn.Module:
    """The generated backbone holding task t's weights: the shared op everywhere ("shared"),
    or task t's copy of every routed op ("specific"); per-task batchnorm gives its slice."""
    backbone = built.backbone.Backbone()
    state = model.state_dict()
    tasks = len(model.TASKS)
    loaded = {}
    for key, like in backbone.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        source = f"{prefix}.{leaf}"
        if choice == "specific" and f"{prefix}_specific.{leaf}" in state:
            source = f"{prefix}_specific.{leaf}"
        loaded[key] = slice_like(state[source], like, t, tasks)
    backbone.load_state_dict(loaded)
    return backbone.eval()


def check_uniform_policy(built: Built, choice: str, shape: tuple[int, ...]) -> None:
    model = random_model(built, seed=1)
    model.load_policy(uniform_policy(model.MODEL, model.TASKS, routed_names(model), choice))
    model.set_mode("hard")
    x = torch.randn(shape)
    out = model(x)
    for t, task in enumerate(model.TASKS):
        features = task_network(built, model, t, choice)(x)
        head = reference_head(model, task, features.shape[1])
        torch.testing.assert_close(out[task], head(features, x), **TOL)


@pytest.mark.parametrize("choice", ["shared", "specific"])
@pytest.mark.parametrize("bn", ["per-task bn", "shared bn"])
def test_uniform_policy_equals_backbone_and_heads(choice, bn, mini, mini_shared_bn) -> None:
    """All shared: one backbone + heads (hard parameter sharing). All specific: T networks."""
    check_uniform_policy(mini_shared_bn if bn == "shared bn" else mini, choice, MINI_INPUT)


@pytest.mark.parametrize("choice", ["shared", "specific"])
def test_uniform_policy_on_resnet_tiny(choice, tiny) -> None:
    check_uniform_policy(tiny, choice, TINY_INPUT)


@pytest.mark.parametrize("policy_kind", ["shared", "specific", "mixed 0", "mixed 1", "mixed 2"])
def test_hard_mode_runs_only_chosen_candidates(policy_kind, mini) -> None:
    """Hard mode calls a candidate's module (once) exactly when some task chose it."""
    model = random_model(mini)
    if policy_kind.startswith("mixed"):
        policy = random_policy(model, int(policy_kind.split()[1]))
    else:
        policy = uniform_policy(model.MODEL, model.TASKS, routed_names(model), policy_kind)
    model.load_policy(policy).set_mode("hard")
    suffixes = {"shared": "", "specific": "_specific", "skip": "_skip"}
    called, expected = [], set()
    for name in routed_names(model):
        chosen = set(policy["choices"][name].values())
        for choice, suffix in suffixes.items():
            module = getattr(model, attr_name(name) + suffix, None)
            if module is None:  # an identity skip has no module
                continue
            module.register_forward_hook(lambda m, i, o, key=name + suffix: called.append(key))
            if choice in chosen:
                expected.add(name + suffix)
    model(torch.randn(MINI_INPUT))
    assert sorted(called) == sorted(expected)


# ---------------------------------------------------------------- mixed policies, search mode


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_policy_equals_each_tasks_path(seed, mini) -> None:
    model = random_model(mini, seed)
    policy = random_policy(model, seed)
    model.load_policy(policy).set_mode("hard")
    check_against_reference(mini, model, torch.randn(MINI_INPUT), hard_mixer(policy, model.TASKS))


def test_mixed_policy_on_resnet_tiny(tiny) -> None:
    model = random_model(tiny, 3)
    policy = random_policy(model, 3)
    model.load_policy(policy).set_mode("hard")
    check_against_reference(tiny, model, torch.randn(TINY_INPUT), hard_mixer(policy, model.TASKS))


@pytest.mark.parametrize(
    ("fixture", "size", "seed"),
    [
        # a head's `low=` input is its task's value of that backbone tensor
        ("multiscale", 16, 5),
        # `x + context`, `x - mean` and `x * gate` with routed C x 1 x 1 right-hand sides
        ("context", 12, 6),
    ],
)
def test_each_tasks_path_in_hard_and_search_mode(fixture, size, seed, request) -> None:
    """Each task's output is its own path's, in hard and in search mode (outputs, and the
    gradients of every weight and policy logit)."""
    built = request.getfixturevalue(fixture)
    x = torch.randn(2, 3, size, size)
    model = random_model(built, seed)
    policy = random_policy(model, seed)
    model.load_policy(policy).set_mode("hard")
    check_against_reference(built, model, x, hard_mixer(policy, model.TASKS))

    model.set_mode("search")
    model.gumbel_noise = fixed_noise(model, seed)
    check_search_step(built, model, x, lambda out: sum(o.square().sum() for o in out.values()))


def test_warmup_mixes_with_equal_weights(mini) -> None:
    model = random_model(mini).set_mode("warmup")
    check_against_reference(
        mini, model, torch.randn(MINI_INPUT), weighted_mixer(equal_weights(model))
    )


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_search_mode_outputs_and_gradients(train, mini) -> None:
    """Fixed Gumbel noise: outputs, and gradients of every weight and every policy logit."""
    model = random_model(mini, 4).set_mode("search").train(train)
    model.tau = 0.7
    model.gumbel_noise = fixed_noise(model, 4)
    probes = {
        t: torch.randn(MINI_INPUT[0], classes) for t, classes in (("segment", 3), ("depth", 2))
    }

    def loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum((out[t] * probes[t]).sum() for t in model.TASKS)

    got = check_search_step(mini, model, torch.randn(MINI_INPUT), loss, bn_training=train)
    assert {f"policy.{attr_name(n)}" for n in routed_names(model)} <= got


def check_search_step(
    built: Built, model: nn.Module, x: torch.Tensor, loss, *, bn_training: bool = False
) -> set[str]:
    """One search-mode step (its noise fixed) against the per-task reference: the outputs,
    and the gradients of `loss(outputs)` for every parameter. Returns the gradients' names."""
    out = model(x)
    loss(out).backward()
    got = grads_of(model)
    mix = weighted_mixer(gumbel_weights(model, model.gumbel_noise, model.tau))
    expected_out = {
        t: run_task(built.graph, model, t, x, mix, bn_training=bn_training) for t in model.TASKS
    }
    loss(expected_out).backward()
    expected = grads_of(model)
    for task in model.TASKS:
        torch.testing.assert_close(out[task], expected_out[task].detach(), **TOL)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **GRAD_TOL, msg=name)
    return set(got)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_search_mode_refuses_a_temperature_that_is_not_positive(tau, mini) -> None:
    model = random_model(mini).set_mode("search")
    model.tau = tau
    with pytest.raises(ValueError, match=f"tau must be a positive temperature, got {tau}"):
        model(torch.randn(MINI_INPUT))


def test_search_mode_samples_noise_without_fixed_noise(mini) -> None:
    """Without fixed noise, two training forwards draw different Gumbel noise, and so differ."""
    model = random_model(mini).set_mode("search").train()
    x = torch.randn(MINI_INPUT)
    torch.manual_seed(0)
    first = model(x)["depth"]
    torch.manual_seed(1)
    assert not torch.allclose(first, model(x)["depth"])


def test_search_mode_in_eval_mixes_without_noise(mini) -> None:
    """In `eval()` search mode mixes by the softmax at tau alone: validation is repeatable,
    and equals a forward with zero noise."""
    model = random_model(mini, 9).set_mode("search").eval()
    model.tau = 0.7
    x = torch.randn(MINI_INPUT)
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    second = model(x)
    model.gumbel_noise = {n: torch.zeros(len(model.TASKS), 3) for n in routed_names(model)}
    zero_noise = model(x)
    for task in model.TASKS:
        torch.testing.assert_close(first[task], second[task], rtol=0, atol=0)
        torch.testing.assert_close(first[task], zero_noise[task])


def test_hard_mode_runs_a_given_policy_and_keeps_the_logits(mini) -> None:
    """`set_mode("hard", policy=...)` computes what `load_policy` + hard mode computes, while
    the logits (and so `export_policy` and the probabilities) stay the searched ones."""
    model = random_model(mini, 4).eval()
    logits = {k: v.clone() for k, v in model.policy.items()}
    policy = random_policy(model, 6)
    out = model.set_mode("hard", policy=policy)(torch.ones(MINI_INPUT))
    expected = copy.deepcopy(model).load_policy(policy).set_mode("hard")(torch.ones(MINI_INPUT))
    for task in model.TASKS:
        torch.testing.assert_close(out[task], expected[task], rtol=0, atol=0)
    for key, value in model.policy.items():
        torch.testing.assert_close(value, logits[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="^a policy is for hard mode, not 'search'$"):
        model.set_mode("search", policy=policy)
    with pytest.raises(ValueError, match="^policy does not match the model: .*tasks"):
        model.set_mode("hard", policy={**policy, "tasks": ["other"]})
    assert model.mode == "hard"


def test_search_weights_live_for_one_forward(mini) -> None:
    """A forward draws every routed op's weights once; after it, nothing is kept: a changed
    tau counts at once, a route called on its own gets its own draw (so backward through it
    twice works), and the model still deep-copies (no graph tensors left in it)."""
    model = random_model(mini, 8).set_mode("search").train()
    model.gumbel_noise = fixed_noise(model, 8)
    model.tau = 5.0
    sum(v.sum() for v in model(torch.randn(MINI_INPUT)).values()).backward()
    model.tau = 0.05
    expected = gumbel_weights(model, model.gumbel_noise, 0.05)["down.conv1"]
    torch.testing.assert_close(model.routing_weights("down.conv1", torch.empty(0)), expected)
    x = torch.randn(3 * len(model.TASKS), 16, 6, 6)
    for _ in range(2):
        skip = model.down_conv1_skip
        model.route(
            "down.conv1", x, model.down_conv1, model.down_conv1_specific, skip
        ).sum().backward()
    copy.deepcopy(model)


@pytest.mark.parametrize("mixing", ["outputs", "weights"])
def test_gradcheck_search_mode_float64(mixing, mini) -> None:
    model = random_model(mini, 5).double().set_mode("search").set_mixing(mixing)
    model.tau = 0.9
    model.gumbel_noise = {n: v.double() for n, v in fixed_noise(model, 5).items()}
    names = [
        "policy.body_conv1",  # identity skip, conv with bias
        "policy.down_conv1",  # projection skip
        "policy.valid_conv1",  # no skip
        "policy.fc_linear1",  # linear, identity skip
        "policy.linear1",  # linear, projection skip
        "fc_linear1_specific.weight",
        "dw_conv1_specific.weight",
        "down_conv1.weight",
        "body_conv1.bias",
        "linear1_skip.0.weight",
    ]
    params = dict(model.named_parameters())
    inputs = [params[n].detach().clone().requires_grad_() for n in names]
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)

    def outputs(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, dict(zip(names, values, strict=True)), (x,))
        return torch.cat([o.flatten() for o in out.values()])

    assert torch.autograd.gradcheck(outputs, (x, *inputs), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_second_order_gradients_through_the_mixture_are_refused(mini) -> None:
    """The mixture's backward is not differentiable itself: a gradient of a gradient is an
    error, not a silently wrong number."""
    model = random_model(mini, 2).double().set_mode("search")
    model.gumbel_noise = {n: v.double() for n, v in fixed_noise(model, 2).items()}
    out = model(torch.randn(MINI_INPUT, dtype=torch.float64))
    loss = sum(v.square().sum() for v in out.values())
    (grad,) = torch.autograd.grad(loss, [model.body_conv1.weight], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.square().sum().backward()


def test_route_through_torch_mixture(mini, monkeypatch) -> None:
    """One route with MTSC_ROUTING=torch, on the task-stacked layout the forward uses."""
    monkeypatch.setenv("MTSC_ROUTING", "torch")
    model = random_model(mini, 6).set_mode("search")
    model.tau = 1.5
    model.gumbel_noise = fixed_noise(model, 6)
    tasks = len(model.TASKS)
    x = torch.randn(3 * tasks, 16, 6, 6)  # [B * T, C, H, W], batch-major
    skip = model.down_conv1_skip
    y = model.route("down.conv1", x, model.down_conv1, model.down_conv1_specific, skip)
    w = gumbel_weights(model, model.gumbel_noise, model.tau)["down.conv1"]
    candidates = [model.down_conv1(x), model.down_conv1_specific(x), skip(x)]
    for t in range(tasks):
        rows = slice(t, None, tasks)
        expected = sum(w[t, j] * c[rows] for j, c in enumerate(candidates))
        torch.testing.assert_close(y[rows], expected, **TOL)


def test_route_mixture_keeps_the_stacked_layout(mini, monkeypatch) -> None:
    """mix3 (torch path) gets the per-task views `[T, B, ...]` of batch-major tensors; with
    keep_layout its result keeps that layout, so the route hands on a view, not a copy."""
    monkeypatch.setenv("MTSC_ROUTING", "torch")
    mix3 = mini.supermodel.mix3
    tasks, batch = 3, 2
    stacked = [torch.randn(batch * tasks, 4, 5, 5) for _ in range(3)]
    views = [v.view(batch, tasks, 4, 5, 5).transpose(0, 1) for v in stacked]
    w = torch.softmax(torch.randn(tasks, 3), dim=1)
    y = mix3(*views, w, keep_layout=True)
    assert y.stride() == views[0].stride()
    assert y.transpose(0, 1).is_contiguous()
    expected = sum(w[:, j].reshape(tasks, 1, 1, 1, 1) * views[j] for j in range(3))
    torch.testing.assert_close(y, expected, **TOL)
    assert mix3(*views, w).is_contiguous()  # without keep_layout: contiguous, as documented


# ---------------------------------------------------------------- coverage


@pytest.mark.parametrize("tasks", [1, 2, 3, 10])
def test_task_counts(tasks, models_dir, tmp_path, write_model, load_generated) -> None:
    path = write_model(mini_text(models_dir, tasks))
    built = build_model(path, tmp_path / "out", load_generated)
    model = random_model(built, tasks)
    assert model.TASKS == tuple(f"task{i}" for i in range(tasks))
    x = torch.randn(MINI_INPUT)
    model.set_mode("warmup")
    check_against_reference(built, model, x, weighted_mixer(equal_weights(model)))
    policy = random_policy(model, tasks)
    model.load_policy(policy).set_mode("hard")
    check_against_reference(built, model, x, hard_mixer(policy, model.TASKS))


def test_routed_ops_and_pins(mini) -> None:
    """Convs and linears are routed except the pinned ones; per-task forms where expected."""
    model = mini.supermodel.Supermodel()
    assert model.ROUTED == (
        ("body.conv1", True, 1),  # keeps the shape: identity skip
        ("dw.conv1", True, 2),  # depthwise
        ("down.conv1", True, 3),  # strided: 1x1 projection skip
        ("valid.conv1", False, 4),  # 6x6 -> 4x4: no 1x1 projection gives that
        ("fc.linear1", True, 5),
        ("linear1", True, 6),  # 8 -> 6 features: linear projection skip
    )
    kinds = {name: type(module).__name__ for name, module in model.named_children()}
    assert kinds["stem_conv1"] == "Conv2d" and "stem_conv1_specific" not in kinds
    assert kinds["pinned_conv1"] == "TaskConv2d" and "pinned_conv1_specific" not in kinds
    assert kinds["dw_conv1_specific"] == "TaskConv2d"
    assert model.dw_conv1_specific.groups == 8 * len(model.TASKS)
    assert kinds["fc_linear1_specific"] == "TaskLinear"
    assert [type(m).__name__ for m in model.down_conv1_skip] == ["TaskConv2d", "TaskBatchNorm2d"]
    assert model.down_conv1_skip[0].stride == (2, 2)
    assert [type(m).__name__ for m in model.linear1_skip] == ["TaskLinear"]
    assert kinds["body_bn1"] == "TaskBatchNorm2d" and kinds["stem_bn1"] == "BatchNorm2d"


def test_shared_bn_build_has_no_per_task_batchnorm(mini_shared_bn) -> None:
    model = mini_shared_bn.supermodel.Supermodel()
    kinds = {name: type(module).__name__ for name, module in model.named_children()}
    assert kinds["body_bn1"] == "BatchNorm2d"
    assert kinds["pinned_bn1"] == "TaskBatchNorm2d"  # pinned specific stays per task
    assert kinds["down_conv1_skip"] == "Sequential"
    assert type(model.down_conv1_skip[1]).__name__ == "TaskBatchNorm2d"  # skips are per task


def test_dict_input_equals_stacking(mini) -> None:
    model = random_model(mini, 7)
    policy = random_policy(model, 7)
    model.load_policy(policy).set_mode("hard")
    x = torch.randn(MINI_INPUT)
    same = model({task: x for task in model.TASKS})
    for task, value in model(x).items():
        torch.testing.assert_close(same[task], value, rtol=0, atol=0)
    per_task = {task: torch.randn(MINI_INPUT) for task in model.TASKS}
    out = model(per_task)
    mix = hard_mixer(policy, model.TASKS)
    for task in model.TASKS:
        expected = run_task(mini.graph, model, task, per_task[task], mix)
        torch.testing.assert_close(out[task], expected, **TOL)


def test_the_shared_prefix_runs_once_on_the_batch(mini) -> None:
    """The pinned stem (conv, batchnorm, relu: every task runs it alike) sees the batch once;
    the first routed op sees it once per task (a dict input is per task from the start)."""
    model = random_model(mini, 3).train()
    seen: dict[str, list[int]] = {"stem_conv1": [], "body_conv1": []}
    for name, sizes in seen.items():
        module = getattr(model, name)
        module.register_forward_pre_hook(lambda _, args, sizes=sizes: sizes.append(len(args[0])))
    x = torch.randn(MINI_INPUT)
    model(x)
    model({task: x for task in model.TASKS})
    batch, tasks = len(x), len(model.TASKS)
    assert seen == {"stem_conv1": [batch, batch * tasks], "body_conv1": [batch * tasks] * 2}
    stacked = [n for n, node in mini.graph.nodes() if node.op is Op.TASK_STACK]
    sources = {mini.graph.node(mini.graph.inputs(n)[0]).name for n in stacked}
    assert sources == {"stem.relu1"}  # the image itself is never read past the stem


def test_input_errors(mini) -> None:
    model = random_model(mini)
    with pytest.raises(ValueError, match=r"input dict lacks tasks \['depth'\]; expected"):
        model({"segment": torch.randn(MINI_INPUT)})
    with pytest.raises(ValueError, match="mode must be one of .*'warmup'.*got 'soft'"):
        model.set_mode("soft")
    batches = {task: torch.randn(MINI_INPUT) for task in (*model.TASKS, "segmnet")}
    with pytest.raises(ValueError) as err:
        model(batches)
    assert str(err.value) == (
        f"input dict has unknown tasks ['segmnet']; expected {list(model.TASKS)}"
    )


def test_hard_mode_follows_a_state_dict_loaded_after_it_was_set(mini) -> None:
    """Hard mode keeps the argmax it took when set; loading a checkpoint's logits renews it,
    so that its outputs and `export_policy()` agree."""
    trained = random_model(mini, 3)
    trained.load_policy(random_policy(trained, 3)).set_mode("hard")
    model = mini.supermodel.Supermodel().set_mode("hard")  # all-zero logits: all shared
    model.load_state_dict(trained.state_dict())
    assert model.export_policy() == trained.export_policy()
    x = torch.randn(MINI_INPUT)
    expected = trained(x)
    for task, value in model.eval()(x).items():
        torch.testing.assert_close(value, expected[task], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["warmup", "search", "hard"])
def test_a_channels_last_supermodel_equals_a_contiguous_one(mode, mini) -> None:
    model = random_model(mini, 5).set_mode(mode)
    model.gumbel_noise = fixed_noise(model, 5)
    x = torch.randn(MINI_INPUT)
    expected = model(x)
    got = copy.deepcopy(model).to(memory_format=torch.channels_last)(
        x.contiguous(memory_format=torch.channels_last)
    )
    for task, value in expected.items():
        torch.testing.assert_close(got[task], value, **TOL)


def test_print_shows_task_modules_per_task(mini) -> None:
    text = str(mini.supermodel.Supermodel())
    assert "TaskConv2d(2 tasks, 16 -> 12 channels each; stacked: 32, 24, " in text
    assert "TaskBatchNorm2d(2 tasks, 8 features each; stacked: 16, " in text


@pytest.mark.parametrize(
    "shape", [(3, 12, 12), (2, 1, 12, 12), (2, 3, 12, 12, 1)], ids=["no-batch", "gray", "5d"]
)
def test_an_input_that_is_not_a_batch_of_samples_is_named(shape, mini) -> None:
    """Before task stacking turns its shape into one that says nothing (3 channels into 6)."""
    model = random_model(mini)
    expected = "expected a batch [N, 3, H, W] of 3x12x12 samples (any size)"
    message = re.escape(f"{expected}, got a tensor of shape {shape}")
    for given in (torch.randn(shape), {t: torch.randn(shape) for t in model.TASKS}):
        with pytest.raises(ValueError, match=message):
            model(given)


def test_dict_input_batches_must_match(mini) -> None:
    model = random_model(mini)
    _, *image = MINI_INPUT
    sizes = {"segment": torch.randn(4, *image), "depth": torch.randn(2, *image)}
    with pytest.raises(ValueError) as err:
        model(sizes)
    assert str(err.value) == "input batches must have one size; got segment 4, depth 2"
    smaller = [s // 2 for s in image[1:]]
    shapes = {"segment": torch.randn(2, *image), "depth": torch.randn(2, image[0], *smaller)}
    with pytest.raises(ValueError) as err:
        model(shapes)
    got = f"segment {(2, *image)}, depth {(2, image[0], *smaller)}"
    assert str(err.value) == f"input batches must have one shape; got {got}"


def examples_with_backbone(examples_dir: Path) -> list[Path]:
    """Every example model (block libraries such as resnet_blocks.mtl have no backbone)."""
    return [p for p in sorted(examples_dir.glob("*.mtl")) if "\nbackbone {" in p.read_text()]


def test_every_example_builds_a_supermodel(examples_dir, tmp_path) -> None:
    examples = examples_with_backbone(examples_dir)
    assert len(examples) >= 5
    for path in examples:
        out = tmp_path / path.stem
        result = build(path, out, render=False)
        source = (out / "supermodel.py").read_text()
        compile(source, str(out / "supermodel.py"), "exec")
        routes = [
            n for n in result.supermodel.node_ids() if result.supermodel.node(n).op is Op.ROUTE
        ]
        assert source.count('self.route("') == len(routes) > 0, path.name


def test_resnet_tiny_warmup_forward(tiny) -> None:
    model = tiny.supermodel.Supermodel().set_mode("warmup")
    out = model(torch.randn(TINY_INPUT))
    classes = {"segment": 6, "depth": 1, "normal": 3}
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        t: (2, c, 32, 32) for t, c in classes.items()
    }
    assert all(torch.isfinite(v).all() for v in out.values())


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Error relative to the norm, or absolute below norm 1: a bias before a training-mode
    batchnorm has gradient zero in exact arithmetic, float32 rounding in practice."""
    return ((got.double().cpu() - expected).norm() / expected.norm().clamp_min(1.0)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["search", "hard"])
def test_cuda_step_with_triton_mixture_equals_float64_cpu(mode, tiny, monkeypatch) -> None:
    """On a GPU every mixture runs in the Triton kernel (forced here): a training-mode step's
    outputs and the gradients of all weights and policy logits equal the float64 CPU step's."""
    reference = random_model(tiny, 6).double().set_mode(mode).train()
    reference.tau = 0.8
    reference.gumbel_noise = {n: v.double() for n, v in fixed_noise(reference, 6).items()}
    on_gpu = random_model(tiny, 6).cuda().set_mode(mode).train()
    on_gpu.tau = reference.tau
    on_gpu.gumbel_noise = fixed_noise(on_gpu, 6)
    x = torch.randn(TINY_INPUT, dtype=torch.float64)
    probes = {t: torch.randn_like(v) for t, v in reference(x).items()}
    reference.zero_grad(set_to_none=True)

    def step(model: nn.Module, device: str) -> tuple[dict, dict]:
        dtype = next(model.parameters()).dtype
        out = model(x.to(device, dtype))
        sum((out[t] * probes[t].to(device, dtype)).sum() for t in model.TASKS).backward()
        return out, grads_of(model)

    expected_out, expected_grads = step(reference, "cpu")
    monkeypatch.setenv("MTSC_ROUTING", "triton")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # float32 convs, not tf32
        out, grads = step(on_gpu, "cuda")
    assert grads.keys() == expected_grads.keys()
    errors = {f"output {t}": relative_error(out[t], expected_out[t].detach()) for t in out}
    errors |= {n: relative_error(grads[n], g) for n, g in expected_grads.items()}
    assert max(errors.values()) < 1e-4, sorted(errors.items(), key=lambda e: -e[1])[:5]


# ---------------------------------------------------------------- generated source

GOLDEN = "mini_supermodel.py"
REFRESH = "pytest tests/test_supermodel.py --accept"


def test_golden_source(models_dir, check_golden) -> None:
    g = load_supermodel(models_dir / MINI)
    check_golden(emit_supermodel(g, source_name=f"tests/models/{MINI}").text, GOLDEN, REFRESH)


def test_source_is_deterministic_and_copies_the_runtime(models_dir) -> None:
    g1 = load_supermodel(models_dir / MINI)
    g2 = load_supermodel(models_dir / MINI)
    text = emit_supermodel(g1, source_name=MINI).text
    assert text == emit_supermodel(g2, source_name=MINI).text
    compile(text, MINI, "exec")
    for filename in RUNTIME_FILES:
        assert split_inline(runtime_source(filename)).body in text, filename


def test_source_passes_ruff(mini, examples_dir, tmp_path, ruff_check) -> None:
    build(examples_dir / "resnet_tiny.mtl", tmp_path, render=False)
    ruff_check(tmp_path / "supermodel.py", mini.folder / "supermodel.py")


_RUN_WITHOUT_MTSC = textwrap.dedent(
    """
    import importlib.abc, importlib.util, sys

    class NoMtsc(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mtsc" or name.startswith("mtsc."):
                raise ImportError("supermodel.py must not need mtsc")

    sys.meta_path.insert(0, NoMtsc())
    import torch
    spec = importlib.util.spec_from_file_location("supermodel", "supermodel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    device = sys.argv[1]
    model = module.Supermodel().to(device).set_mode("search")
    out = model(torch.randn(2, 3, 12, 12, device=device))
    sum(v.sum() for v in out.values()).backward()
    print({t: tuple(v.shape) for t, v in out.items()})
    print(all(p.grad is not None for p in model.policy_parameters()), "mtsc" in sys.modules)
    """
)


def run_without_mtsc(folder: Path, tmp_path: Path, device: str, env: dict[str, str]) -> None:
    shutil.copy(folder / "supermodel.py", tmp_path / "supermodel.py")
    # -I: no PYTHONPATH, no user site, no script folder; the finder blocks the installed mtsc.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _RUN_WITHOUT_MTSC, device],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["{'segment': (2, 3), 'depth': (2, 2)}", "True False"]


def test_source_runs_without_mtsc(mini, tmp_path) -> None:
    run_without_mtsc(mini.folder, tmp_path, "cpu", {"MTSC_ROUTING": "torch"})


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_source_runs_its_own_triton_kernels_without_mtsc(mini, tmp_path) -> None:
    """The file's copy of the kernels, forced, under the interpreter: what a GPU runs."""
    env = {"MTSC_ROUTING": "triton", "TRITON_INTERPRET": "1"}
    run_without_mtsc(mini.folder, tmp_path, "cpu", env)


@pytest.mark.gpu
def test_source_runs_without_mtsc_on_a_gpu(mini, tmp_path) -> None:
    run_without_mtsc(mini.folder, tmp_path, "cuda", {"MTSC_ROUTING": "triton"})


def test_the_model_fingerprint_follows_the_model_not_its_file(models_dir, tmp_path):
    from mtsc.api import write_supermodel

    def fingerprint(model: Path, **options) -> str:
        text = write_supermodel(model, tmp_path / "out", **options).read_text()
        return re.search(r"^# model fingerprint: ([0-9a-f]{32})$", text, re.M).group(1)

    original = models_dir / "two_tasks.mtl"
    source = original.read_text()
    moved = tmp_path / "elsewhere" / "two_tasks.mtl"
    moved.parent.mkdir()
    moved.write_text("# the same model, commented\n" + source)
    wider = tmp_path / "wider.mtl"
    wider.write_text(source.replace("a: x = conv(x, 8", "a: x = conv(x, 12"))
    assert fingerprint(original) == fingerprint(moved)
    assert fingerprint(original) != fingerprint(wider)
    assert fingerprint(original) != fingerprint(moved, share_bn=True)
