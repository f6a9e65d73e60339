"""The generated backbone against hand-written PyTorch ResNets, golden files, determinism, and
what `backbone.py` may import.

The references are written here from the papers' descriptions (torchvision is not used): the
ResNet-18 of He et al. and the DeepLab-style ResNet-34 of AdaShare/AutoMTL (layer3 and layer4
dilated by 2 and 4 instead of strided, max-pool in ceil mode, output stride 8).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from mtsc.driver import build
from mtsc.ir.stats import summarize

# ---------------------------------------------------------------- the references


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int) -> None:
        super().__init__()
        d = dilation
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=d, dilation=d, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=d, dilation=d, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(shortcut + y)


class ResNet(nn.Module):
    """A ResNet trunk: `stages` lists (blocks, channels, stride, dilation) per stage."""

    def __init__(self, stages: list[tuple[int, int, int, int]], *, ceil_pool: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_pool)
        layers = []
        cin = 64
        for blocks, cout, stride, dilation in stages:
            stage = [BasicBlock(cin, cout, stride, dilation)]
            stage += [BasicBlock(cout, cout, 1, dilation) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            cin = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layers(x)


def resnet18() -> ResNet:
    return ResNet([(2, 64, 1, 1), (2, 128, 2, 1), (2, 256, 2, 1), (2, 512, 2, 1)], ceil_pool=False)


def resnet34_deeplab() -> ResNet:
    return ResNet([(3, 64, 1, 1), (4, 128, 2, 1), (6, 256, 1, 2), (3, 512, 1, 4)], ceil_pool=True)


# (example, reference, output shape at the declared input size, computed by hand)
RESNETS = [
    # 288x384 -> /2 conv -> /2 pool -> /2 /2 /2: stride 32
    ("resnet18.mtl", resnet18, (512, 9, 12)),
    # 321 -> 161 (conv) -> 81 (ceil pool) -> 41 (layer2), then dilated: stride 8
    ("resnet34.mtl", resnet34_deeplab, (512, 41, 41)),
]


def randomize(model: nn.Module) -> None:
    """Random weights, BN affine parameters and running statistics (not the identity)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.num_batches_tracked.fill_(7)
            if isinstance(module, nn.PReLU):
                module.weight.copy_(torch.rand(module.num_parameters, generator=gen) - 0.5)


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters and buffers in order, checking the two lists match shape for shape."""
    src_state, dst_state = src.state_dict(), dst.state_dict()
    assert len(src_state) == len(dst_state), (len(src_state), len(dst_state))
    mapped = {}
    pairs = zip(src_state.items(), dst_state.items(), strict=True)
    for (src_key, src_value), (dst_key, dst_value) in pairs:
        assert src_value.shape == dst_value.shape, (src_key, dst_key)
        assert src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1], (src_key, dst_key)
        mapped[dst_key] = src_value
    dst.load_state_dict(mapped, strict=True)


@pytest.fixture(scope="module")
def built_resnets(tmp_path_factory, examples_dir, load_generated):
    out = {}
    for example, _, _ in RESNETS:
        folder = tmp_path_factory.mktemp(example.removesuffix(".mtl"))
        result = build(examples_dir / example, folder, render=False)
        out[example] = (result, folder, load_generated(folder / "backbone.py"))
    return out


def inferred_output_shape(example: Path, height: int, width: int, write_model) -> tuple:
    """The compiler's output shape for the example declared at another input size."""
    text = example.read_text()
    declared = next(line for line in text.splitlines() if line.startswith("input image:"))
    shutil.copy(example.with_name("resnet_blocks.mtl"), write_model("", "resnet_blocks.mtl"))
    path = write_model(text.replace(declared, f"input image: 3x{height}x{width}"), example.name)
    return build(path, None).summary.outputs["backbone"]


@pytest.mark.parametrize(("example", "make_reference", "out_shape"), RESNETS)
def test_generated_resnet_matches_reference(
    example, make_reference, out_shape, built_resnets, examples_dir, write_model
) -> None:
    result, _, module = built_resnets[example]
    torch.manual_seed(0)
    reference = make_reference()
    randomize(reference)
    generated = module.Backbone()
    copy_weights(reference, generated)
    reference.eval()
    generated.eval()
    assert result.summary.outputs["backbone"] == out_shape
    _, h, w = result.summary.inputs["image"]
    gen = torch.Generator().manual_seed(1)
    # The declared size, then a smaller non-square one with a batch of two.
    for batch, height, width in ((1, h, w), (2, 97, 131)):
        x = torch.randn(batch, 3, height, width, generator=gen)
        with torch.no_grad():
            expected = reference(x)
            actual = generated(x)
        assert expected.abs().max() > 0.1  # the tolerance below means something
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    # At the non-declared size, the shape is the one the compiler infers for that size.
    inferred = inferred_output_shape(examples_dir / example, 97, 131, write_model)
    assert tuple(actual.shape[1:]) == inferred != out_shape


def test_generated_resnet34_state_dict_names(built_resnets) -> None:
    _, _, module = built_resnets["resnet34.mtl"]
    keys = list(module.Backbone().state_dict())
    assert keys[:2] == ["stem_conv1.weight", "stem_bn1.weight"]
    assert "layer2_0_downsample_conv1.weight" in keys
    assert "layer4_2_bn2.running_var" in keys
    assert not any(k.startswith("layer1_0_downsample") for k in keys)


