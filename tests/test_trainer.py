"""The machinery under search and training: the batch stream's order, sharding and resumption,
evaluation leaving the model as it found it, and progress bars only on a terminal."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import pytest
import torch

from mtsc.api import load_supermodel
from mtsc.errors import MtscError
from mtsc.runtime.data import open_dataset
from mtsc.runtime.trainer import (
    BatchStream,
    RunLogger,
    TaskObjective,
    evaluate,
    run_steps,
    sgd_groups,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLES, BATCH = 24, 4


class Numbers(torch.utils.data.Dataset):
    """Sample i is the number i (as image and as target): batches show which samples they hold."""

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int):
        return torch.tensor(i), {"id": torch.tensor(i)}


def take(stream: BatchStream, batches: int) -> list[list[int]]:
    return [stream.next()[0].tolist() for _ in range(batches)]


def stream(seed: int = 0, **kwargs) -> BatchStream:
    return BatchStream(Numbers(), list(range(SAMPLES)), BATCH, seed, **kwargs)


def test_each_epoch_visits_every_sample_once_in_its_own_order():
    per_epoch = SAMPLES // BATCH
    s = stream()
    first, second = sum(take(s, per_epoch), []), sum(take(s, per_epoch), [])
    assert sorted(first) == sorted(second) == list(range(SAMPLES))
    assert first != list(range(SAMPLES)) and first != second  # shuffled, anew each epoch
    assert take(stream(), per_epoch) == [first[i : i + BATCH] for i in range(0, SAMPLES, BATCH)]
    assert take(stream(seed=1), per_epoch) != take(stream(), per_epoch)


def test_only_the_listed_samples_are_drawn_and_a_partial_last_batch_is_dropped():
    s = BatchStream(Numbers(), list(range(1, 11)), BATCH, 0)
    drawn = sum(take(s, 2), [])
    assert len(set(drawn)) == 8 and set(drawn) <= set(range(1, 11))
    assert len(take(s, 1)[0]) == BATCH  # the next epoch, not the 2 samples left over


def test_ranks_split_every_batch_of_the_single_process_stream():
    whole = stream(seed=5, world=1)
    whole.batch_size = 2 * BATCH  # the global batch of two ranks
    ranks = [stream(seed=5, rank=r, world=2) for r in (0, 1)]
    for _ in range(2 * SAMPLES // (2 * BATCH)):  # two epochs
        batch = take(whole, 1)[0]
        parts = [take(r, 1)[0] for r in ranks]
        assert all(len(p) == BATCH for p in parts)
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == sorted(batch)


def test_a_restored_stream_continues_where_the_saved_one_was():
    s = stream(seed=2)
    take(s, 7)  # into the second epoch
    state = s.state()
    expected = take(s, 5)
    again = stream(seed=2)
    again.restore(state)
    assert take(again, 5) == expected


def test_too_few_samples_for_the_batches():
    with pytest.raises(MtscError) as err:
        BatchStream(Numbers(), list(range(7)), BATCH, 0, world=2)
    assert err.value.message == (
        "the training split has 7 samples, too few for batches of 4 on 2 process(es); "
        "use a smaller batch_size or more data"
    )


class BadItems(Numbers):
    """Item 5 cannot be read; item 7 is an image of another size."""

    def __getitem__(self, i: int):
        if i == 5:
            raise MtscError(None, "sample 5: bad label file", notes=("see the layout",))
        return torch.zeros(2 if i == 7 else 1), {"id": torch.tensor(i)}


@pytest.mark.parametrize("workers", [0, 2])
def test_an_item_or_batch_error_reaches_the_run_as_the_data_raised_it(workers):
    for bad, message in [
        (5, "sample 5: bad label file"),
        (7, "a batch holds images of different sizes (1, 2): give the data one size "),
    ]:
        s = BatchStream(BadItems(), [0, 1, 2, bad], BATCH, 0, num_workers=workers)
        with pytest.raises(MtscError) as err:  # not a RuntimeError holding a traceback's text
            s.next()
        assert err.value.message.startswith(message)
        assert err.value.notes == (("see the layout",) if bad == 5 else ())
        assert s.position == 0


TINY = """\
input image: 3x16x16

