"""Low-bit matmul kernels against the golden dequantization (ir/quant.py) and NumPy in float64."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.backends.numba_cpu import amx_kernels, llvm_kernels, qkernels
from kiln.backends.numba_cpu.qkernels import kernel_source, make_qmatmul
from kiln.ir.dtypes import Layout, QuantType, Scheme
from kiln.ir.errors import BackendError
from kiln.ir.ops.quant import binarize_rows, quantize_rows_int8
from kiln.ir.quant import QuantizedWeight, dequantize, quantize

VNNI = llvm_kernels.host_has_vnni()
SCHEMES = [Scheme.SYM, Scheme.ASYM, Scheme.BIPOLAR]


def _qtypes(bits_list: list[int], groups: list[int]) -> list[QuantType]:
    out = []
    for bits, scheme, layout, group in itertools.product(bits_list, SCHEMES, list(Layout), groups):
        if not (scheme == Scheme.SYM and bits == 1):
            out.append(QuantType(bits, scheme, group, layout=layout))
    return out


def _weight(q: QuantType, k: int, n: int, seed: int) -> QuantizedWeight:
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    return quantize(w, q, clip_search=0)


def _check(
    q: QuantType,
    qw: QuantizedWeight,
    m: int,
    act: str,
    vnni: bool | None,
    seed: int = 1,
    kernel: str | None = None,
) -> None:
    k, n = qw.k, qw.n
    x = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)
    w = dequantize(q, k, qw.codes, qw.scales, qw.zeros).astype(np.float64)
    out = np.full((m, n), np.nan, np.float32)
    kern = make_qmatmul(q, k, n, act=act, vnni=vnni, kernel=kernel)
    kern(x, qw.codes, qw.scales, qw.zeros, out)
    exact = x.astype(np.float64) @ w
    norm = float(np.abs(exact).max()) + 1e-12
    if act == "f32":
        assert np.abs(out - exact).max() / norm < 1e-4, (q.name, m, kern.path)
        return
    if act == "binary":
        sign, alpha = binarize_rows(x)  # the reference semantics of act=binary
        want = (sign.astype(np.float64) * alpha) @ w
        scale = float(np.abs(want).max()) + 1e-12
        assert np.abs(out - want).max() / scale < 2e-5, (q.name, m, kern.path)
        return
    xq, xs = quantize_rows_int8(x)  # the reference semantics of act=int8
    same_ints = (xq.astype(np.float64) * xs) @ w
    assert np.abs(out - same_ints).max() / norm < 2e-5, (q.name, m, kern.path)
    assert np.abs(out - exact).max() / norm < 0.05, (q.name, m, kern.path)  # int8 rounding only


FAST = _qtypes([1, 2, 3, 4, 8], [64, 0])


@pytest.mark.parametrize("q", FAST, ids=lambda q: q.name)
@pytest.mark.parametrize("act", ["int8", "f32", "binary"])
def test_kernels_match_dequantize(q: QuantType, act: str) -> None:
    qw = _weight(q, 256, 40, seed=q.bits)
    for m in (1, 3, 16, 33):
        _check(q, qw, m, act, vnni=None)


@pytest.mark.slow
@pytest.mark.parametrize("q", _qtypes(list(range(1, 9)), [32, 64, 128, 0]), ids=lambda q: q.name)
def test_kernels_full_sweep(q: QuantType) -> None:
    qw = _weight(q, 512, 130, seed=q.bits + 10)
    for m, act in itertools.product((1, 3, 16, 33), ("int8", "f32", "binary")):
        _check(q, qw, m, act, vnni=None)
    for m in (1, 5):
        _check(q, qw, m, "int8", vnni=False)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_split_decode_without_gfni(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with AVX-512 VNNI but no GFNI decodes the packed parts with shifts and masks instead
    of one affine map each: the same integers, so bitwise the same outputs."""
    if not llvm_kernels.host_has_vnni():
        pytest.skip("this CPU has no AVX-512 VNNI: the LLVM kernels do not run here")
    q = QuantType(bits, Scheme.SYM if bits > 1 else Scheme.BIPOLAR, 64)
    qw = _weight(q, 512, 40, seed=3)
    kern = make_qmatmul(q, 512, 40, act="int8")
    assert kern.plan is not None
    monkeypatch.setattr(llvm_kernels, "host_has_gfni", lambda: False)
    plain = dataclasses.replace(kern, compiled=llvm_kernels.compile_plan.__wrapped__(kern.plan))  # uncached
    assert plain.compiled is not None and "vgf2p8affineqb" not in plain.compiled.ir_text  # the GEMV kernels
    for m in (1, 5):
        x = np.random.default_rng(m).standard_normal((m, 512)).astype(np.float32)
        want, got = np.empty((m, 40), np.float32), np.empty((m, 40), np.float32)
        kern(x, qw.codes, qw.scales, qw.zeros, want)
        plain(x, qw.codes, qw.scales, qw.zeros, got)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("q", _qtypes([2, 4, 5], [32]), ids=lambda q: q.name)
