"""`Supermodel.set_mixing("weights")`: routed ops mix their candidates' weights per task and
run one grouped call (`runtime/weight_mixing.py`). The reference is the same supermodel
mixing outputs (`mix3_stacked`), which test_supermodel.py checks against per-task
references: in float64 both must give the same outputs and the same gradient for every
weight, batchnorm and policy logit, in every mode, on models with every kind of routed op.
(test_supermodel.py's gradcheck runs both mixings.)"""

from __future__ import annotations

import copy
import gc
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtsc.driver import build
from mtsc.errors import MtscError
from mtsc.runtime.config import SearchConfig, make_config, resolve_mixing
from mtsc.runtime.weight_mixing import _identity_tap, _recomputing_weight

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {"rtol": 1e-9, "atol": 1e-10}
# (folder fixture, file, input): identity skips (with and without bias, depthwise, dilated),
# projection skips, ops without a skip, linear layers with identity and projection skips
MODELS = [
    ("models_dir", "mini_tasks.mtl", (2, 3, 12, 12)),
    ("models_dir", "deploy_residual.mtl", (2, 3, 32, 32)),
    ("models_dir", "deploy_linear.mtl", (3, 3, 8, 8)),
    ("examples_dir", "resnet_tiny.mtl", (2, 3, 32, 32)),
    ("examples_dir", "mobilenetv2.mtl", (2, 3, 64, 64)),
]
# A shape-keeping conv whose identity no tap of its kernel can express (k=2, d=2, p=1 reads
# x[i-1] and x[i+1], never x[i]): that route mixes outputs, the others weights.
NO_TAP = """
input image: 3x8x8

backbone {
    stem: x = conv(image, 4, k=3, p=1) | bn | relu
    gap: x = conv(x, 4, k=2, d=2, p=1) | bn | relu
    x = conv(x, 4, k=3, p=1) | bn | relu
    return x
}

tasks {
    a: conv1x1(classes=2)
    b: conv1x1(classes=3)
}
"""


# Identity skips at every kind of tap: grouped, non-square and dilated kernels, and a linear
# layer reading the flat features.
TAPS = """
input image: 3x8x8

backbone {
    stem: x = conv(image, 8, k=3, p=1) | bn | relu
    grouped: x = conv(x, 8, k=3, p=1, g=2) | bn | relu
    wide: x = conv(x, 8, k=(1, 5), p=(0, 2), g=4, bias=true) | bn | relu
    dilated: x = conv(x, 8, k=(3, 1), p=(2, 0), d=2) | bn | relu
    x = avgpool(x, global=true) | flatten
    fc: x = linear(x, 8) | relu
    return x
}

tasks {
    a: head(classes=2)
    b: head(classes=3)
    c: head(classes=4)
}

block head(x, input, classes) {
    return linear(x, classes)
}
"""


def generated_module(path: Path, tmp_path: Path, load_generated):
    build(path, tmp_path, render=False)
    return load_generated(tmp_path / "supermodel.py")


@pytest.fixture
def random_pair(randomize_norms):
    """`random_pair(module, seed=0)`: two float64 copies of one supermodel with random
    batchnorms and policy logits, fixed Gumbel noise, mixing outputs and mixing weights."""

    def make(module, seed: int = 0) -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(seed)
        model = module.Supermodel().double()
        randomize_norms(model, seed)
        with torch.no_grad():
            for logits in model.policy_parameters():
                logits.normal_()
        model.tau = 0.7
        model.gumbel_noise = {
            name: -torch.log(-torch.log(torch.rand(len(model.TASKS), 3, dtype=torch.float64)))
            for name, _, _ in model.ROUTED
        }
        return model, copy.deepcopy(model).set_mixing("weights")

    return make


