"""Purpose-built graphs: each pass (canonicalize, constant-fold, cse, dce) does its job, checked
against the reference interpreter on the graph before the pass."""

from __future__ import annotations

import numpy as np
import pytest
from kiln_testing.random_graphs import assert_same_results, run_pipeline

from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Value
from kiln.ir.dtypes import f32
from kiln.ir.errors import KilnError
from kiln.ir.interpret import interpret
from kiln.ir.types import TensorType
from kiln.passes.manager import DEFAULT_PIPELINE


def _input(b: GraphBuilder, name: str, *shape: int) -> Value:
    return b.input(name, TensorType(f32, tuple(shape)))


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, size=shape).astype(np.float32)


def test_canonicalize_removes_identities() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    zero = b.constant(np.float32(0))
    one = b.constant(np.ones((1, 3), np.float32))
    v = b.op("add", x, zero)  # x + 0
    v = b.op("add", zero, v)  # 0 + x (commutative)
    v = b.op("sub", v, zero)  # x - 0
    v = b.op("mul", one, v)  # 1 * x
    v = b.op("div", v, one)  # x / 1
    v = b.op("neg", b.op("neg", v))  # -(-x)
    v = b.op("cast", v, dtype=f32)
    v = b.op("reshape", v, shape=(2, 3))
    v = b.op("slice", v, axes=(0, 1), starts=(0, 0), stops=(2, 3), steps=(1, 1))
    v = b.op("concat", v, axis=1)
    v = b.op("reduce_sum", v, axes=(), keepdims=False)
    v = b.op("transpose", v, perm=(0, 1))
    b.output("y", v)
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    assert after.op_counts() == {}, after.as_text()
    assert after.outputs[0][1] is after.inputs[0]
    x_val = _rand(2, 3)
    np.testing.assert_array_equal(interpret(after, {"x": x_val})["y"], x_val)
    assert_same_results(g, after, {"x": x_val})


def test_canonicalize_composes_transposes() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3, 4)
    t1 = b.op("transpose", x, perm=(1, 2, 0))
    t2 = b.op("transpose", t1, perm=(2, 0, 1))  # the inverse: identity overall
    t3 = b.op("transpose", t1, perm=(0, 2, 1))
    t4 = b.op("transpose", t3, perm=(2, 0, 1))
    b.output("same", t2)
    b.output("moved", t4)
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    assert after.op_counts() == {"transpose": 1}, after.as_text()
    (node,) = after.nodes
    x_val = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    want = np.transpose(np.transpose(np.transpose(x_val, (1, 2, 0)), (0, 2, 1)), (2, 0, 1))
    assert node.attrs.perm == (2, 1, 0)
    np.testing.assert_array_equal(np.transpose(x_val, node.attrs.perm), want)
    out = interpret(after, {"x": x_val})
    np.testing.assert_array_equal(out["same"], x_val)
    np.testing.assert_array_equal(out["moved"], want)


def test_canonicalize_collapses_reshape_chains_and_squeezes() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    r = b.op("reshape", b.op("reshape", b.op("reshape", x, shape=(6,)), shape=(3, 2)), shape=(1, 6))
    back = b.op("reshape", b.op("reshape", x, shape=(3, 2)), shape=(2, 3))
    sq = b.op("squeeze", b.op("unsqueeze", x, axes=(0, 2)), axes=(0,))
    b.output("r", r)
    b.output("back", back)
    b.output("sq", sq)
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    assert after.op_counts() == {"reshape": 2}, after.as_text()
    producers = after.producers()
    assert after.outputs[1][1] is after.inputs[0]
    for name in ("r", "sq"):
        node = producers[dict(after.outputs)[name]]
        assert node.operands[0] is after.inputs[0]
    x_val = _rand(2, 3)
    out = interpret(after, {"x": x_val})
    np.testing.assert_array_equal(out["r"], x_val.reshape(1, 6))
    np.testing.assert_array_equal(out["back"], x_val)
    np.testing.assert_array_equal(out["sq"], x_val.reshape(2, 1, 3))


