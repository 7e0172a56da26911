"""numba-cpu generated kernels: every codegen op, special values, groups (see
tests/kiln_testing/numba_cpu.py for the tolerances)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kiln_testing.numba_cpu import assert_matches_reference, compile_and_check, uniform

import kiln
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, Value
from kiln.ir.dtypes import boolean, f16, f32, f64, i32, i64
from kiln.ir.interpret import interpret
from kiln.ir.types import TensorType

# --------------------------------------------------------------------------------------------
# One-op kernels: every elementwise and row op the codegen supports
# --------------------------------------------------------------------------------------------

SPACE = (2, 3, 8)  # R = 6 rows of C = 8

#: The access patterns of a second operand in the iteration space SPACE (passes/fuse.py access):
#: its shape, or "const" for a scalar constant (baked into the kernel as a literal).
PATTERNS: dict[str, tuple[int, ...] | str] = {
    "full": SPACE,
    "row": (8,),
    "row2d": (1, 8),
    "col": (2, 3, 1),
    "scalar": (),
    "const": "const",
    "bcast": (2, 1, 8),
}

#: Unary ops and the domain of their input.
UNARY: dict[str, tuple[float, float]] = {
    "neg": (-3, 3), "abs": (-3, 3), "exp": (-20, 20), "log": (0.01, 50), "sqrt": (0, 50),
    "rsqrt": (0.01, 50), "reciprocal": (0.1, 5), "tanh": (-10, 10), "erf": (-4, 4), "sin": (-6, 6),
    "cos": (-6, 6), "floor": (-5, 5), "ceil": (-5, 5), "sigmoid": (-20, 20), "relu": (-3, 3),
    "silu": (-10, 10), "gelu": (-6, 6), "gelu_tanh": (-6, 6),
}  # fmt: skip

#: Binary ops: (lhs domain, rhs domain). Comparisons get integer-valued inputs (ties happen).
BINARY: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "add": ((-3, 3), (-3, 3)), "sub": ((-3, 3), (-3, 3)), "mul": ((-3, 3), (-3, 3)),
    "div": ((-3, 3), (0.5, 3)), "pow": ((0.2, 3), (-2, 2)), "maximum": ((-3, 3), (-3, 3)),
    "minimum": ((-3, 3), (-3, 3)),
}  # fmt: skip
COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")
LOGICAL = ("logical_and", "logical_or", "logical_xor")


def _operand(b: GraphBuilder, inputs: dict[str, np.ndarray], name: str, pattern: str, dom: tuple[float, float],
             dtype: Any = f32, integer: bool = False, seed: int = 1) -> Value:  # fmt: skip
    shape = PATTERNS[pattern]
    np_dt = dtype.np_dtype
    if shape == "const":
        return b.constant(np.asarray(np.round(dom[1] * 0.7) if integer else dom[1] * 0.7, np_dt), name)
    data = uniform(shape, *dom, dtype=np_dt, seed=seed)  # type: ignore[arg-type]
    if integer:
        data = np.round(data).astype(np_dt)
    inputs[name] = data
    return b.input(name, TensorType(dtype, shape))  # type: ignore[arg-type]


def _bool_operand(
    b: GraphBuilder, inputs: dict[str, np.ndarray], name: str, pattern: str, seed: int
) -> Value:
    shape = PATTERNS[pattern]
    if shape == "const":
        return b.constant(np.bool_(True), name)
    inputs[name] = np.random.default_rng(seed).uniform(size=shape) < 0.5  # type: ignore[arg-type]
    return b.input(name, TensorType(boolean, shape))  # type: ignore[arg-type]


@pytest.mark.parametrize("op", list(UNARY))
def test_unary_kernel(op: str, cache: Path) -> None:
    b = GraphBuilder(op)
    inputs = {"x": uniform(SPACE, *UNARY[op])}
    x = b.input("x", TensorType(f32, SPACE))
    kw = {"approximate": "tanh"} if op == "gelu_tanh" else {}
    b.output("y", b.op(op.removesuffix("_tanh"), x, **kw))
    graph = b.build()
    exe = compile_and_check(graph, inputs, cache)
    assert exe.graph.op_counts() == {"fused": 1}
    assert exe.stats()["kernels"] == 1


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("op", list(BINARY))
def test_binary_kernel(op: str, pattern: str, cache: Path) -> None:
    b = GraphBuilder(op)
    inputs: dict[str, np.ndarray] = {}
    lhs_dom, rhs_dom = BINARY[op]
    x = _operand(b, inputs, "x", "full", lhs_dom)
    y = _operand(b, inputs, "y", pattern, rhs_dom, seed=2)
    b.output("z", b.op(op, x, y))
    graph = b.build()
    exe = compile_and_check(graph, inputs, cache)
    assert exe.graph.op_counts().get("fused") == 1


@pytest.mark.parametrize("pattern", ["row", "col", "scalar", "bcast"])
@pytest.mark.parametrize("op", ["sub", "div", "pow"])
def test_binary_kernel_broadcast_lhs(op: str, pattern: str, cache: Path) -> None:
    """The broadcast operand on the left of a non-commutative op."""
    b = GraphBuilder(op)
    inputs: dict[str, np.ndarray] = {}
    lhs_dom, rhs_dom = BINARY[op] if op != "div" else ((0.5, 3), (0.5, 3))
    if op == "pow":
        lhs_dom = (0.2, 3)
    x = _operand(b, inputs, "x", pattern, lhs_dom)
    y = _operand(b, inputs, "y", "full", rhs_dom, seed=2)
    b.output("z", b.op(op, x, y))
    compile_and_check(b.build(), inputs, cache)


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, -1.0, 1.5])
def test_pow_constant_exponents(exponent: float, cache: Path) -> None:
    """x ** 2, x ** 3 and x ** 0.5 are generated as products and a sqrt."""
    b = GraphBuilder("pow")
    x = b.input("x", TensorType(f32, SPACE))
    b.output("y", b.op("pow", x, b.constant(np.float32(exponent), "e")))
    lo = -3.0 if exponent in (2.0, 3.0) else 0.2
    compile_and_check(b.build(), {"x": uniform(SPACE, lo, 3.0)}, cache)


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("op", COMPARE)
def test_compare_kernel(op: str, pattern: str, cache: Path) -> None:
    b = GraphBuilder(op)
    inputs: dict[str, np.ndarray] = {}
    x = _operand(b, inputs, "x", "full", (-2, 2), integer=True)
    y = _operand(b, inputs, "y", pattern, (-2, 2), integer=True, seed=2)
    b.output("z", b.op(op, x, y))
    graph = b.build()
    exe = compile_and_check(graph, inputs, cache)
    assert exe.graph.op_counts().get("fused") == 1


@pytest.mark.parametrize("pattern", ["full", "row", "col", "scalar", "bcast", "const"])
@pytest.mark.parametrize("op", LOGICAL)
def test_logical_kernel(op: str, pattern: str, cache: Path) -> None:
    b = GraphBuilder(op)
    inputs: dict[str, np.ndarray] = {}
    x = _bool_operand(b, inputs, "x", "full", 1)
    y = _bool_operand(b, inputs, "y", pattern, 2)
    b.output("z", b.op(op, x, y))
    compile_and_check(b.build(), inputs, cache)


def test_bool_unary_kernels(cache: Path) -> None:
    """isnan (f32 -> bool), logical_not, and casts between f32, f64 and bool."""
    x_data = uniform(SPACE, -2, 2)
    x_data[0, 0, ::3] = np.nan
    x_data[1, 2, 1] = 0.0
    cases: list[tuple[str, Callable[[GraphBuilder, Value], Value], np.ndarray, Any]] = [
        ("isnan", lambda b, x: b.op("isnan", x), x_data, f32),
        ("not", lambda b, x: b.op("logical_not", x), uniform(SPACE) > 0, boolean),
        ("f32_to_bool", lambda b, x: b.op("cast", x, dtype=boolean), x_data, f32),
        ("f32_to_f64", lambda b, x: b.op("cast", x, dtype=f64), x_data, f32),
        ("f64_to_f32", lambda b, x: b.op("cast", x, dtype=f32), x_data.astype(np.float64) * 1.1, f64),
        ("bool_to_f32", lambda b, x: b.op("cast", x, dtype=f32), uniform(SPACE) > 0, boolean),
        ("f32_to_i32", lambda b, x: b.op("cast", x, dtype=i32), np.nan_to_num(x_data) * 10, f32),
    ]
    for name, build, data, dt in cases:
        b = GraphBuilder(name)
        x = b.input("x", TensorType(dt, SPACE))
        b.output("y", build(b, x))
        compile_and_check(b.build(), {"x": data}, cache)


@pytest.mark.parametrize("pattern", ["full", "row", "col", "scalar", "bcast", "const"])
@pytest.mark.parametrize("which", ["cond", "then", "else"])
def test_where_kernel(which: str, pattern: str, cache: Path) -> None:
    b = GraphBuilder("where")
    inputs: dict[str, np.ndarray] = {}
    pats = {"cond": "full", "then": "full", "else": "full", which: pattern}
    c = _bool_operand(b, inputs, "c", pats["cond"], 3)
    x = _operand(b, inputs, "x", pats["then"], (-2, 2), seed=4)
    y = _operand(b, inputs, "y", pats["else"], (-2, 2), seed=5)
    b.output("z", b.op("where", c, x, y))
    compile_and_check(b.build(), inputs, cache)


ROW_SHAPES = [(2, 3, 8), (4, 100), (1, 16), (5, 1)]


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    "op",
    [
        "softmax",
        "log_softmax",
        "layer_norm",
        "rms_norm",
        "reduce_sum",
        "reduce_mean",
        "reduce_max",
        "reduce_min",
    ],
)
def test_row_kernel(op: str, shape: tuple[int, ...], cache: Path) -> None:
    b = GraphBuilder(op)
    c, axis = shape[-1], len(shape) - 1
    inputs = {"x": uniform(shape, -4, 4)}
    x = b.input("x", TensorType(f32, shape))
    if op in ("layer_norm", "rms_norm"):
        inputs["w"] = uniform((c,), 0.5, 1.5, seed=1)
        params = [b.input("w", TensorType(f32, (c,)))]
        if op == "layer_norm":
            inputs["b"] = uniform((c,), -1, 1, seed=2)
            params.append(b.input("b", TensorType(f32, (c,))))
        y = b.op(op, x, *params, axis=axis, eps=1e-5)
    elif op.startswith("reduce"):
        # A group's iteration space is its first op's result, so a reduction needs a full-row
        # producer in its group (alone, it runs with NumPy: test_lone_reduction_runs_numpy).
        y = b.op(op, b.op("neg", x), axes=(axis,), keepdims=True)
    else:
        y = b.op(op, x, axis=axis)
    b.output("y", y)
    exe = compile_and_check(b.build(), inputs, cache)
    if op.startswith("reduce") and math.prod(shape[:-1]) == 1:
        # one row: the [1, 1] result reads as a scalar, not a per-row value, so the reduction
        # stays out of the group (and runs with NumPy)
        assert exe.graph.op_counts() == {"fused": 1, op: 1}
        return
    assert exe.graph.op_counts() == {"fused": 1}
    (node,) = exe.graph.nodes
    assert node.attrs.kind == "rows"  # type: ignore[attr-defined]


@pytest.mark.parametrize("op", ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min"])
def test_lone_reduction_runs_numpy(op: str, cache: Path) -> None:
    b = GraphBuilder(op)
    x = b.input("x", TensorType(f32, SPACE))
    b.output("y", b.op(op, x, axes=(2,), keepdims=True))
    exe = compile_and_check(b.build(), {"x": uniform(SPACE)}, cache)
    assert exe.graph.op_counts() == {op: 1}


F64_CASES = ["exp", "tanh", "erf", "sigmoid", "gelu", "div_col", "softmax", "log_softmax", "layer_norm"]


@pytest.mark.parametrize("case", F64_CASES)
def test_f64_kernels(case: str, cache: Path) -> None:
    b = GraphBuilder(case)
    shape = (6, 10)
    inputs = {"x": uniform(shape, -5, 5, np.float64)}
    x = b.input("x", TensorType(f64, shape))
    if case == "div_col":
        inputs["d"] = uniform((6, 1), 0.5, 2, np.float64, seed=3)
        y = b.op("div", x, b.input("d", TensorType(f64, (6, 1))))
    elif case == "layer_norm":
        w = b.constant(uniform((10,), 0.5, 1.5, np.float64, seed=1), "w")
        bias = b.constant(uniform((10,), -1, 1, np.float64, seed=2), "bias")
        y = b.op("layer_norm", x, w, bias, axis=1)
    elif case in ("softmax", "log_softmax"):
        y = b.op(case, x, axis=1)
    else:
        y = b.op(case, x)
    b.output("y", y)
    compile_and_check(b.build(), inputs, cache)


# --------------------------------------------------------------------------------------------
# Special values
# --------------------------------------------------------------------------------------------

SPECIAL = np.array([-np.inf, -100, -87.5, -20, -1, -1e-4, 0, 1e-4, 1, 20, 80, 88, np.inf, np.nan], np.float32)


def _unary_graph(op: str, data: np.ndarray, dt: Any = f32, **kw: Any) -> tuple[Graph, dict[str, np.ndarray]]:
    b = GraphBuilder(op)
    x = b.input("x", TensorType(dt, data.shape))
    b.output("y", b.op(op, x, **kw))
    return b.build(), {"x": data}


@pytest.mark.parametrize("op", ["tanh", "erf", "sigmoid", "exp", "neg", "abs", "relu", "floor", "sin"])
def test_special_values(op: str, cache: Path) -> None:
    """+-inf and NaN in; the reference's limits out (exp of large negative values underflows to
    0, tanh/erf/sigmoid saturate to +-1 / 0 / 1 at +-inf, NaN stays NaN)."""
    data = SPECIAL
    if op == "sin":
        data = SPECIAL[~np.isinf(SPECIAL)]
    if op == "exp":  # above 88: test_exp_overflows_like_the_reference
        data = SPECIAL[~(SPECIAL > 88)]
    graph, inputs = _unary_graph(op, data)
    compile_and_check(graph, inputs, cache)


def test_exp_overflows_like_the_reference(cache: Path) -> None:
    graph, inputs = _unary_graph("exp", np.array([88.5, 100.0, np.inf], np.float32))
    compile_and_check(graph, inputs, cache)


def test_rsqrt_of_zero_and_inf(cache: Path) -> None:
    data = np.tile(np.array([0.0, np.inf, 4.0, 0.25], np.float32), 8)  # long enough to vectorise
    graph, inputs = _unary_graph("rsqrt", data)
    compile_and_check(graph, inputs, cache)


def test_gelu_tanh_at_inf(cache: Path) -> None:
    graph, inputs = _unary_graph("gelu", np.array([np.inf, 1.0], np.float32), approximate="tanh")
    compile_and_check(graph, inputs, cache)


def test_nan_propagates_through_maximum_and_minimum(cache: Path) -> None:
    x = uniform(SPACE)
    y = uniform((8,), seed=1)
    x[0, 0, 2] = x[1, 1, 5] = np.nan
    y[3] = np.nan
    b = GraphBuilder("nan")
    xv = b.input("x", TensorType(f32, SPACE))
    yv = b.input("y", TensorType(f32, (8,)))
    b.output("mx", b.op("maximum", xv, yv))
    b.output("mn", b.op("minimum", yv, xv))
    b.output("rmax", b.op("reduce_max", xv, axes=(2,), keepdims=True))
    b.output("rmin", b.op("reduce_min", xv, axes=(2,), keepdims=True))
    graph = b.build()
    exe = kiln.compile(graph, "numba-cpu", pipeline="fuse{horizontal=false}", cache_dir=cache)
    got = exe.run({"x": x, "y": y})
    assert np.isnan(got["mx"][:, :, 3]).all() and np.isnan(got["mx"][0, 0, 2])
    assert np.isnan(got["rmax"][0, 0, 0]) and np.isnan(got["rmin"][1, 1, 0])
    assert_matches_reference(got, graph, {"x": x, "y": y})


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_with_inf_masks(op: str, cache: Path) -> None:
    """-inf entries get probability 0 (log-probability -inf); a fully masked row is NaN, as in the
    reference; large finite values do not overflow."""
    x = uniform((4, 70), -3, 3)
    x[0, ::2] = -np.inf
    x[1, :] = -np.inf
    x[2, 5] = 80.0
    x[3, :] = 1e30
    graph, inputs = _unary_graph(op, x, axis=1)
    exe = compile_and_check(graph, inputs, cache)
    got = exe.run(inputs)["y"]
    assert np.isnan(got[1]).all()
    assert (got[0, ::2] == (0.0 if op == "softmax" else -np.inf)).all()


# --------------------------------------------------------------------------------------------
# Groups: several outputs, matmul epilogues with batch dims, integer and f16 groups
# --------------------------------------------------------------------------------------------


def test_multi_output_group(cache: Path) -> None:
    b = GraphBuilder("multi")
    x = b.input("x", TensorType(f32, SPACE))
    row = b.constant(uniform((8,), seed=1), "row")
    a = b.op("exp", b.op("tanh", x))
    m = b.op("mul", a, row)
    r = b.op("reduce_sum", m, axes=(2,), keepdims=True)
    s = b.op("softmax", b.op("sub", m, r), axis=2)
    b.output("a", a)  # full, read again inside the group
    b.output("r", r)  # per-row
    b.output("s", s)
    graph = b.build()
    exe = compile_and_check(graph, {"x": uniform(SPACE)}, cache)
    (node,) = [n for n in exe.graph.nodes if n.op == "fused"]
    assert len(node.results) == 3 and exe.stats()["kernels"] == 1


def test_horizontal_group_of_independent_chains(cache: Path) -> None:
    b = GraphBuilder("horiz")
    x = b.input("x", TensorType(f32, (4, 8)))
    y = b.input("y", TensorType(f32, (4, 8)))
    b.output("a", b.op("gelu", b.op("mul", x, x)))
    b.output("c", b.op("log_softmax", b.op("sigmoid", y), axis=1))
    graph = b.build()
    exe = compile_and_check(graph, {"x": uniform((4, 8)), "y": uniform((4, 8), seed=1)}, cache)
    assert exe.graph.op_counts() == {"fused": 1}


MATMUL_CASES = {
    # name: (lhs shape, rhs shape, rhs constant?, epilogue)
    "4d-const-gelu-ln": ((2, 3, 4, 8), (8, 16), True, "gelu_ln"),
    "batched-residual": ((2, 5, 8), (2, 8, 6), False, "residual"),
    "broadcast-batch-softmax": ((2, 1, 5, 8), (3, 8, 6), False, "col_softmax"),
    "2d-bias-tanh": ((7, 8), (8, 5), True, "bias_tanh"),
}


@pytest.mark.parametrize("case", list(MATMUL_CASES))
def test_matmul_group(case: str, cache: Path) -> None:
    lhs, rhs, const, epi = MATMUL_CASES[case]
    b = GraphBuilder(case.replace("-", "_"))
    inputs = {"x": uniform(lhs, -1, 1)}
    x = b.input("x", TensorType(f32, lhs))
    if const:
        w = b.constant(uniform(rhs, -1, 1, seed=1), "w")
    else:
        inputs["w"] = uniform(rhs, -1, 1, seed=1)
        w = b.input("w", TensorType(f32, rhs))
    m = b.op("matmul", x, w)
    out_shape = m.tensor_type.static_shape
    n = out_shape[-1]
    if epi == "gelu_ln":
        y = b.op("gelu", b.op("add", m, b.constant(uniform((n,), seed=2), "bias")), approximate="tanh")
        y = b.op("layer_norm", y, b.constant(uniform((n,), 0.5, 1.5, seed=3), "g"),
                 b.constant(uniform((n,), seed=4), "beta"), axis=len(out_shape) - 1)  # fmt: skip
    elif epi == "residual":
        inputs["res"] = uniform(out_shape, seed=5)
        y = b.op("tanh", b.op("add", b.input("res", TensorType(f32, out_shape)), m))
    elif epi == "col_softmax":
        col = (*out_shape[:-1], 1)
        inputs["col"] = uniform(col, 0.5, 2, seed=6)
        y = b.op("softmax", b.op("mul", m, b.input("col", TensorType(f32, col))), axis=len(out_shape) - 1)
    else:
        y = b.op("tanh", b.op("add", m, b.constant(uniform((n,), seed=7), "bias")))
    b.output("y", y)
    graph = b.build()
    exe = compile_and_check(graph, inputs, cache)
    (node,) = [n for n in exe.graph.nodes if n.op == "fused"]
    assert node.attrs.kind == "matmul"  # type: ignore[attr-defined]
    assert exe.stats()["kernels"] == 1


def test_bare_matmul_and_views(cache: Path) -> None:
    """A matmul without epilogue runs BLAS alone; transposes, slices and splits are views."""
    b = GraphBuilder("views")
    x = b.input("x", TensorType(f32, (6, 8)))
    w = b.constant(uniform((8, 12), seed=1), "w")
    m = b.op("matmul", x, w)
    p, q = b.op_values("split", m, axis=1, sizes=(4, 8))
    t = b.op("transpose", q, perm=(1, 0))
    s = b.op("slice", t, axes=(0,), starts=(1,), stops=(7,), steps=(2,))
    b.output("p", p)
    b.output("s", b.op("exp", s))
    b.output("m", m)
    compile_and_check(b.build(), {"x": uniform((6, 8))}, cache)


@pytest.mark.parametrize("dt", [i32, i64], ids=str)
def test_integer_group(dt: Any, cache: Path) -> None:
    """Integer groups have no generated kernel: NumPy runs the body (wrapping, x / 0 = 0)."""
    b = GraphBuilder("ints")
    inputs = {
        "x": np.arange(-24, 24, dtype=dt.np_dtype).reshape(2, 3, 8),
        "d": np.arange(-3, 5, dtype=dt.np_dtype),
    }
    x = b.input("x", TensorType(dt, SPACE))
    d = b.input("d", TensorType(dt, (8,)))
    y = b.op("div", b.op("mul", b.op("add", x, d), b.constant(np.asarray(3, dt.np_dtype), "three")), d)
    y = b.op("maximum", b.op("neg", y), b.constant(np.asarray(-5, dt.np_dtype), "floor"))
    b.output("y", y)
    b.output("big", b.op("mul", x, b.constant(np.asarray(np.iinfo(dt.np_dtype).max // 2, dt.np_dtype), "m")))
    graph = b.build()
    exe = compile_and_check(graph, inputs, cache)
    assert "fused" in exe.graph.op_counts()


def test_f16_group(cache: Path) -> None:
    b = GraphBuilder("half")
    inputs = {"x": uniform(SPACE, -3, 3, np.float16), "r": uniform((8,), dtype=np.float16, seed=1)}
    x = b.input("x", TensorType(f16, SPACE))
    r = b.input("r", TensorType(f16, (8,)))
    y = b.op("softmax", b.op("mul", b.op("exp", b.op("tanh", x)), r), axis=2)
    b.output("y", y)
    b.output("z", b.op("add", x, r))
    graph = b.build()
    exe = kiln.compile(graph, "numba-cpu", pipeline="fuse", cache_dir=cache)
    assert "fused" in exe.graph.op_counts()
    got = exe.run(inputs)
    want = interpret(graph, inputs)
    for k in want:  # the same NumPy semantics: equal, not only close
        assert got[k].dtype == np.float16
        np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("tail", ["softmax", "reduce_mean", "layer_norm"])
def test_group_starting_with_a_comparison(tail: str, cache: Path) -> None:
    """relu written as where(x > 0, x, 0), then a row op: one group whose first op is bool."""
    b = GraphBuilder("cmp_first")
    x = b.input("x", TensorType(f32, (4, 8)))
    zero = b.constant(np.float32(0.0), "zero")
    r = b.op("where", b.op("gt", x, zero), x, zero)
    if tail == "layer_norm":
        y = b.op("layer_norm", r, b.constant(np.ones(8, np.float32), "w"), b.constant(np.zeros(8, np.float32), "b"),
                 axis=1)  # fmt: skip
    elif tail == "reduce_mean":
        y = b.op("reduce_mean", r, axes=(1,), keepdims=True)
    else:
        y = b.op("softmax", r, axis=1)
    b.output("y", y)
    graph = b.build()
    exe = compile_and_check(graph, {"x": np.linspace(-2, 2, 32, dtype=np.float32).reshape(4, 8)}, cache)
    assert exe.graph.op_counts().get("fused") == 1


def test_per_row_output_with_a_broadcast_per_row_operand(cache: Path) -> None:
    b = GraphBuilder("col_bcast")
    x = b.input("x", TensorType(f32, (2, 3, 8)))
    y = b.input("y", TensorType(f32, (3, 1)))
    r = b.op("reduce_sum", b.op("exp", x), axes=(2,), keepdims=True)
    b.output("z", b.op("sub", r, y))
    inputs = {"x": uniform((2, 3, 8)), "y": uniform((3, 1), seed=1)}
    compile_and_check(b.build(), inputs, cache)


def test_matmul_group_with_a_size1_constant_weight(cache: Path) -> None:
    b = GraphBuilder("k1")
    x = b.input("x", TensorType(f32, (4, 1)))
    b.output("y", b.op("tanh", b.op("matmul", x, b.constant(np.full((1, 1), 2.0, np.float32), "w"))))
    compile_and_check(b.build(), {"x": uniform((4, 1))}, cache)
