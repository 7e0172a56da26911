"""fuse-attention: the forms it recognises (hand-written, traced, decode, ONNX exports) and the
ones it must leave alone; results checked against the reference on the unfused graph."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kiln_testing.examples import load_example
from kiln_testing.fusion_graphs import (
    FIXTURES,
    assert_same_results,
    random_inputs,
    run_pipeline,
)

import kiln
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, Value
from kiln.ir.dtypes import f32
from kiln.ir.interpret import interpret
from kiln.ir.types import TensorType

# --------------------------------------------------------------------------------------------
# fuse-attention
# --------------------------------------------------------------------------------------------

B, H, SQ, D = 2, 2, 5, 4


def _attention_graph(
    scale_at: str = "after",
    mask: str = "causal",
    sk: int = SQ,
    sq: int = SQ,
    softmax_axis: int = 3,
    extra: str | None = None,
) -> Graph:
    """q @ k^T, a scale (on q, on k^T, or after as mul / div), a mask, softmax, @ v."""
    b = GraphBuilder("attn")
    q = b.input("q", TensorType(f32, (B, H, sq, D)))
    k = b.input("k", TensorType(f32, (B, H, sk, D)))
    v = b.input("v", TensorType(f32, (B, H, sk, D + 2)))
    c = b.constant(np.float32(0.5), "c")
    if scale_at == "q":
        q = b.op("mul", q, c)
    kt = b.op("transpose", k, perm=(0, 1, 3, 2))
    if scale_at == "k":
        kt = b.op("mul", c, kt)
    mm = s = b.op("matmul", q, kt)
    if scale_at == "after":
        s = b.op("mul", s, c)
    elif scale_at == "after_div":
        s = b.op("div", s, b.constant(np.float32(2.0), "d"))
    if mask == "causal":
        keep = b.constant(np.tri(sq, sk, sk - sq, dtype=bool), "keep")
        s = b.op("where", keep, s, b.constant(np.float32(-1e9), "big"))
    elif mask == "additive":  # a constant, non-causal additive mask
        rng = np.random.default_rng(3)
        m = np.where(rng.uniform(size=(sq, sk)) < 0.3, -1e4, rng.standard_normal((sq, sk))).astype(np.float32)
        m[:, 0] = 0.0  # every query sees at least one key
        s = b.op("add", s, b.constant(m, "mask"))
    elif mask == "input":  # a runtime mask broadcast over heads
        s = b.op("add", s, b.input("m", TensorType(f32, (B, 1, sq, sk))))
    p = b.op("softmax", s, axis=softmax_axis)
    b.output("o", b.op("matmul", p, v))
    if extra == "probs":
        b.output("p", p)
    elif extra == "probs_sum":
        b.output("p", b.op("reduce_sum", p, axes=(3,), keepdims=True))
    elif extra == "scores":
        b.output("s", b.op("tanh", mm))
    return b.build()


def _fuse_attention(graph: Graph) -> Graph:
    return run_pipeline(graph, "canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse")


def _assert_attention(graph: Graph, inputs: dict[str, np.ndarray], count: int = 1, **attrs: Any) -> Graph:
    after = _fuse_attention(graph)
    counts = after.op_counts()
    assert counts.get("attention") == count and "softmax" not in counts, after.as_text()
    for n in after.nodes:
        if n.op == "attention":
            for k, want in attrs.items():
                got = getattr(n.attrs, k)
                assert got == pytest.approx(want) if isinstance(want, float) else got == want, (k, got)
    assert_same_results(graph, after, inputs)
    # unfuse expands attention back into primitives with the same results
    flat = run_pipeline(after, "unfuse")
    assert "attention" not in flat.op_counts() and "softmax" in flat.op_counts()
    assert_same_results(graph, flat, inputs)
    return after


@pytest.mark.parametrize(
    ("kwargs", "scale", "causal"),
    [
        ({}, 0.5, True),
        ({"scale_at": "q"}, 0.5, True),
        ({"scale_at": "k"}, 0.5, True),
        ({"scale_at": "after_div"}, 0.5, True),
        ({"mask": "additive"}, 0.5, False),
        ({"mask": "input"}, 0.5, False),
        ({"mask": "none"}, 0.5, False),
        ({"mask": "causal", "sk": 9}, 0.5, True),  # a KV cache longer than the queries
        ({"mask": "none", "sq": 1, "sk": 7}, 0.5, False),  # one decoding query
        ({"scale_at": "none", "mask": "none"}, 1.0, False),
    ],
    ids=[
        "causal-where",
        "scale-q",
        "scale-k",
        "scale-div",
        "additive-mask",
        "input-mask",
        "no-mask",
        "causal-sk>sq",
        "decode",
        "unscaled",
    ],
)
def test_fuse_attention_forms(kwargs: dict[str, Any], scale: float, causal: bool) -> None:
    graph = _attention_graph(**kwargs)
    _assert_attention(graph, random_inputs(graph, 1), scale=scale, causal=causal)


@pytest.mark.parametrize(
    "kwargs",
    [{"softmax_axis": 2}, {"extra": "probs"}, {"extra": "probs_sum"}, {"extra": "scores"}],
    ids=[
        "softmax-not-last-axis",
        "probs-are-an-output",
        "probs-have-another-user",
        "scores-have-another-user",
    ],
)
def test_fuse_attention_not_recognised(kwargs: dict[str, Any]) -> None:
    graph = _attention_graph(**kwargs)
    after = run_pipeline(graph, "fuse-attention")
    assert after == graph, after.as_text()
    assert "attention" not in after.op_counts()


def test_fuse_attention_gpt_block(gpt: Any) -> None:
    graph, inputs, _ = gpt
    after = _assert_attention(graph, inputs, scale=0.25, causal=True)
    (node,) = [n for n in after.nodes if n.op == "attention"]
    assert node.results[0].tensor_type.static_shape == (4, 16, 16)


def test_fuse_attention_decode_step() -> None:
    tr = load_example("transformer")
    cfg = tr.Config(d_model=32, n_heads=4, d_ff=64, n_layers=1)
    step = tr.make_decode_step(cfg, tr.init_layer(cfg))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 32)).astype(np.float32)
    past_k, past_v = (rng.standard_normal((4, 6, 8)).astype(np.float32) for _ in range(2))
    graph = step.lower(x, past_k, past_v).graph
    after = _assert_attention(
        graph, {"x": x, "past_k": past_k, "past_v": past_v}, scale=cfg.scale, causal=False
    )
    (node,) = [n for n in after.nodes if n.op == "attention"]
    assert node.operands[0].tensor_type.static_shape == (4, 1, 8)
    assert node.operands[1].tensor_type.static_shape == (4, 7, 8)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_fuse_attention_onnx_fixtures(name: str) -> None:
    """Exported attention (torch's isnan guard, additive masks, llama's grouped-query K/V
    repeated with broadcast_to) becomes one attention op per layer."""
    graph = kiln.from_onnx(FIXTURES / f"{name}.onnx")
    io = np.load(FIXTURES / f"{name}_io.npz")
    inputs = {k: io[k] for k in io.files if not k.startswith("out_")}
    layers = graph.op_counts()["softmax"]
    after = _assert_attention(graph, inputs, count=layers)
    if name == "llama":  # grouped-query attention: K and V reach attention through broadcast_to
        producers = after.producers()

        def reaches_broadcast(v: Value, depth: int = 6) -> bool:
            p = producers.get(v)
            return (
                p is not None
                and depth > 0
                and (p.op == "broadcast_to" or any(reaches_broadcast(u, depth - 1) for u in p.operands))
            )

        assert all(reaches_broadcast(n.operands[1]) for n in after.nodes if n.op == "attention")
    truth = {k[4:]: io[k] for k in io.files if k.startswith("out_")}
    got = interpret(after, inputs)
    for k, want in truth.items():
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-4)