def test_canonicalize_power_and_division_rules() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    p = b.op("exp", x)
    b.output("sq", b.op("pow", p, b.constant(np.float32(2))))
    b.output("sqrt", b.op("pow", p, b.constant(np.float32(0.5))))
    b.output("rsqrt", b.op("pow", p, b.constant(np.float32(-0.5))))
    b.output("one", b.op("pow", p, b.constant(np.float32(1))))
    b.output("recip", b.op("div", b.constant(np.float32(1)), p))
    b.output("rs2", b.op("div", b.constant(np.float32(1)), b.op("sqrt", p)))
    b.output("subneg", b.op("sub", x, b.op("neg", p)))
    b.output("addneg", b.op("add", b.op("neg", p), x))
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    counts = after.op_counts()
    assert "pow" not in counts and "neg" not in counts and "div" not in counts, after.as_text()
    assert counts["rsqrt"] == 2  # x ** -0.5 and 1 / sqrt(x); canonicalize does not CSE them
    x_val = _rand(2, 3)
    e = np.exp(x_val)
    out = interpret(after, {"x": x_val})
    np.testing.assert_allclose(out["sq"], e * e, rtol=1e-6)
    np.testing.assert_allclose(out["sqrt"], np.sqrt(e), rtol=1e-6)
    np.testing.assert_allclose(out["rsqrt"], 1 / np.sqrt(e), rtol=1e-6)
    np.testing.assert_allclose(out["one"], e, rtol=1e-6)
    np.testing.assert_allclose(out["recip"], 1 / e, rtol=1e-6)
    np.testing.assert_allclose(out["rs2"], 1 / np.sqrt(e), rtol=1e-6)
    np.testing.assert_allclose(out["subneg"], x_val + e, rtol=1e-6)
    np.testing.assert_allclose(out["addneg"], x_val - e, rtol=1e-6)


def test_canonicalize_keeps_x_times_zero_for_floats() -> None:
    """x * 0 is not 0 for inf and NaN, so canonicalize must leave it."""
    b = GraphBuilder()
    x = _input(b, "x", 3)
    b.output("y", b.op("mul", x, b.constant(np.zeros(3, np.float32))))
    b.output("z", b.op("mul", b.constant(np.float32(0)), x))
    g = b.build()
    after = run_pipeline(g, DEFAULT_PIPELINE)
    assert after.op_counts().get("mul") == 2, after.as_text()
    x_val = np.array([np.inf, np.nan, 1.5], np.float32)
    out = interpret(after, {"x": x_val})
    for name in ("y", "z"):
        np.testing.assert_array_equal(out[name], np.array([np.nan, np.nan, 0.0], np.float32))


def test_canonicalize_keeps_broadcasting_identities() -> None:
    """x + zeros (or x * ones) that broadcasts x to a bigger shape is not x."""
    b = GraphBuilder()
    x = _input(b, "x", 3)
    b.output("add", b.op("add", x, b.constant(np.zeros((2, 3), np.float32))))
    b.output("mul", b.op("mul", b.constant(np.ones((4, 1), np.float32)), x))
    b.output("sub", b.op("sub", x, b.constant(np.zeros((1, 3), np.float32))))
    b.output("where", b.op("where", b.op("gt", x, b.constant(np.zeros((2, 3), np.float32))), x, x))
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    counts = after.op_counts()
    assert counts.get("add") == 1 and counts.get("mul") == 1 and counts.get("sub") == 1, after.as_text()
    assert counts.get("where") == 1
    x_val = _rand(3)
    out = interpret(after, {"x": x_val})
    np.testing.assert_array_equal(out["add"], np.broadcast_to(x_val, (2, 3)))
    np.testing.assert_array_equal(out["mul"], np.broadcast_to(x_val, (4, 3)))
    np.testing.assert_array_equal(out["sub"], x_val.reshape(1, 3))
    np.testing.assert_array_equal(out["where"], np.broadcast_to(x_val, (2, 3)))


def test_canonicalize_removes_x_plus_zeros_that_broadcast_to_x() -> None:
    """x + 0 is removed when the zeros broadcast to x's own shape."""
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    b.output("y", b.op("add", x, b.constant(np.zeros((1, 3), np.float32))))
    after = run_pipeline(b.build(), "canonicalize")
    assert after.op_counts() == {}


def test_constant_fold_folds_constant_subgraph() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    c1 = b.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    c2 = b.constant(np.float32(0.25))
    sub = b.op("tanh", b.op("mul", b.op("add", c1, c2), c2))
    sub = b.op("transpose", sub, perm=(1, 0))
    b.output("y", b.op("add", x, b.op("transpose", sub, perm=(1, 0))))
    g = b.build()
    after = run_pipeline(g, "constant-fold,dce")
    assert after.op_counts() == {"constant": 1, "add": 1}, after.as_text()
    (data,) = after.constants.values()
    want = np.tanh((np.arange(6, dtype=np.float32).reshape(2, 3) + 0.25) * 0.25)
    np.testing.assert_allclose(data, want, rtol=1e-6)
    x_val = _rand(2, 3)
    np.testing.assert_allclose(interpret(after, {"x": x_val})["y"], x_val + want, rtol=1e-6)


