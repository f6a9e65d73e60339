"""From a searched policy to the deployed model: the prune pipeline, carrying the supermodel's
weights over, and the size report (parameters and MACs per task)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from mtsc.codegen.torch_common import weight_key
from mtsc.driver import Pass, load_supermodel, run_pipeline
from mtsc.errors import MtscError
from mtsc.ir.graph import Graph
from mtsc.ir.ops import PARAMETRIC, Op, TorchModule, spec_of, torch_class
from mtsc.ir.passes.eliminate_dead import eliminate_dead
from mtsc.ir.passes.fold_batchnorm import fold_batchnorm
from mtsc.ir.passes.insert_routing import RoutingOptions
from mtsc.ir.passes.merge_identical import merge_identical
from mtsc.ir.passes.prune import prune
from mtsc.ir.stats import node_macs, node_params
from mtsc.policy import read_policy, routed_ops
from mtsc.runtime.policy_format import uniform_policy


def prune_pipeline(policy: dict, *, fold_bn: bool = False) -> tuple[Pass, ...]:
    """From the supermodel to the deployed model, in order."""
    stages: tuple[Pass, ...] = (
        functools.partial(prune, policy=policy),
        eliminate_dead,
        merge_identical,
    )
    return stages + ((fold_batchnorm,) if fold_bn else ())


@dataclass
class Pruned:
    supermodel: Graph
    model: Graph
    policy: dict
    share_bn: bool = False  # how the supermodel was built: a checkpoint must match it


def prune_model(
    model: str | Path | Graph,
    policy_spec: str | dict,
    *,
    routing: RoutingOptions | None = None,
    fold_bn: bool = False,
) -> Pruned:
    """`model` (a file, or its Graph loaded once) routed and pruned to `policy_spec`."""
    routing = routing or RoutingOptions()
    sm = load_supermodel(model, routing)
    policy = read_policy(policy_spec, sm) if isinstance(policy_spec, str) else policy_spec
    pruned = run_pipeline(sm.copy(), prune_pipeline(policy, fold_bn=fold_bn))
    return Pruned(sm, pruned, policy, routing.share_bn)


# ---------------------------------------------------------------------- size report


@dataclass(frozen=True)
class SizeReport:
    tasks: tuple[str, ...]
    total_params: int
    total_macs: int
    shared_params: int  # in ops that two or more tasks use
    task_params: dict[str, int]  # everything on the task's path
    task_macs: dict[str, int]


def size_report(g: Graph) -> SizeReport:
    """Parameters are counted once per weight tensor (ops sharing weights count once);
    MACs once per op computed."""
    tasks = tuple(t.name for t in g.tasks)
    ops = [n for n in g.node_ids() if g.node(n).op is not Op.INPUT]
    macs = {n: node_macs(g, n) for n in ops}
    owner = {n: weight_key(g.node(n)) or n for n in ops}
    params = {owner[n]: node_params(g, n) for n in ops}
    paths = {t: g.ancestors(g.outputs[t]) | {g.outputs[t]} for t in tasks}
    owned = {t: {owner[n] for n in paths[t] if n in owner} for t in tasks}
    return SizeReport(
        tasks,
        sum(params.values()),
        sum(macs.values()),
        sum(p for w, p in params.items() if sum(w in owned[t] for t in tasks) >= 2),
        {t: sum(params[w] for w in owned[t]) for t in tasks},
        {t: sum(macs.get(n, 0) for n in paths[t]) for t in tasks},
    )


def baselines(
    model: str | Path | Graph, routing: RoutingOptions | None = None
) -> dict[str, SizeReport]:
    """The two extremes of a model's supermodel (see `supermodel_baselines`)."""
    return supermodel_baselines(load_supermodel(model, routing))


def supermodel_baselines(sm: Graph, *, fold_bn: bool = False) -> dict[str, SizeReport]:
    """The two extremes: all-shared (hard parameter sharing) and all-specific (T networks),
    pruned as the model they are compared with was (`fold_bn`)."""
    tasks = [t.name for t in sm.tasks]
    out = {}
    for choice in ("shared", "specific"):
        policy = uniform_policy(sm.name, tasks, list(routed_ops(sm)), choice)
        pipeline = prune_pipeline(policy, fold_bn=fold_bn)
        out[choice] = size_report(run_pipeline(sm.copy(), pipeline))
    return out