def step(model: nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """Outputs and the gradient of every parameter of one forward and backward; dropout's
    masks are drawn from one seed, so that both models draw the same."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(x)
    probes = torch.Generator().manual_seed(2)
    loss = sum(
        (v * torch.randn(v.shape, generator=probes, dtype=torch.float64).to(v)).sum()
        for v in out.values()
    )
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def assert_same_step(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    out, grads = step(reference, x)
    got_out, got_grads = step(model, x)
    for task in out:
        torch.testing.assert_close(got_out[task], out[task], **TOL, msg=task)
    assert got_grads.keys() == grads.keys()
    assert any(name.startswith("policy.") for name in grads) == (model.mode == "search")
    # A bias that a training-mode batchnorm follows has a gradient of zero up to rounding:
    # absolute errors count against the largest gradient of the model.
    scale = max(g.abs().max().item() for g in grads.values())
    for name in grads:
        torch.testing.assert_close(
            got_grads[name], grads[name], rtol=TOL["rtol"], atol=TOL["atol"] * scale, msg=name
        )


def count_mixtures(module, monkeypatch) -> list[bool]:
    """Record the `hard` flag of every `mix3_stacked` call the generated module makes."""
    calls = []
    mix3_stacked = module.mix3_stacked

    def counted(*args, hard=False):
        calls.append(hard)
        return mix3_stacked(*args, hard=hard)

    monkeypatch.setattr(module, "mix3_stacked", counted)
    return calls


@pytest.mark.parametrize("folder, name, shape", MODELS, ids=[m[1] for m in MODELS])
@pytest.mark.parametrize("mode", ["warmup", "search"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_weights_mixing_equals_outputs_mixing(
    folder, name, shape, mode, train, request, tmp_path, load_generated, monkeypatch, random_pair
) -> None:
    module = generated_module(request.getfixturevalue(folder) / name, tmp_path, load_generated)
    reference, model = random_pair(module)
    for m in (reference, model):
        m.set_mode(mode).train(train)
    x = torch.randn(shape, dtype=torch.float64)
    calls = count_mixtures(module, monkeypatch)
    step(model, x)
    assert calls == [], "every route of these models folds its mixture into the weights"
    assert_same_step(reference, model, x)


@pytest.mark.parametrize("mode", ["warmup", "search"])
def test_identity_taps_of_grouped_and_non_square_kernels(
    mode, write_model, tmp_path, load_generated, monkeypatch, random_pair
) -> None:
    module = generated_module(write_model(TAPS), tmp_path / "out", load_generated)
    reference, model = random_pair(module)
    for m in (reference, model):
        m.set_mode(mode).train()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    calls = count_mixtures(module, monkeypatch)
    step(model, x)
    assert calls == []
    assert_same_step(reference, model, x)


def test_an_identity_no_tap_expresses_mixes_outputs(
    write_model, tmp_path, load_generated, monkeypatch, random_pair
) -> None:
    module = generated_module(write_model(NO_TAP), tmp_path / "out", load_generated)
    reference, model = random_pair(module)
    for m in (reference, model):
        m.set_mode("search").train()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    calls = count_mixtures(module, monkeypatch)
    step(model, x)
    assert calls == [False]  # the `gap` conv's route only
    assert_same_step(reference, model, x)


def test_hard_mode_computes_only_the_chosen_candidates_either_way(
    models_dir, tmp_path, load_generated, monkeypatch, random_pair
) -> None:
    module = generated_module(models_dir / "mini_tasks.mtl", tmp_path, load_generated)
    reference, model = random_pair(module)
    for m in (reference, model):
        m.set_mode("hard").train()
    calls = count_mixtures(module, monkeypatch)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    assert_same_step(reference, model, x)
    assert calls and all(calls)  # both went through the hard mixture


def test_bf16_autocast_on_the_cpu(models_dir, tmp_path, load_generated, random_pair) -> None:
    module = generated_module(models_dir / "deploy_residual.mtl", tmp_path, load_generated)
    reference, model = (m.float().set_mode("search").train() for m in random_pair(module))
    for m in (reference, model):
        m.gumbel_noise = {k: v.float() for k, v in m.gumbel_noise.items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = reference(x), model(x)
    for task in expected:
        assert got[task].dtype == expected[task].dtype
        torch.testing.assert_close(got[task].float(), expected[task].float(), rtol=0.1, atol=0.1)
    sum(v.float().sum() for v in got.values()).backward()
    assert all(p.grad is not None for p in model.policy_parameters())


def test_the_mixed_weight_is_made_again_for_the_backward_not_kept() -> None:
    """The mixed weights are T times the op's: the call keeps the recipe, not the tensor."""
    torch.manual_seed(0)
    base = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    made = []

    def make_weight() -> torch.Tensor:
        weight = base * 2
        made.append(weakref.ref(weight))
        return weight

    y = _recomputing_weight(make_weight, lambda w: F.conv2d(x, w, padding=1))
    gc.collect()
    assert len(made) == 1 and made[0]() is None
    y.square().sum().backward()
    assert len(made) == 2
    got = base.grad.clone(), x.grad.clone()
    base.grad = x.grad = None
    F.conv2d(x, base * 2, padding=1).square().sum().backward()
    torch.testing.assert_close(got, (base.grad, x.grad))


@pytest.mark.parametrize(
    "conv, size, tap",
    [
        (nn.Conv2d(4, 4, 3, padding=1), (5, 5), [1, 1]),
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2), (7, 7), [1, 1]),
        (nn.Conv2d(4, 4, (1, 5), padding=(0, 2)), (3, 6), [0, 2]),
        (nn.Conv2d(4, 4, 1), (4, 4), [0, 0]),
        (nn.Conv2d(4, 4, 2, padding=1, dilation=2), (6, 6), None),  # no tap on the pixel
        (nn.Conv2d(4, 4, 3), (5, 5), None),  # 5 -> 3: not the shape
        (nn.Conv2d(4, 4, 3, stride=2, padding=1), (1, 1), [1, 1]),  # 1x1 stays 1x1
        (nn.Conv2d(4, 4, 3, stride=2, padding=1), (4, 4), None),
    ],
)
def test_identity_tap(conv, size, tap) -> None:
    assert _identity_tap(conv, size) == tap