def test_constant_fold_folds_to_a_scalar() -> None:
    """A reduction of constants to a 0-d result is folded like any other."""
    b = GraphBuilder()
    x = _input(b, "x", 3)
    s = b.op("reduce_sum", b.constant(np.array([1, 2, 3], np.float32)), axes=(0,))
    b.output("y", b.op("add", x, s))
    g = b.build()
    after = run_pipeline(g, "constant-fold,dce")
    assert after.op_counts() == {"constant": 1, "add": 1}, after.as_text()
    (data,) = after.constants.values()
    assert data.shape == () and data == 6.0
    x_val = _rand(3)
    np.testing.assert_array_equal(interpret(after, {"x": x_val})["y"], x_val + np.float32(6))


def test_constant_fold_respects_max_elements() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 8, 8)
    big = b.op("broadcast_to", b.constant(np.float32(3)), shape=(8, 8))
    b.output("y", b.op("add", x, big))
    g = b.build()
    assert run_pipeline(g, "constant-fold{max_elements=10}").op_counts()["broadcast_to"] == 1
    folded = run_pipeline(g, "constant-fold{max_elements=64},dce")
    assert "broadcast_to" not in folded.op_counts()
    x_val = _rand(8, 8)
    np.testing.assert_array_equal(interpret(folded, {"x": x_val})["y"], x_val + np.float32(3))


def test_cse_merges_duplicates_and_constants() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    c1 = b.constant(np.full((3,), 2, np.float32))
    c2 = b.constant(np.full((3,), 2, np.float32))  # same data as c1
    c3 = b.constant(np.full((3,), 2, np.float64).astype(np.float32).reshape(1, 3))  # other shape
    e1 = b.op("exp", b.op("mul", x, c1))
    e2 = b.op("exp", b.op("mul", x, c2))  # the same computation
    t1 = b.op("transpose", e1, perm=(1, 0))
    t2 = b.op("transpose", e2, perm=(1, 0))
    b.output("a", t1)
    b.output("b", t2)
    b.output("c", b.op("add", e1, c3))
    g = b.build()
    assert g.op_counts() == {"constant": 3, "mul": 2, "exp": 2, "transpose": 2, "add": 1}
    after = run_pipeline(g, "cse")
    assert after.op_counts() == {"constant": 2, "mul": 1, "exp": 1, "transpose": 1, "add": 1}
    assert len(after.constants) == 2
    assert dict(after.outputs)["a"] is dict(after.outputs)["b"]
    x_val = _rand(2, 3)
    out = interpret(after, {"x": x_val})
    want = np.exp(x_val * np.float32(2)).T
    np.testing.assert_allclose(out["a"], want, rtol=1e-6)
    np.testing.assert_allclose(out["b"], want, rtol=1e-6)
    np.testing.assert_allclose(out["c"], want.T + 2, rtol=1e-6)


def test_cse_keeps_different_attributes_apart() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    b.output("s0", b.op("reduce_sum", x, axes=(0,), keepdims=True))
    b.output("s1", b.op("reduce_sum", x, axes=(0,), keepdims=False))
    b.output("s2", b.op("reduce_sum", x, axes=(1,), keepdims=True))
    c0 = b.constant(np.zeros((), np.float32))
    cneg0 = b.constant(np.array(-0.0, np.float32))  # different bytes, equal under ==
    b.output("d0", b.op("div", b.constant(np.ones((), np.float32)), c0))
    b.output("d1", b.op("div", b.constant(np.ones((), np.float32)), cneg0))
    g = b.build()
    after = run_pipeline(g, "cse")
    assert after.op_counts()["reduce_sum"] == 3
    out = interpret(after, {"x": _rand(2, 3)})
    assert out["d0"] == np.inf and out["d1"] == -np.inf


def test_cse_keeps_swapped_operands_apart() -> None:
    b = GraphBuilder()
    x, y = _input(b, "x", 2, 3), _input(b, "y", 2, 3)
    b.output("xy", b.op("sub", x, y))
    b.output("yx", b.op("sub", y, x))
    b.output("dxy", b.op("div", x, y))
    b.output("dyx", b.op("div", y, x))
    b.output("pxy", b.op("pow", b.op("abs", x), y))
    b.output("pyx", b.op("pow", b.op("abs", y), x))
    after = run_pipeline(b.build(), "cse")
    assert after.op_counts() == {"sub": 2, "div": 2, "pow": 2, "abs": 2}
    xv, yv = _rand(2, 3, seed=1), _rand(2, 3, seed=2)
    out = interpret(after, {"x": xv, "y": yv})
    np.testing.assert_array_equal(out["xy"], xv - yv)
    np.testing.assert_array_equal(out["yx"], yv - xv)
    np.testing.assert_allclose(out["dxy"], xv / yv, rtol=1e-6)
    np.testing.assert_allclose(out["dyx"], yv / xv, rtol=1e-6)
    np.testing.assert_allclose(out["pxy"], np.abs(xv) ** yv, rtol=1e-6)
    np.testing.assert_allclose(out["pyx"], np.abs(yv) ** xv, rtol=1e-6)