def baselines_json(extremes: dict[str, SizeReport]) -> dict[str, dict]:
    """The extremes as `--json` lists them, under "baselines"."""
    return {"baselines": {name: report.__dict__ for name, report in extremes.items()}}


def report_table(report: SizeReport, extremes: dict[str, SizeReport]) -> str:
    from mtsc.report import human

    lines = [f"{'':<14}{'params':>12}{'MACs':>12}"]
    for task in report.tasks:
        lines.append(
            f"{task:<14}{human(report.task_params[task]):>12}{human(report.task_macs[task]):>12}"
        )
    lines.append(f"{'total':<14}{human(report.total_params):>12}{human(report.total_macs):>12}")
    # A task's row is what `forward_task` runs for it: the rows overlap in the shared ops.
    lines.append("(a task's row is its whole path, shared ops included)")
    share = report.shared_params / report.total_params if report.total_params else 0.0
    lines.append(f"shared: {human(report.shared_params)} parameters ({share:.0%} of the model)")
    for name, other in extremes.items():
        label = "all-shared (hard sharing)" if name == "shared" else "all-specific (T networks)"
        ratio = report.total_params / other.total_params if other.total_params else 0.0
        lines.append(
            f"vs {label}: {human(other.total_params)} parameters, "
            f"{human(other.total_macs)} MACs; this model is {ratio:.2f}x its size"
        )
    return "\n".join(lines)


def fold_summary(g: Graph) -> tuple[int, dict[str, int]]:
    """After `--fold-bn`: how many batchnorms folded into convs, and why the others did not."""
    from mtsc.ir.passes.fold_batchnorm import unfolded_batchnorms

    folded = sum(len(g.node(n).meta.get("fold_bn", ())) for n in g.node_ids())
    return folded, unfolded_batchnorms(g)


def fold_text(folded: int, unfolded: dict[str, int]) -> str:
    line = f"--fold-bn: folded {folded} batchnorm{'s' if folded != 1 else ''} into convs"
    if unfolded:
        why = "; ".join(f"{count} {reason}" for reason, count in sorted(unfolded.items()))
        line += f"; {sum(unfolded.values())} stay: {why}"
    return line


# ---------------------------------------------------------------------- weights


def read_checkpoint(path: str | Path, pruned: Pruned) -> dict:
    """The supermodel state dict from `last.pt` ({"model": ..., ...}) or a bare state dict.
    Loaded with `weights_only=True`: a checkpoint can never run code. A pruned model's weights
    (model.pt, or the last.pt of `mtsc train`), and a search run of another model, other
    tasks or the other `--share-bn` (which its last.pt records), are refused with a hint."""
    from mtsc.runtime.checkpoint import load_checkpoint

    data = load_checkpoint(path)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise MtscError(None, f"{path}: expected a state dict or a dict with a 'model' state dict")
    sm = pruned.supermodel
    if routed_ops(sm) and _holds_a_pruned_model(data, state):
        raise MtscError(
            None,
            f"{path} holds the weights of a pruned model, not of a supermodel",
            notes=["--weights takes a search checkpoint, such as RUN/last.pt of `mtsc search`"],
        )
    _check_search_run(path, data, sm, pruned.share_bn)
    return state


def _check_search_run(path: str | Path, data: dict, sm: Graph, share_bn: bool) -> None:
    """A search's last.pt names its model, tasks and command settings: a mismatch is said
    plainly instead of as the first tensor that does not fit."""
    from mtsc.runtime.checkpoint import check_searched_model

    if data.get("model_name") is not None:
        searched = (data["model_name"], data.get("tasks"))
        check_searched_model(path, searched, (sm.name, [t.name for t in sm.tasks]))
    command = data.get("command")
    searched_bn = command.get("share_bn") if isinstance(command, dict) else None
    if isinstance(searched_bn, bool) and searched_bn != share_bn:
        given = "with --share-bn" if searched_bn else "without --share-bn"
        raise MtscError(None, f"{path} was searched {given}: give the same here")


def _holds_a_pruned_model(data: dict, state: dict) -> bool:
    """A supermodel's state has its policy logits (`policy.*`). The weights of a pruned model
    lack them, and come bare (model.pt) or with an "optimizer" (train's last.pt; a search's
    has "policy_opt")."""
    has_policy = any(key.startswith("policy.") for key in state)
    return not has_policy and ("model" not in data or "optimizer" in data)


