"""`mtsc demo`: the whole pipeline with tiny stage lengths and tiny data (a smoke test of
the wiring, not of accuracy), and the report's Δm against an independent computation."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch

from mtsc.demo import MODEL, SHOWN, WRITTEN, baseline_of, report, run_demo
from mtsc.deploy import baselines, prune_model, size_report
from mtsc.errors import MtscError
from mtsc.render import dot_available
from mtsc.runtime.policy_format import uniform_policy

# Whether a larger value of a metric is better: the usual convention of each metric.
HIGHER_IS_BETTER = {
    "miou": True, "pixel_acc": True,
    "abs_err": False, "rel_err": False, "delta1": True, "delta2": True, "delta3": True,
    "mean_angle": False, "median_angle": False,
    "within_11_25": True, "within_22_5": True, "within_30": True,
}  # fmt: skip
VARIANTS = ("searched", "all-shared", "all-specific")


def expected_delta_m(metrics: dict, single_task: dict) -> float:
    """Mean over tasks of the mean over metrics of the signed relative change, in percent;
    metrics the single-task networks score 0 on are left out (no relative change from 0)."""
    per_task = []
    for task, scores in single_task.items():
        changes = [
            (metrics[task][m] - base) / base * (1 if HIGHER_IS_BETTER[m] else -1)
            for m, base in scores.items()
            if base != 0
        ]
        if changes:
            per_task.append(sum(changes) / len(changes))
    return 100 * sum(per_task) / len(per_task)


def table_rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.split()
            and line.split()[0] in VARIANTS}  # fmt: skip


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and that its pixel data
    inflates to exactly that many RGB rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)  # 8-bit RGB
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height


def tiny_demo(out: Path, cache: Path) -> dict:
    data = {"size": 32, "n_train": 16, "n_val": 8, "n_test": 4, "cache_dir": str(cache)}
    short = {"batch_size": 2, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2}
    stages = {
        "search": {"warmup_steps": 2, "search_steps": 2, **short, "data": data},
        "train": {"steps": 2, **short, "data": data},
    }
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other test processes
    try:
        return run_demo(out, stages=stages, progress=False)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("demo")
    return folder / "out", tiny_demo(folder / "out", folder / "cache")


def test_a_second_demo_in_the_same_folder_replaces_the_first(demo, tmp_path, capsys):
    first, summary = demo
    out = tmp_path / "out"
    shutil.copytree(first, out)
    (out / "train" / "searched" / "stale.txt").write_text("from an earlier run")
    again = tiny_demo(out, first.parent / "cache")
    assert "replacing the previous demo in" in capsys.readouterr().out
    assert (again["rows"], again["policy"]) == (summary["rows"], summary["policy"])  # seeded
    assert not (out / "train" / "searched" / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(WRITTEN)


def test_the_demo_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "search").mkdir()
    with pytest.raises(MtscError) as err:
        run_demo(tmp_path)
    assert err.value.message == (
        f"{tmp_path} holds files a demo does not write (notes.txt); "
        "give the demo an empty or new folder: --out DIR"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "search"]


def test_demo_writes_the_report(demo):
    out, summary = demo
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert list(saved["rows"]) == list(VARIANTS)
    assert set(saved["seconds"]) == {"build", "search", "retrain", "total"}
    for row in saved["rows"].values():
        for task, metrics in SHOWN.items():
            assert all(math.isfinite(row["metrics"][task][m]) for m in metrics)
    assert json.loads((out / "search" / "policy.json").read_text()) == saved["policy"]
    for name in ("build/supermodel.py", "deploy/model.dot", "deploy/policy.dot"):
        assert (out / name).is_file(), name
    for variant in VARIANTS:
        assert (out / "train" / variant / "model.pt").is_file()


def test_demo_report_names_files_that_are_there(demo):
    """The report's file names (in backquotes) lead to the models, policy and pictures."""
    out, _ = demo
    named = re.findall(r"`([\w./-]+)`", (out / "report.md").read_text())
    assert "train/searched/model.py" in named and "search/policy.json" in named
    for name in named:
        if not name.endswith(".svg") or dot_available():
            assert (out / name).exists(), name