def test_cse_merges_scalar_constants() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 1)
    for i in range(3):  # a [1]-shaped 2 first, then two 0-d 2s
        c = b.constant(np.array([2.0], np.float32) if i == 0 else np.float32(2.0))
        b.output(f"y{i}", b.op("mul", x, c))
    after = run_pipeline(b.build(), "cse")
    assert after.op_counts() == {"constant": 2, "mul": 2}, after.as_text()
    x_val = np.array([1.5], np.float32)
    out = interpret(after, {"x": x_val})
    for i in range(3):
        np.testing.assert_array_equal(out[f"y{i}"], [3.0])


def test_dce_removes_unused_nodes_and_prunes_constants() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    w = b.constant(_rand(2, 3, seed=1), name="w")
    dead_w = b.constant(_rand(3, 3, seed=2), name="dead_w")
    b.op("matmul", x, dead_w)  # dead
    b.op("tanh", b.op("exp", x))  # dead chain
    y = b.op("add", x, w)
    b.output("y", y)
    g = b.build()
    after = run_pipeline(g, "dce")
    assert after.op_counts() == {"constant": 1, "add": 1}
    assert set(after.constants) == {"w"}
    assert set(g.constants) == {"w", "dead_w"}  # the input graph keeps its weights
    x_val = _rand(2, 3)
    np.testing.assert_array_equal(interpret(after, {"x": x_val})["y"], x_val + _rand(2, 3, seed=1))


def test_default_pipeline_on_a_mixed_graph() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    k = b.op("add", b.constant(np.float32(1)), b.constant(np.float32(1)))  # folds to 2
    a = b.op("mul", b.op("add", x, b.constant(np.float32(0))), k)
    a2 = b.op("mul", x, b.constant(np.float32(2)))  # the same after folding, CSE merges
    s = b.op("softmax", b.op("transpose", b.op("transpose", a, perm=(1, 0)), perm=(1, 0)), axis=1)
    s2 = b.op("softmax", a2, axis=1)
    b.op("exp", s)  # dead
    b.output("y", b.op("sub", s, b.op("neg", s2)))
    g = b.build()
    after = run_pipeline(g, DEFAULT_PIPELINE)
    assert after.op_counts() == {"constant": 1, "mul": 1, "softmax": 1, "add": 1}, after.as_text()
    x_val = _rand(2, 3)
    e = np.exp(2 * x_val - np.max(2 * x_val, axis=1, keepdims=True))
    sm = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(interpret(after, {"x": x_val})["y"], 2 * sm, rtol=1e-5)
    assert_same_results(g, after, {"x": x_val})


def test_empty_reductions_fold_to_identities_and_empty_argmax_is_left_to_run_time() -> None:
    """max over an empty axis is the identity (-inf), as in ONNX, and folds; argmax over an empty
    axis has no answer: constant-fold leaves it and the interpreter raises a KilnError."""
    b = GraphBuilder()
    x = _input(b, "x", 3)
    m = b.op("reduce_max", b.constant(np.zeros((0, 3), np.float32)), axes=(0,))
    b.output("y", b.op("add", x, m))
    g = b.build()
    np.testing.assert_array_equal(interpret(g, {"x": _rand(3)})["y"], np.full(3, -np.inf, np.float32))
    folded = run_pipeline(g, "constant-fold,dce")
    assert folded.op_counts() == {"constant": 1, "add": 1}
    b = GraphBuilder()
    b.output("i", b.op("argmax", b.constant(np.zeros((0, 3), np.float32)), axis=0))
    g = b.build()
    assert run_pipeline(g, "constant-fold").op_counts() == {"constant": 1, "argmax": 1}
    with pytest.raises(KilnError, match="argmax"):
        interpret(g, {})
    # reducing the non-empty axis of an empty tensor is fine, and folds
    b = GraphBuilder()
    x = _input(b, "x", 0)
    m = b.op("reduce_max", b.constant(np.zeros((0, 3), np.float32)), axes=(1,))
    b.output("y", b.op("add", x, m))
    after = run_pipeline(b.build(), "constant-fold,dce")
    assert after.op_counts() == {"constant": 1, "add": 1}
    assert interpret(after, {"x": np.zeros(0, np.float32)})["y"].shape == (0,)


def test_constant_fold_of_softmax_over_an_empty_axis() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 0, 3)
    s = b.op("softmax", b.constant(np.zeros((0, 3), np.float32)), axis=0)
    b.output("y", b.op("add", x, s))
    g = b.build()
    xv = np.zeros((0, 3), np.float32)
    assert interpret(g, {"x": xv})["y"].shape == (0, 3)
    after = run_pipeline(g, "constant-fold,dce")
    assert after.op_counts() == {"constant": 1, "add": 1}
    assert interpret(after, {"x": xv})["y"].shape == (0, 3)
