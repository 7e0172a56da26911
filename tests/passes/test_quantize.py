"""The quantize and bitslice passes: what they rewrite, what they leave, and their errors.

Truths: the graph before quantization run by the interpreter, and NumPy on the dequantized weights
that the pass stored (``kiln.ir.quant.dequantize`` is itself checked in tests/ir/test_quant.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln import ops
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph
from kiln.ir.dtypes import Layout, QuantType, Scheme, f32, i64
from kiln.ir.errors import PipelineError
from kiln.ir.interpret import interpret
from kiln.ir.quant import dequantize, snr_db
from kiln.ir.registry import default_context
from kiln.ir.types import TensorType
from kiln.passes.manager import PassManager, parse_pipeline
from kiln.passes.quantize import Quantize, quantize_model

RNG = np.random.default_rng(3)
W1 = (RNG.standard_normal((128, 256)) * 0.1).astype(np.float32)
W2 = (RNG.standard_normal((256, 128)) * 0.1).astype(np.float32)
EMB = RNG.standard_normal((100, 128)).astype(np.float32)


def mlp() -> Graph:
    b = GraphBuilder("mlp")
    ids = b.input("ids", TensorType(i64, (4,)))
    h = b.op("gather", b.constant(EMB, "wte"), ids, axis=0)
    w1, w2 = b.constant(W1, "layers.0.fc1"), b.constant(W2, "layers.0.fc2")
    small = b.constant(np.eye(128, dtype=np.float32)[:, :8], "head")  # 1024 weights: below min_size
    y = b.op("matmul", b.op("relu", b.op("matmul", h, w1)), w2)
    b.output("y", y)
    b.output("z", b.op("matmul", y, small))
    return b.build()


def run(g: Graph, pipeline: str) -> Graph:
    return PassManager.parse(pipeline, verify_each=True).run(g)


def quantized_weights(g: Graph) -> dict[str, QuantType]:
    return {
        n.attrs.ref: n.result.type.dtype for n in g.nodes if n.op == "constant" and n.result.type.is_quantized
    }  # type: ignore[attr-defined,union-attr]


def dequantized(g: Graph, name: str) -> np.ndarray:
    users = [n for n in g.nodes if n.op == "qmatmul" and n.operands[1].name == name]
    (node,) = users
    w, s, *z = (g.constants[v.name] for v in node.operands[1:])  # type: ignore[index]
    q = node.operands[1].tensor_type.dtype
    return dequantize(q, node.operands[1].tensor_type.shape[0], w, s, z[0] if z else None)  # type: ignore[arg-type]


def test_quantize_rewrites_constant_matmuls_and_keeps_small_ones() -> None:
    g = mlp()
    q = run(g, "quantize{bits=4,group=64}")
    assert q.op_counts().get("qmatmul") == 2 and q.op_counts().get("matmul") == 1
    assert set(quantized_weights(q)) == {"layers.0.fc1", "layers.0.fc2"}
    assert all(t == QuantType(4, group=64) for t in quantized_weights(q).values())
    ids = np.array([1, 5, 99, 0])
    x = EMB[ids]
    want = np.maximum(x @ dequantized(q, "layers.0.fc1"), 0) @ dequantized(q, "layers.0.fc2")
    got = interpret(q, {"ids": ids})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert snr_db(interpret(g, {"ids": ids})["y"], got) > 15  # close to the float model


def test_skip_patterns_embeddings_and_act() -> None:
    q = run(mlp(), 'quantize{bits=8,skip="*fc2",embeddings=true,act=int8}')
    assert set(quantized_weights(q)) == {"layers.0.fc1", "wte"}
    assert q.op_counts().get("qgather") == 1
    (mm,) = [n for n in q.nodes if n.op == "qmatmul"]
    assert str(mm.attrs.act) == "int8"  # type: ignore[attr-defined]
    ids = np.array([3, 3, 7, 42])
    np.testing.assert_allclose(
        interpret(q, {"ids": ids})["y"], interpret(mlp(), {"ids": ids})["y"], rtol=0.05, atol=0.05
    )


def three_layers() -> Graph:
    b = GraphBuilder("three")
    x = b.input("x", TensorType(f32, (8, 256)))
    rng = np.random.default_rng(11)
    layers = {
        "smooth": rng.standard_normal((256, 256)),
        "spiky": rng.standard_t(2.5, size=(256, 512)),  # heavier tails, twice the size
        "flat": rng.uniform(-1, 1, size=(256, 128)),
    }
    for name, w in layers.items():
        b.output(name, b.op("matmul", x, b.constant(w.astype(np.float32), name)))
    return b.build()


def test_auto_bits_spends_the_budget_where_it_removes_most_error() -> None:
    g = three_layers()
    _, rep = quantize_model(g, default_context(), bits="auto{budget=3}", group=64)
    size = {r.name: r.k * r.n for r in rep}
    bits = {r.name: r.bits for r in rep}
    assert sum(bits[n] * size[n] for n in size) <= 3.0 * sum(size.values())
    noise = {r.name: {b: 10 ** (-s / 10) for b, s in r.snr_by_bits.items()} for r in rep}
    assert all(set(v) == {2, 3, 4, 8} for v in noise.values())
    for r in rep:  # the report's SNR is the measured one of the chosen width
        assert r.snr_db == pytest.approx(r.snr_by_bits[r.bits], abs=1e-6)
    # against every allocation that fits the budget (brute force): the greedy choice is near the best
    import itertools

    names = list(size)
    fits = [
        a for a in itertools.product([2, 3, 4, 8], repeat=3)
        if sum(b * size[n] for b, n in zip(a, names)) <= 3.0 * sum(size.values())
    ]  # fmt: skip
    best = min(sum(noise[n][b] for b, n in zip(a, names)) for a in fits)
    assert sum(noise[n][bits[n]] for n in names) <= 1.2 * best
    _, rep = quantize_model(three_layers(), default_context(), bits="auto{snr=25}", choices="2,4,8", group=64)
    assert all(r.snr_db >= 25 or r.bits == 8 for r in rep)
    assert {r.name: r.bits for r in rep}["smooth"] == 8  # 4-bit gives ~20 dB: too little
    _, rep8 = quantize_model(three_layers(), default_context(), bits="8")
    assert all(r.bits == 8 and r.snr_db > 30 and r.bytes < r.float_bytes / 3 for r in rep8)


def test_calibration_file_feeds_real_activations(tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    np.savez(path, ids=np.array([7, 70, 3, 30]))
    g = mlp()
    _, rep = quantize_model(g, default_context(), bits="4", calibration=str(path), group=64)
    _, rep0 = quantize_model(g, default_context(), bits="4", group=64)
    assert [r.name for r in rep] == [r.name for r in rep0]
    assert [r.snr_db for r in rep] != [r.snr_db for r in rep0]  # measured on other activations
    with pytest.raises(PipelineError, match="cannot read it"):
        quantize_model(g, default_context(), calibration=str(tmp_path / "missing.npz"))


def test_quantization_of_a_model_is_deterministic() -> None:
    a, b = run(mlp(), "quantize{bits=3,scheme=asym}"), run(mlp(), "quantize{bits=3,scheme=asym}")
    assert a == b and a.as_text() == b.as_text()


@pytest.mark.parametrize(
    ("pipeline", "error", "match"),
    [
        ("quantize{bits=9}", PipelineError, "1..8 bits"),
        ("quantize{bits=auto{size=3}}", PipelineError, "unknown auto option 'size'"),
        ("quantize{bits=auto}", PipelineError, "exactly one of"),
        ("quantize{bits=auto{budget=1}}", PipelineError, "below the narrowest width 2"),
        ("quantize{bits=four}", PipelineError, "expected 1..8"),
        ("quantize{scheme=nf4}", PipelineError, "expected one of sym, asym, bipolar"),
        ("quantize{group=48}", PipelineError, "group 48 does not divide K=128 for layers.0.fc1; pick"),
        ("quantize{scale_dtype=i8}", PipelineError, "expected f16, bf16 or f32"),
        ("bitslice{layout=nibbles}", PipelineError, "expected auto, packed or bitsliced"),
    ],
)
def test_bad_options_are_refused(pipeline: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        run(mlp(), "quantize{bits=4,group=64}," + pipeline if pipeline.startswith("bitslice") else pipeline)


@pytest.mark.parametrize("layout", ["bitsliced", "packed"])
def test_bitslice_relayouts_without_changing_results(layout: str) -> None:
    q = run(mlp(), "quantize{bits=2,group=64,scheme=bipolar}")
    s = run(q, f"bitslice{{layout={layout}}}")
    assert {t.layout for t in quantized_weights(s).values()} == {Layout(layout)}
    assert all(n.attrs.ref in s.constants for n in s.nodes if n.op == "constant")  # type: ignore[attr-defined]
    assert len(s.constants) <= len(q.constants)  # replaced codes are dropped
    ids = np.array([2, 4, 6, 8])
    np.testing.assert_array_equal(interpret(s, {"ids": ids})["y"], interpret(q, {"ids": ids})["y"])


def test_bitslice_auto_keeps_a_layout_the_shape_cannot_change() -> None:
    b = GraphBuilder("odd")
    x = b.input("x", TensorType(f32, (1, 96)))  # 96 is not a multiple of 64: no bit-sliced words
    b.output("y", b.op("matmul", x, b.constant(RNG.standard_normal((96, 64)).astype(np.float32), "w")))
    q = run(b.build(), "quantize{bits=2,group=32}")
    assert run(q, "bitslice").as_text() == q.as_text()
    with pytest.raises(PipelineError, match="K divisible by 64"):
        run(q, "bitslice{layout=bitsliced}")


def test_pipeline_options_nest_braces_and_default_expands() -> None:
    (p,) = parse_pipeline("quantize{bits=auto{budget=3.5},group=32}")
    assert isinstance(p, Quantize) and p.bits == "auto{budget=3.5}" and p.group == 32
    assert parse_pipeline(p.spec()) == [p]
    names = [x.name for x in parse_pipeline("quantize,default", default="canonicalize,dce")]
    assert names == ["quantize", "canonicalize", "dce"]


def test_jit_with_a_quantize_pipeline() -> None:
    def f(x: np.ndarray) -> np.ndarray:
        return ops.relu(x @ W1) @ W2

    x = RNG.standard_normal((3, 128)).astype(np.float32)
    jf = kiln.jit(f, pipeline="quantize{bits=4,group=32},default")
    text = jf.lower(x).compile().as_text()
    assert text.count("qmatmul(") == 2
    assert snr_db(f(x), jf(x)) > 15


def test_bitslice_auto_follows_the_targets_measured_costs() -> None:
    from kiln.ir.targets import get_target
    from kiln.passes.bitslice import best_layout

    tgt = get_target("numba-cpu")
    picked = set()
    for act in ("int8", "binary", "f32"):
        for kind, rows in (("gemv", 1), ("gemm", 16)):
            for bits in (1, 2, 3, 4, 8):
                costs = {
                    lay: c for lay, k, b, a, c in tgt.qkernel_cost if k == kind and b == bits and a == act
                }
                want = Layout(min(costs, key=costs.__getitem__))
                assert best_layout(tgt, QuantType(bits, group=64), 128, rows, act) == want
                picked.add((act, kind, bits, want))
    # the activation mode changes the choice: a 1-bit binary GEMM takes the popcount kernels
    assert ("binary", "gemm", 1, Layout.BITSLICED) in picked and ("int8", "gemm", 1, Layout.PACKED) in picked
    b = GraphBuilder("three_bit")
    x = b.input("x", TensorType(f32, (1, 128)))
    b.output("y", b.op("matmul", x, b.constant(RNG.standard_normal((128, 64)).astype(np.float32), "w")))
    s = run(run(b.build(), "quantize{bits=3,group=64}"), "bitslice")  # act=f32, the default
    assert {t.layout for t in quantized_weights(s).values()} == {
        best_layout(tgt, QuantType(3, group=64), 128, 1, "f32")
    }
    assert best_layout(tgt, QuantType(3, group=64), 128, 1, "int4") == Layout.PACKED  # no figures: kept


def test_bitslice_weighs_the_activation_mode() -> None:
    """The same 1-bit GEMM weight: packed for int8 activations (VNNI), bit-sliced for binary ones
    (popcounts), as the numba-cpu cost table has it; outputs as before the re-layout."""
    w = RNG.standard_normal((128, 64)).astype(np.float32)
    x = RNG.standard_normal((16, 128)).astype(np.float32)
    for act, layout in (("int8", Layout.PACKED), ("binary", Layout.BITSLICED)):
        b = GraphBuilder("gemm")
        b.output("y", b.op("matmul", b.input("x", TensorType(f32, (16, 128))), b.constant(w, "w")))
        q = run(b.build(), f"quantize{{bits=1,group=64,act={act}}}")
        s = run(q, "bitslice")
        assert {t.layout for t in quantized_weights(s).values()} == {layout}, act
        np.testing.assert_allclose(
            interpret(s, {"x": x})["y"], interpret(q, {"x": x})["y"], rtol=1e-5, atol=1e-5
        )


def test_one_bit_with_the_default_scheme_is_bipolar() -> None:
    q = run(mlp(), "quantize{bits=1,group=64}")
    assert {t.scheme for t in quantized_weights(q).values()} == {Scheme.BIPOLAR}
    ids = np.array([1, 2, 3, 4])
    want = np.maximum(EMB[ids] @ dequantized(q, "layers.0.fc1"), 0) @ dequantized(q, "layers.0.fc2")
    np.testing.assert_allclose(interpret(q, {"ids": ids})["y"], want, rtol=1e-4, atol=1e-4)