def test_demo_parameter_counts(demo):
    _, summary = demo
    rows = summary["rows"]
    extremes = baselines(MODEL)
    assert rows["all-shared"]["params"] == extremes["shared"].total_params
    assert rows["all-specific"]["params"] == extremes["specific"].total_params
    searched = size_report(prune_model(MODEL, summary["policy"]).model)
    assert rows["searched"]["params"] == searched.total_params
    assert rows["searched"]["params"] <= rows["all-specific"]["params"]


def test_demo_table_has_delta_m_against_single_task(demo):
    out, summary = demo
    markdown = (out / "report.md").read_text()
    rows = table_rows(markdown)
    assert list(rows) == list(VARIANTS)
    single = summary["rows"]["all-specific"]["metrics"]
    assert rows["all-specific"][-1] == "0.00"
    for name in ("searched", "all-shared"):
        want = expected_delta_m(summary["rows"][name]["metrics"], single)
        assert float(rows[name][-1]) == pytest.approx(want, abs=0.006)


def test_demo_predictions_picture(demo):
    out, _ = demo
    width, height = png_size((out / "predictions.png").read_bytes())
    # Four test images (32x32, shown twice as large), ground truth above prediction.
    assert width >= 4 * 64 and height >= 2 * 4 * 64


def test_report_leaves_out_metrics_the_baseline_scores_zero():
    single = {
        "segment": {"miou": 0.5, "pixel_acc": 0.8},
        "depth": {"abs_err": 2.0, "rel_err": 0.5, "delta1": 0.0},
        "normal": {"mean_angle": 40.0, "within_11_25": 0.1},
    }
    searched = {
        "segment": {"miou": 0.6, "pixel_acc": 0.4},
        "depth": {"abs_err": 1.0, "rel_err": 0.25, "delta1": 0.3},
        "normal": {"mean_angle": 30.0, "within_11_25": 0.2},
    }
    rows = {
        "searched": {"params": 1000, "metrics": searched},
        "all-specific": {"params": 3000, "metrics": single},
    }
    text = report(rows)
    # segment: (+20% - 50%) / 2; depth: (+50% + 50%) / 2, delta1 left out;
    # normal: (+25% + 100%) / 2
    want = (-15.0 + 50.0 + 62.5) / 3
    assert expected_delta_m(searched, single) == pytest.approx(want)
    assert float(table_rows(text)["searched"][-1]) == pytest.approx(want, abs=0.006)
    assert table_rows(text)["all-specific"][-1] == "0.00"
    assert text.splitlines()[-1] == "Δm leaves out depth.delta1: the single-task networks score 0"


def test_a_searched_policy_that_is_a_baseline_is_named_and_trained_once(
    tmp_path, monkeypatch, capsys
):
    """A search that ends all-shared (as a short one may) makes the all-shared model: the demo
    says so and trains it once."""
    import mtsc.runtime.search as search_module

    real_search = search_module.search

    def search_ending_all_shared(model, *args, **kwargs):
        result = real_search(model, *args, **kwargs)
        ops = [name for name, _, _ in model.ROUTED]
        shared = uniform_policy(model.MODEL, model.TASKS, ops, "shared")
        return dataclasses.replace(result, policy=shared)

    monkeypatch.setattr(search_module, "search", search_ending_all_shared)
    summary = tiny_demo(tmp_path / "out", tmp_path / "cache")
    assert (
        "-- all-shared\nthe searched policy: all-shared, trained above\n" in capsys.readouterr().out
    )
    assert summary["rows"]["all-shared"] == summary["rows"]["searched"]
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == [
        "all-specific",
        "searched",
    ]
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert "the search chose shared at every op: searched is all-shared" in report_md


@pytest.mark.parametrize(
    ("picked", "baseline"),
    [
        ({"shared"}, "all-shared"),
        ({"specific"}, "all-specific"),
        ({"skip"}, None),
        ({"shared", "specific"}, None),
    ],
)
def test_baseline_of(picked, baseline):
    ops = ["a", "b"]
    choices = {op: {t: sorted(picked)[i % len(picked)] for i, t in enumerate("xy")} for op in ops}
    assert baseline_of({"model": "m", "tasks": ["x", "y"], "choices": choices}) == baseline
