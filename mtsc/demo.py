"""`mtsc demo`: the whole pipeline on the built-in `shapes` data with `resnet_tiny.mtl`, on a
CPU: build, search, derive, prune, retrain and evaluate the searched model, and train the two
baselines with the same budget (all-specific = single-task networks, all-shared = hard
parameter sharing); then a table (parameters, each task's metrics, Δm against single-task),
a report and pictures."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from mtsc.errors import MtscError
from mtsc.fsutil import json_text, write_atomic

MODEL = Path(__file__).resolve().parent.parent / "examples" / "resnet_tiny.mtl"
DATA = "shapes"
# Stage lengths: the full demo stays under 15 minutes on 2 cores, --quick under 3.
FULL = {
    "search": {
        "warmup_steps": 300,
        # 300 search steps (tau still 2.6) left every op shared; by 600 the deepest layers
        # are task-specific for depth.
        "search_steps": 600,
        "batch_size": 16,
        "eval_every": 300,
        "eval_batches": 8,
        "checkpoint_every": 100,
    },
    "train": {
        "steps": 500,
        "batch_size": 16,
        "eval_every": 500,
        "eval_batches": 8,
        "checkpoint_every": 250,
    },
}
QUICK = {
    "search": {
        "warmup_steps": 40,
        "search_steps": 40,
        "batch_size": 8,
        "eval_every": 40,
        "eval_batches": 4,
        "checkpoint_every": 40,
    },
    "train": {
        "steps": 60,
        "batch_size": 8,
        "eval_every": 60,
        "eval_batches": 4,
        "checkpoint_every": 60,
    },
}
# Everything a demo writes in its folder: a rerun replaces these, and refuses a folder with more.
WRITTEN = ("build", "search", "train", "deploy", "report.json", "report.md", "predictions.png")
VARIANTS = (("searched", None), ("all-shared", "shared"), ("all-specific", "specific"))
SHOWN = {
    "segment": ("miou", "pixel_acc"),
    "depth": ("abs_err", "rel_err"),
    "normal": ("mean_angle", "within_11_25"),
}


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    model_path: Path = MODEL,
    stages: dict | None = None,
) -> dict:
    """`stages` overrides the FULL / QUICK settings of each stage, e.g.
    `{"search": {"warmup_steps": 2}, "train": {"data": {"n_test": 8}}}` (a config's `data`
    options go to `open_dataset`)."""
    from mtsc.api import import_generated, write_supermodel
    from mtsc.commands.train import train_pruned
    from mtsc.driver import build
    from mtsc.runtime.config import SearchConfig, TrainConfig, make_config
    from mtsc.runtime.data import open_dataset
    from mtsc.runtime.search import policy_table
    from mtsc.runtime.search import search as run_search
    from mtsc.runtime.train import evaluate_split

    base = QUICK if quick else FULL
    kind = "quick (smoke-test lengths)" if quick else "full"
    if stages:
        kind = "custom stage lengths"
    stages = {name: {**base[name], **(stages or {}).get(name, {})} for name in base}
    _clear_previous_demo(out)
    started = time.perf_counter()
    timings = {}

    print(f"== 1/4 build {model_path.name}")
    build(model_path, out / "build")
    timings["build"] = time.perf_counter() - started

    print("== 2/4 search the sharing policy on shapes")
    search_cfg = make_config(SearchConfig, None, {**stages["search"], "seed": seed})
    sm_path = write_supermodel(model_path, out / "search")
    import torch

    torch.manual_seed(seed)  # the initial weights, so a demo run is repeatable
    supermodel = import_generated(sm_path, "mtsc_demo_supermodel").Supermodel()
    train_set = open_dataset(DATA, "train", **search_cfg.data)
    val_set = open_dataset(DATA, "val", **search_cfg.data)
    result = run_search(
        supermodel, train_set, val_set, search_cfg, out / "search", progress=progress
    )
    print(policy_table(supermodel, result.policy), end="")
    timings["search"] = time.perf_counter() - started - sum(timings.values())

    print("== 3/4 prune and retrain the searched model and the two baselines")
    train_cfg = make_config(TrainConfig, None, {**stages["train"], "seed": seed})
    test_set = open_dataset(DATA, "test", **train_cfg.data)
    rows = {}
    same = baseline_of(result.policy)
    for name, policy in VARIANTS:
        print(f"-- {name}")
        if name == same:  # the same model, seed and data: its training would repeat the above
            print(f"the searched policy: {name}, trained above")
            rows[name] = rows["searched"]
            continue
        spec = result.policy if policy is None else policy
        trained = train_pruned(
            model_path, spec, DATA, out / "train" / name, train_cfg, progress=progress
        )
        metrics = evaluate_split(trained["net"], test_set, train_cfg)
        rows[name] = {"params": trained["params"], "macs": trained["macs"], "metrics": metrics}
        if name == "searched":
            _write_predictions(trained["net"], test_set, out / "predictions.png")
    timings["retrain"] = time.perf_counter() - started - sum(timings.values())

    print("== 4/4 report")
    _pictures(model_path, result.policy, out)
    table = report(rows)
    if same is not None:
        table += f"\nthe search chose {same.removeprefix('all-')} at every op: searched is {same}"
    timings["total"] = time.perf_counter() - started
    summary = {"rows": rows, "policy": result.policy, "seconds": timings, "quick": quick}
    write_atomic(out / "report.json", json_text(summary, indent=2) + "\n")
    write_atomic(out / "report.md", _markdown(table, timings, kind))
    print(table)
    print(f"report: {out / 'report.md'} ({timings['total']:.0f} s)")
    return summary


def baseline_of(policy: dict) -> str | None:
    """The baseline a searched policy is (all-shared, all-specific), if it is one."""
    picked = {choice for per_task in policy["choices"].values() for choice in per_task.values()}
    names = {f"all-{choice}" for choice in picked} & {name for name, _ in VARIANTS}
    return names.pop() if len(picked) == 1 and names else None


def _clear_previous_demo(out: Path) -> None:
    """A demo starts afresh: remove what an earlier demo wrote to `out`, but nothing else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MtscError(None, f"{out} is a file; give the demo a folder: --out DIR")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in WRITTEN)
    if foreign:
        raise MtscError(
            None,
            f"{out} holds files a demo does not write ({', '.join(foreign)}); "
            "give the demo an empty or new folder: --out DIR",
        )
    previous = [out / name for name in WRITTEN if (out / name).exists()]
    if previous:
        print(f"replacing the previous demo in {out}")
    for path in previous:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def report(rows: dict) -> str:
    """params, each task's headline metrics, Δm of each model against single-task networks."""
    from mtsc.report import human
    from mtsc.runtime.metrics import delta_m

    stl = rows["all-specific"]["metrics"]
    # A relative change from 0 is undefined, and a short run can score exactly 0 (depth
    # delta1, say): such metrics sit out of Δm, and the table says so.
    scored = {t: {m: v for m, v in ms.items() if v != 0} for t, ms in stl.items()}
    scored = {t: ms for t, ms in scored.items() if ms}
    left_out = [f"{t}.{m}" for t, ms in stl.items() for m, v in ms.items() if v == 0]
    columns = [f"{t} {m}" for t, ms in SHOWN.items() for m in ms]
    head = f"{'model':<14}{'params':>10}" + "".join(f"{c:>22}" for c in columns) + f"{'Δm %':>9}"
    lines = [head, "-" * len(head)]
    for name, row in rows.items():
        values = [row["metrics"][t][m] for t, ms in SHOWN.items() for m in ms]
        mine = {t: {m: row["metrics"][t][m] for m in ms} for t, ms in scored.items()}
        dm = delta_m(mine, scored) if scored else float("nan")
        lines.append(
            f"{name:<14}{human(row['params']):>10}"
            + "".join(f"{v:>22.4f}" for v in values)
            + f"{dm:>9.2f}"
        )
    if left_out:
        lines.append(f"Δm leaves out {', '.join(left_out)}: the single-task networks score 0")
    return "\n".join(lines)


