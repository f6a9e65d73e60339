"""Fold each batchnorm into the conv before it, for deployment (inference only).

The IR holds no tensors, so the pass changes the structure (the conv gains a bias, the
batchnorm disappears) and records in the conv's `meta["fold_bn"]` where the batchnorm's
weights come from; the weight carrier does the arithmetic:
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
    kept_shared = _convs_kept_shared(g)
    for nid in g.topo_order():
        if nid not in g:
            continue
        bn = g.node(nid)
        if bn.op is not Op.BATCHNORM:
            continue
        (src,) = g.inputs(nid)
        conv = g.node(src)
        outputs = set(g.outputs.values())
        foldable = conv.op is Op.CONV2D and "fold_bn" not in conv.meta and src not in kept_shared
        if not foldable or g.users(src) != [nid] or src in outputs:
            continue
        fold = {
            "weights": _weights(bn),
            "eps": bn.attrs["eps"],
            "affine": bn.attrs["affine"],
        }
        g.replace(
            src,
            replace(
                conv,
                attrs={**conv.attrs, "bias": True},
                meta={**conv.meta, "fold_bn": fold, "had_bias": conv.attrs["bias"]},
            ),
        )
        g.redirect_users(nid, src)
        g.remove(nid)
    return g


def _weights(node: Node) -> tuple:
    return node.meta.get("weights", (node.name, None))


def _convs_kept_shared(g: Graph) -> set[int]:
    """Convs sharing weights whose readers are not all the same batchnorm weights."""
    sharers: dict[tuple, list[int]] = {}
    for nid in g.node_ids():
        node = g.node(nid)
        if node.op is Op.CONV2D and _weights(node)[1] is None:
            sharers.setdefault(_weights(node), []).append(nid)
    kept = set()
    for group in sharers.values():
        readers = {
            tuple(_weights(g.node(u)) if g.node(u).op is Op.BATCHNORM else (u,) for u in g.users(c))
            for c in group
        }
        if len(readers) > 1:
            kept |= set(group)
    return kept
