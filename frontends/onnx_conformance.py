"""Run the ONNX backend node tests (generated in memory from the ``onnx`` package) through kiln.

The onnx wheel ships the generators of its node tests, not their data: ``collect_testcases``
builds every case (model + inputs + expected outputs) in a few seconds. Each case is attributed
to one operator (expanded function-body variants count for the operator they expand), imported
with :func:`kiln.from_onnx`, compiled for a target and compared with the expected outputs using
the case's own tolerances.

Statuses: ``pass``; ``pass-static`` (passed once inputs that kiln needs static, such as a shape,
axes or K, were bound as constants); ``skip`` with a reason (a dtype or value kind kiln does not
have, a random op); ``fail`` with the error.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from ..ir.errors import KilnError

#: Error messages that mean "kiln does not have this kind of value", not "kiln is wrong".
SKIP_REASONS = (
    (re.compile(r"element type (\w+) has no kiln dtype"), "dtype {0} is not supported by kiln"),
    (re.compile(r"only tensor inputs are supported \(got (\w+)\)"), "{0} values are not supported"),
    (re.compile(r"Dropout in training mode"), "training-mode Dropout is random"),
    (
        re.compile(r"(\w+)\[[^\]]*\]: integers narrower than their storage"),
        "{0} values cannot cross the MLIR memref boundary (mlir-cpu refuses them)",
    ),
)


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one node test case."""

    name: str
    op: str
    status: str  # pass, pass-static, skip, fail
    detail: str = ""


@cache
def node_cases() -> tuple[Any, ...]:
    """Every ONNX backend node test case (model and data sets), generated in memory."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return tuple(node.collect_testcases(None))


def operator_of(cases: Iterable[Any]) -> dict[str, str]:
    """Case name -> the operator it tests (expanded variants map to their base case's op)."""
    base: dict[str, str] = {}
    for c in cases:
        if "_expanded" not in c.name and c.model.graph.node:
            base[c.name] = c.model.graph.node[0].op_type
    out = {}
    for c in cases:
        root = c.name.split("_expanded")[0]
        out[c.name] = base.get(root, c.model.graph.node[0].op_type if c.model.graph.node else "?")
    return out


def _arrays(values: Iterable[Any]) -> list[Any]:
    """Test data as NumPy; ml_dtypes' narrow ints become kiln's wider storage of them."""
    import onnx

    from ..ir.dtypes import from_numpy

    out = []
    for v in values:
        arr = onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v
        if isinstance(arr, np.ndarray) and arr.dtype.kind == "V":
            with contextlib.suppress(KilnError):  # left as is: the import reports the dtype
                arr = arr.astype(from_numpy(arr.dtype).np_dtype)
        out.append(arr)
    return out


def _compare(got: Any, want: Any, rtol: float, atol: float, name: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise AssertionError(f"output {name}: shape {got.shape}, expected {want.shape}")
    if want.dtype.kind in "biu" or got.dtype.kind in "biu":
        if not np.array_equal(got.astype(want.dtype), want):
            raise AssertionError(f"output {name}: values differ from the expected integers/bools")
        return
    np.testing.assert_allclose(
        got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True,
        err_msg=f"output {name}",
    )  # fmt: skip


def run_case(case: Any, op: str, target: str = "reference") -> CaseResult:
    """Import, compile and run one case; never raises for kiln errors or mismatches."""
    from ..runtime.executable import compile_graph
    from .onnx import from_onnx

    graph_inputs = [vi.name for vi in case.model.graph.input]
    status = "pass"
    try:
        try:
            graph = from_onnx(case.model)
            bound: set[str] = set()
        except KilnError as e:
            if "must be a constant" not in str(e):
                raise
            first = _arrays(case.data_sets[0][0])
            consts = {n: v for n, v in zip(graph_inputs, first, strict=False)}
            graph = from_onnx(case.model, constants=consts)
            bound, status = set(consts), "pass-static"
            if len(case.data_sets) > 1:
                return CaseResult(case.name, op, "skip", "several data sets with static inputs")
        exe = compile_graph(graph, target)
        for inputs, outputs in case.data_sets:
            feed = {n: v for n, v in zip(graph_inputs, _arrays(inputs), strict=False) if n not in bound}
            got = exe.run(feed)
            for vi, want in zip(case.model.graph.output, _arrays(outputs), strict=False):
                _compare(got[vi.name], want, case.rtol, case.atol, vi.name)
    except KilnError as e:
        for pattern, reason in SKIP_REASONS:
            m = pattern.search(str(e))
            if m:
                return CaseResult(case.name, op, "skip", reason.format(*m.groups()))
        return CaseResult(case.name, op, "fail", f"{type(e).__name__}: {e}")
    except AssertionError as e:
        return CaseResult(case.name, op, "fail", str(e).strip().splitlines()[0])
    return CaseResult(case.name, op, status)


def claimed_operators() -> set[str]:
    from .onnx_rules import RULES

    return {k for k in RULES if "." not in k}


def run_conformance(ops: Iterable[str] | None = None, target: str = "reference") -> list[CaseResult]:
    """Run every node test whose operator kiln claims (or the given operators)."""
    cases = node_cases()
    op_of = operator_of(cases)
    wanted = set(ops) if ops is not None else claimed_operators()
    claimed = claimed_operators()
    results = []
    for c in cases:
        op = op_of[c.name]
        if op not in wanted:
            continue
        used = {n.op_type for n in c.model.graph.node} - claimed
        if used:
            results.append(CaseResult(c.name, op, "skip", f"uses unclaimed operators {sorted(used)}"))
            continue
        results.append(run_case(c, op, target))
    return results


def summarize(results: Iterable[CaseResult]) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = {}
    for r in results:
        table.setdefault(r.op, Counter())[r.status] += 1
    return table