def _markdown(table: str, timings: dict, kind: str) -> str:
    times = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    return (
        f"# mtsc demo: resnet_tiny on shapes ({kind})\n\n```\n{table}\n```\n\n"
        "Δm: mean relative improvement over the single-task networks (all-specific), "
        "averaged within each task then over tasks; higher is better.\n\n"
        f"Time: {times}.\n\n"
        "Models: `train/searched/model.py`, with its weights in `train/searched/model.pt`, is "
        "the searched model, pruned and retrained: the one to deploy "
        "(`train/searched/eval.json`: its validation metrics); "
        "`train/all-shared/` and `train/all-specific/` hold the baselines (when the search "
        "chose one of them, its folder is `train/searched/`); `search/policy.json` and "
        "`search/policy.txt`: the searched policy.\n\n"
        "Pictures: `build/supermodel.svg` (the search space), `deploy/model.svg` (the pruned "
        "tree), `predictions.png` (test images: image | segmentation | depth | normals, "
        "ground truth above prediction).\n"
    )


def _pictures(model_path: Path, policy: dict, out: Path) -> None:
    from mtsc.codegen.dot import emit_pruned_dot, emit_supermodel_dot
    from mtsc.deploy import prune_model
    from mtsc.render import dot_available, render

    pruned = prune_model(model_path, policy)
    dot = emit_pruned_dot(pruned.model, title="resnet_tiny: searched model")
    write_atomic(out / "deploy" / "model.dot", dot)
    policy_dot = emit_supermodel_dot(pruned.supermodel, title="searched policy", policy=policy)
    write_atomic(out / "deploy" / "policy.dot", policy_dot)
    if dot_available():
        render(dot, out / "deploy" / "model.svg")
        render(policy_dot, out / "deploy" / "policy.svg")


def _write_predictions(net, test_set, path: Path, count: int = 4) -> None:
    import numpy as np
    import torch

    from mtsc.runtime.data import denormalize_image
    from mtsc.runtime.data.png import encode_png
    from mtsc.runtime.data.preview import grid, sample_panels

    net.eval()
    device = next(net.parameters()).device
    rows = []
    with torch.no_grad():
        for i in range(min(count, len(test_set))):
            image, targets = test_set[i]
            out = {task: v.cpu() for task, v in net(image[None].to(device)).items()}
            # The preview helpers take channels-last pictures and [H, W] depth.
            picture = denormalize_image(image).permute(1, 2, 0).numpy()
            normal = torch.nn.functional.normalize(out["normal"][0], dim=0)
            rows.append(
                sample_panels(
                    picture,
                    targets["segment"].numpy(),
                    targets["depth"][0].numpy(),
                    targets["normal"].permute(1, 2, 0).numpy(),
                )
            )
            rows.append(
                sample_panels(
                    picture,
                    out["segment"][0].argmax(0).numpy(),
                    out["depth"][0, 0].clamp(min=1e-3).numpy(),
                    normal.permute(1, 2, 0).numpy(),
                )
            )
    write_atomic(path, encode_png(grid(rows, zoom=2).astype(np.uint8)))
