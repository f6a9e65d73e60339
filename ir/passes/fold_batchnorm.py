"""Fold each batchnorm into the conv before it, for deployment (inference only).

The IR holds no tensors, so the pass changes the structure (the conv gains a bias, the
batchnorm disappears) and records in the conv's `meta["fold_bn"]` where the batchnorm's
weights come from; the weight carrier does the arithmetic:
`w' = w * g / sqrt(v + eps)`, `b' = (b - m) * g / sqrt(v + eps) + beta`.
"""

from __future__ import annotations

from dataclasses import replace

from mtsc.ir.graph import Graph
from mtsc.ir.ops import Op


def fold_batchnorm(g: Graph) -> Graph:
    for nid in g.topo_order():
        if nid not in g:
            continue
        bn = g.node(nid)
        if bn.op is not Op.BATCHNORM:
            continue
        (src,) = g.inputs(nid)
        conv = g.node(src)
        outputs = set(g.outputs.values())
        foldable = conv.op is Op.CONV2D and "fold_bn" not in conv.meta
        if not foldable or g.users(src) != [nid] or src in outputs:
            continue
        fold = {
            "weights": bn.meta.get("weights", (bn.name, None)),
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
