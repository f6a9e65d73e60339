"""Whether a model fits a dataset, checked before a search or a training run starts: a model
declared for other images (`input image: 1x64x64` on RGB data, or a size its convolutions
cannot take), or tasks the data cannot train, would otherwise fail in the first steps with a
PyTorch traceback. Errors point at the model's own lines."""

from __future__ import annotations

from mtsc.codegen.torch_common import task_spec
from mtsc.errors import MtscError
from mtsc.ir.graph import Graph
from mtsc.ir.ops import Op, param_count
from mtsc.ir.passes.infer_shapes import infer_shapes
from mtsc.runtime.data.sample import DatasetInfo
from mtsc.runtime.task_fit import check_heads_fit_data, count_channels


def check_model_fits_data(
    g: Graph,
    image_shape: tuple[int, ...],
    info: DatasetInfo,
    data: str,
    *,
    batch_size: int,
) -> None:
    """The model `g` (as loaded) takes `data`'s images (C x H x W, as its dataset yields them)
    in batches of `batch_size`, and its tasks train on `data`'s targets."""
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
    # after the heads: a head on flat features is better told it must give a map
    check_weights_keep_their_size(g, sized, data)
    check_batch_statistics(sized, batch_size, data)


def graph_at_images(g: Graph, image_shape: tuple[int, ...], data: str) -> Graph:
    """`g` with its one input at the images' shape (C x H x W), after checking that the input
    has their channels and that every op's shape rule holds at their size (a network runs at
    any size its ops can take, not only the declared one)."""
    inputs = g.input_ids()
    if len(inputs) > 1:
        raise MtscError(g.node(inputs[1]).loc, f"{one_input_only(g)}, the {data} images")
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
    return sized


def one_input_only(g: Graph) -> str:
    """Why a model of several inputs cannot be searched or trained (the data gives one)."""
    names = ", ".join(g.node(n).name for n in g.input_ids())
    return (
        f"the model declares {len(g.input_ids())} inputs ({names}); `mtsc search` and "
        "`mtsc train` feed it one"
    )


def check_weights_keep_their_size(g: Graph, sized: Graph, data: str) -> None:
    """Every op of `g` has the weights at `sized`'s input size (the data's) that it has at the
    declared one: a linear layer on flattened features does not."""
    if sized is g:
        return  # at the declared size
    (image,) = g.input_ids()
    declared_input, images = g.node(image), sized.node(image).shape
    for n in g.topo_order():
        declared, there = _weights(g, n), _weights(sized, n)
        if declared != there:
            at = g.node(n)
            raise MtscError(
                at.loc,
                f"on the {data} images ({images[1]}x{images[2]}): {at.name} would need "
                f"{there:,} weights, but the model declares {declared:,} at its input's "
                f"{'x'.join(map(str, declared_input.shape))}; declare `input "
                f"{declared_input.name}: {'x'.join(map(str, images))}`, or make the size fixed "
                "before it (avgpool(x, global=true))",
            )


def check_batch_statistics(sized: Graph, batch_size: int, data: str) -> None:
    """No batchnorm of `sized` (at the data's size) trains on one value per channel: one over
    a 1x1 map (after a global pool) takes its statistics over the batch alone, and PyTorch
    refuses a batch of one there."""
    if batch_size > 1:
        return
    for n in sized.topo_order():
        node = sized.node(n)
        if node.op is Op.BATCHNORM and node.shape[1:] == (1, 1):
            raise MtscError(
                node.loc,
                f"{node.name} normalises a 1x1 map on the {data} images, over the batch alone: "
                "batch_size 1 gives it one value per channel, which training cannot "
                "normalise; use a batch_size of 2 or more",
            )


def _weights(g: Graph, nid: int) -> int:
    n = g.node(nid)
    return param_count(n.op, n.attrs, g.in_shapes(nid), n.shape)
