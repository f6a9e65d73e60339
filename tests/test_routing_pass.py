"""The `insert_routing` pass, and what the generated supermodel builds on it: policy slots, the
parameter split, state-dict keys, policy files (Python API and `mtsc graph --policy`), and the
sharing regulariser."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtsc.driver import build, load
from mtsc.errors import MtscError
from mtsc.ir.graph import Graph, Role, Sharing
from mtsc.ir.ops import ROUTABLE, Op
from mtsc.ir.passes.insert_routing import RoutingOptions, insert_routing
from mtsc.ir.verify import verify
from mtsc.runtime.policy_format import CHOICES, uniform_policy

MINI = "mini_tasks.mtl"


def example_models(examples_dir: Path) -> list[Path]:
    """Every example model (block libraries such as resnet_blocks.mtl have no backbone)."""
    return [p for p in sorted(examples_dir.glob("*.mtl")) if "\nbackbone {" in p.read_text()]


def routes(g: Graph) -> list[int]:
    return [n for n in g.topo_order() if g.node(n).op is Op.ROUTE]


def by_op(g: Graph) -> dict[str, int]:
    """Route node of each routed op name."""
    return {g.node(r).attrs["op"]: r for r in routes(g)}


@pytest.fixture(scope="module")
def mini_graph(models_dir) -> Graph:
    return insert_routing(load(models_dir / MINI))


@pytest.fixture(scope="module")
def mini_module(models_dir, tmp_path_factory, load_generated):
    out = tmp_path_factory.mktemp("mini")
    build(models_dir / MINI, out, render=False)
    return load_generated(out / "supermodel.py")


@pytest.fixture
def model(mini_module):
    torch.manual_seed(0)
    return mini_module.Supermodel()


# ---------------------------------------------------------------- the pass


@pytest.mark.parametrize("share_bn", [False, True])
def test_every_example_verifies_after_routing(share_bn, examples_dir) -> None:
    examples = example_models(examples_dir)
    assert len(examples) >= 5
    for path in examples:
        model = load(path)
        routable = [
            n
            for n, node in model.nodes()
            if node.op in ROUTABLE and node.task is None and node.sharing is None
        ]
        g = insert_routing(model, options=RoutingOptions(share_bn=share_bn))
        verify(g, after="insert_routing")
        assert len(routes(g)) == len(routable) > 0, path.name


GRIDS = """\
input image: 3x16x16
backbone {
    patch: x = conv(image, 8, k=2, s=2)
    up: x = conv(x, 8, k=4, s=2, p=1)
    down: x = conv(x, 16, k=3, s=2, p=1)
    same: x = conv(x, 16, k=3, p=1)
    wide: x = conv(x, 16, k=3, p=2, d=2)
    return x
}
tasks {
    a: conv1x1(classes=2)
    b: conv1x1(classes=3)
}
"""


def test_a_skip_is_offered_only_where_it_fits_at_every_size(
    write_model, tmp_path, load_generated
) -> None:
    """At the declared 16x16 a 1x1 stride-2 projection fits the 2x2 and the 4x4 (pad 1)
    stride-2 convs too, but not at odd sizes: they get no skip. Windows centred on the grid
    (3x3 pad 1, 3x3 dilation 2 pad 2) keep theirs, and the supermodel runs at any size."""
    path = write_model(GRIDS)
    g = insert_routing(load(path))
    skips = {op: g.node(r).attrs["skip"] for op, r in by_op(g).items()}
    assert skips == {"patch": False, "up": False, "down": True, "same": True, "wide": True}
    build(path, tmp_path / "out", render=False)
    model = load_generated(tmp_path / "out" / "supermodel.py").Supermodel()
    for mode in ("warmup", "search"):
        model.set_mode(mode)
        for size in (16, 17, 23, 30):
            assert_two_heads_give(model, batch=2, size=size)


def assert_two_heads_give(model, *, batch: int, size: int) -> None:
    """Tasks a (2 classes) and b (3) give maps of the input's size."""
    out = model(torch.randn(batch, 3, size, size))
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "a": (batch, 2, size, size),
        "b": (batch, 3, size, size),
    }


SQUEEZE = """\
input image: 3x16x16
backbone {
    x = conv(image, 8, k=3, p=1) | bn | relu
    g = avgpool(x, global=true) | conv(2, k=1) | relu | conv(8, k=1) | sigmoid
    return x * g
}
tasks {
    a: conv1x1(classes=2)
    b: conv1x1(classes=3)
}
"""