def test_numba_fallback_matches(q: QuantType) -> None:
    """The portable path (what a CPU without AVX-512 VNNI runs) computes the same integers."""
    kern = make_qmatmul(q, 256, 40, act="int8", kernel="unpack")
    assert kern.compiled is None and "def _numba_int8" in kernel_source(kern)
    qw = _weight(q, 256, 40, seed=7)
    for m in (1, 5, 16):
        _check(q, qw, m, "int8", vnni=False, kernel="unpack")


BIT_SERIAL = [
    QuantType(bits, scheme, group, layout=Layout.BITSLICED)
    for bits, scheme, group in itertools.product(range(1, 9), SCHEMES, [16, 32, 64, 128, 0])
    if not (scheme == Scheme.SYM and bits == 1)
]


@pytest.mark.parametrize("q", BIT_SERIAL, ids=lambda q: q.name)
def test_popcount_kernels_match(q: QuantType) -> None:
    """Bit-serial popcount products (bit-sliced weights x bit-sliced int8 activations) give the
    integers of the reference's act=int8 semantics, bit for bit those of the unpack kernel."""
    kern = make_qmatmul(q, 256, 24, act="int8", kernel="popcount")
    assert kern.path == "numba-popcount" and "def popcount_int8" in kernel_source(kern)
    qw = _weight(q, 256, 24, seed=q.bits)
    for m in (1, 4):
        _check(q, qw, m, "int8", vnni=False, seed=m, kernel="popcount")
    x = np.random.default_rng(5).standard_normal((3, 256)).astype(np.float32)
    outs = []
    for k in ("popcount", "unpack"):
        out = np.empty((3, 24), np.float32)
        make_qmatmul(q, 256, 24, act="int8", kernel=k)(x, qw.codes, qw.scales, qw.zeros, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_kernel_choice_and_refusals() -> None:
    sliced = QuantType(4, Scheme.SYM, 64, layout=Layout.BITSLICED)
    assert make_qmatmul(sliced, 256, 8, act="int8", vnni=False).path == "numba-popcount"
    assert make_qmatmul(sliced, 256, 8, act="f32", vnni=False).path == "numba-f32"  # no float popcounts
    packed = QuantType(4, Scheme.SYM, 64)
    assert make_qmatmul(packed, 256, 8, act="int8", vnni=False).path == "numba-int8"
    with pytest.raises(BackendError, match="popcount kernels need bit-sliced"):
        make_qmatmul(packed, 256, 8, act="int8", kernel="popcount")
    with pytest.raises(BackendError, match="group length 48"):
        make_qmatmul(
            QuantType(4, Scheme.SYM, 48, layout=Layout.BITSLICED), 192, 8, act="int8", kernel="popcount"
        )
    with pytest.raises(BackendError, match="kernel must be one of"):
        make_qmatmul(packed, 256, 8, kernel="simd")
    if VNNI:
        assert make_qmatmul(sliced, 256, 8, act="int8").path == "llvm-vnni"
    else:
        with pytest.raises(BackendError, match="lacks AVX-512 VNNI"):
            make_qmatmul(packed, 256, 8, act="int8", kernel="vnni")


@pytest.mark.parametrize(
    "q",
    [q for q in _qtypes([1, 2, 3, 4, 8], [32, 128]) if q.layout == Layout.BITSLICED],
    ids=lambda q: q.name,
)
def test_binary_activations_popcount(q: QuantType) -> None:
    """Bit-sliced weights with binary activations run the popcount kernel (also for groups inside a
    word), on any CPU; it agrees with the float kernels on the binarized rows."""
    qw = _weight(q, 256, 24, seed=q.bits + 3)
    assert make_qmatmul(q, 256, 24, act="binary").path == "numba-popcount"
    for m in (1, 5):
        _check(q, qw, m, "binary", vnni=None)
        _check(q, qw, m, "binary", vnni=None, kernel="unpack")  # the float kernel on alpha * sign(x)


def test_binary_activation_signs_and_kernel_choice() -> None:
    """0 and -0.0 count as +1 (the golden semantics); packed weights run the float kernels."""
    q = QuantType(2, Scheme.SYM, 64, layout=Layout.BITSLICED)
    qw = _weight(q, 128, 8, seed=4)
    x = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float32)
    x[0, :40] = 0.0
    x[1, 10:90] = -0.0
    x[2] = 0.0  # alpha 0: the row's outputs are 0
    sign, alpha = binarize_rows(x)
    assert (sign[0, :40] == 1).all() and (sign[1, 10:90] == 1).all()
    want = (sign.astype(np.float64) * alpha) @ dequantize(q, 128, qw.codes, qw.scales, qw.zeros).astype(
        np.float64
    )
    for kernel in (None, "unpack"):
        out = np.empty((3, 8), np.float32)
        make_qmatmul(q, 128, 8, act="binary", kernel=kernel)(x, qw.codes, qw.scales, qw.zeros, out)
        np.testing.assert_allclose(out, want, rtol=2e-5, atol=1e-6)
    packed = QuantType(4, Scheme.ASYM, 64)
    path = make_qmatmul(packed, 256, 8, act="binary").path
    assert path == ("llvm-f32 (binarized x)" if VNNI else "numba-binary")
    with pytest.raises(BackendError, match="int8 or binary activations"):
        make_qmatmul(packed, 256, 8, act="binary", kernel="popcount")
    with pytest.raises(BackendError, match="act must be one of"):
        make_qmatmul(packed, 256, 8, act="ternary")


