"""The IR graph's own adjacency against networkx, on random edit sequences."""

from __future__ import annotations

import networkx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtsc.ir.errors import InternalError
from mtsc.ir.graph import Graph, Node
from mtsc.ir.ops import Op


def _node(i: int) -> Node:
    return Node(Op.RELU, f"n{i}", {})


@st.composite
def edited_graphs(draw) -> Graph:
    """A DAG built by adds (inputs only from earlier nodes, repeats allowed), then rewired,
    redirected and pruned the way passes do."""
    g = Graph("random")
    for i in range(draw(st.integers(1, 25))):
        earlier = list(g.node_ids())
        inputs = draw(st.lists(st.sampled_from(earlier), max_size=3)) if earlier else []
        g.add(_node(i), inputs)
    for _ in range(draw(st.integers(0, 8))):
        ids = list(g.node_ids())
        nid = draw(st.sampled_from(ids))
        action = draw(st.sampled_from(["rewire", "redirect", "remove"]))
        before = [i for i in ids if i < nid]
        if action == "rewire" and before:
            g.set_inputs(nid, draw(st.lists(st.sampled_from(before), max_size=3)))
        elif action == "redirect" and before:
            g.redirect_users(nid, draw(st.sampled_from(before)))
        elif action == "remove" and len(ids) > 1:
            g.remove(nid)
    g.outputs = {"out": max(g.node_ids())}
    return g


@settings(max_examples=200, deadline=None)
@given(edited_graphs())
def test_graph_agrees_with_networkx(g: Graph) -> None:
    ref = g.to_networkx()
    assert sorted(ref.nodes) == list(g.node_ids())
    assert g.topo_order() == list(networkx.lexicographical_topological_sort(ref))
    assert g.is_acyclic()
    for nid in g.node_ids():
        assert g.users(nid) == sorted(ref.successors(nid))
        assert g.ancestors(nid) == networkx.ancestors(ref, nid)
        by_port = sorted((port, src) for src, _, port in ref.in_edges(nid, data="port"))
        assert [src for _, src in by_port] == g.inputs(nid)
    copy = g.copy()
    assert networkx.utils.graphs_equal(copy.to_networkx(), ref)


def test_copy_is_independent() -> None:
    g = Graph("g")
    a = g.add(_node(0))
    b = g.add(_node(1), [a])
    c = g.add(_node(2), [a, a])
    other = g.copy()
    other.remove(b)
    other.set_inputs(c, [a])
    assert g.users(a) == [b, c] and g.inputs(c) == [a, a]
    assert other.users(a) == [c] and b not in other


def test_reading_twice_is_two_edges_and_one_reader() -> None:
    g = Graph("g")
    a = g.add(_node(0))
    b = g.add(_node(1), [a, a])
    assert g.inputs(b) == [a, a] and g.users(a) == [b]
    assert g.to_networkx().number_of_edges(a, b) == 2
    g.remove(a)
    assert g.inputs(b) == [] and g.topo_order() == [b]


def test_a_cycle_is_reported() -> None:
    g = Graph("g")
    a = g.add(_node(0))
    b = g.add(_node(1), [a])
    g.set_inputs(a, [b])
    assert not g.is_acyclic()
    with pytest.raises(InternalError, match="g: the graph has a cycle"):
        g.topo_order()


def test_unknown_input_is_refused() -> None:
    g = Graph("g")
    with pytest.raises(InternalError, match="input 7 of n0 is not in the graph"):
        g.add(_node(0), [7])
    a = g.add(_node(1))
    with pytest.raises(InternalError, match="input 7 of n1 is not in the graph"):
        g.set_inputs(a, [7])
    assert g.inputs(a) == [] and len(g) == 1
