"""Mixed precision (`amp = bf16 | fp16`): autocast on the run's device, CPU included, and fp16's
loss scaling, which skips a step whose gradients overflowed and is saved with the run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtsc.api import load_supermodel, search
from mtsc.runtime.data import open_dataset
from mtsc.runtime.trainer import autocast, grad_scaler, optimizer_step, restore_scaler

CPU = torch.device("cpu")
MODELS = Path(__file__).parent / "models"

STEPS = {"warmup_steps": 3, "search_steps": 4, "batch_size": 4, "eval_every": 0, "log_every": 1}


@pytest.mark.parametrize(("amp", "dtype"), [(None, torch.float32), ("bf16", torch.bfloat16),
                                            ("fp16", torch.float16)])  # fmt: skip
def test_autocast_runs_convolutions_in_the_chosen_precision_on_the_cpu(amp, dtype):
    with autocast(amp, CPU):
        y = torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
    assert y.dtype == dtype


def scaled_run(amp: str | None) -> SimpleNamespace:
    return SimpleNamespace(scaler=grad_scaler(amp, CPU))


def test_an_fp16_step_whose_gradients_overflow_is_skipped_and_the_scale_shrinks():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    run = scaled_run("fp16")
    scale = run.scaler.get_scale()
    assert not optimizer_step(run, (weight * 1e36).sum(), optimizer)  # scaled: beyond float32
    assert torch.equal(weight.detach(), torch.ones(3))
    assert run.scaler.get_scale() == scale / 2

    optimizer.zero_grad()
    assert optimizer_step(run, weight.sum(), optimizer)  # unscaled before the step: lr * 1
    assert torch.allclose(weight.detach(), torch.full((3,), 0.9))


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_without_fp16_the_scaler_is_a_plain_backward_and_step(amp):
    weight = torch.nn.Parameter(torch.ones(3))
    run = scaled_run(amp)
    assert not run.scaler.is_enabled()
    optimizer_step(run, (weight * 2).sum(), torch.optim.SGD([weight], lr=0.1))
    assert torch.allclose(weight.detach(), torch.full((3,), 0.8))


def test_a_saved_loss_scale_is_restored():
    run = scaled_run("fp16")
    saved = {**run.scaler.state_dict(), "scale": 1024.0}
    restore_scaler(run, {"scaler": saved})
    assert run.scaler.get_scale() == 1024.0
    restore_scaler(run, {})  # a checkpoint written without fp16
    assert run.scaler.get_scale() == 1024.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("amp")
    options = {"size": 16, "n_train": 32, "n_val": 8, "n_test": 8,
               "tasks": ["segment", "depth"], "cache_dir": str(folder / "shapes")}  # fmt: skip
    splits = tuple(open_dataset("shapes", s, **options) for s in ("train", "val"))
    return folder, splits


def first_loss(tiny, amp: str | None) -> tuple[float, dict]:
    """A short search of the tiny model from fixed weights: its first logged loss, and the
    checkpoint's loss scale."""
    folder, splits = tiny
    run_dir = folder / f"run-{amp}"
    torch.manual_seed(0)
    model = load_supermodel(MODELS / "two_tasks.mtl", out_dir=run_dir)
    search(model, *splits, run_dir, progress=False, seed=1, amp=amp, **STEPS)
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    scaler = torch.load(run_dir / "last.pt", weights_only=True)["scaler"]
    return first["loss"], scaler


def test_searches_in_bf16_and_fp16_on_the_cpu(tiny):
    """The same first step in all three precisions, up to rounding: autocast is on (the losses
    differ), and only fp16 keeps a loss scale in its checkpoint."""
    full, full_scaler = first_loss(tiny, None)
    for amp, tolerance in (("bf16", 0.05), ("fp16", 0.01)):
        loss, scaler = first_loss(tiny, amp)
        assert loss != full and loss == pytest.approx(full, rel=tolerance), amp
        assert bool(scaler) == (amp == "fp16")
    assert full_scaler == {}


SKIP_ON_THE_IMAGE = """\
input image: 3x16x16

backbone {
    a: x = conv(image, 3, k=3, p=1)
    return conv(x, 8, k=3, p=1) | relu
}

tasks {
    segment: conv1x1(classes=7)
    depth:   conv1x1(classes=1)
}
"""


@pytest.mark.parametrize("mode", ["warmup", "search", "hard"])
def test_an_identity_skip_of_a_float32_input_mixes_under_autocast(tmp_path, mode):
    """`a.conv1` keeps the image's shape, so its skip is the float32 image itself, while its
    convolutions give bfloat16 under autocast: the mixture takes them together."""
    model_file = tmp_path / "skip.mtl"
    model_file.write_text(SKIP_ON_THE_IMAGE)
    model = load_supermodel(model_file, out_dir=tmp_path / "build")
    model.set_mode(mode)
    with autocast("bf16", CPU):
        outputs = model(torch.randn(2, 3, 16, 16))
    sum(o.float().mean() for o in outputs.values()).backward()
    assert all(torch.isfinite(o.float()).all() for o in outputs.values())