def test_a_projection_on_pooled_features_has_no_batchnorm(
    write_model, tmp_path, load_generated
) -> None:
    """On a 1x1 map a projection skip is a linear map, as a linear op's is: a batchnorm there
    would normalise each channel over the batch alone. The supermodel then trains on one
    sample a task."""
    path = write_model(SQUEEZE)
    g = insert_routing(load(path))
    names = g.by_name()
    for op in ("conv2", "conv3"):
        assert g.inputs(by_op(g)[op])[2] == names[f"{op}.skip.conv"]
        assert f"{op}.skip.bn" not in names
    assert "conv1.skip.bn" in names  # at 16x16 it keeps its batchnorm
    build(path, tmp_path / "out", render=False)
    model = load_generated(tmp_path / "out" / "supermodel.py").Supermodel()
    ops = [op for op, _, _ in model.ROUTED]
    model.load_policy(uniform_policy(model.MODEL, model.TASKS, ops, "skip"))
    for mixing in ("outputs", "weights"):
        model.set_mixing(mixing)
        for mode in ("warmup", "search", "hard"):
            model.set_mode(mode)
            assert_two_heads_give(model, batch=1, size=16)


def test_routes_join_shared_specific_and_skip(mini_graph) -> None:
    g = mini_graph
    skips = {}
    for r in routes(g):
        shared, specific, *skip = g.inputs(r)
        op = g.node(r).attrs["op"]
        assert g.node(shared).name == op and g.node(shared).role is Role.SHARED
        assert g.node(specific).name == f"{op}.specific"
        assert g.node(specific).role is Role.SPECIFIC
        assert g.node(specific).attrs == g.node(shared).attrs
        assert g.inputs(specific) == g.inputs(shared)
        assert g.node(r).shape == g.node(shared).shape
        assert g.node(r).attrs["skip"] == bool(skip)
        if not skip:
            skips[op] = None
        elif skip[0] == g.inputs(shared)[0]:
            skips[op] = "identity"
        else:
            chain = []
            k = skip[0]
            while g.node(k).role is Role.SKIP:
                chain.append(g.node(k))
                (k,) = g.inputs(k)
            assert k == g.inputs(shared)[0]
            skips[op] = [(n.name, n.op) for n in reversed(chain)]
    assert skips == {
        "body.conv1": "identity",
        "dw.conv1": "identity",
        "down.conv1": [("down.conv1.skip.conv", Op.CONV2D), ("down.conv1.skip.bn", Op.BATCHNORM)],
        "valid.conv1": None,
        "fc.linear1": "identity",
        "linear1": [("linear1.skip.linear", Op.LINEAR)],
    }
    projection = g.node(g.by_name()["down.conv1.skip.conv"])
    assert projection.attrs["kernel"] == (1, 1) and projection.attrs["stride"] == (2, 2)
    assert g.node(g.by_name()["linear1.skip.linear"]).attrs["bias"] is False


def test_routed_users_read_the_route(mini_graph) -> None:
    g = mini_graph
    for r in routes(g):
        shared, specific, *_ = g.inputs(r)
        assert g.users(shared) == [r] and g.users(specific) == [r]
    # The backbone's output feeds every head through that head's task slice.
    out = by_op(g)["linear1"]
    slices = [u for u in g.users(out)]
    assert sorted(g.node(s).attrs["task"] for s in slices) == ["depth", "segment"]
    for s in slices:
        assert g.node(s).op is Op.TASK_SLICE
        assert all(g.node(u).task == g.node(s).attrs["task"] for u in g.users(s))


def test_depth_numbers_routed_ops_in_order(mini_graph) -> None:
    g = mini_graph
    depths = [g.node(r).attrs["depth"] for r in routes(g)]
    assert depths == list(range(1, len(depths) + 1))
    for r in routes(g):
        shared = g.inputs(r)[0]
        assert g.node(shared).meta["depth"] == g.node(r).attrs["depth"]
    assert [g.node(r).attrs["op"] for r in routes(g)] == [
        "body.conv1",
        "dw.conv1",
        "down.conv1",
        "valid.conv1",
        "fc.linear1",
        "linear1",
    ]


