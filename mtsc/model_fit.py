"""Whether a model fits a dataset, checked before a search or a training run starts: a model
declared for other images (`input image: 1x64x64` on RGB data, or a size its convolutions
cannot take) would otherwise fail in the first forward with a PyTorch traceback. Errors point
at the model's own lines."""

from __future__ import annotations

from pathlib import Path

from mtsc.codegen.torch_common import task_spec
from mtsc.driver import load
from mtsc.errors import MtscError
from mtsc.ir.graph import Graph
from mtsc.ir.ops import Op
from mtsc.ir.passes.infer_shapes import infer_shapes
from mtsc.runtime.data.sample import DatasetInfo
from mtsc.runtime.task_fit import check_heads_fit_data, count_channels


def check_model_fits_data(
    model_path: str | Path, image_shape: tuple[int, ...], info: DatasetInfo, data: str
) -> None:
    """The model takes `data`'s images (C x H x W, as its dataset yields them) and its heads
    give `data`'s targets."""
    g = load(model_path)
    check_input_takes_images(g, tuple(image_shape), data)
    specs = {task.name: task_spec(task) for task in g.tasks}
    heads = {task.name: task.head.loc for task in g.tasks}
    check_heads_fit_data(specs, info, data, locations=heads)


def check_input_takes_images(g: Graph, image_shape: tuple[int, ...], data: str) -> None:
    """The one input's channels are the images', and every op's shape rule holds at the
    images' size (a network runs at any size its ops can take, not only the declared one)."""
    inputs = [n for n in g.node_ids() if g.node(n).op is Op.INPUT]
    if len(inputs) != 1:
        return  # a model with tasks has one input; the frontend says so
    node = g.node(inputs[0])
    channels, height, width = image_shape
    if node.shape[0] != channels:
        declared = "x".join(map(str, (channels, *node.shape[1:])))
        raise MtscError(
            node.loc,
            f"input {node.name!r} takes {count_channels(node.shape[0])}, but the {data} images "
            f"have {channels} (declare `input {node.name}: {declared}`)",
        )
    if node.shape[1:] == (height, width):
        return
    sized = g.copy()
    sized.update(inputs[0], shape=image_shape, attrs={**node.attrs, "shape": image_shape})
    try:
        infer_shapes(sized)
    except MtscError as err:
        raise MtscError(
            err.span, f"on the {data} images ({height}x{width}): {err.message}", notes=err.notes
        ) from None
