"""Quantized formats (kiln.ir.quant) and the quantized ops, against hand-written truths.

Packing is checked against a bit-by-bit Python loop, dequantization against the scheme table
written out per scheme, ``qmatmul``/``qgather`` against NumPy on those weights; hypothesis
sweeps pack -> unpack over shapes, widths, groups, schemes and layouts.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.ir import dtypes as kd
from kiln.ir import io
from kiln.ir.builder import GraphBuilder
from kiln.ir.dtypes import Layout, QuantType, Scheme
from kiln.ir.errors import TypeInferenceError, VerifyError
from kiln.ir.interpret import interpret
from kiln.ir.parser import parse
from kiln.ir.quant import QuantizeError, pack, quantize, snr_db, unpack
from kiln.ir.types import TensorType

RNG = np.random.default_rng(7)


def qt(bits: int, scheme: Scheme = Scheme.SYM, group: int = 32, layout: Layout = Layout.PACKED) -> QuantType:
    return QuantType(bits, scheme, group, kd.f16, layout)


def pack_by_hand(u: np.ndarray, bits: int, layout: Layout) -> np.ndarray:
    """The documented layouts, one bit at a time."""
    n, k = u.shape
    if layout == Layout.PACKED:
        out = np.zeros((n, k * bits // 8), np.uint8)
        for r in range(n):
            for c in range(k):
                for i in range(bits):
                    pos = c * bits + i  # LSB first along the row's bit stream
                    out[r, pos // 8] |= ((int(u[r, c]) >> i) & 1) << (pos % 8)
        return out
    words = np.zeros((n, bits, k // 64), np.uint64)
    for r in range(n):
        for i in range(bits):
            for c in range(k):
                if (int(u[r, c]) >> i) & 1:
                    words[r, i, c // 64] |= np.uint64(1) << np.uint64(c % 64)
    return words


def dequant_by_hand(q: QuantType, u: np.ndarray, s: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    """W[k, n] from codes u[n, k], written out per scheme."""
    n, k = u.shape
    gl = q.group or k
    w = np.zeros((k, n))
    for r in range(n):
        for c in range(k):
            sc, code = float(s[r, c // gl]), int(u[r, c])
            if q.scheme == Scheme.SYM:
                w[c, r] = sc * (code - 2 ** (q.bits - 1))
            elif q.scheme == Scheme.ASYM:
                assert z is not None
                w[c, r] = sc * (code - int(z[r, c // gl]))
            else:  # each bit i is +-1 with weight 2^i
                w[c, r] = sc * sum(2**i * (1 if (code >> i) & 1 else -1) for i in range(q.bits))
    return w


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_pack_matches_the_documented_bit_order(bits: int, layout: Layout) -> None:
    q = qt(bits, Scheme.ASYM, 64, layout)
    u = RNG.integers(0, 2**bits, size=(3, 128)).astype(np.uint8)
    codes = pack(q, u)
    np.testing.assert_array_equal(codes, pack_by_hand(u, bits, layout))
    np.testing.assert_array_equal(unpack(q, codes, 128), u)


def test_four_bit_packing_is_matmulnbits_order() -> None:
    u = np.array([[1, 2, 3, 4, 15, 0, 7, 8]], np.uint8)
    assert pack(qt(4, group=8), u).tolist() == [[0x21, 0x43, 0x0F, 0x87]]  # even k in the low nibble


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    scheme=st.sampled_from(list(Scheme)),
    layout=st.sampled_from(list(Layout)),
    n=st.integers(1, 5),
    words=st.integers(1, 3),
    group=st.sampled_from([0, 32, 64]),
    seed=st.integers(0, 2**16),
)
def test_quantize_pack_unpack_round_trip(
    bits: int, scheme: Scheme, layout: Layout, n: int, words: int, group: int, seed: int
) -> None:
    if scheme == Scheme.SYM and bits == 1:
        scheme = Scheme.BIPOLAR
    k = 64 * words
    q = qt(bits, scheme, group, layout)
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    qw = quantize(w, q, clip_search=3)
    u = unpack(q, qw.codes, k)
    np.testing.assert_array_equal(pack(q, u), qw.codes)  # pack -> unpack -> pack is the identity
    if scheme == Scheme.SYM:
        assert u.min() >= 1  # code 0 would be -2^(b-1), outside the symmetric range
    want = dequant_by_hand(q, u, qw.scales, qw.zeros)
    np.testing.assert_allclose(qw.dequantize(), want, rtol=1e-6, atol=1e-7)
    other = Layout.BITSLICED if layout == Layout.PACKED else Layout.PACKED
    q2 = QuantType(bits, q.scheme, group, kd.f16, other)
    np.testing.assert_array_equal(unpack(q2, pack(q2, u), k), u)  # the same codes in the other layout


@pytest.mark.parametrize(("group", "floor"), [(128, 18.0), (32, 20.0)])
def test_four_bit_gaussian_snr_and_clip_search_never_worse(group: int, floor: float) -> None:
    w = np.random.default_rng(0).standard_normal((1024, 256)).astype(np.float32)
    q = qt(4, Scheme.SYM, group)
    plain = quantize(w, q, clip_search=0, refit=False)
    searched = quantize(w, q)
    assert snr_db(w, plain.dequantize()) >= floor
    assert snr_db(w, searched.dequantize()) >= snr_db(w, plain.dequantize())
    asym = quantize(w, qt(4, Scheme.ASYM, group))
    assert snr_db(w, asym.dequantize()) >= floor + 1.0  # 16 levels instead of 15


def test_error_falls_with_bits_and_quantization_is_deterministic() -> None:
    w = np.random.default_rng(1).standard_normal((256, 64)).astype(np.float32)
    snrs = [snr_db(w, quantize(w, qt(b, Scheme.BIPOLAR, 64)).dequantize()) for b in (1, 2, 3, 4, 8)]
    assert snrs == sorted(snrs)
    a, b = quantize(w, qt(3, Scheme.ASYM)), quantize(w, qt(3, Scheme.ASYM))
    assert a.codes.tobytes() == b.codes.tobytes() and a.scales.tobytes() == b.scales.tobytes()
    assert a.zeros is not None and b.zeros is not None and np.array_equal(a.zeros, b.zeros)


def test_zero_groups_quantize_to_exact_zero() -> None:
    w = np.zeros((64, 3), np.float32)
    w[:, 1] = np.linspace(-1, 1, 64)
    for scheme in (Scheme.SYM, Scheme.ASYM):
        deq = quantize(w, qt(4, scheme)).dequantize()
        np.testing.assert_array_equal(deq[:, [0, 2]], 0.0)


@pytest.mark.parametrize(
    ("w", "q", "match"),
    [
        (np.full((64, 2), np.nan, np.float32), qt(4), "attn.wq: it holds 128 NaN/Inf"),
        (np.ones((48, 2), np.float32), qt(4, group=32), "group 32 does not divide K=48"),
        (np.ones((96, 2), np.float32), qt(4, group=32, layout=Layout.BITSLICED), "K divisible by 64"),
        (np.ones((12, 2), np.float32), qt(3, group=0), "K\\*bits divisible by 8"),
        (np.ones((64,), np.float32), qt(4), "expected a \\[K, N\\] matrix"),
        (np.ones((64, 2), np.int32), qt(4), "must be floating point"),
    ],
)
def test_bad_weights_are_refused_with_their_name(w: np.ndarray, q: QuantType, match: str) -> None:
    with pytest.raises(QuantizeError, match=match):
        quantize(w, q, name="attn.wq")


def test_bad_quant_types_are_refused() -> None:
    w = np.ones((64, 2), np.float32)
    with pytest.raises(VerifyError, match=r"1\.\.8 bits"):
        quantize(w, qt(9))
    with pytest.raises(VerifyError, match="use scheme=bipolar"):
        quantize(w, qt(1, Scheme.SYM))
    with pytest.raises(QuantizeError, match="outside"):
        pack(qt(2), np.full((1, 64), 4, np.uint8))


def qgraph(qw: object, x_shape: tuple[int | str, ...], act: str = "f32") -> GraphBuilder:
    b = GraphBuilder("q")
    x = b.input("x", TensorType(kd.f32, x_shape))
    b.output("y", b.op("qmatmul", x, *b.quantized(qw, "w"), act=act))  # type: ignore[arg-type]
    return b


@pytest.mark.parametrize("scheme", list(Scheme))
@pytest.mark.parametrize("layout", list(Layout))
def test_qmatmul_reference_is_x_times_the_dequantized_weight(scheme: Scheme, layout: Layout) -> None:
    q = qt(3 if scheme != Scheme.SYM else 4, scheme, 64, layout)
    w = RNG.standard_normal((128, 24)).astype(np.float32)
    qw = quantize(w, q)
    x = RNG.standard_normal((2, 5, 128)).astype(np.float32)
    g = qgraph(qw, (2, "s", 128)).build()
    wd = dequant_by_hand(q, unpack(q, qw.codes, 128), qw.scales, qw.zeros)
    np.testing.assert_allclose(interpret(g, {"x": x})["y"], x.astype(np.float64) @ wd, rtol=1e-4, atol=1e-4)
    # int8 activations: each row of x rounded to 127 levels of its absmax, then the same product
    y8 = interpret(qgraph(qw, (2, 5, 128), act="int8").build(), {"x": x})["y"]
    sx = np.abs(x).max(axis=-1, keepdims=True) / 127
    xq = np.clip(np.round(x / sx), -127, 127) * sx
    np.testing.assert_allclose(y8, xq.astype(np.float64) @ wd, rtol=1e-4, atol=1e-4)
    assert snr_db(x @ wd, y8) > 30


def test_qgather_returns_dequantized_rows() -> None:
    table = RNG.standard_normal((10, 64)).astype(np.float32)  # 10 rows of 64 features
    q = qt(4, Scheme.ASYM, 32)
    qw = quantize(table.T, q)  # stored transposed: K = features, N = rows
    b = GraphBuilder("e")
    idx = b.input("i", TensorType(kd.i64, (2, 3)))
    b.output("rows", b.op("qgather", *b.quantized(qw, "emb"), idx))
    ids = np.array([[0, 9, -1], [3, 3, 4]])
    got = interpret(b.build(), {"i": ids})["rows"]
    wd = dequant_by_hand(q, unpack(q, qw.codes, 64), qw.scales, qw.zeros).T  # [rows, features]
    np.testing.assert_allclose(got, wd[ids], rtol=1e-6)
    with pytest.raises(Exception, match="out of range"):
        interpret(b.build(), {"i": np.array([[0, 1, 10], [0, 0, 0]])})


def test_quantized_constants_survive_text_and_files(tmp_path: object) -> None:
    qw = quantize(RNG.standard_normal((64, 4)).astype(np.float32), qt(2, Scheme.ASYM, 32, Layout.BITSLICED))
    g = qgraph(qw, (1, 64), act="int8").build()
    text = g.as_text()
    assert "q<2,asym,g32,f16,bitsliced>[64,4]" in text and 'act="int8"' in text
    assert "dense<" not in text.split("qmatmul")[0].split("%w =")[1].split("\n")[0]  # codes never inlined
    assert parse(text, weights=g.constants) == g
    path = f"{tmp_path}/q.kir"
    io.save(g, path)
    g2 = io.load(path)
    x = RNG.standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_array_equal(interpret(g2, {"x": x})["y"], interpret(g, {"x": x})["y"])


def test_verifier_checks_the_stored_codes() -> None:
    qw = quantize(RNG.standard_normal((64, 4)).astype(np.float32), qt(4))
    g = qgraph(qw, (1, 64)).build()
    g.constants["w"] = np.zeros((4, 31), np.uint8)
    with pytest.raises(
        VerifyError,
        match=r"holds uint8\[4, 31\] but q<4,sym,g32,f16,packed>\[64,4\] is stored as uint8\[4, 32\]",
    ):
        g.verify()


def test_qmatmul_type_errors_name_the_problem() -> None:
    qw = quantize(RNG.standard_normal((64, 4)).astype(np.float32), qt(4, Scheme.ASYM))
    b = GraphBuilder("bad")
    x = b.input("x", TensorType(kd.f32, (1, 32)))
    w, s, z = b.quantized(qw, "w")
    with pytest.raises(TypeInferenceError, match="contraction mismatch"):
        b.op("qmatmul", x, w, s, z)
    x64 = b.input("x64", TensorType(kd.f32, (1, 64)))
    with pytest.raises(TypeInferenceError, match="needs a zero-point operand"):
        b.op("qmatmul", x64, w, s)
    with pytest.raises(TypeInferenceError, match="scales must be f16"):
        b.op("qmatmul", x64, w, z, z)
    with pytest.raises(TypeInferenceError, match="quantized \\[K, N\\] weight"):
        b.op("qmatmul", x64, x64, s, z)
    with pytest.raises(TypeInferenceError, match="cannot take quantized"):
        b.op("add", w, w)
    with pytest.raises(Exception, match="act must be one of"):
        b.op("qmatmul", x64, w, s, z, act="int4")