def conv_params(cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> int:
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def test_cost_per_choice(mini_graph) -> None:
    """Shared and specific: the op's own parameters; skip: the projection (batchnorm: scale
    and shift), nothing for the identity."""
    expected = {
        "body.conv1": (conv_params(8, 8, 3, bias=True), 0),
        "dw.conv1": (conv_params(8, 8, 3, groups=8), 0),
        "down.conv1": (conv_params(16, 12, 3), conv_params(16, 12, 1) + 2 * 12),
        "valid.conv1": (conv_params(12, 8, 3), 0),
        "fc.linear1": (8 * 8 + 8, 0),
        "linear1": (8 * 6 + 6, 8 * 6),
    }
    g = mini_graph
    costs = {g.node(r).attrs["op"]: g.node(r).meta["cost"] for r in routes(g)}
    assert costs == {
        op: {"shared": own, "specific": own, "skip": skip} for op, (own, skip) in expected.items()
    }


def test_roles_of_batchnorm_prelu_and_pins(models_dir) -> None:
    per_task = insert_routing(load(models_dir / MINI))
    shared = insert_routing(load(models_dir / MINI), options=RoutingOptions(share_bn=True))
    for g, bn_role in ((per_task, Role.SPECIFIC), (shared, Role.SHARED)):
        names = g.by_name()
        assert g.node(names["body.bn1"]).role is bn_role
        assert g.node(names["down.bn1"]).role is bn_role
        assert g.node(names["stem.bn1"]).role is Role.SHARED  # pinned @shared
        assert g.node(names["pinned.bn1"]).role is Role.SPECIFIC  # pinned @specific
        assert g.node(names["valid.prelu1"]).role is Role.SPECIFIC  # PReLU: per task, always
        assert g.node(names["fc.relu1"]).role is Role.SHARED  # no weights: one op, all tasks
        assert g.node(names["down.conv1.skip.bn"]).role is Role.SKIP
        # Pinned ops are not routed, whatever the batchnorm option.
        assert g.node(names["stem.conv1"]).sharing is Sharing.SHARED
        assert g.node(names["pinned.conv1"]).role is Role.SPECIFIC
        assert not {"stem.conv1.route", "pinned.conv1.route", "stem.conv1.specific"} & set(names)
        assert all(g.node(n).role is None for n in names.values() if g.node(n).task is not None)


def test_tasks_argument_selects_and_orders_tasks(models_dir) -> None:
    g = insert_routing(load(models_dir / MINI), tasks=("depth",))
    assert [t.name for t in g.tasks] == ["depth"] and list(g.outputs) == ["depth"]
    verify(g, after="insert_routing")
    g = insert_routing(load(models_dir / MINI), tasks=("depth", "segment"))
    assert [t.name for t in g.tasks] == ["depth", "segment"]


def test_pass_errors(models_dir, write_model) -> None:
    with pytest.raises(MtscError, match=r"tasks without a head in the model: normal, edges"):
        insert_routing(load(models_dir / MINI), tasks=("segment", "normal", "edges"))
    text = (models_dir / MINI).read_text()
    no_tasks = write_model(text[: text.index("tasks {")], name="headless.mtl")
    with pytest.raises(MtscError, match=r"headless.mtl: the model has no tasks section to route"):
        insert_routing(load(no_tasks))


# ---------------------------------------------------------------- the generated model's API


def test_policy_and_weight_parameters_split_all_parameters(model) -> None:
    policy = {id(p) for p in model.policy_parameters()}
    weights = {id(p) for p in model.weight_parameters()}
    assert len(policy) == len(model.ROUTED) and not policy & weights
    assert policy | weights == {id(p) for p in model.parameters()}
    named = {id(p): n for n, p in model.named_parameters()}
    assert sorted(named[i] for i in policy) == sorted(
        f"policy.{name.replace('.', '_')}" for name, _, _ in model.ROUTED
    )
    assert all(p.shape == (len(model.TASKS), 3) for p in model.policy_parameters())


def test_state_dict_keys_stable_and_named_after_the_dsl(models_dir, tmp_path, load_generated):
    keys = []
    for folder in ("a", "b"):
        build(models_dir / MINI, tmp_path / folder, render=False)
        keys.append(
            list(load_generated(tmp_path / folder / "supermodel.py").Supermodel().state_dict())
        )
    assert keys[0] == keys[1]
    first = (tmp_path / "a" / "supermodel.py").read_bytes()
    assert first == (tmp_path / "b" / "supermodel.py").read_bytes()
    # Every module is a DSL name with dots as underscores, maybe with _specific or _skip.N.
    names = {n.name.replace(".", "_") for _, n in load(models_dir / MINI).nodes()}
    routed = {n.replace(".", "_") for n in by_op(insert_routing(load(models_dir / MINI)))}
    for key in keys[0]:
        if key.startswith("policy."):
            assert key.removeprefix("policy.") in routed, key
            continue
        module = key.rsplit(".", 1)[0]
        base = re.sub(r"_skip\.\d+$|_specific$", "", module)
        assert base in names, key
    assert {
        "body_conv1.weight",
        "body_conv1.bias",
        "body_conv1_specific.weight",
        "body_bn1.running_mean",
        "down_conv1_skip.0.weight",
        "down_conv1_skip.1.running_var",
        "linear1_skip.0.weight",
        "heads_segment_linear1.weight",
        "policy.fc_linear1",
    } <= set(keys[0])


def test_export_load_round_trip(model) -> None:
    rng = random.Random(0)
    choices = {
        name: {t: rng.choice(CHOICES if skip else CHOICES[:2]) for t in model.TASKS}
        for name, skip, _ in model.ROUTED
    }
    policy = {"model": model.MODEL, "tasks": list(model.TASKS), "choices": choices}
    assert model.load_policy(policy).export_policy() == policy
    # The other way: random logits, exported, loaded into a fresh model, keep their argmax.
    with torch.no_grad():
        for p in model.policy_parameters():
            p.normal_()
    exported = json.loads(json.dumps(model.export_policy()))
    other = type(model)().load_policy(exported)
    assert other.export_policy() == exported
    for name, skip, _ in model.ROUTED:
        picks = model.policy_logits(name).argmax(1).tolist()
        assert [CHOICES[c] for c in picks] == [exported["choices"][name][t] for t in model.TASKS]
        assert skip or "skip" not in exported["choices"][name].values()


def test_load_policy_in_hard_mode_takes_effect(model) -> None:
    ops = [name for name, _, _ in model.ROUTED]
    model.eval().set_mode("hard")
    x = torch.randn(2, 3, 12, 12)
    model.load_policy(uniform_policy(model.MODEL, model.TASKS, ops, "shared"))
    shared = model(x)
    model.load_policy(uniform_policy(model.MODEL, model.TASKS, ops, "specific"))
    assert not torch.allclose(shared["depth"], model(x)["depth"])


def good_policy(model) -> dict:
    return uniform_policy(model.MODEL, model.TASKS, [n for n, _, _ in model.ROUTED], "shared")


def with_choice(policy: dict, op: str, task: str, choice: str) -> dict:
    policy["choices"][op][task] = choice
    return policy


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: {**p, "model": "resnet18"},
            "it is for model 'resnet18', not 'mini_tasks' (a model takes its file's name)",
        ),
        (
            lambda p: {**p, "tasks": ["depth", "edges"]},
            "its tasks are ['depth', 'edges'], the model's are ['segment', 'depth']",
        ),
        (
            lambda p: {**p, "choices": {k: v for k, v in p["choices"].items() if "fc" not in k}},
            "no choice for ops fc.linear1",
        ),
        (
            lambda p: {**p, "choices": {**p["choices"], "head.conv9": {}}},
            "unknown ops head.conv9",
        ),
        (
            lambda p: with_choice(p, "dw.conv1", "depth", "half"),
            "dw.conv1/depth: 'half' is not one of ('shared', 'specific', 'skip')",
        ),
        (
            lambda p: with_choice(p, "valid.conv1", "segment", "skip"),
            "valid.conv1/segment: this op has no skip (no projection gives its output at "
            "every input size)",
        ),
        (
            lambda p: {**p, "choices": {**p["choices"], "linear1": {"depth": "skip"}}},
            "linear1: needs one choice for each of ['segment', 'depth']",
        ),
        (lambda p: ["shared"], 'a policy is {"model": ..., "tasks": [...], "choices"'),
    ],
)
def test_load_policy_errors(change, message, model) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="policy does not match the model: ") as err:
        model.load_policy(change(good_policy(model)))
    assert message in str(err.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed load changed logits"


def test_policy_regularizer_is_designs_formula(model) -> None:
    """sum over ops n and tasks of (D - depth(n)) / D * [softplus(w_spec - w_shared) +
    softplus(w_skip - w_shared)], w the softmax of the logits. An op without a skip candidate
    has no skip term (its skip probability is structurally zero, not a choice to penalise)."""
    with torch.no_grad():
        for p in model.policy_parameters():
            p.normal_()
    depth_total = len(model.ROUTED)
    expected = torch.zeros((), dtype=torch.float64)
    for name, has_skip, depth in model.ROUTED:
        logits = model.policy[name.replace(".", "_")].detach().double()
        n = 3 if has_skip else 2
        w = torch.softmax(logits[:, :n], dim=1)
        term = F.softplus(w[:, 1] - w[:, 0])
        if has_skip:
            term = term + F.softplus(w[:, 2] - w[:, 0])
        expected += (depth_total - depth) / depth_total * term.sum()
    value = model.policy_regularizer()
    assert value.dim() == 0
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-6)
    value.backward()
    assert all(p.grad is not None for p in model.policy_parameters())
    last = model.ROUTED[-1][0]  # depth D: weight 0
    assert torch.count_nonzero(model.policy[last.replace(".", "_")].grad) == 0
    assert not math.isclose(value.item(), 0.0)


