"""Fold each batchnorm into the conv before it, for deployment (inference only).

The IR holds no tensors, so the pass changes the structure (the conv gains a bias, the
batchnorm disappears) and records in the conv's `meta["fold_bn"]` where the batchnorms'
weights come from, in order (a skip projection's batchnorm, then the op's own, fold into one
conv); the weight carrier does the arithmetic, once per batchnorm:
`w' = w * g / sqrt(v + eps)`, `b' = (b - m) * g / sqrt(v + eps) + beta`.

Convs that share weights (a pruned model's shared op applied to each task's own input) fold
only if all of them fold the same batchnorm weights: folding per-task batchnorms would give
every task its own copy of the shared weights, a much bigger model for a tiny saving.
"""

from __future__ import annotations

from dataclasses import replace

from mtsc.ir.graph import Graph, Node
from mtsc.ir.ops import Op


def fold_batchnorm(g: Graph) -> Graph:
    by_weights = _convs_by_weights(g)
    kept_shared = _convs_kept_shared(g, by_weights)
    for nid in g.topo_order():
        if nid not in g:
            continue
        bn = g.node(nid)
        if bn.op is not Op.BATCHNORM:
            continue
        (src,) = g.inputs(nid)
        conv = g.node(src)
        folded = conv.meta.get("fold_bn", ())
        # a second fold into shared weights would need every sharer to fold the same one
        chained_shared = folded and len(by_weights[_weights(conv)]) > 1
        foldable = conv.op is Op.CONV2D and src not in kept_shared and not chained_shared
        if not foldable or g.users(src) != [nid] or src in set(g.outputs.values()):
            continue
        fold = {
            "weights": _weights(bn),
            "eps": bn.attrs["eps"],
            "affine": bn.attrs["affine"],
        }
        meta = {
            **conv.meta,
            "fold_bn": (*folded, fold),
            "had_bias": conv.meta.get("had_bias", conv.attrs["bias"]),
        }
        g.replace(src, replace(conv, attrs={**conv.attrs, "bias": True}, meta=meta))
        g.redirect_users(nid, src)
        g.remove(nid)
    return g


def unfolded_batchnorms(g: Graph) -> dict[str, int]:
    """After `fold_batchnorm`: why each batchnorm left did not fold, {reason: count}."""
    kept_shared = _convs_kept_shared(g, _convs_by_weights(g))
    reasons: dict[str, int] = {}
    for nid in g.node_ids():
        if g.node(nid).op is not Op.BATCHNORM:
            continue
        (src,) = g.inputs(nid)
        if g.node(src).op is not Op.CONV2D:
            reason = "after an op that is not a conv"
        elif (
            src in kept_shared
            or g.node(src).meta.get("fold_bn")
            or sum(g.node(u).op is Op.BATCHNORM for u in g.users(src)) > 1
        ):
            reason = "after a conv whose weights tasks share, each with its own batchnorm"
        else:
            reason = "after a conv whose output is also used elsewhere"
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def _weights(node: Node) -> tuple:
    return node.meta.get("weights", (node.name, None))


def _convs_by_weights(g: Graph) -> dict[tuple, list[int]]:
    """The convs of each set of weights (more than one: a shared op run on several inputs)."""
    groups: dict[tuple, list[int]] = {}
    for nid in g.node_ids():
        if g.node(nid).op is Op.CONV2D:
            groups.setdefault(_weights(g.node(nid)), []).append(nid)
    return groups


def _convs_kept_shared(g: Graph, by_weights: dict[tuple, list[int]]) -> set[int]:
    """Convs sharing weights whose readers are not all the same batchnorm weights."""
    kept = set()
    for weights, group in by_weights.items():
        if weights[1] is not None:  # one task's weights
            continue
        readers = {
            tuple(_weights(g.node(u)) if g.node(u).op is Op.BATCHNORM else (u,) for u in g.users(c))
            for c in group
        }
        if len(readers) > 1:
            kept |= set(group)
    return kept
