"""fuse-horizontal: sibling matmuls with constant weights merge into one matmul and a split."""

from __future__ import annotations

import numpy as np
import pytest
from kiln_testing.fusion_graphs import assert_same_results, random_inputs, run_pipeline

from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph
from kiln.ir.dtypes import f32
from kiln.ir.types import TensorType

# --------------------------------------------------------------------------------------------
# fuse-horizontal
# --------------------------------------------------------------------------------------------


def _siblings(weights: list[str], lhs_shape: tuple[int, ...] = (4, 8)) -> Graph:
    """x @ W_i for each entry: "cK,N" a constant [K, N], "iK,N" an input, "bK,N" a constant
    batched [2, K, N]; "y..." reads a second activation y instead of x."""
    rng = np.random.default_rng(2)
    b = GraphBuilder("sib")
    x = b.input("x", TensorType(f32, lhs_shape))
    y = b.input("y", TensorType(f32, lhs_shape))
    for i, spec in enumerate(weights):
        lhs = y if spec.startswith("y") else x
        spec = spec.removeprefix("y")
        kind, (k, n) = spec[0], map(int, spec[1:].split(","))
        if kind == "c":
            w = b.constant(rng.uniform(-1, 1, (k, n)).astype(np.float32), f"w{i}")
        elif kind == "b":
            w = b.constant(rng.uniform(-1, 1, (lhs_shape[0], k, n)).astype(np.float32), f"w{i}")
        else:
            w = b.input(f"w{i}", TensorType(f32, (k, n)))
        b.output(f"o{i}", b.op("tanh", b.op("matmul", lhs, w)))
    return b.build()


@pytest.mark.parametrize(
    ("weights", "lhs_shape", "merged"),
    [
        (["c8,4", "c8,6", "c8,8"], (4, 8), 3),
        (["c8,4", "c8,4"], (2, 3, 8), 2),
        (["c8,4", "i8,4", "c8,6"], (4, 8), 2),
    ],
    ids=["three-constant", "batched-activations", "one-weight-is-an-input"],
)
def test_fuse_horizontal_merges_constant_siblings(
    weights: list[str], lhs_shape: tuple[int, ...], merged: int
) -> None:
    graph = _siblings(weights, lhs_shape)
    after = run_pipeline(graph, "fuse-horizontal")
    counts = after.op_counts()
    assert counts["matmul"] == len(weights) - merged + 1
    (split,) = [n for n in after.nodes if n.op == "split"]
    assert len(split.results) == merged
    assert split.attrs.axis == len(lhs_shape) - 1  # type: ignore[attr-defined]
    assert_same_results(graph, after, random_inputs(graph))
    # and then fused: each part's epilogue reads a split view of one GEMM
    fused = run_pipeline(graph, "fuse-horizontal,fuse")
    assert_same_results(graph, fused, random_inputs(graph))


@pytest.mark.parametrize(
    ("weights", "lhs_shape"),
    [
        (["c8,4", "yc8,4"], (4, 8)),
        (["i8,4", "i8,6"], (4, 8)),
        (["b8,4", "b8,4"], (3, 4, 8)),
        (["c8,4"], (4, 8)),
    ],
    ids=["different-activations", "input-weights", "batched-3d-weights", "single"],
)
def test_fuse_horizontal_leaves_others(weights: list[str], lhs_shape: tuple[int, ...]) -> None:
    graph = _siblings(weights, lhs_shape)
    after = run_pipeline(graph, "fuse-horizontal")
    assert after == graph, after.as_text()


def test_fuse_horizontal_groups_by_k() -> None:
    """Siblings are grouped by K: with one activation K is one value, so the grouping key is
    checked on two activations of different widths (x: K=8, z: K=4), each with two siblings."""
    rng = np.random.default_rng(4)
    b = GraphBuilder("bykey")
    x = b.input("x", TensorType(f32, (4, 8)))
    z = b.input("z", TensorType(f32, (4, 4)))
    for i, (lhs, k) in enumerate([(x, 8), (z, 4), (x, 8), (z, 4)]):
        w = b.constant(rng.uniform(-1, 1, (k, 3)).astype(np.float32), f"w{i}")
        b.output(f"o{i}", b.op("matmul", lhs, w))
    graph = b.build()
    after = run_pipeline(graph, "fuse-horizontal")
    mms = [n for n in after.nodes if n.op == "matmul"]
    assert len(mms) == 2 and sorted(n.operands[1].tensor_type.static_shape for n in mms) == [(4, 6), (8, 6)]
    assert_same_results(graph, after, random_inputs(graph))