# ---------------------------------------------------------------- mtsc graph --policy


def route_cells(dot: str, op: str) -> list[str]:
    """The per-task choice marks in the box of routed op `op` (first of the ops it names)."""
    (line,) = [ln for ln in dot.splitlines() if re.search(f'tooltip="{re.escape(op)}[",]', ln)]
    return re.findall(r'POINT-SIZE="9">([^<]*)</FONT>', line)


def test_graph_command_shows_the_policy(models_dir, tmp_path, run_mtsc) -> None:
    policy = {
        "model": "mini_tasks",
        "tasks": ["segment", "depth"],
        "choices": {
            op: {"segment": "shared", "depth": "specific"}
            for op in ("body.conv1", "dw.conv1", "valid.conv1", "fc.linear1", "linear1")
        },
    }
    policy["choices"]["down.conv1"] = {"segment": "skip", "depth": "shared"}
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    out = tmp_path / "mini.dot"
    proc = run_mtsc("graph", models_dir / MINI, "--policy", policy_file, "-o", out)
    assert proc.returncode == 0, proc.stderr
    dot = out.read_text()
    assert route_cells(dot, "down.conv1") == ["K", "S"]
    assert route_cells(dot, "body.conv1") == ["S", "T"]
    plain = tmp_path / "plain.dot"
    assert run_mtsc("graph", models_dir / MINI, "-o", plain).returncode == 0
    assert route_cells(plain.read_text(), "down.conv1") == ["S T K", "S T K"]
    assert route_cells(plain.read_text(), "valid.conv1") == ["S T", "S T"]
    if shutil.which("dot"):
        svg = tmp_path / "mini.svg"
        proc = run_mtsc("graph", models_dir / MINI, "--policy", "specific", "-o", svg)
        assert proc.returncode == 0, proc.stderr
        assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))