@settings(max_examples=25, deadline=None)
@given(
    bits=st.integers(1, 8),
    scheme=st.sampled_from(SCHEMES),
    layout=st.sampled_from(list(Layout)),
    group=st.sampled_from([32, 64, 128, 0]),
    kb=st.integers(1, 4),
    n=st.integers(1, 70),
    m=st.integers(1, 9),
)
def test_random_shapes(
    bits: int, scheme: Scheme, layout: Layout, group: int, kb: int, n: int, m: int
) -> None:
    if scheme == Scheme.SYM and bits == 1:
        scheme = Scheme.BIPOLAR
    q = QuantType(bits, scheme, group, layout=layout)
    qw = _weight(q, 128 * kb, n, seed=n)
    _check(q, qw, m, "int8", vnni=None, seed=m)
    _check(q, qw, m, "binary", vnni=None, seed=m)


@pytest.mark.skipif(not VNNI, reason="needs AVX-512 VNNI")
def test_vnni_path_and_source() -> None:
    q = QuantType(4, Scheme.SYM, 128)
    kern = make_qmatmul(q, 512, 8, act="int8")
    assert kern.path == "llvm-vnni"
    text = kernel_source(kern)
    assert "llvm.x86.avx512.vpdpbusd.512" in text and 'define void @"qdot_m4_r1"' in text
    # the same structure is compiled once and shared
    assert make_qmatmul(q, 512, 64, act="int8").compiled is kern.compiled


def test_bad_inputs_raise_backend_error() -> None:
    q = QuantType(4, Scheme.ASYM, 64)
    qw = _weight(q, 128, 8, seed=0)
    kern = make_qmatmul(q, 128, 8, act="int8")
    x = np.ones((2, 128), np.float32)
    out = np.empty((2, 8), np.float32)
    with pytest.raises(BackendError, match="codes"):
        kern(x, qw.codes[:, :10], qw.scales, qw.zeros, out)
    with pytest.raises(BackendError, match="codes"):
        kern(x, qw.codes.astype(np.int16), qw.scales, qw.zeros, out)
    with pytest.raises(BackendError, match="K=128"):
        kern(np.ones((2, 64), np.float32), qw.codes, qw.scales, qw.zeros, out)
    with pytest.raises(BackendError, match="zero points"):
        kern(x, qw.codes, qw.scales, None, out)
    with pytest.raises(BackendError, match="scales"):
        kern(x, qw.codes, qw.scales[:, :1], qw.zeros, out)
    with pytest.raises(BackendError, match="out"):
        kern(x, qw.codes, qw.scales, qw.zeros, np.empty((2, 9), np.float32))
    with pytest.raises(BackendError, match="group"):
        make_qmatmul(QuantType(4, Scheme.SYM, 48), 128, 8)
    with pytest.raises(BackendError, match="act"):
        make_qmatmul(q, 128, 8, act="int4")