# ---------------------------------------------------------------- what backbone.py needs

_RUN_WITHOUT_MTSC = textwrap.dedent(
    """
    import importlib.abc, importlib.util, sys

    class NoMtsc(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mtsc" or name.startswith("mtsc."):
                raise ImportError("backbone.py must not need mtsc")

    sys.meta_path.insert(0, NoMtsc())
    import torch
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("backbone", "backbone.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    y = module.Backbone().eval()(torch.randn(2, 3, 40, 56))
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    print(tuple(y.shape), sorted(new - {"backbone", "torch"} - sys.stdlib_module_names))
    print("mtsc" in sys.modules)
    """
)


def test_backbone_py_runs_with_only_torch(built_resnets, tmp_path) -> None:
    _, folder, _ = built_resnets["resnet18.mtl"]
    shutil.copy(folder / "backbone.py", tmp_path / "backbone.py")
    # -I: no PYTHONPATH, no user site, no script folder; the finder blocks the installed mtsc.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _RUN_WITHOUT_MTSC],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["(2, 512, 2, 2) []", "False"]


@pytest.mark.parametrize("example", [e for e, _, _ in RESNETS])
def test_backbone_py_imports_only_torch(example, built_resnets) -> None:
    _, folder, _ = built_resnets[example]
    tree = ast.parse((folder / "backbone.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported and all(name == "torch" or name.startswith("torch.") for name in imported)


def test_backbone_py_passes_ruff(built_resnets, models_dir, tmp_path, ruff_check) -> None:
    build(models_dir / "tiny.mtl", tmp_path, render=False)
    files = [built_resnets[e][1] / "backbone.py" for e, _, _ in RESNETS]
    ruff_check(*files, tmp_path / "backbone.py")


# ---------------------------------------------------------------- golden files

GOLDEN_FILES = {"backbone.py": "tiny_backbone.py", "backbone.dot": "tiny_backbone.dot"}
REFRESH = "pytest tests/test_backbone_reference.py --accept"


@pytest.mark.parametrize("generated", sorted(GOLDEN_FILES))
def test_golden(generated, repo, tmp_path, monkeypatch, check_golden) -> None:
    # A path relative to the repository root, as the header names it.
    monkeypatch.chdir(repo)
    build(Path("tests/models/tiny.mtl"), tmp_path, render=False)
    check_golden((tmp_path / generated).read_text(), GOLDEN_FILES[generated], REFRESH)


def test_golden_model_output_matches_a_functional_reference(models_dir, tmp_path, load_generated):
    """The tiny model's generated forward against the same network written with torch.nn.functional
    from the .mtl source by hand, with the generated module's own weights."""
    import torch.nn.functional as F

    result = build(models_dir / "tiny.mtl", tmp_path, render=False)
    model = load_generated(tmp_path / "backbone.py").Backbone()
    randomize(model)
    model.eval()
    m = dict(model.named_modules())

    def bn(name, x):
        mod = m[name]
        return F.batch_norm(
            x, mod.running_mean, mod.running_var, mod.weight, mod.bias, False, 0.0, 1e-5
        )

    def conv(name, x, **kw):
        return F.conv2d(x, m[name].weight, m[name].bias, **kw)

    def mix(prefix, x):
        a = F.relu(bn(f"{prefix}_bn1", conv(f"{prefix}_conv1", x)))
        b = torch.tanh(bn(f"{prefix}_bn2", conv(f"{prefix}_conv2", x, padding=(0, 1))))
        return a + b

    image = torch.randn(2, 3, 32, 32)
    x = F.prelu(
        bn("stem_bn1", conv("stem_conv1", image, stride=2, padding=1)), m["stem_prelu1"].weight
    )
    y = F.relu6(bn("side_bn1", conv("side_conv1", x, padding=2, dilation=2, groups=4)))
    x = x * torch.sigmoid(y)
    x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
    x = mix("stages_1", mix("stages_0", x))
    x = F.hardswish(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    lift = m["lift_deconv1"]
    x = bn("lift_bn1", F.conv_transpose2d(x, lift.weight, lift.bias, 2, groups=2))
    x = x[:, :, 1:33, 1:33]
    x = F.prelu(x, m["slope"].weight)
    z = F.silu(F.avg_pool2d(x, 2))
    z = F.conv2d(z, m["down_scale1"].weight, m["down_scale1"].bias, groups=z.shape[1])
    u = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)
    x = torch.cat([x, u], dim=1)
    expected = torch.maximum(x, F.leaky_relu(x, 0.2))
    with torch.no_grad():
        actual = model(image)
    assert tuple(actual.shape[1:]) == result.summary.outputs["backbone"]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == summarize(result.graph).params


def test_build_is_deterministic_across_processes(repo, tmp_path) -> None:
    """Two builds in fresh processes with different hash seeds give byte-identical files."""
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        proc = subprocess.run(
            [sys.executable, "-m", "mtsc", "build", "tests/models/tiny.mtl", "-o", str(out)],
            cwd=repo,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert {"backbone.py", "backbone.dot"} <= set(outputs[0])
    assert outputs[0] == outputs[1]


def test_build_twice_in_process_is_identical(examples_dir, tmp_path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    build(examples_dir / "mobilenetv2.mtl", first, render=False)
    build(examples_dir / "mobilenetv2.mtl", second, render=False)
    for name in ("backbone.py", "backbone.dot"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
