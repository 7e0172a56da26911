"""MLIR export (ir/mlir): the framework, elementwise ops, matmul and reductions.

Every elementwise reference case exports to a module the upstream verifier accepts and that
prints and parses back unchanged; matmuls pick the named linalg op their shapes allow; errors
name the kiln op or the unbound dim. Numerics of the exported modules are checked by running
them on the mlir-cpu target (tests/backends/test_mlir_cpu.py and tests/golden).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kiln_testing.mlir import one_op as one_op_feeds
from kiln_testing.mlir import roundtrip
from kiln_testing.op_cases_elementwise import elementwise_cases
from kiln_testing.op_truths import Case

from kiln.ir import dtypes as kd
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph
from kiln.ir.mlir import MlirError, MlirExportError, export, new_context, parse_module
from kiln.ir.registry import Context, OpDef, default_context
from kiln.ir.types import TensorType


def one_op(op: str, *args: Any, **attrs: Any) -> Graph:
    return one_op_feeds(op, *args, **attrs)[0]


CASES = elementwise_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_elementwise_exports_and_verifies(case: Case) -> None:
    ex = export(one_op(case.op, *case.args, **case.attrs))
    assert "linalg.generic" in ex.text and ex.input_names == [f"x{i}" for i in range(len(case.args))]
    roundtrip(ex.as_text())


@pytest.mark.parametrize(
    ("xs", "ys", "named"),
    [
        ((4, 8), (8, 16), "linalg.matmul"),
        ((2, 4, 8), (8, 16), "linalg.matmul"),  # the batch folds into M
        ((2, 4, 8), (2, 8, 3), "linalg.batch_matmul"),
        ((2, 1, 4, 8), (3, 8, 5), "linalg.generic"),  # broadcast batch dims
        ((8,), (8, 3), "linalg.matmul"),
        ((4, 8), (8,), "linalg.matmul"),
    ],
)
def test_matmul_picks_the_named_op(xs: tuple[int, ...], ys: tuple[int, ...], named: str) -> None:
    rng = np.random.default_rng(0)
    g = one_op(
        "matmul", rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ys).astype(np.float32)
    )
    ex = export(g)
    assert named in ex.text
    assert ex.result_types == [(g.outputs[0][1].tensor_type.static_shape, np.dtype(np.float32))]
    roundtrip(ex.as_text())


def test_f16_matmul_and_reduction_accumulate_in_f32() -> None:
    x = np.ones((4, 8), np.float16)
    text = export(one_op("matmul", x, np.ones((8, 3), np.float16))).text
    assert "tensor<4x3xf32>" in text and "arith.truncf" in text
    text = export(one_op("reduce_sum", x, axes=(1,), keepdims=True)).text
    assert "tensor<4xf32>" in text and "tensor<4x1xf16>" in text


REDUCTIONS = [(k, d) for k in ("sum", "mean", "max", "min", "prod") for d in (np.float32, np.int32, np.uint8)
              if k != "mean" or d is np.float32]  # fmt: skip


@pytest.mark.parametrize(("kind", "dtype"), REDUCTIONS)
def test_reductions_export(kind: str, dtype: Any) -> None:
    x = np.arange(24).reshape(2, 3, 4).astype(dtype)
    ex = export(one_op(f"reduce_{kind}", x, axes=(0, 2)))
    assert '"parallel", "reduction"' in ex.text.replace(
        '"reduction", "parallel", "reduction"', '"parallel", "reduction"'
    )
    roundtrip(ex.as_text())


def test_weights_are_arguments_small_constants_inline() -> None:
    b = GraphBuilder("w")
    x = b.input("x", TensorType(kd.f32, (2, 8)))
    w = b.constant(np.ones((8, 16), np.float32), "big")
    s = b.constant(np.full((16,), 0.5, np.float32), "small")
    b.output("y", b.op("add", b.op("matmul", x, w), s))
    ex = export(b.build())
    assert ex.constant_refs == ["big"]
    assert [t for t, _ in ex.arg_types] == [(2, 8), (8, 16)]
    assert "dense<5.000000e-01>" in ex.as_text() or "dense<0.5>" in ex.text


def test_symbolic_dims_must_be_bound() -> None:
    b = GraphBuilder("g")
    x = b.input("x", TensorType(kd.f32, ("seq", 8)))
    b.output("y", b.op("exp", x))
    with pytest.raises(MlirExportError, match=r"symbolic dim 'seq'.*--dim seq=N"):
        export(b.build())
    assert "tensor<5x8xf32>" in export(b.build(), dims={"seq": 5}).text


def test_op_without_a_lowering_is_named() -> None:
    ctx = Context()
    ctx.register(default_context().ops.values())
    ctx.register(OpDef("my_op", ("x",), lambda a, ts: [ts[0]], lambda a, xs, ts: [xs[0]]))
    b = GraphBuilder("g", ctx)
    x = b.input("x", TensorType(kd.f32, (4,)))
    b.output("y", b.op("my_op", b.op("exp", x)))
    with pytest.raises(MlirExportError, match=r"no MLIR lowering for op\(s\) my_op \('my_op'"):
        export(b.build(), ctx=ctx)


def test_diagnostics_name_the_kiln_op() -> None:
    text = export(one_op("exp", np.ones((4,), np.float32))).text
    broken = text.replace("math.exp %", "math.exp %nonexistent, %", 1)
    with new_context() as ctx, pytest.raises(MlirError, match=r"from kiln op exp %"):
        parse_module(broken, ctx)
    bad_verify = text.replace("func.return %", "func.return %arg1, %", 1).replace(
        ") -> (tensor<4xf32>)", ") -> (tensor<4xf32>, tensor<4xf32>)"
    )
    with new_context() as ctx, pytest.raises(MlirError):
        parse_module(bad_verify, ctx)


def test_every_op_has_a_lowering_in_both_forms() -> None:
    """The per-family tests (here, test_mlir_shape.py, test_mlir_kiln.py) export, verify and
    round-trip every op; this keeps the table complete as ops are added."""
    from kiln.ir.mlir.rules import lowering_rules

    ops = set(default_context().ops) - {"constant"}  # constants become arguments or literals
    for lower_kiln in (True, False):
        assert ops - set(lowering_rules(lower_kiln)) == set()
