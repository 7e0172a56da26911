"""numba-cpu's decode attention that appends to the KV cache (kv_attention.py): chosen for
attention over concat(past, new) K and V with one query, exact present caches, the attention
output against the reference, and the cases it must leave to the plain concat + attention."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from kiln_testing.numba_cpu import assert_matches_reference, load_example

import kiln
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph
from kiln.ir.dtypes import f32
from kiln.ir.types import TensorType


def _decode_graph(
    heads: int, t: int, s: int, d: int, dv: int, bias: str = "none", q_view: bool = False, seed: int = 0
) -> tuple[Graph, dict[str, np.ndarray]]:
    """o = attention(q, concat(past_k, k), concat(past_v, v), bias) with both concats as outputs.
    ``q_view``: q arrives as [1, H, d] and is transposed (a strided view, as in GPT-2's heads)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("decode")
    shapes = {"q": (1, heads, d) if q_view else (heads, 1, d), "past_k": (heads, t, d), "k": (heads, s, d),
              "past_v": (heads, t, dv), "v": (heads, s, dv)}  # fmt: skip
    inputs = {n: rng.standard_normal(sh).astype(np.float32) for n, sh in shapes.items()}
    vals = {n: b.input(n, TensorType(f32, sh)) for n, sh in shapes.items()}
    q = b.op("transpose", vals["q"], perm=(1, 0, 2)) if q_view else vals["q"]
    ck = b.op("concat", vals["past_k"], vals["k"], axis=1)
    cv = b.op("concat", vals["past_v"], vals["v"], axis=1)
    if bias == "none":
        bv = b.constant(np.zeros((), np.float32), "no_bias")
    else:
        inputs["bias"] = rng.standard_normal((heads, 1, t + s)).astype(np.float32)
        if bias == "masked":
            inputs["bias"][0] = -np.inf  # head 0 sees no key: NaN, as the reference
        bv = b.input("bias", TensorType(f32, (heads, 1, t + s)))
    b.output("o", b.op("attention", q, ck, cv, bv, scale=1.0 / math.sqrt(d), causal=False))
    b.output("k_cache", ck)
    b.output("v_cache", cv)
    return b.build(), inputs


CASES = {
    # id: (heads, T, S, d, dv, bias, q_view)
    "gpt2-like-parallel": (12, 128, 1, 64, 64, "none", True),
    "serial-one-head": (1, 37, 1, 16, 16, "none", False),
    "ragged-tails": (5, 129, 3, 24, 40, "full", False),  # key and value blocks with remainders
    "masked-head": (4, 64, 1, 32, 32, "masked", False),
    "short-cache": (3, 2, 1, 8, 8, "full", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kv_append_attention_matches_reference(case: str, cache: Path) -> None:
    heads, t, s, d, dv, bias, q_view = CASES[case]
    graph, inputs = _decode_graph(heads, t, s, d, dv, bias, q_view)
    exe = kiln.compile(graph, "numba-cpu", pipeline="", cache_dir=cache)
    assert exe.stats()["kv_append_attention"] == 1
    assert "def _head(" in exe.as_text()  # the kernel's source is part of what kiln show prints
    for _ in range(2):  # the second call writes into the recycled output blocks
        got = exe.run(inputs)
        assert_matches_reference(got, graph, inputs)
        # the caches are copies: exactly the inputs, in order
        np.testing.assert_array_equal(got["k_cache"], np.concatenate([inputs["past_k"], inputs["k"]], axis=1))
        np.testing.assert_array_equal(got["v_cache"], np.concatenate([inputs["past_v"], inputs["v"]], axis=1))
    if bias == "masked":
        assert np.isnan(got["o"][0]).all() and np.isfinite(got["o"][1:]).all()


def test_concat_read_before_the_attention_is_not_deferred(cache: Path) -> None:
    """A node that reads K's concat before the attention runs needs the concat done at its own
    step: the fused kernel must not take this attention."""
    graph, inputs = _decode_graph(4, 16, 1, 8, 8)
    b = GraphBuilder("decode_read_first")
    vals = {v.name: b.input(str(v.name), v.type) for v in graph.inputs}
    ck = b.op("concat", vals["past_k"], vals["k"], axis=1)
    cv = b.op("concat", vals["past_v"], vals["v"], axis=1)
    total = b.op("reduce_sum", ck, axes=(1,), keepdims=True)  # [H, 1, d]: reads ck first
    q = b.op("add", vals["q"], total)
    bv = b.constant(np.zeros((), np.float32), "no_bias")
    b.output("o", b.op("attention", q, ck, cv, bv, scale=0.25, causal=False))
    g = b.build()
    exe = kiln.compile(g, "numba-cpu", pipeline="", cache_dir=cache)
    assert exe.stats()["kv_append_attention"] == 0
    assert_matches_reference(exe.run(inputs), g, inputs)


def test_new_rows_stay_live_until_the_attention(cache: Path) -> None:
    """The new K row is computed into a planned buffer and only copied when the attention runs;
    a value of the same size computed in between must not be given that buffer."""
    heads, t, d = 4, 8, 16
    rng = np.random.default_rng(3)
    inputs = {"a": rng.standard_normal((heads, 1, d)).astype(np.float32),
              "past_k": rng.standard_normal((heads, t, d)).astype(np.float32),
              "past_v": rng.standard_normal((heads, t, d)).astype(np.float32)}  # fmt: skip
    b = GraphBuilder("liveness")
    vals = {n: b.input(n, TensorType(f32, x.shape)) for n, x in inputs.items()}
    k_new = b.op("exp", vals["a"])  # a kernel result in a planned buffer
    ck = b.op("concat", vals["past_k"], k_new, axis=1)
    cv = b.op("concat", vals["past_v"], vals["a"], axis=1)
    q = b.op("tanh", b.op("mul", vals["a"], b.constant(np.float32(3.0), "three")))  # same size as k_new
    bv = b.constant(np.zeros((), np.float32), "no_bias")
    b.output("o", b.op("attention", q, ck, cv, bv, scale=0.25, causal=False))
    b.output("k_cache", ck)
    g = b.build()
    exe = kiln.compile(g, "numba-cpu", pipeline="", cache_dir=cache)  # one step per op
    assert exe.stats()["kv_append_attention"] == 1
    got = exe.run(inputs)
    assert_matches_reference(got, g, inputs)
    np.testing.assert_allclose(got["k_cache"][:, t], np.exp(inputs["a"][:, 0]), rtol=1e-6)


def test_gpt2_decode_body_uses_it(cache: Path) -> None:
    """The traced GPT-2 decode body (examples/transformer.py): every layer's attention appends
    its cache in place inside the stacked present outputs; outputs match NumPy float32."""
    T = load_example("transformer")  # noqa: N806
    cfg = T.Config(d_model=64, n_heads=4, d_ff=128, n_layers=3)
    layers = T.init_layers(cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cfg.d_model)).astype(np.float32)
    pk, pv = (rng.standard_normal((3, 4, 9, cfg.head_dim)).astype(np.float32) for _ in range(2))
    graph = T.make_decode_body(cfg, layers).lower(x, pk, pv).graph
    exe = kiln.compile(graph, "numba-cpu", cache_dir=cache)
    assert exe.stats()["kv_append_attention"] == 3
    want = T.numpy_decode_body(cfg, layers, x, pk, pv)
    for _ in range(2):
        got = exe.run(dict(zip(graph.input_names, (x, pk, pv), strict=True)))
        y, nk, nv = (got[name] for name in graph.output_names)
        np.testing.assert_allclose(y, want[0], rtol=1e-4, atol=1e-5)
        for got_c, want_c, past in ((nk, want[1], pk), (nv, want[2], pv)):
            np.testing.assert_array_equal(got_c[:, :, :9], past)  # copied
            np.testing.assert_allclose(got_c, want_c, rtol=1e-4, atol=1e-6)  # the new row computed