@pytest.mark.skipif(not VNNI, reason="the libomp driver runs the LLVM kernels, which need AVX-512 VNNI")
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("act", ["int8", "f32"])
def test_threaded_driver_equals_one_thread(m: int, act: str) -> None:
    """Threads split weight rows only, so 2 threads give bitwise the results of 1 (GEMV and GEMM,
    including a last chunk shorter than the others: N = 1000)."""
    q = QuantType(4, Scheme.SYM, 128)
    qw = _weight(q, 512, 1000, seed=m)
    x = np.random.default_rng(m).standard_normal((m, 512)).astype(np.float32)
    outs = []
    for threads in (1, 2):
        kern = make_qmatmul(q, 512, 1000, act=act, threads=threads)
        out = np.full((m, 1000), np.nan, np.float32)
        kern(x, qw.codes, qw.scales, qw.zeros, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[1], outs[0])
    w = dequantize(q, 512, qw.codes, qw.scales, qw.zeros).astype(np.float64)
    exact = x.astype(np.float64) @ w
    assert np.abs(outs[1] - exact).max() / np.abs(exact).max() < (0.05 if act == "int8" else 1e-4)


@pytest.mark.skipif(not VNNI, reason="the libomp driver runs the LLVM kernels, which need AVX-512 VNNI")
def test_threaded_gemv_beside_numba_parallel() -> None:
    """The GEMV's libomp team and numba's prange (GNU libgomp) alternate in one process."""
    import numba

    @numba.njit(parallel=True)
    def scale_rows(a: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        for i in numba.prange(a.shape[0]):
            out[i] = a[i] * 2.0
        return out

    q = QuantType(4, Scheme.SYM, 128)
    qw = _weight(q, 512, 256, seed=3)
    kern = make_qmatmul(q, 512, 256, act="int8", threads=2)
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    first = np.empty((1, 256), np.float32)
    kern(x, qw.codes, qw.scales, qw.zeros, first)
    for _ in range(5):
        out = np.empty((1, 256), np.float32)
        kern(x, qw.codes, qw.scales, qw.zeros, out)
        np.testing.assert_array_equal(scale_rows(out), 2.0 * first)


@pytest.mark.skipif(not VNNI, reason="the prepared-weights path is the LLVM kernels'")
def test_prepared_weights_follow_the_arrays_passed() -> None:
    """The kernel keeps the weight-side arguments while the same arrays come back; new arrays,
    in-place updates, and scales that needed a conversion (float32 for a float16 plan) all count."""
    q = QuantType(4, Scheme.SYM, 128)
    a, b = _weight(q, 256, 64, seed=1), _weight(q, 256, 64, seed=2)
    kern = make_qmatmul(q, 256, 64, act="f32")
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)

    def run(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        out = np.empty((1, 64), np.float32)
        kern(x, codes, scales, None, out)
        return out

    def want(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) @ dequantize(q, 256, codes, scales, None).astype(np.float64)

    for w in (a, b, a):
        np.testing.assert_allclose(run(w.codes, w.scales), want(w.codes, w.scales), rtol=1e-4, atol=1e-4)
    a.codes[:] = b.codes  # in place: the same array object
    np.testing.assert_allclose(run(a.codes, a.scales), want(b.codes, a.scales), rtol=1e-4, atol=1e-4)
    s32 = a.scales.astype(np.float32)  # converted on every call, so an update counts
    first = run(a.codes, s32)
    s32 *= 2
    np.testing.assert_allclose(run(a.codes, s32), 2 * first, rtol=1e-5, atol=1e-5)
    with pytest.raises(BackendError, match="activations"):
        run_bad = np.empty((1, 64), np.float32)
        kern(x[:, :128], a.codes, a.scales, None, run_bad)


AMX = VNNI and amx_kernels.amx_available()
AMX_FORMATS = [
    QuantType(4, Scheme.SYM, 128),
    QuantType(4, Scheme.ASYM, 128),
    QuantType(8, Scheme.SYM, 64),
    QuantType(2, Scheme.BIPOLAR, 256),
    QuantType(1, Scheme.BIPOLAR, 0),
    QuantType(3, Scheme.ASYM, 64),
    QuantType(4, Scheme.SYM, 0, layout=Layout.BITSLICED),
    QuantType(8, Scheme.ASYM, 128, layout=Layout.BITSLICED),
    # groups inside a split block, regrouped by decode_rows: 32-, 16- and 8-byte chunks per part
    QuantType(2, Scheme.SYM, 128),
    QuantType(4, Scheme.ASYM, 64),
    QuantType(1, Scheme.BIPOLAR, 128),
    QuantType(1, Scheme.BIPOLAR, 64),
]


@pytest.mark.skipif(not AMX, reason="needs AMX-INT8 and the kernel's permission to use it")
@pytest.mark.parametrize("q", AMX_FORMATS, ids=lambda q: q.name)
def test_amx_gemm_matches(q: QuantType) -> None:
    """M >= 32 runs the AMX GEMM: the same integers as the reference's act=int8 semantics, for
    ragged M and N (padding rows and weight rows past N), and threads split panels only. K holds
    two 1-bit split blocks, so regrouped steps follow each other across blocks."""
    k, n = 1024, 70
    kern = make_qmatmul(q, k, n, act="int8")
    assert kern.amx is not None and "llvm.x86.tdpbusd.internal" in kernel_source(kern)
    qw = _weight(q, k, n, seed=q.bits)
    for m in (32, 45, 96):
        _check(q, qw, m, "int8", vnni=None, seed=m)
    x = np.random.default_rng(9).standard_normal((40, k)).astype(np.float32)
    outs = []
    for threads in (1, 2):
        out = np.empty((40, n), np.float32)
        make_qmatmul(q, k, n, act="int8", threads=threads)(x, qw.codes, qw.scales, qw.zeros, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.skipif(not VNNI, reason="the AMX GEMM extends the VNNI kernels")
def test_amx_covers_groups_of_whole_steps_only() -> None:
    """Groups shorter than a 64-weight AMX step (4-bit groups of 32) keep the VNNI kernels at any M."""
    q = QuantType(4, Scheme.SYM, 32)
    kern = make_qmatmul(q, 512, 16, act="int8")
    assert kern.amx is None
    qw = _weight(q, 512, 16, seed=1)
    _check(q, qw, 40, "int8", vnni=None)


@pytest.mark.parametrize("r", [1, 2, 4, 8])
@pytest.mark.parametrize("gl", [32, 128, 512])
def test_activation_quantization_in_kernel_order(r: int, gl: int) -> None:
    """The int8 activations the LLVM kernels read: the reference integers and scales, the group
    sums of those integers, each block of 64 r in the split decoder's order (x_permutation)."""
    k, m = 1024, 3
    x = np.random.default_rng(r + gl).standard_normal((m, k)).astype(np.float32) * 3
    x[1] = 0.0  # an all-zero row: integers 0 (the kernels keep scale 0, the reference says 1)
    xq = np.empty((m, k), np.int8)
    sx, xs = np.empty((m, k // gl), np.float32), np.empty(m, np.float32)
    qkernels._quantize_act(x, r, gl, xq, sx, xs)
    want_q, want_s = quantize_rows_int8(x)
    np.testing.assert_array_equal(xs[[0, 2]], want_s.reshape(-1)[[0, 2]])
    np.testing.assert_array_equal(sx, want_q.astype(np.int64).reshape(m, -1, gl).sum(-1))
    perm = [i * r + j for j in range(r) for i in range(64)]  # position p holds weight perm[p]
    blocks = want_q.reshape(m, -1, 64 * r)[:, :, perm].reshape(m, k)
    np.testing.assert_array_equal(xq, blocks)


def test_half_scales_convert_exactly() -> None:
    """The Numba and AMX paths widen float16 scales with their own converter: every one of the
    65536 bit patterns (zeros, subnormals, inf, NaN payloads) as NumPy converts it."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    got = qkernels.scales_f32(h[:, ::2])  # a strided view too
    np.testing.assert_array_equal(got.view(np.uint32), h[:, ::2].astype(np.float32).view(np.uint32))
    assert got.flags.c_contiguous and got.dtype == np.float32
