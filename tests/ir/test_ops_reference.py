"""Per-op reference tests: every registered op, run by the interpreter, against hand-written truth.

Each case builds a one-op graph with :class:`GraphBuilder`, runs it with ``interpret`` and compares
with a truth computed here from the definitions (Python scalars, ``math``, exact integers, explicit
loops), never with the op's own ``reference`` function. Float truths are computed in float64 and
rounded once to the result dtype; integer truths are exact Python ints wrapped to the result width
by :func:`wrap` (two's complement written out with ``%``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from kiln_testing.op_cases_elementwise import elementwise_cases
from kiln_testing.op_cases_structural import structural_cases
from kiln_testing.op_truths import TOL, Case, arr, assert_matches, exact, i4, rand, run, run_typed, u3

from kiln.ir import dtypes as kd
from kiln.ir.builder import GraphBuilder
from kiln.ir.dtypes import DType
from kiln.ir.errors import (
    AttributeError_,
    KilnError,
    TypeInferenceError,
    UnknownOpError,
    VerifyError,
)
from kiln.ir.interpret import interpret
from kiln.ir.registry import default_context
from kiln.ir.types import TensorType

CASES = elementwise_cases() + structural_cases()
# Ops exercised only through other tests' graphs: ``constant`` has no operands to feed; its data
# path is covered by test_constant_passes_data_through and by test_roundtrip.py. The quantized
# ops read quantized constants; test_quant.py checks them against hand-written dequantization.
NOT_IN_TABLE = {"constant", "qmatmul", "qgather"}


def test_every_registered_op_has_a_reference_case() -> None:
    registered = set(default_context().ops)
    covered = {c.op for c in CASES}
    assert registered - NOT_IN_TABLE - covered == set(), "ops without a reference case"
    assert covered <= registered, f"cases for unknown ops: {covered - registered}"
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_reference(case: Case) -> None:
    got = run_typed(case.op, *case.args, **case.attrs)
    raw = [a[1] if isinstance(a, tuple) else a for a in case.args]
    want = case.truth(*(exact(a) for a in raw))
    wants = list(want) if isinstance(want, tuple) else [want]
    assert len(got) == len(wants)
    for (g, dt), w in zip(got, wants):
        assert_matches(g, w, dt)


def test_narrow_results_use_declared_dtype() -> None:
    """The i4/u3 results above come back in int8/uint8 storage with in-range values."""
    (y,) = run("add", (i4, arr([7], np.int8)), (i4, arr([1], np.int8)))
    assert y.dtype == np.int8 and y.tolist() == [-8]
    (y,) = run("mul", (u3, arr([5, 7], np.uint8)), (u3, arr([3, 7], np.uint8)))
    assert y.dtype == np.uint8 and y.tolist() == [15 % 8, 49 % 8]
    (y,) = run("cast", arr([-0.9, 0.9, -8.9], np.float32), dtype=i4)
    assert y.tolist() == [0, 0, -8]


F32_OPS: dict[str, Callable[..., np.ndarray]] = {
    "add": np.add,
    "mul": np.multiply,
    "div": np.divide,
    "sqrt": lambda x: np.sqrt(np.abs(x)),
}


@pytest.mark.parametrize("dt", [kd.f16, kd.bf16], ids=str)
@pytest.mark.parametrize("op", list(F32_OPS))
def test_half_precision_is_float32_rounded_once(op: str, dt: DType) -> None:
    """Exact check of the documented semantics: widen to float32, compute, round once to f16/bf16."""
    x, y = rand((64,), dt, 0.5, 100.0, seed=11), rand((64,), dt, 0.5, 100.0, seed=12)
    args = (x,) if op == "sqrt" else (x, y)
    (got,) = run(op, *args)
    want = F32_OPS[op](*(a.astype(np.float32) for a in args)).astype(np.float32).astype(dt.np_dtype)
    assert got.dtype == dt.np_dtype
    assert got.tobytes() == want.tobytes()


def test_constant_passes_data_through() -> None:
    b = GraphBuilder("c")
    x = b.input("x", TensorType(kd.i8, (3,)))
    c = b.constant(np.array([1, -2, 127], np.int8), "k")
    b.output("y", b.op("add", x, c))
    b.output("k", c)
    out = interpret(b.build(), {"x": np.array([1, 1, 1], np.int8)})
    assert out["k"].tolist() == [1, -2, 127]
    assert out["y"].tolist() == [2, -1, -128]


def test_symbolic_dims_bind_at_run_time() -> None:
    b = GraphBuilder("s")
    x = b.input("x", TensorType(kd.f32, ("n", 3)))
    y = b.input("y", TensorType(kd.f32, (3,)))
    s = b.op("reduce_sum", b.op("mul", x, y), axes=(1,))
    b.output("s", s)
    g = b.build()
    for n in (1, 4):
        xv, yv = rand((n, 3), kd.f32), rand((3,), kd.f32, seed=1)
        out = interpret(g, {"x": xv, "y": yv})["s"]
        want = [math.fsum(float(a) * float(c) for a, c in zip(row, yv)) for row in xv]
        np.testing.assert_allclose(out, want, **TOL["f32"])


def test_gather_index_out_of_range_names_the_op() -> None:
    with pytest.raises(KilnError, match=r"'gather'.*out of range"):
        run("gather", arr([1.0, 2.0], np.float32), arr([2], np.int32), axis=0)
    with pytest.raises(KilnError, match="'gather'"):
        run("gather", arr([1.0, 2.0], np.float32), arr([-3], np.int32), axis=0)


# -- type inference and attribute errors -----------------------------------------------------------
def _inputs(b: GraphBuilder, *types: TensorType) -> list[Any]:
    return [b.input(f"x{i}", t) for i, t in enumerate(types)]


def f32(*shape: int) -> TensorType:
    return TensorType(kd.f32, shape)


ERROR_CASES: list[tuple[str, str, list[TensorType], dict[str, Any], type[KilnError]]] = [
    ("add-mixed-dtypes", "add", [f32(2), TensorType(kd.i32, (2,))], {}, TypeInferenceError),
    ("add-no-broadcast", "add", [f32(2, 3), f32(4)], {}, TypeInferenceError),
    ("matmul-contraction", "matmul", [f32(2, 3), f32(4, 5)], {}, TypeInferenceError),
    ("matmul-1d-contraction", "matmul", [f32(3), f32(4)], {}, TypeInferenceError),
    ("reshape-count", "reshape", [f32(2, 3)], {"shape": (4, 2)}, TypeInferenceError),
    ("transpose-perm-rank", "transpose", [f32(2, 3)], {"perm": (0, 1, 2)}, TypeInferenceError),
    ("transpose-not-a-perm", "transpose", [f32(2, 3)], {"perm": (0, 0)}, VerifyError),
    ("softmax-int", "softmax", [TensorType(kd.i32, (2,))], {"axis": 0}, TypeInferenceError),
    ("topk-k-too-big", "topk", [f32(3)], {"k": 4, "axis": 0}, TypeInferenceError),
    ("split-sizes", "split", [f32(5)], {"axis": 0, "sizes": (2, 2)}, TypeInferenceError),
    ("add-arity", "add", [f32(2)], {}, TypeInferenceError),
    ("gelu-approximate", "gelu", [f32(2)], {"approximate": "fast"}, VerifyError),
    ("iota-infinite", "iota", [], {"start": 0, "stop": math.inf, "step": 1, "dtype": kd.f32}, VerifyError),
]


@pytest.mark.parametrize(
    ("op", "types", "attrs", "error"),
    [pytest.param(*c[1:], id=c[0]) for c in ERROR_CASES],
)
def test_type_errors_name_the_op(
    op: str, types: list[TensorType], attrs: dict[str, Any], error: type
) -> None:
    b = GraphBuilder()
    with pytest.raises(error) as info:
        b.op_values(op, *_inputs(b, *types), **attrs)
    assert isinstance(info.value, KilnError)
    assert op in str(info.value), str(info.value)


def test_unknown_op_is_a_kiln_error_naming_it() -> None:
    b = GraphBuilder()
    (x,) = _inputs(b, f32(2, 2))
    with pytest.raises(UnknownOpError) as info:
        b.op("matmull", x, x)
    assert isinstance(info.value, KilnError)
    assert "'matmull'" in str(info.value) and "did you mean 'matmul'" in str(info.value)


def test_bad_attribute_keyword_is_a_kiln_error_naming_the_op() -> None:
    b = GraphBuilder()
    (x,) = _inputs(b, f32(2, 2))
    with pytest.raises(AttributeError_) as info:
        b.op("softmax", x, axes=1)
    assert isinstance(info.value, KilnError)
    assert "'softmax'" in str(info.value) and "axes" in str(info.value)
    with pytest.raises(AttributeError_, match="'neg'"):
        b.op("neg", x, axis=0)
    with pytest.raises(AttributeError_, match="'reduce_sum'"):
        b.op("reduce_sum", x)  # axes is required


def test_multi_result_op_through_op_is_an_error() -> None:
    b = GraphBuilder()
    (x,) = _inputs(b, f32(4))
    with pytest.raises(TypeInferenceError, match=r"'split'.*op_values"):
        b.op("split", x, axis=0, sizes=(2, 2))
