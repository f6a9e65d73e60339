"""Human-readable and JSON summaries of a compiled model."""

from __future__ import annotations

import json

from mtsc.ir.graph import Graph
from mtsc.ir.ops import Op
from mtsc.ir.stats import Summary, supermodel_params


def human(n: int) -> str:
    """`n` in K, M, G or T to two decimals, in the first unit that shows it below 1000.00 (so
    999,999 is 1.00 M, not 1000.00 K)."""
    if n < 1000:
        return str(n)
    for scale, suffix in ((1e3, "K"), (1e6, "M"), (1e9, "G")):
        text = f"{n / scale:.2f}"
        if float(text) < 1000:
            return f"{text} {suffix}"
    return f"{n / 1e12:.2f} T"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def shape(dims: tuple[int, ...]) -> str:
    return "x".join(map(str, dims))


def summary_text(s: Summary) -> str:
    inputs = ", ".join(f"{k} {shape(v)}" for k, v in s.inputs.items())
    lines = [
        f"{s.name}: {s.ops} ops, {human(s.params)} parameters ({s.params:,}), "
        f"{human(s.macs)} MACs at {inputs}",
    ]
    lines += [f"  output {k}: {shape(v)}" for k, v in s.outputs.items()]
    counts = ", ".join(f"{op} {n}" for op, n in sorted(s.op_counts.items(), key=lambda kv: -kv[1]))
    lines.append(f"  ops: {counts}")
    return "\n".join(lines)


def supermodel_info(g: Graph) -> dict:
    """Tasks, routed ops and the supermodel's weights (policy logits aside)."""
    routes = [n for n in g.topo_order() if g.node(n).op is Op.ROUTE]
    tasks = [t.name for t in g.tasks]
    return {
        "tasks": tasks,
        "routed_ops": len(routes),
        "skippable_ops": sum(1 for r in routes if g.node(r).attrs["skip"]),
        "params": supermodel_params(g),
        # one [T, 3] row of logits per routed op: `policy_parameters()`, beside the weights
        "policy_logits": len(routes) * len(tasks) * 3,
    }


def supermodel_text(info: dict) -> str:
    return (
        f"  supermodel: tasks {', '.join(info['tasks'])}; "
        f"{plural(info['routed_ops'], 'routed op')} "
        f"({info['skippable_ops']} skippable); {human(info['params'])} parameters "
        f"({info['params']:,}) and {info['policy_logits']:,} policy logits"
    )


def summary_json(s: Summary, **extra) -> str:
    return json.dumps({**s.as_dict(), **extra}, indent=2, sort_keys=False)
