"""`mtsc check MODEL`: everything `build` does except writing files."""

from __future__ import annotations

import argparse

from mtsc.driver import build, warn
from mtsc.ir.errors import Diagnostic
from mtsc.ir.graph import Graph
from mtsc.ir.ops import did_you_mean
from mtsc.model_fit import one_input_only
from mtsc.report import summary_json, summary_text, supermodel_info, supermodel_text
from mtsc.runtime.data.options import TASKS
from mtsc.runtime.data.sample import TARGET_CHANNELS
from mtsc.runtime.objectives import TASK_LOSSES, default_loss
from mtsc.runtime.task_fit import count_channels


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="parse, lower and check a model without writing files")
    p.add_argument("model", help="a .mtl (or .prototxt) model file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--output", metavar="BLOB", help="end a .prototxt backbone at this blob (drop the rest)"
    )


def run(args: argparse.Namespace) -> int:
    result = build(args.model, None, output=args.output)
    if result.supermodel is not None:
        warn(
            lossless_tasks(result.supermodel)
            + head_mismatches(result.supermodel)
            + extra_inputs(result.supermodel)
        )
    extra = {} if result.supermodel is None else {"supermodel": supermodel_info(result.supermodel)}
    if args.json:
        print(summary_json(result.summary, **extra))
    else:
        print(summary_text(result.summary))
        if extra:
            print(supermodel_text(extra["supermodel"]))
    return 0


def lossless_tasks(g: Graph) -> list[Diagnostic]:
    """A warning for each task with no `loss=` and no default one: building needs none, but
    `mtsc search` and `mtsc train` would refuse the model."""
    defaults = ", ".join(TASK_LOSSES)
    return [
        Diagnostic(
            task.loc,
            f"task {task.name!r} has no loss=; `mtsc search` and `mtsc train` need one "
            f"(only tasks named {defaults} have a default)"
            f"{did_you_mean(task.name, tuple(TASK_LOSSES))}",
        )
        for task in g.tasks
        if task.loss is None and default_loss(task.name) is None
    ]


def extra_inputs(g: Graph) -> list[Diagnostic]:
    """A warning at the second input of a model that has several: building takes it, but
    `mtsc search` and `mtsc train` would refuse the model."""
    inputs = g.input_ids()
    if len(inputs) < 2:
        return []
    return [Diagnostic(g.node(inputs[1]).loc, f"{one_input_only(g)}, the data's images")]


def head_mismatches(g: Graph) -> list[Diagnostic]:
    """A warning for each head of a task mtsc trains (segment, depth, normal) that, at the
    declared input size, gives no map of the input's size, or not the channels of the task's
    targets (depth 1, normal 3): `mtsc search` and `mtsc train` would refuse it (at the
    data's size), after the data is made ready."""
    image = g.node(g.input_ids()[0]).shape
    found = []
    for task in g.tasks:
        if task.name not in TASKS:
            continue
        shape = g.node(g.outputs[task.name]).shape
        wanted = TARGET_CHANNELS.get(task.name)
        if len(shape) != 3 or shape[1:] != image[1:]:
            gives = "x".join(map(str, shape))
            problem = (
                f"gives {gives} for the declared {'x'.join(map(str, image))} input; "
                f"{task.name} needs a map of the input's size (end the head with "
                "upsample(y, input))"
            )
        elif wanted is not None and shape[0] != wanted:
            problem = f"gives {count_channels(shape[0])}; {task.name} targets have {wanted}"
        else:
            continue
        found.append(
            Diagnostic(
                task.loc,
                f"task {task.name!r}: the head {problem}; `mtsc search` and `mtsc "
                "train` would refuse it",
            )
        )
    return found
