"""Whether a model fits a dataset, checked before a search or a training run starts: a model
declared for other images (`input image: 1x64x64` on RGB data, or a size its convolutions
cannot take), or tasks the data cannot train, would otherwise fail in the first steps with a
PyTorch traceback. Errors point at the model's own lines."""

from __future__ import annotations

from pathlib import Path

from mtsc.codegen.torch_common import task_spec
from mtsc.driver import load
from mtsc.errors import MtscError
from mtsc.ir.graph import Graph
from mtsc.ir.ops import param_count
from mtsc.ir.passes.infer_shapes import infer_shapes
from mtsc.runtime.data.sample import DatasetInfo
from mtsc.runtime.task_fit import check_heads_fit_data, count_channels


def check_model_fits_data(
    model_path: str | Path, image_shape: tuple[int, ...], info: DatasetInfo, data: str
) -> None:
    """The model takes `data`'s images (C x H x W, as its dataset yields them) and its tasks
    train on `data`'s targets."""
    g = load(model_path)
    sized = graph_at_images(g, tuple(image_shape), data)
    check_heads_fit_data(
        {task.name: task_spec(task) for task in g.tasks},
        info,
        data,
        outputs={task.name: sized.node(sized.outputs[task.name]).shape for task in g.tasks},
        image_size=tuple(image_shape[1:]),
        locations={
            task.name: {
                "task": task.loc,
                "head": task.head.loc,
                "loss": task.loss.loc if task.loss else None,
                "metric": task.metric.loc if task.metric else None,
            }
            for task in g.tasks
        },
    )


def graph_at_images(g: Graph, image_shape: tuple[int, ...], data: str) -> Graph:
    """`g` with its one input at the images' shape (C x H x W), after checking that the input
    has their channels, that every op's shape rule holds at their size (a network runs at any
    size its ops can take, not only the declared one), and that every op's weights keep their
    declared size there (a linear layer on flattened features does not)."""
    inputs = g.input_ids()
    if len(inputs) != 1:
        return g  # a model with tasks has one input; the frontend says so
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
        return g
    sized = g.copy()
    sized.update(inputs[0], shape=image_shape, attrs={**node.attrs, "shape": image_shape})
    try:
        infer_shapes(sized)
    except MtscError as err:
        raise MtscError(
            err.span, f"on the {data} images ({height}x{width}): {err.message}", notes=err.notes
        ) from None
    for nid in g.topo_order():
        declared, there = _weights(g, nid), _weights(sized, nid)
        if declared != there:
            at = g.node(nid)
            size = "x".join(map(str, node.shape))
            raise MtscError(
                at.loc,
                f"on the {data} images ({height}x{width}): {at.name} would need {there:,} "
                f"weights, but the model declares {declared:,} at its input's {size}; declare "
                f"`input {node.name}: {channels}x{height}x{width}`, or make the size fixed "
                "before it (avgpool(x, global=true))",
            )
    return sized


def _weights(g: Graph, nid: int) -> int:
    n = g.node(nid)
    return param_count(n.op, n.attrs, g.in_shapes(nid), n.shape)
