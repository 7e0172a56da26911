"""The ONNX backend node tests for every operator kiln claims, on every registered target.

Cases are generated in memory from the onnx package's own generators (no data is committed).
A claimed operator passes when none of its cases fails; skips carry their reason (a dtype or value
kind kiln does not have, a random op) and are listed by ``benchmarks/onnx_conformance.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest

import kiln
from kiln.frontends.onnx_conformance import (
    CaseResult,
    claimed_operators,
    node_cases,
    operator_of,
    run_conformance,
)

CLAIMED = sorted(claimed_operators())
TARGETS = [t.name for t in kiln.targets() if t.device == "cpu"]  # GPU targets cannot run here
#: Operators kiln claims that have no ONNX node test of their own (contrib or aliases).
NO_NODE_TESTS = {"SimplifiedLayerNormalization"}


@pytest.fixture(scope="module", params=TARGETS)
def results(request: pytest.FixtureRequest) -> dict[str, list[CaseResult]]:
    by_op: dict[str, list[CaseResult]] = {}
    for r in run_conformance(target=request.param):
        by_op.setdefault(r.op, []).append(r)
    return by_op


@pytest.mark.parametrize("op", CLAIMED)
def test_operator_conformance(op: str, results: dict[str, list[CaseResult]]) -> None:
    cases = results.get(op, [])
    if op in NO_NODE_TESTS:
        assert not cases
        return
    assert cases, f"no ONNX node test exercises {op}"
    failed = [f"{r.name}: {r.detail}" for r in cases if r.status == "fail"]
    assert not failed, "\n".join(failed)
    assert any(r.status.startswith("pass") for r in cases), f"every {op} case was skipped"
    for r in cases:
        if r.status == "skip":
            assert r.detail, f"{r.name} skipped without a reason"


def test_every_claimed_operator_has_cases_and_attribution_is_total() -> None:
    op_of = operator_of(node_cases())
    tested = set(op_of.values())
    assert set(CLAIMED) - tested == NO_NODE_TESTS
    counts = Counter(op_of[c.name] for c in node_cases() if op_of[c.name] in CLAIMED)
    assert sum(counts.values()) > 700  # the suite is really being generated