@pytest.mark.parametrize(
    ("content", "messages"),
    [
        (
            '{"model": "mini_tasks", "choices": {"body.conv1": {"segment": "maybe"}}}',
            [
                "policy.json: the policy does not match",
                "note: no choice for ops down.conv1, dw.conv1, fc.linear1, linear1, valid.conv1",
                "note: body.conv1: needs one choice for each of ['segment', 'depth']",
            ],
        ),
        ("{bad", ["policy.json:1:2: error: invalid JSON: Expecting property name"]),
        (None, ["cannot read policy", "policy.json: No such file or directory"]),
    ],
    ids=["mismatch", "json", "missing"],
)
def test_graph_command_rejects_a_bad_policy(content, messages, models_dir, tmp_path, run_mtsc):
    policy_file = tmp_path / "policy.json"
    if content is not None:
        policy_file.write_text(content)
    out = tmp_path / "g.dot"
    proc = run_mtsc("graph", models_dir / MINI, "--policy", policy_file, "-o", out)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for message in messages:
        assert message in proc.stderr
    assert not out.exists()


def test_graph_command_errors(models_dir, tmp_path, write_model, run_mtsc) -> None:
    out = tmp_path / "g.dot"
    proc = run_mtsc(
        "graph", models_dir / MINI, "--stage", "backbone", "--policy", "shared", "-o", out
    )
    assert proc.returncode == 2
    assert "--policy applies to the supermodel stage" in proc.stderr
    text = (models_dir / MINI).read_text()
    headless = write_model(text[: text.index("tasks {")], name="headless.mtl")
    proc = run_mtsc("graph", headless, "-o", out)
    assert proc.returncode == 2
    assert "headless.mtl: no tasks section, so no supermodel to draw" in proc.stderr
    assert not out.exists()