def carry_weights(pruned: Pruned, sm_state: dict) -> dict:
    """The deployed model's state dict, taken from the supermodel's: each op gets the
    weights of the candidate its tasks chose (task-specific ones sliced out of the per-task
    layers), batchnorms folded where `fold_batchnorm` ran."""
    import torch

    from mtsc.codegen.torch_common import module_names
    from mtsc.codegen.torch_supermodel import module_names as supermodel_module_names

    sm, g = pruned.supermodel, pruned.model
    tasks = len(sm.tasks)
    sm_names = {sm.node(n).name: (n, a) for n, a in supermodel_module_names(sm).items()}

    def source(weights: tuple[str, int | None]) -> dict:
        name, task = weights
        if name not in sm_names:
            raise MtscError(None, f"no supermodel module for {name}")
        nid, attr = sm_names[name]
        op, shapes = sm.node(nid).op, _one_task_shapes(sm, nid)
        picked = {}
        for key, value in sm_state.items():
            if not key.startswith(attr + "."):
                continue
            suffix = key[len(attr) + 1 :]
            if "." in suffix:
                continue
            if not isinstance(value, torch.Tensor):
                raise MtscError(None, f"the checkpoint's {key} is not a tensor")
            # A checkpoint of another model, or built with(out) --share-bn, has other shapes:
            # say so rather than fail in a reshape, carry a wrong slice, or write a model.pt
            # that does not load.
            want = shapes.get(suffix)
            if want is None:
                raise MtscError(None, _misfit(key, value, name, op))
            if task is not None and want:
                rows = tasks if op is Op.LINEAR else tasks * want[0]
                if value.dim() == 0 or value.shape[0] != rows:
                    raise MtscError(None, _misfit(key, value, name, op))
                if op is Op.LINEAR:
                    value = value[task]
                else:
                    value = value.reshape(tasks, want[0], *value.shape[1:])[task]
            if tuple(value.shape) != want:
                raise MtscError(None, _misfit(key, value, name, op))
            picked[suffix] = value
        if not picked:
            raise MtscError(None, f"the checkpoint has no weights for {attr} ({name})")
        missing = sorted(set(shapes) - set(picked))
        if missing:
            keys = ", ".join(f"{attr}.{suffix}" for suffix in missing)
            raise MtscError(
                None, f"the checkpoint lacks {keys} ({name}): is it a checkpoint of this model?"
            )
        return picked

    state = {}
    for nid, attr in module_names(g).items():
        node = g.node(nid)
        if node.op not in PARAMETRIC:
            continue
        weights = source(node.meta.get("weights", (node.name, None)))
        for fold in node.meta.get("fold_bn", ()):
            bn = source(fold["weights"])
            scale = torch.rsqrt(bn["running_var"] + fold["eps"])
            if fold["affine"]:
                scale = scale * bn["weight"]
            bias = weights.get("bias", torch.zeros_like(bn["running_mean"]))
            weights = {
                "weight": weights["weight"] * scale.reshape(-1, 1, 1, 1),
                "bias": (bias - bn["running_mean"]) * scale
                + (bn["bias"] if fold["affine"] else 0.0),
            }
        for suffix, value in weights.items():
            state[f"{attr}.{suffix}"] = value.clone()
    return state


def _one_task_shapes(g: Graph, nid: int) -> dict[str, tuple[int, ...]]:
    """The shape of each parameter and buffer of one task's module for an op, read off that
    module built on the meta device (no memory)."""
    import torch

    node = g.node(nid)
    form = spec_of(node.op).torch
    assert isinstance(form, TorchModule)
    args, kwargs = form.args(node.attrs, g.in_shapes(nid))
    cls = getattr(torch.nn, torch_class(node.op, node.attrs).removeprefix("nn."))
    module = cls(*args, **kwargs, device="meta")
    return {key: tuple(v.shape) for key, v in module.state_dict().items()}


def _misfit(key: str, value, name: str, op: Op) -> str:
    # --share-bn changes the shapes of batchnorms and scales only
    same_bn = ", built with the same --share-bn" if op in (Op.BATCHNORM, Op.SCALE) else ""
    return (
        f"the checkpoint's {key} has shape {list(value.shape)}, which does not fit {name}: "
        f"is it a checkpoint of this model{same_bn}?"
    )
