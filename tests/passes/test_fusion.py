"""Fusion passes: ``fuse`` (vertical kernel groups + horizontal launches), ``fuse-attention``,
``fuse-horizontal`` and their inverse ``unfuse``.

The independent truth is :func:`kiln.ir.interpret.interpret` on the graph *before* the pipeline
(the pass manager works on a copy): fused kernels run their bodies with the same reference
semantics, so fusion itself changes no rounding. Only ``fuse-horizontal`` (a matmul on
concatenated weights) and the numba-cpu pipeline's canonicalisation may move results by a few
ulps, hence ``rtol = atol = 1e-4`` in float32; random values are kept within ``LIMIT`` and
``floor``/``ceil``/comparisons only see values every pass keeps bit-exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, note
from kiln_testing.fusion_graphs import (
    ELEMENTWISE,
    NUMBA_PIPELINE,
    PIPELINES,
    PROPERTY_SETTINGS,
    Case,
    _connected,
    assert_same_results,
    body_ops,
    fused_nodes,
    fusion_graphs,
    random_inputs,
    run_pipeline,
)

import kiln
from kiln.cli import _fusion_report
from kiln.cli import main as cli_main
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, Value
from kiln.ir.dtypes import f32
from kiln.ir.interpret import interpret
from kiln.ir.targets import get_target
from kiln.ir.types import TensorType
from kiln.passes.fuse import ROW_OPS, ROW_REDUCE, kernel_counts


@pytest.mark.parametrize("pipeline", PIPELINES)
@PROPERTY_SETTINGS
@given(case=fusion_graphs())
def test_fusion_preserves_results_and_round_trips(pipeline: str, case: Case) -> None:
    graph = case.graph
    note(graph.as_text())
    after = run_pipeline(graph, pipeline)
    note(after.as_text())
    assert after.input_names == graph.input_names
    assert after.output_names == graph.output_names
    assert [v.type for _, v in after.outputs] == [v.type for _, v in graph.outputs]
    assert_same_results(graph, after, case.inputs)

    # Structure: flat bodies, kinds that match the body, fewer or as many launches.
    for n in fused_nodes(after):
        ops = body_ops(n)
        kind = n.attrs.kind  # type: ignore[attr-defined]
        assert ops, n.describe()
        assert "fused" not in ops
        assert (kind == "matmul") == (ops[0] == "matmul")
        assert all(
            o in ELEMENTWISE or o in ROW_OPS or o in ROW_REDUCE or o == "reshape"
            for o in ops[kind == "matmul" :]
        )
        if kind == "elementwise":
            assert not any(o in ROW_OPS or o in ROW_REDUCE for o in ops)
        if pipeline == "fuse{horizontal=false}":
            body = n.attrs.body  # type: ignore[attr-defined]
            assert _connected(body), f"a vertical group is a connected chain:\n{body.as_text()}"
    ops_before, kernels_before = kernel_counts(graph)
    ops_after, kernels_after = kernel_counts(after)
    if pipeline == "fuse":
        assert ops_after == ops_before, "fuse moves ops into groups, it removes none"
    if "fuse-horizontal" not in pipeline:  # (horizontal matmul merging adds a split view)
        assert kernels_after <= kernels_before
    event(f"{len(fused_nodes(after))} fused nodes")

    # The fused graph prints and parses back equal.
    text = after.as_text()
    assert kiln.parse(text, weights=after.constants) == after, text

    # unfuse restores a graph of primitive ops with the same results.
    flat = run_pipeline(after, "unfuse")
    assert not any(n.op in ("fused", "attention") for n in flat.nodes)
    assert_same_results(graph, flat, case.inputs)


# --------------------------------------------------------------------------------------------
# fuse: the GPT block of examples/gpt_block.py
# --------------------------------------------------------------------------------------------


def _const_ref(graph: Graph, v: Value) -> str | None:
    p = graph.producers().get(v)
    return p.attrs.ref if p is not None and p.op == "constant" else None  # type: ignore[attr-defined]


def test_gpt_block_kernel_count_cut(gpt: Any, gpt_fused: Graph) -> None:
    graph, inputs, ex = gpt
    _, kernels_before = kernel_counts(graph)
    ops_after, kernels_after = kernel_counts(gpt_fused)
    assert kernels_before >= 3 * kernels_after, (kernels_before, kernels_after)
    assert ops_after >= 3 * kernels_after, (ops_after, kernels_after)
    assert_same_results(graph, gpt_fused, inputs)
    np.testing.assert_allclose(interpret(gpt_fused, inputs)["out"], ex.numpy_block(inputs["x"], ex.init_weights(64), 4),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def test_gpt_block_mlp_is_one_matmul_kernel(gpt_fused: Graph) -> None:
    mlp = [n for n in fused_nodes(gpt_fused) if "gelu" in body_ops(n)]
    assert len(mlp) == 1
    (node,) = mlp
    assert node.attrs.kind == "matmul"  # type: ignore[attr-defined]
    assert body_ops(node) == ["matmul", "add", "gelu"]
    assert _const_ref(gpt_fused, node.operands[1]) == "p_w_fc"
    assert not any(n.op in ("gelu", "matmul") for n in gpt_fused.nodes), "no bare matmul or gelu is left"


def test_gpt_block_attention_output_projection_group(gpt_fused: Graph) -> None:
    """attn @ w_o + residual + b_o and the second layer_norm: one group, two outputs (the new
    residual stream and the normalised activations)."""
    (node,) = [n for n in fused_nodes(gpt_fused) if _const_ref(gpt_fused, n.operands[1]) == "p_w_o"]
    assert node.attrs.kind == "matmul"  # type: ignore[attr-defined]
    assert body_ops(node) == ["matmul", "add", "add", "layer_norm"]
    assert len(node.results) == 2
    refs = {_const_ref(gpt_fused, v) for v in node.operands}
    assert {"p_w_o", "p_b_o", "p_ln2_w", "p_ln2_b"} <= refs
    assert gpt_fused.inputs[0] in node.operands  # the residual


def test_gpt_block_fused_body_is_printed(gpt: Any, gpt_fused: Graph, tmp_path: Path, capsys: Any) -> None:
    text = gpt_fused.as_text()
    assert "fused(" in text and 'kind="matmul", body=graph @k_matmul(' in text
    mlp = next(n for n in fused_nodes(gpt_fused) if "gelu" in body_ops(n))
    body_text = mlp.attrs.body.as_text()  # type: ignore[attr-defined]
    for line in body_text.splitlines()[1:-1]:
        assert line.strip() in text
    report = _fusion_report(gpt_fused)
    assert "matmul > add > gelu" in report and "matmul > add > add > layer_norm" in report
    # `kiln show --fusion` prints the same (the reference target runs the fused graph: no kernels).
    graph = gpt[0]
    path = tmp_path / "block.kir"
    kiln.save(graph, path)
    assert cli_main(["show", str(path), "--fusion", "--target", "reference", "-p", NUMBA_PIPELINE]) == 0
    out = capsys.readouterr().out
    assert "body=graph @k_matmul(" in out and "gelu(" in out and "matmul > add > gelu" in out


#: For each option: the pipeline with it off, and whether the GPT block must get more kernels.
OPTIONS = {"elementwise": False, "epilogue": True, "rows": True, "horizontal": False}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_gpt_block_options_off_give_more_kernels(option: str, gpt: Any, gpt_fused: Graph) -> None:
    graph, inputs, _ = gpt
    off = run_pipeline(graph, NUMBA_PIPELINE.replace(",fuse,", f",fuse{{{option}=false}},"))
    _, k_on = kernel_counts(gpt_fused)
    _, k_off = kernel_counts(off)
    assert k_off >= k_on
    if OPTIONS[option]:  # the block has no bare elementwise chain and no small sibling groups
        assert k_off > k_on
    assert_same_results(graph, off, inputs)


def _mixed_graph() -> Graph:
    """Each fusion option matters here: an elementwise chain, a second independent small chain
    (a horizontal partner), a matmul with an epilogue and a softmax after it (in another
    iteration space, so that a loose epilogue cannot hide in the chains' launch)."""
    b = GraphBuilder("mixed")
    x = b.input("x", TensorType(f32, (4, 8)))
    y = b.input("y", TensorType(f32, (4, 8)))
    a = b.op("mul", b.op("exp", b.op("tanh", x)), b.constant(np.float32(2.0)))
    c = b.op("add", b.op("sigmoid", y), b.constant(np.float32(1.0)))
    w = b.constant(np.random.default_rng(0).uniform(-1, 1, (8, 16)).astype(np.float32), "w")
    m = b.op("add", b.op("matmul", x, w), b.constant(np.full(16, 0.5, np.float32), "bias"))
    s = b.op("softmax", b.op("relu", m), axis=1)
    b.output("a", a)
    b.output("c", c)
    b.output("s", s)
    return b.build()


@pytest.mark.parametrize("option", list(OPTIONS))
def test_fuse_options_off_give_more_kernels(option: str) -> None:
    graph = _mixed_graph()
    on = run_pipeline(graph, "fuse")
    off = run_pipeline(graph, f"fuse{{{option}=false}}")
    assert kernel_counts(off)[1] > kernel_counts(on)[1], off.as_text()
    assert_same_results(graph, off, random_inputs(graph))
    assert kernel_counts(on)[1] == 2  # {tanh, exp, mul} + {sigmoid, add} share a launch; matmul group
    assert_same_results(graph, on, random_inputs(graph))


# --------------------------------------------------------------------------------------------
# fuse: cycles, horizontal groups, dead values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("through", ["transpose", "gather", "softmax0"])
def test_fuse_avoids_cycle_through_non_fusable_op(through: str) -> None:
    """c = a + f(a) where f is not fusable: c must not join a's group (f sits between)."""
    b = GraphBuilder("cyc")
    x = b.input("x", TensorType(f32, (8, 8)))
    a = b.op("exp", b.op("tanh", x))
    if through == "transpose":
        t = b.op("transpose", a, perm=(1, 0))
    elif through == "gather":
        t = b.op("gather", a, b.constant(np.arange(8)[::-1].copy().astype(np.int64)), axis=0)
    else:
        t = b.op("softmax", a, axis=0)
    c = b.op("mul", b.op("sin", a), t)
    b.output("c", c)
    graph = b.build()
    for pipeline in ("fuse", "fuse{horizontal=false}", NUMBA_PIPELINE):
        after = run_pipeline(graph, pipeline)
        after.verify()
        assert_same_results(graph, after, random_inputs(graph))
        groups = fused_nodes(after)
        assert len(groups) == 2  # {tanh, exp, sin?} and {mul ...}: never one group
        (first,) = [n for n in groups if "tanh" in body_ops(n)]
        assert "mul" not in body_ops(first)


def _cycle_via_group() -> Graph:
    """a is group A; b0 -> {b1 = b0 + a, b2 = sin(b0)} is group B; n = a + b2 joins A although
    B reads A (b1) and A would read B (b2): a cycle between the groups."""
    b = GraphBuilder("cyc2")
    x = b.input("x", TensorType(f32, (4, 8)))
    a = b.op("exp", x)
    b0 = b.op("tanh", x)
    b1 = b.op("add", b0, a)
    b2 = b.op("sin", b0)
    n = b.op("add", a, b2)
    b.output("b1", b1)
    b.output("n", n)
    return b.build()


def _cycle_via_horizontal() -> Graph:
    """H = {exp(x)}; C = {tanh(x), tanh + exp, sin}; G = {cos(transpose(sin))}. H and G are
    independent node-wise, but merging them puts C both before and after the merged group."""
    b = GraphBuilder("cyc3")
    x = b.input("x", TensorType(f32, (8, 8)))
    h1 = b.op("exp", x)
    c0 = b.op("tanh", x)
    c1 = b.op("add", c0, h1)
    c2 = b.op("sin", c0)
    g1 = b.op("cos", b.op("transpose", c2, perm=(1, 0)))
    b.output("c1", c1)
    b.output("g1", g1)
    return b.build()


def test_fuse_cycle_through_another_group() -> None:
    graph = _cycle_via_group()
    for pipeline in ("fuse{horizontal=false}", "fuse", NUMBA_PIPELINE):
        after = run_pipeline(graph, pipeline)
        assert_same_results(graph, after, random_inputs(graph))


def test_fuse_cycle_through_horizontal_merge() -> None:
    graph = _cycle_via_horizontal()
    assert_same_results(graph, run_pipeline(graph, "fuse{horizontal=false}"), random_inputs(graph))
    after = run_pipeline(graph, "fuse")
    assert_same_results(graph, after, random_inputs(graph))


def test_fuse_dead_value_round_trips() -> None:
    b = GraphBuilder("dead")
    x = b.input("x", TensorType(f32, (4, 8)))
    b.op("tanh", b.op("transpose", x, perm=(1, 0)))  # nothing reads it
    b.output("o", b.op("exp", x))
    graph = b.build()
    after = run_pipeline(graph, "fuse")
    assert all(n.results for n in after.nodes), after.as_text()
    assert kiln.parse(after.as_text(), weights=after.constants) == after


def _two_chains(dependent: bool) -> Graph:
    b = GraphBuilder("chains")
    x = b.input("x", TensorType(f32, (8, 8)))
    y = b.input("y", TensorType(f32, (8, 8)))
    a = b.op("mul", b.op("exp", b.op("tanh", x)), b.constant(np.float32(0.5)))
    src = b.op("transpose", a, perm=(1, 0)) if dependent else y
    c = b.op("sub", b.op("sigmoid", src), b.constant(np.float32(1.0)))
    b.output("a", a)
    b.output("c", c)
    return b.build()


@pytest.mark.parametrize("dependent", [False, True])
def test_horizontal_groups(dependent: bool) -> None:
    graph = _two_chains(dependent)
    inputs = random_inputs(graph)
    merged = run_pipeline(graph, "fuse")
    vertical = run_pipeline(graph, "fuse{horizontal=false}")
    assert len(fused_nodes(vertical)) == 2
    assert len(fused_nodes(merged)) == (2 if dependent else 1)
    if not dependent:
        (node,) = fused_nodes(merged)
        assert len(node.results) == 2 and sorted(body_ops(node)) == sorted(
            ["tanh", "exp", "mul", "sigmoid", "sub"]
        )
    for g in (merged, vertical):
        assert_same_results(graph, g, inputs)
        assert kiln.parse(g.as_text(), weights=g.constants) == g


def test_horizontal_skips_large_groups() -> None:
    """Groups at or above Target.parallel_min_elements run alone (they parallelise by rows)."""
    n = get_target("numba-cpu").parallel_min_elements
    b = GraphBuilder("big")
    x = b.input("x", TensorType(f32, (n // 64, 64)))
    y = b.input("y", TensorType(f32, (n // 64, 64)))
    b.output("a", b.op("exp", x))
    b.output("c", b.op("tanh", y))
    graph = b.build()
    assert len(fused_nodes(run_pipeline(graph, "fuse"))) == 2


def test_fuse_access_patterns_join_one_group() -> None:
    """Full, row vector, per-row column, scalar and other broadcast operands all fit one group."""
    b = GraphBuilder("access")
    x = b.input("x", TensorType(f32, (2, 3, 8)))
    row = b.input("row", TensorType(f32, (8,)))
    col = b.input("col", TensorType(f32, (2, 3, 1)))
    sca = b.input("sca", TensorType(f32, ()))
    bc = b.input("bc", TensorType(f32, (2, 1, 8)))
    v = b.op("add", x, row)
    v = b.op("mul", v, col)
    v = b.op("sub", v, sca)
    v = b.op("maximum", v, bc)
    v = b.op("sub", v, b.op("reduce_max", v, axes=(2,), keepdims=True))
    v = b.op("softmax", b.op("reshape", v, shape=(6, 8)), axis=1)
    b.output("o", v)
    graph = b.build()
    after = run_pipeline(graph, "fuse")
    (node,) = fused_nodes(after)
    assert node.attrs.kind == "rows"  # type: ignore[attr-defined]
    assert len(after.nodes) == 1
    assert_same_results(graph, after, random_inputs(graph))
