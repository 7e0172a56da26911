"""MLIR export of the data-movement and indexing ops (ir/mlir/lower_shape.py).

Every structural reference case of these ops (tests/kiln_testing/op_cases_structural.py) exports to
a module the upstream verifier accepts, whose printed form parses back and prints the same, and,
where the mlir-cpu target is built, runs to the reference backend's outputs (integers exact, floats
within the golden tolerances). Edge cases beyond the table (NaNs and signed zeros in topk, einsum
diagonals and broadcasting, negative-step slices) are exported here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kiln_testing.mlir import matches_reference, mlir_cpu_backend, one_op, roundtrip
from kiln_testing.op_cases_structural import structural_cases
from kiln_testing.op_truths import Case

from kiln.ir import dtypes as kd
from kiln.ir.builder import GraphBuilder
from kiln.ir.mlir import MlirExportError, export
from kiln.ir.registry import Context, OpDef, default_context
from kiln.ir.types import TensorType

SHAPE_OPS = {
    "reshape", "broadcast_to", "transpose", "slice", "concat", "split", "gather", "squeeze",
    "unsqueeze", "iota", "triu", "tril", "topk", "einsum", "gather_nd",
}  # fmt: skip
CASES = [c for c in structural_cases() if c.op in SHAPE_OPS]


def test_every_shape_op_has_cases_and_a_rule() -> None:
    from kiln.ir.mlir.lower_shape import RULES

    assert {c.op for c in CASES} == SHAPE_OPS
    assert set(RULES) == SHAPE_OPS
    assert set(default_context().ops) >= SHAPE_OPS


#: The upstream form each op's export uses (on the table's cases).
FORMS = {
    "transpose": "linalg.transpose",
    "concat": "tensor.insert_slice",
    "split": "tensor.extract_slice",
    "gather": "tensor.extract",
    "gather_nd": "tensor.extract",
    "topk": "scf.for",
    "einsum": "linalg.generic",
    "triu": "linalg.index",
    "tril": "linalg.index",
    "iota": "linalg.index",
}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_exports_verifies_and_roundtrips(case: Case) -> None:
    g, _ = one_op(case.op, *case.args, **case.attrs)
    ex = export(g)  # parses and verifies
    assert ex.input_names == [f"x{i}" for i in range(len(case.args))]
    assert [s for s, _ in ex.result_types] == [r.tensor_type.static_shape for _, r in g.outputs]
    form = FORMS.get(case.op)
    empty = any(0 in s for s, _ in ex.result_types) or (case.op == "concat" and len(case.args) == 1)
    if form and not empty:
        assert form in ex.text, f"{case.id}: no {form}"
    roundtrip(ex.as_text())


@pytest.mark.parametrize(
    ("steps", "form"),
    [((1, 2, 1), "tensor.extract_slice"), ((1, -1, 1), "tensor.extract"), ((-2, 1, 3), "tensor.extract")],
)
def test_slice_positive_steps_are_extract_slice(steps: tuple[int, ...], form: str) -> None:
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    starts = tuple(0 if s > 0 else d - 1 for s, d in zip(steps, x.shape))
    stops = tuple(d if s > 0 else -1 for s, d in zip(steps, x.shape))
    g, _ = one_op("slice", x, axes=(0, 1, 2), starts=starts, stops=stops, steps=steps)
    text = export(g).text
    assert form in text
    if form == "tensor.extract":
        assert "tensor.extract_slice" not in text


#: Cases beyond the reference table: name -> (op, args, attrs).
EXTRA: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {}
_rng = np.random.default_rng(0)
_x = np.array([[np.nan, 1, -0.0, 0.0, 1, np.nan, -np.inf, 3]], np.float32)
for _largest in (True, False):
    EXTRA[f"topk-nan-signed-zero-largest={_largest}"] = (
        "topk",
        (_x,),
        {"k": 8, "axis": 1, "largest": _largest},
    )
    EXTRA[f"topk-3d-middle-largest={_largest}"] = (
        "topk",
        (_rng.integers(0, 4, (3, 7, 2)).astype(np.int16),),
        {"k": 5, "axis": 1, "largest": _largest},
    )
    EXTRA[f"topk-long-row-largest={_largest}"] = (
        "topk",
        (_rng.standard_normal((2, 300)).astype(np.float32),),
        {"k": 20, "axis": 1, "largest": _largest},
    )
for _eq, _shapes in {
    "ii->i": [(4, 4)],
    "iji->j": [(3, 2, 3)],
    "ij->": [(3, 4)],
    "ij->ji": [(3, 4)],
    "...ij,...jk->...ik": [(2, 1, 3, 4), (5, 4, 2)],
    "i,j->ij": [(3,), (4,)],
    "ij,jk,kl->il": [(2, 3), (3, 4), (4, 2)],
    "ij,j->i": [(3, 1), (4,)],
    "i...->...": [(3, 2)],
    "ab...,b->a...": [(2, 3, 4, 1), (3,)],
}.items():
    EXTRA[f"einsum-{_eq}"] = (
        "einsum",
        tuple(_rng.standard_normal(s).astype(np.float32) for s in _shapes),
        {"equation": _eq},
    )
EXTRA["einsum-i8-wraps"] = (
    "einsum",
    (_rng.integers(-128, 128, (3, 4)).astype(np.int8), _rng.integers(-128, 128, (4, 2)).astype(np.int8)),
    {"equation": "ij,jk->ik"},
)
EXTRA["einsum-f16"] = (
    "einsum",
    (_rng.standard_normal((3, 40)).astype(np.float16), _rng.standard_normal((40, 2)).astype(np.float16)),
    {"equation": "ij,jk->ik"},
)
EXTRA["gather-3d-middle"] = (
    "gather",
    (_rng.standard_normal((2, 5, 3)).astype(np.float32), np.array([[0, -1, 4], [2, -5, 1]], np.int64)),
    {"axis": 1},
)
EXTRA["gather-u64-indices"] = (
    "gather",
    (np.arange(15.0).reshape(5, 3), np.array([0, 4, 2], np.uint64)),
    {"axis": 0},
)
EXTRA["gather-nd-trailing-dims"] = (
    "gather_nd",
    (
        _rng.standard_normal((2, 3, 4, 5)).astype(np.float32),
        np.array([[[1, -1], [0, 2]], [[2, 3], [-3, 0]]], np.int32),
    ),
    {"batch_dims": 1},
)
EXTRA["slice-two-negative-steps"] = (
    "slice",
    (np.arange(20, dtype=np.int32).reshape(4, 5),),
    {"axes": (0, 1), "starts": (3, 4), "stops": (0, -1), "steps": (-1, -2)},
)
EXTRA["concat-empty-piece"] = (
    "concat",
    (np.ones((2, 0), np.float32), np.zeros((2, 3), np.float32), np.ones((2, 1), np.float32)),
    {"axis": 1},
)
EXTRA["broadcast_to-leading"] = (
    "broadcast_to",
    (np.arange(3, dtype=np.float16).reshape(3, 1),),
    {"shape": (2, 3, 4)},
)
EXTRA["triu-4d"] = ("triu", (np.arange(48, dtype=np.float32).reshape(2, 2, 3, 4),), {"k": -1})
EXTRA["reshape-regroup"] = (
    "reshape",
    (np.arange(24, dtype=np.int64).reshape(6, 4),),
    {"shape": (2, 3, 2, 2)},
)
EXTRA["iota-negative-float-step"] = ("iota", (), {"start": 1.0, "stop": -1.0, "step": -0.3, "dtype": kd.f32})
EXTRA["iota-u8-wraps"] = ("iota", (), {"start": 250, "stop": 260, "step": 1, "dtype": kd.u8})


@pytest.mark.parametrize("name", list(EXTRA))
def test_edge_cases_export_and_roundtrip(name: str) -> None:
    op, args, attrs = EXTRA[name]
    g, _ = one_op(op, *args, **attrs)
    roundtrip(export(g).as_text())


# -- numerics on the mlir-cpu target ---------------------------------------------------------------
@pytest.fixture(scope="module")
def mlir_cpu() -> Any:
    return mlir_cpu_backend()


RUNS = [(c.id, c.op, c.args, c.attrs) for c in CASES] + [(n, op, a, at) for n, (op, a, at) in EXTRA.items()]


@pytest.mark.parametrize(("name", "op", "args", "attrs"), RUNS, ids=[r[0] for r in RUNS])
def test_matches_reference_on_mlir_cpu(
    mlir_cpu: Any, name: str, op: str, args: tuple[Any, ...], attrs: dict[str, Any]
) -> None:
    g, feeds = one_op(op, *args, **attrs)
    matches_reference(mlir_cpu, g, feeds, name)


# -- bad input -------------------------------------------------------------------------------------
def test_op_without_a_rule_is_named() -> None:
    ctx = Context()
    ctx.register(default_context().ops.values())
    ctx.register(OpDef("shuffle_rows", ("x",), lambda a, ts: [ts[0]], lambda a, xs, ts: [xs[0]]))
    b = GraphBuilder("g", ctx)
    x = b.input("x", TensorType(kd.f32, (4, 3)))
    b.output("y", b.op("shuffle_rows", b.op("transpose", x, perm=(1, 0))))
    with pytest.raises(MlirExportError, match=r"no MLIR lowering for op\(s\) shuffle_rows \('shuffle_rows'"):
        export(b.build(), ctx=ctx)


def test_einsum_with_a_repeated_output_index_is_refused_naming_the_op() -> None:
    g, _ = one_op("einsum", np.ones(3, np.float32), equation="i->ii")
    with pytest.raises(MlirExportError, match=r"'einsum' \(result %.*repeats an index"):
        export(g)


def test_gather_from_a_weight_with_inlined_indices() -> None:
    """A large constant table is a function argument; small constant indices are inlined."""
    b = GraphBuilder("embed")
    ids = b.constant(np.array([3, -1, 0], np.int64), "ids")
    table = b.constant(np.arange(400, dtype=np.float32).reshape(100, 4), "table")
    b.output("y", b.op("gather", table, ids, axis=0))
    ex = export(b.build())
    assert ex.constant_refs == ["table"]
    assert "dense<[3, -1, 0]>" in ex.text and "tensor.extract" in ex.text
    roundtrip(ex.as_text())