def test_set_mixing_names_the_choices(models_dir, tmp_path, load_generated) -> None:
    module = generated_module(models_dir / "mini_tasks.mtl", tmp_path, load_generated)
    model = module.Supermodel()
    assert model.mixing == "outputs"
    with pytest.raises(
        ValueError, match=r"mixing must be one of \('outputs', 'weights'\), got 'w'"
    ):
        model.set_mixing("w")
    assert model.set_mixing("weights").mixing == "weights"


def test_search_config_mixing() -> None:
    assert make_config(SearchConfig, None, {"mixing": "weights"}).mixing == "weights"
    with pytest.raises(
        MtscError, match="bad config: mixing must be 'auto', 'outputs' or 'weights'"
    ):
        make_config(SearchConfig, None, {"mixing": "both"})


def test_auto_mixing_folds_weights_on_a_cpu_only() -> None:
    assert SearchConfig().mixing == "auto"
    assert resolve_mixing("auto", "cpu") == "weights"
    assert resolve_mixing("auto", "cuda") == "outputs"
    for device_type in ("cpu", "cuda"):
        assert resolve_mixing("outputs", device_type) == "outputs"
        assert resolve_mixing("weights", device_type) == "weights"


@pytest.mark.gpu
def test_cuda_weights_mixing_equals_float64_cpu(
    examples_dir, tmp_path, load_generated, random_pair
) -> None:
    """A training-mode search step mixing weights on CUDA (float32, no TF32) against the
    float64 CPU step mixing outputs: outputs and every gradient, relative to its norm."""
    module = generated_module(examples_dir / "resnet_tiny.mtl", tmp_path, load_generated)
    reference, model = random_pair(module, seed=6)
    reference.set_mode("search").train()
    model = model.float().cuda().set_mode("search").train()
    model.gumbel_noise = {k: v.float().cuda() for k, v in model.gumbel_noise.items()}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected_out, expected_grads = step(reference, x)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        out, grads = step(model, x.float().cuda())
    assert grads.keys() == expected_grads.keys()

    def error(got: torch.Tensor, want: torch.Tensor) -> float:
        return ((got.double().cpu() - want).norm() / want.norm().clamp_min(1.0)).item()

    errors = {f"output {t}": error(out[t], expected_out[t]) for t in out}
    errors |= {n: error(grads[n], g) for n, g in expected_grads.items()}
    assert max(errors.values()) < 1e-4, sorted(errors.items(), key=lambda e: -e[1])[:5]


def test_functional_call_weights_reach_the_backward(
    models_dir, tmp_path, load_generated, random_pair
) -> None:
    """Weights given for one call (torch.func.functional_call) are the ones the backward
    remakes the mixture from, not the module's own."""
    module = generated_module(models_dir / "mini_tasks.mtl", tmp_path, load_generated)
    reference, model = random_pair(module, seed=3)
    names = ["body_conv1.weight", "body_conv1_specific.weight", "fc_linear1.weight"]
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    grads = []
    for m in (reference, model):
        m.set_mode("search").eval()
        torch.manual_seed(4)
        params = dict(m.named_parameters())
        values = {
            n: (params[n].detach() + torch.randn_like(params[n])).requires_grad_() for n in names
        }
        inputs = x.clone().requires_grad_()
        out = torch.func.functional_call(m, values, (inputs,))
        sum(v.square().sum() for v in out.values()).backward()
        grads.append([inputs.grad, *(values[n].grad for n in names)])
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, **TOL)


def test_an_input_changed_in_place_after_the_forward_is_refused(
    models_dir, tmp_path, load_generated, random_pair
) -> None:
    module = generated_module(models_dir / "mini_tasks.mtl", tmp_path, load_generated)
    _, model = random_pair(module)
    model.set_mode("search")
    x = torch.randn(2 * len(model.TASKS), 8, 6, 6, dtype=torch.float64, requires_grad=True) * 1.0
    y = model.route("body.conv1", x, model.body_conv1, model.body_conv1_specific, None)
    with torch.no_grad():
        x.mul_(3)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_autocast_routes_keep_the_lower_precision(
    models_dir, tmp_path, load_generated, random_pair
) -> None:
    """Every routed op's output has the dtype that mixing outputs gives it (linear layers
    with a bias included), so later layers run in bf16 too."""
    module = generated_module(models_dir / "mini_tasks.mtl", tmp_path, load_generated)
    dtypes = []
    for m in random_pair(module):
        m.float().set_mode("search")
        m.gumbel_noise = {k: v.float() for k, v in m.gumbel_noise.items()}
        seen = {}
        route = m.route
        m.route = lambda name, *args, route=route, seen=seen: _record(
            seen, name, route(name, *args)
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(torch.randn(2, 3, 12, 12))
        dtypes.append(seen)
    assert dtypes[1] == dtypes[0]
    assert set(dtypes[1].values()) == {torch.bfloat16}


def _record(seen: dict, name: str, value: torch.Tensor) -> torch.Tensor:
    seen[name] = value.dtype
    return value
