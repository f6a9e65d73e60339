"""A search through the Python API on datasets of the user's own: what they give is checked
before the run starts, with what to change, and the forms the README allows run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtsc.api import load_supermodel, search, train
from mtsc.errors import MtscError
from mtsc.runtime.data import DatasetInfo
from mtsc.runtime.trainer import TaskObjective, collate

MODEL = """\
input image: 3x12x20

backbone {
    a: x = conv(image, 8, k=3, p=1) | bn | relu
    b: x = conv(x, 8, k=3, p=1) | bn | relu
    return x
}

tasks {
    segment: conv1x1(classes=4) loss=cross_entropy metric=miou
    depth:   conv1x1(classes=1) loss=l1 metric=depth
}
"""
SHORT = {"warmup_steps": 2, "search_steps": 2, "batch_size": 2, "eval_every": 2, "log_every": 1}


class Scenes(torch.utils.data.Dataset):
    """Random 12x20 images with 4-class labels (-1 unlabelled) and positive depth."""

    def __init__(self, n: int = 10, seed: int = 0, **info) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 12, 20, generator=g)
        self.labels = torch.randint(-1, 4, (n, 12, 20), generator=g)
        self.depth = torch.rand(n, 1, 12, 20, generator=g) + 0.5
        self.info = DatasetInfo(
            **{"name": "scenes", "tasks": ("segment", "depth"), "num_classes": 4,
               "ignore_index": -1, **info}
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        targets = {"segment": self.labels[i], "depth": self.depth[i], "name": f"scene{i}"}
        if i % 2:  # `valid` may name some tasks, in some items
            targets["valid"] = {"depth": True}
        return self.images[i], targets


class Edited(Scenes):
    """Scenes whose items `edit(image, targets)` changes."""

    def __init__(self, edit, **kwargs) -> None:
        super().__init__(**kwargs)
        self.edit = edit

    def __getitem__(self, i: int):
        image, targets = super().__getitem__(i)
        return self.edit(image, dict(targets))


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "scenes.mtl"
    path.write_text(MODEL)
    return path


def run(model_file, train, val, run_dir, **config):
    torch.manual_seed(0)
    model = load_supermodel(model_file, out_dir=run_dir)
    return model, search(model, train, val, run_dir, progress=False, **{**SHORT, **config})


def test_a_dataset_of_ones_own_searches(model_file, tmp_path):
    """Labels unlabelled by the data's own ignore_index (-1), a target entry that is no
    tensor, and `valid` naming a task in some items only: the search runs and scores."""
    model, result = run(model_file, Scenes(), Scenes(4, seed=1), tmp_path / "run")
    assert set(result.metrics) == {"segment", "depth"}
    assert 0 <= result.metrics["segment"]["miou"] <= 1
    assert json.loads((tmp_path / "run" / "policy.json").read_text()) == result.policy


def test_the_searched_policy_trains_on_ones_own_data(model_file, tmp_path):
    """api.train: the pruned model of the search's policy, from the search's weights, on the
    same datasets; its folder as `mtsc train` leaves it, and `model.pt` is the net returned."""
    _, found = run(model_file, Scenes(), Scenes(4, seed=1), tmp_path / "search")
    final = tmp_path / "final"
    done = train(
        model_file, found.policy, Scenes(), Scenes(4, seed=1), final, progress=False,
        weights=found.run_dir / "last.pt", steps=3, batch_size=2, eval_every=3,
    )  # fmt: skip
    assert {"model.py", "model.pt", "last.pt", "eval.json", "policy.json"} <= {
        p.name for p in final.iterdir()
    }
    assert json.loads((final / "policy.json").read_text()) == found.policy
    saved = torch.load(final / "model.pt", weights_only=True)
    for name, value in done["net"].state_dict().items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0)
    assert set(done["metrics"]) == {"segment", "depth"} and done["params"] > 0
    with pytest.raises(MtscError) as err:
        train(model_file, "shared", Scenes(), Scenes(4), final, progress=False, steps=1)
    assert err.value.message == f"{final} already holds a run; use resume=True to continue it"
    with pytest.raises(MtscError) as err:
        train(model_file, "shared", Scenes(), Scenes(4), tmp_path / "t", data={"size": 8})
    assert err.value.message.startswith("train takes datasets, not data options")
    with pytest.raises(MtscError) as err:
        train(model_file, "shared", Scenes(tasks=("depth",)), Scenes(4), tmp_path / "t")
    assert err.value.message.startswith("the training set has no targets for task(s) segment")
    assert not (tmp_path / "t").exists()


def test_the_loss_skips_the_datas_unlabelled_value():
    model_specs = {"segment": {"head": ("conv1x1", {"classes": 4}), "loss": None}}
    objective = TaskObjective(model_specs, Scenes().info)
    pred = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), -1)
    target[0, 0, 0] = 2
    loss = objective.task_losses({"segment": pred}, {"segment": target})["segment"]
    expected = torch.nn.functional.cross_entropy(pred[:1, :, 0, 0], torch.tensor([2]))
    torch.testing.assert_close(loss, expected)


def negated_depth(image, targets):
    targets["depth"] = -targets["depth"]
    return image, targets


def set_label(value):
    def edit(image, targets):
        targets["segment"] = targets["segment"].clone()
        targets["segment"][0, 0] = value
        return image, targets

    return edit


WHERE = "the training set's item 0"


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            Edited(lambda image, targets: (image.numpy(), targets)),
            f"{WHERE}: the image is a ndarray; it must be a float tensor [C, H, W], "
            "normalised as open_dataset's images are",
        ),
        (
            Edited(lambda image, targets: ((image * 255).to(torch.uint8), targets)),
            f"{WHERE}: the image is a uint8 tensor of shape (3, 12, 20); it must be a float "
            "tensor [C, H, W], normalised as open_dataset's images are",
        ),
        (
            Edited(lambda image, targets: (image, list(targets.values()))),
            f"{WHERE}: the targets are a list; give a dict task -> target",
        ),
        (
            Edited(lambda image, targets: image),
            f"{WHERE} is a Tensor; items must be (image, targets) pairs",
        ),
        (
            Edited(lambda image, targets: (image, {"segment": targets["segment"]})),
            f"{WHERE}: depth has no target; its target must be a tensor",
        ),
        (
            Edited(lambda image, targets: (image, {**targets, "depth": targets["depth"][:, :6]})),
            f"{WHERE}: the depth target is 1x6x20; it must be 1x12x20 or 12x20, a map of the "
            "image's size",
        ),
        (
            Edited(
                lambda image, targets: (
                    image,
                    {**targets, "segment": torch.nn.functional.one_hot(targets["segment"] + 1)},
                )
            ),
            f"{WHERE}: the segment target is 12x20x5; it must be 1x12x20 or 12x20, a map of "
            "the image's size of class indices",
        ),
        (
            Edited(set_label(9)),
            f"{WHERE}: segment labels 9 are outside 0..3 (info.num_classes=4; unlabelled "
            "pixels take info.ignore_index=-1)",
        ),
        (
            Edited(set_label(255)),
            f"{WHERE}: segment labels 255 are outside 0..3 (info.num_classes=4; unlabelled "
            "pixels take info.ignore_index=-1)",
        ),
        (
            Edited(negated_depth),
            f"{WHERE}: depth has negative values (down to -",
        ),
        (
            Edited(lambda image, targets: (image, {**targets, "valid": [True]})),
            f"{WHERE}: targets['valid'] is a list; give a dict task -> bool (or a per-pixel "
            "bool tensor)",
        ),
        (
            Scenes(tasks=("segment",)),
            "the training set has no targets for task(s) depth: its info names segment; the "
            "model's tasks are segment, depth",
        ),
        (
            Scenes(n=0),
            "the training set is empty",
        ),
    ],
)
def test_what_a_dataset_gives_is_checked_before_the_run(model_file, tmp_path, train, message):
    with pytest.raises(MtscError) as err:
        run(model_file, train, Scenes(4), tmp_path / "run")
    assert err.value.message.startswith(message)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_dataset_without_info_and_a_validation_set_without_a_task(model_file, tmp_path):
    images = torch.utils.data.TensorDataset(torch.randn(4, 3, 12, 20))
    with pytest.raises(MtscError) as err:
        run(model_file, images, Scenes(4), tmp_path / "run")
    assert err.value.message == (
        "the training set has no `info`: give it one, mtsc.runtime.data.DatasetInfo(name, "
        "tasks, num_classes), naming its tasks and classes (as open_dataset's datasets have)"
    )
    with pytest.raises(MtscError) as err:
        run(model_file, Scenes(), Scenes(4, tasks=("segment",)), tmp_path / "run")
    assert err.value.message.startswith("the validation set has no targets for task(s) depth")


def test_a_task_mtsc_has_no_loss_for(tmp_path):
    path = tmp_path / "semantic.mtl"
    path.write_text(MODEL.replace("segment:", "semantic:").replace("loss=cross_entropy ", ""))
    data = Edited(
        lambda image, targets: (image, {**targets, "semantic": targets["segment"]}),
        tasks=("semantic", "depth"),
    )
    with pytest.raises(MtscError) as err:
        run(path, data, data, tmp_path / "run")
    assert err.value.message == (
        "task 'semantic': mtsc trains segment, depth, normal targets only; name the task, and "
        "its targets in the data, after the kind they are"
    )


def test_what_search_takes_besides_data(model_file, tmp_path):
    with pytest.raises(MtscError) as err:
        search(torch.nn.Conv2d(3, 3, 1), Scenes(), Scenes(), tmp_path / "a")
    assert err.value.message == (
        "search takes a supermodel (mtsc.api.load_supermodel(MODEL)); this Conv2d has no "
        "TASK_SPECS, ROUTED, set_mode, policy_parameters, export_policy"
    )
    with pytest.raises(MtscError) as err:
        run(model_file, Scenes(), Scenes(), tmp_path / "b", data={"size": 16})
    assert err.value.message == (
        "search takes datasets, not data options: open them with "
        "mtsc.runtime.data.open_dataset(spec, split, **options)"
    )
    run(model_file, Scenes(), Scenes(4), tmp_path / "c")
    with pytest.raises(MtscError) as err:
        run(model_file, Scenes(), Scenes(4), tmp_path / "c")
    assert (
        err.value.message == f"{tmp_path / 'c'} already holds a run; use resume=True to continue it"
    )


def test_a_batch_of_images_of_different_sizes_says_how_to_give_one_size():
    items = [(torch.zeros(3, 8, 8), {}), (torch.zeros(3, 8, 10), {})]
    with pytest.raises(MtscError) as err:
        collate(items)
    assert err.value.message == (
        "a batch holds images of different sizes (3x8x8, 3x8x10): give the data one size "
        "(mtsc's readers take `size`: --set data.size=N)"
    )


def test_collate_fills_the_tasks_an_items_valid_leaves_out():
    items = [
        (torch.zeros(3, 2, 2), {"depth": torch.ones(1, 2, 2)}),
        (torch.zeros(3, 2, 2), {"depth": torch.ones(1, 2, 2), "valid": {"depth": False}}),
    ]
    _, targets = collate(items)
    assert targets["valid"]["depth"].tolist() == [True, False]
    assert "valid" not in items[0][1]  # the dataset's own items are not changed
