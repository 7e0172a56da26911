"""Property tests for the graph passes: on random graphs every pass and the default pipeline keep
the reference interpreter's results, and on purpose-built graphs each pass does its job.

The independent truth is :func:`kiln.ir.interpret.interpret` on the *un-transformed* graph (the
pass manager works on a copy), compared with the transformed graph on the same random inputs.

Tolerances: every value the generator builds is kept within |x| <= ``LIMIT`` (50), and every
denominator and sqrt/pow base is >= 0.3, so the only rounding the passes may change is a few ulps
(``x ** -0.5 -> rsqrt(x)``, summation order after transposes fold); results are compared with
``rtol=1e-4, atol=1e-4``.  Comparisons feeding ``where`` only use values that every pass keeps
bit-exact (IEEE add/mul/div/sqrt, max/min and data movement), so a condition cannot flip.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from kiln_testing.random_graphs import (
    PIPELINES,
    PROPERTY_SETTINGS,
    Case,
    _shapes_of_size,
    assert_same_results,
    random_graphs,
    run_pipeline,
)

from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, Value
from kiln.ir.dtypes import f32
from kiln.ir.interpret import interpret
from kiln.ir.types import TensorType


@pytest.mark.parametrize("pipeline", PIPELINES)
@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_pipeline_preserves_reference_results(pipeline: str, case: Case) -> None:
    note(case.graph.as_text())
    key = case.graph.structural_key()
    after = run_pipeline(case.graph, pipeline)
    note(after.as_text())
    assert case.graph.structural_key() == key, "the pass manager must not mutate its input"
    assert after.input_names == case.graph.input_names
    assert after.output_names == case.graph.output_names
    assert [v.type for _, v in after.outputs] == [v.type for _, v in case.graph.outputs]
    assert_same_results(case.graph, after, case.inputs)
    # Every one of these passes replaces a node by at most one node, or removes it.
    assert len(after.nodes) <= len(case.graph.nodes)


def _live_values(graph: Graph) -> set[Value]:
    live = {v for _, v in graph.outputs}
    for node in reversed(graph.nodes):
        if any(r in live for r in node.results):
            live.update(node.operands)
    return live


@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_dce_leaves_only_live_nodes(case: Case) -> None:
    after = run_pipeline(case.graph, "dce")
    live = _live_values(after)
    assert all(any(r in live for r in n.results) for n in after.nodes)
    # Exactly the nodes live in the input survive.
    live_before = _live_values(case.graph)
    n_live = sum(1 for n in case.graph.nodes if any(r in live_before for r in n.results))
    assert len(after.nodes) == n_live
    refs = {n.attrs.ref for n in after.nodes if n.op == "constant"}
    assert set(after.constants) == refs


@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_cse_leaves_no_duplicates(case: Case) -> None:
    after = run_pipeline(case.graph, "cse")
    keys = []
    datas: list[np.ndarray] = []
    for n in after.nodes:
        if n.op == "constant":
            arr = after.constants[n.attrs.ref]
            for other in datas:  # equal bytes: 0.0 and -0.0 are different constants
                assert not (
                    other.dtype == arr.dtype and other.shape == arr.shape and other.tobytes() == arr.tobytes()
                ), f"duplicate constants left: {after.as_text()}"
            datas.append(arr)
        else:
            keys.append((n.op, n.attrs, tuple(v.id for v in n.operands)))
    assert len(keys) == len(set(keys)), after.as_text()


@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_constant_fold_leaves_no_all_constant_node(case: Case) -> None:
    after = run_pipeline(case.graph, "constant-fold")
    producers = after.producers()
    for n in after.nodes:
        if n.op == "constant" or not n.operands:
            continue
        assert not all(v in producers and producers[v].op == "constant" for v in n.operands), (
            f"{n.describe()} has only constant operands after constant-fold:\n{after.as_text()}"
        )


@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_canonicalize_normal_form(case: Case) -> None:
    after = run_pipeline(case.graph, "canonicalize")
    producers = after.producers()

    def operand_op(n: Any) -> str | None:
        p = producers.get(n.operands[0]) if n.operands else None
        return p.op if p is not None else None

    for n in after.nodes:
        assert n.op not in ("squeeze", "unsqueeze"), after.as_text()
        if n.op in ("neg", "transpose", "reshape", "logical_not"):
            assert operand_op(n) != n.op, f"{n.op} of {n.op} left:\n{after.as_text()}"
        if n.op in ("add", "sub"):  # x + (-y) -> x - y, x - (-y) -> x + y
            negated = [v for v in n.operands[n.op == "sub" :] if v in producers and producers[v].op == "neg"]
            assert not negated, after.as_text()
        if n.op == "where":
            assert n.operands[1] is not n.operands[2] or n.operands[1].type != n.results[0].type
        if n.op == "transpose":
            assert list(n.attrs.perm) != list(range(len(n.attrs.perm)))
        if n.op in ("reshape", "cast", "broadcast_to", "concat", "reduce_sum", "reduce_max"):
            # each of these is the identity when its type is its (single) operand's
            assert len(n.operands) != 1 or n.operands[0].type != n.results[0].type, (
                f"identity {n.op} left:\n{after.as_text()}"
            )
        neutral = {"add": 0.0, "sub": 0.0, "mul": 1.0, "div": 1.0, "pow": 1.0}
        if n.op in neutral:
            # x op neutral, with the type of x, is x (add and mul also with the constant first)
            sides = [(0, 1), (1, 0)] if n.op in ("add", "mul") else [(0, 1)]
            for keep, cst in sides:
                data = after.constant_of(producers[n.operands[cst]]) if n.operands[cst] in producers else None
                kept = producers.get(n.operands[keep])
                if kept is not None and kept.op == "constant":
                    continue  # 0 + zeros: only the first binding is tried (constant-fold's job anyway)
                if data is not None and np.all(data == neutral[n.op]):
                    assert n.operands[keep].type != n.results[0].type, after.as_text()
        if n.op == "pow":
            data = after.constant_of(producers[n.operands[1]]) if n.operands[1] in producers else None
            for e in (2.0, 0.5, -0.5):
                if data is not None and np.all(data == e):
                    assert n.operands[0].type != n.results[0].type, after.as_text()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_canonicalize_data_movement_chains(data: st.DataObject) -> None:
    """Random chains of transposes, reshapes, squeezes and unsqueezes (dims 1-3, often equal, so
    a wrongly composed permutation would still type-check) against NumPy."""
    rank = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.sampled_from([1, 2, 2, 3]), min_size=rank, max_size=rank)))
    b = GraphBuilder()
    v = b.input("x", TensorType(f32, shape))
    xv = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    want = xv
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["transpose", "transpose", "reshape", "squeeze", "unsqueeze"]))
        if kind == "transpose":
            perm = tuple(data.draw(st.permutations(range(want.ndim))))
            v, want = b.op("transpose", v, perm=perm), np.transpose(want, perm)
        elif kind == "reshape":
            target = data.draw(st.sampled_from(_shapes_of_size(want.size, 4)))
            v, want = b.op("reshape", v, shape=target), want.reshape(target)
        elif kind == "squeeze" and 1 in want.shape:
            ones = [i for i, d in enumerate(want.shape) if d == 1]
            axes = tuple(sorted(data.draw(st.sets(st.sampled_from(ones), min_size=1))))
            v, want = b.op("squeeze", v, axes=axes), np.squeeze(want, axes)
        elif kind == "unsqueeze" and want.ndim < 4:
            axis = data.draw(st.integers(0, want.ndim))
            v, want = b.op("unsqueeze", v, axes=(axis,)), np.expand_dims(want, axis)
    b.output("y", v)
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    note(g.as_text())
    note(after.as_text())
    np.testing.assert_array_equal(interpret(after, {"x": xv})["y"], want)
    counts = after.op_counts()
    assert set(counts) <= {"transpose", "reshape"}
    producers = after.producers()
    for n in after.nodes:  # no transpose of a transpose, no reshape of a reshape
        p = producers.get(n.operands[0])
        assert p is None or p.op != n.op, after.as_text()


# --------------------------------------------------------------------------------------------
# Purpose-built graphs: each pass does its job
# --------------------------------------------------------------------------------------------