backbone {
    a: x = conv(image, 8, k=3, p=1) | bn | relu
    return x
}

tasks {
    segment: conv1x1(classes=7) loss=cross_entropy(ignore=255) metric=miou
    depth:   conv1x1(classes=1) loss=l1 metric=depth
}
"""


def test_evaluation_changes_neither_the_weights_nor_batchnorm_nor_the_mode(tmp_path):
    path = tmp_path / "tiny.mtl"
    path.write_text(TINY)
    torch.manual_seed(0)
    model = load_supermodel(path).train()
    data = open_dataset("shapes", "val", size=16, n_val=12, tasks=["segment", "depth"],
                        cache_dir=str(tmp_path / "shapes"))  # fmt: skip
    objective = TaskObjective(model.TASK_SPECS, data.info)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    metrics = evaluate(model, data, objective, batch_size=4, device=torch.device("cpu"))
    assert model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name

    # what it measures is the model in eval mode: its batchnorms use their running statistics
    with torch.no_grad():
        model.eval()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.mul_(4.0)
    shifted = evaluate(model, data, objective, batch_size=4, device=torch.device("cpu"))
    assert not model.training  # restored as found, here eval
    assert set(metrics) == {"segment", "depth"}
    assert shifted["depth"] != metrics["depth"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stderr", "drawn"), [(io.StringIO(), False), (Terminal(), True)])
def test_the_progress_bar_is_drawn_on_a_terminal_only(monkeypatch, stderr, drawn):
    """A log file (stderr not a terminal) would fill with carriage-return frames."""
    monkeypatch.setattr("sys.stderr", stderr)
    logged = []
    config = SimpleNamespace(batch_size=2, log_every=1, eval_every=0, checkpoint_every=10)
    logger = SimpleNamespace(log=lambda step, stage, values: logged.append(step))
    run = SimpleNamespace(config=config, logger=logger, stage="train", step=0)
    run_steps(run, 3, lambda r: {"loss": 1.0}, lambda r: None, progress=True)
    assert logged == [1, 2, 3]
    assert ("\r" in stderr.getvalue()) == drawn


def test_sgd_groups_leave_prelu_slopes_undecayed(models_dir, tmp_path) -> None:
    """tiny.mtl has per-channel and channel-shared PReLUs: in the supermodel they are per-task
    TaskPReLU slopes, which take no weight decay; every other weight takes it."""
    model = load_supermodel(models_dir / "tiny.mtl", out_dir=tmp_path)
    slopes = [m.weight for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    assert len(slopes) >= 2
    decayed, free = sgd_groups(model.weight_parameters(), model, 1e-4)
    assert free == {"params": slopes, "weight_decay": 0.0}
    assert decayed["weight_decay"] == 1e-4
    assert len(decayed["params"]) + len(slopes) == len(model.weight_parameters())
    # the optimizer takes the groups; a zero gradient leaves a slope as it was
    opt = torch.optim.SGD([decayed, free], lr=0.1)
    before = [s.detach().clone() for s in slopes]
    for p in model.weight_parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(s, b) for s, b in zip(slopes, before, strict=True))


def test_sgd_groups_without_prelu_are_one_group(examples_dir, tmp_path) -> None:
    model = load_supermodel(examples_dir / "resnet_tiny.mtl", out_dir=tmp_path)
    groups = sgd_groups(model.weight_parameters(), model, 1e-4)
    assert [len(g["params"]) for g in groups] == [len(model.weight_parameters())]


def test_the_metrics_log_is_strict_json(tmp_path):
    """A metric with nothing to score is NaN: the log writes null, which jq and JavaScript
    read (Python's default writes a bare NaN, which they refuse)."""
    logger = RunLogger(tmp_path)
    logger.log(3, "search", {"loss": 0.5, "val": {"depth": {"abs_err": math.nan}}, "x": -math.inf})
    logger.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"non-JSON {name}"))
    assert record["val"] == {"depth": {"abs_err": None}} and record["x"] is None
    assert record["loss"] == 0.5
