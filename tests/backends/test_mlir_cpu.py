"""mlir-cpu: hand-written tensor-level modules of the export's form, JIT-run and checked against
NumPy; diagnostics mapped to kiln ops; a GFLOP/s print of the matmul schedule; and, once the
export exists, one-op graphs against the reference backend."""

from __future__ import annotations

import time
from typing import Any

import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("mlir.execution_engine")

from kiln.backends.mlir.common import HandModule, kiln_ops_of
from kiln.backends.mlir.cpu import CpuKernel, MlirCpuBackend, compile_module, lowered_text
from kiln.backends.mlir.pipeline import CpuTiles
from kiln.ir.errors import BackendError

RNG = np.random.default_rng(0)
F32 = np.dtype(np.float32)


def hand(
    text: str, name: str, args: list[np.ndarray], results: list[tuple[tuple[int, ...], Any]]
) -> HandModule:
    return HandModule(
        text,
        name,
        [(a.shape, a.dtype) for a in args],
        [(tuple(s), np.dtype(d)) for s, d in results],
    )


def kernel(
    text: str,
    name: str,
    args: list[np.ndarray],
    results: list[tuple[tuple[int, ...], Any]],
    threads: int = 1,
) -> CpuKernel:
    spec = hand(text, name, args, results)
    k = compile_module(spec, CpuTiles(threads=threads), strict=True, num_threads=threads)
    assert k.schedule_note is None
    return k


def rand(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def erf(x: np.ndarray) -> np.ndarray:
    from math import erf as _erf

    return np.vectorize(_erf)(x.astype(np.float64))


MLP = """
#map = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d1)>
func.func public @mlp(%a: tensor<{M}x{K}xf32>, %b: tensor<{K}x{N}xf32>, %bias: tensor<{N}xf32>) -> tensor<{M}x{N}xf32>
    attributes {{llvm.emit_c_interface}} {{
  %z = arith.constant 0.0 : f32 loc("constant %z at mlp.py:1")
  %e = tensor.empty() : tensor<{M}x{N}xf32> loc("matmul %h at mlp.py:2")
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<{M}x{N}xf32>) -> tensor<{M}x{N}xf32> loc("matmul %h at mlp.py:2")
  %h = linalg.matmul ins(%a, %b : tensor<{M}x{K}xf32>, tensor<{K}x{N}xf32>) outs(%f : tensor<{M}x{N}xf32>)
    -> tensor<{M}x{N}xf32> loc("matmul %h at mlp.py:2")
  %hb = linalg.generic {{indexing_maps = [#map, #row, #map], iterator_types = ["parallel", "parallel"]}}
      ins(%h, %bias : tensor<{M}x{N}xf32>, tensor<{N}xf32>) outs(%e : tensor<{M}x{N}xf32>) {{
  ^bb0(%x: f32, %y: f32, %o: f32):
    %s = arith.addf %x, %y : f32
    linalg.yield %s : f32
  }} -> tensor<{M}x{N}xf32> loc("add %hb at mlp.py:3")
  %g = linalg.generic {{indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]}}
      ins(%hb : tensor<{M}x{N}xf32>) outs(%e : tensor<{M}x{N}xf32>) {{
  ^bb0(%x: f32, %o: f32):
    %c = arith.constant 0.7071067811865476 : f32
    %half = arith.constant 0.5 : f32
    %one = arith.constant 1.0 : f32
    %xs = arith.mulf %x, %c : f32
    %er = math.erf %xs : f32
    %t = arith.addf %er, %one : f32
    %hx = arith.mulf %x, %half : f32
    %r = arith.mulf %hx, %t : f32
    linalg.yield %r : f32
  }} -> tensor<{M}x{N}xf32> loc("gelu %g at mlp.py:4")
  return %g : tensor<{M}x{N}xf32>
}}
"""


@pytest.mark.parametrize("m,k,n", [(32, 64, 128), (13, 24, 40), (5, 7, 50), (1, 96, 256)])
def test_mlp_matmul_bias_gelu(m: int, k: int, n: int) -> None:
    a, b, bias = rand(m, k), rand(k, n), rand(n)
    kern = kernel(MLP.format(M=m, K=k, N=n), "mlp", [a, b, bias], [((m, n), F32)])
    assert kern.vectorized_ops >= 2  # the matmul and the fused bias + gelu
    (out,) = kern([a, b, bias])
    h = a.astype(np.float64) @ b + bias
    np.testing.assert_allclose(out, 0.5 * h * (1 + erf(h / np.sqrt(2))), rtol=2e-5, atol=2e-5)


LAYERNORM = """
#map = affine_map<(d0, d1) -> (d0, d1)>
#red = affine_map<(d0, d1) -> (d0)>
#row = affine_map<(d0, d1) -> (d1)>
func.func public @ln(%x: tensor<{R}x{D}xf32>, %g: tensor<{D}xf32>, %b: tensor<{D}xf32>) -> tensor<{R}x{D}xf32>
    attributes {{llvm.emit_c_interface}} {{
  %z = arith.constant 0.0 : f32
  %e1 = tensor.empty() : tensor<{R}xf32>
  %acc = linalg.fill ins(%z : f32) outs(%e1 : tensor<{R}xf32>) -> tensor<{R}xf32>
  %sum = linalg.generic {{indexing_maps = [#map, #red], iterator_types = ["parallel", "reduction"]}}
      ins(%x : tensor<{R}x{D}xf32>) outs(%acc : tensor<{R}xf32>) {{
  ^bb0(%v: f32, %a: f32):
    %s = arith.addf %v, %a : f32
    linalg.yield %s : f32
  }} -> tensor<{R}xf32>
  %sq = linalg.generic {{indexing_maps = [#map, #red, #red], iterator_types = ["parallel", "reduction"]}}
      ins(%x, %sum : tensor<{R}x{D}xf32>, tensor<{R}xf32>) outs(%acc : tensor<{R}xf32>) {{
  ^bb0(%v: f32, %s: f32, %a: f32):
    %n = arith.constant {D}.0 : f32
    %mu = arith.divf %s, %n : f32
    %d = arith.subf %v, %mu : f32
    %d2 = arith.mulf %d, %d : f32
    %r = arith.addf %d2, %a : f32
    linalg.yield %r : f32
  }} -> tensor<{R}xf32>
  %e2 = tensor.empty() : tensor<{R}x{D}xf32>
  %y = linalg.generic {{indexing_maps = [#map, #red, #red, #row, #row, #map],
                        iterator_types = ["parallel", "parallel"]}}
      ins(%x, %sum, %sq, %g, %b : tensor<{R}x{D}xf32>, tensor<{R}xf32>, tensor<{R}xf32>, tensor<{D}xf32>, tensor<{D}xf32>)
      outs(%e2 : tensor<{R}x{D}xf32>) {{
  ^bb0(%v: f32, %s: f32, %q: f32, %gg: f32, %bb: f32, %o: f32):
    %n = arith.constant {D}.0 : f32
    %eps = arith.constant 1.0e-5 : f32
    %mu = arith.divf %s, %n : f32
    %var = arith.divf %q, %n : f32
    %ve = arith.addf %var, %eps : f32
    %rs = math.rsqrt %ve : f32
    %d = arith.subf %v, %mu : f32
    %nd = arith.mulf %d, %rs : f32
    %sc = arith.mulf %nd, %gg : f32
    %r = arith.addf %sc, %bb : f32
    linalg.yield %r : f32
  }} -> tensor<{R}x{D}xf32>
  return %y : tensor<{R}x{D}xf32>
}}
"""


@pytest.mark.parametrize("r,d", [(16, 768), (3, 100)])
def test_layernorm_row_reductions(r: int, d: int) -> None:
    x, g, b = rand(r, d), rand(d), rand(d)
    kern = kernel(LAYERNORM.format(R=r, D=d), "ln", [x, g, b], [((r, d), F32)])
    (out,) = kern([x, g, b])
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    want = (x64 - mu) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * g + b
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


ATTENTION = """
#m3 = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#r3 = affine_map<(d0, d1, d2) -> (d0, d1)>
func.func public @attn(%q: tensor<4x16x32xf32>, %k: tensor<4x16x32xf32>, %v: tensor<4x16x32xf32>)
    -> (tensor<4x16x32xf32>, tensor<16x4x32xf32>) attributes {llvm.emit_c_interface} {
  %z = arith.constant 0.0 : f32
  %ninf = arith.constant -3.0e38 : f32
  %kt0 = tensor.empty() : tensor<4x32x16xf32>
  %kt = linalg.transpose ins(%k : tensor<4x16x32xf32>) outs(%kt0 : tensor<4x32x16xf32>) permutation = [0, 2, 1]
  %s0 = tensor.empty() : tensor<4x16x16xf32>
  %s1 = linalg.fill ins(%z : f32) outs(%s0 : tensor<4x16x16xf32>) -> tensor<4x16x16xf32>
  %s = linalg.batch_matmul ins(%q, %kt : tensor<4x16x32xf32>, tensor<4x32x16xf32>) outs(%s1 : tensor<4x16x16xf32>) -> tensor<4x16x16xf32>
  %m0 = tensor.empty() : tensor<4x16xf32>
  %m1 = linalg.fill ins(%ninf : f32) outs(%m0 : tensor<4x16xf32>) -> tensor<4x16xf32>
  %mx = linalg.generic {indexing_maps = [#m3, #r3], iterator_types = ["parallel", "parallel", "reduction"]}
      ins(%s : tensor<4x16x16xf32>) outs(%m1 : tensor<4x16xf32>) {
  ^bb0(%x: f32, %a: f32):
    %r = arith.maximumf %x, %a : f32
    linalg.yield %r : f32
  } -> tensor<4x16xf32>
  %ex = linalg.generic {indexing_maps = [#m3, #r3, #m3], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%s, %mx : tensor<4x16x16xf32>, tensor<4x16xf32>) outs(%s0 : tensor<4x16x16xf32>) {
  ^bb0(%x: f32, %m: f32, %o: f32):
    %d = arith.subf %x, %m : f32
    %r = math.exp %d : f32
    linalg.yield %r : f32
  } -> tensor<4x16x16xf32>
  %z1 = linalg.fill ins(%z : f32) outs(%m0 : tensor<4x16xf32>) -> tensor<4x16xf32>
  %sm = linalg.generic {indexing_maps = [#m3, #r3], iterator_types = ["parallel", "parallel", "reduction"]}
      ins(%ex : tensor<4x16x16xf32>) outs(%z1 : tensor<4x16xf32>) {
  ^bb0(%x: f32, %a: f32):
    %r = arith.addf %x, %a : f32
    linalg.yield %r : f32
  } -> tensor<4x16xf32>
  %p = linalg.generic {indexing_maps = [#m3, #r3, #m3], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%ex, %sm : tensor<4x16x16xf32>, tensor<4x16xf32>) outs(%s0 : tensor<4x16x16xf32>) {
  ^bb0(%x: f32, %t: f32, %o: f32):
    %r = arith.divf %x, %t : f32
    linalg.yield %r : f32
  } -> tensor<4x16x16xf32>
  %o0 = tensor.empty() : tensor<4x16x32xf32>
  %o1 = linalg.fill ins(%z : f32) outs(%o0 : tensor<4x16x32xf32>) -> tensor<4x16x32xf32>
  %o = linalg.batch_matmul ins(%p, %v : tensor<4x16x16xf32>, tensor<4x16x32xf32>) outs(%o1 : tensor<4x16x32xf32>) -> tensor<4x16x32xf32>
  %t0 = tensor.empty() : tensor<16x4x32xf32>
  %t = linalg.transpose ins(%o : tensor<4x16x32xf32>) outs(%t0 : tensor<16x4x32xf32>) permutation = [1, 0, 2]
  return %o, %t : tensor<4x16x32xf32>, tensor<16x4x32xf32>
}
"""


def test_attention_batch_matmul_softmax_transpose() -> None:
    q, k, v = rand(4, 16, 32), rand(4, 16, 32), rand(4, 16, 32)
    kern = kernel(ATTENTION, "attn", [q, k, v], [((4, 16, 32), F32), ((16, 4, 32), F32)])
    o, t = kern([q, k, v])
    s = q.astype(np.float64) @ k.transpose(0, 2, 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t, want.transpose(1, 0, 2), rtol=1e-4, atol=1e-5)


SHAPES = """
func.func public @shapes(%x: tensor<6x8xf32>, %b: tensor<8xf32>) -> (tensor<4x8xf32>, tensor<48xf32>, tensor<2x3x8xf32>, tensor<12x8xf32>)
    attributes {llvm.emit_c_interface} {
  %e = tensor.empty() : tensor<4x8xf32>
  %bc = linalg.broadcast ins(%b : tensor<8xf32>) outs(%e : tensor<4x8xf32>) dimensions = [0]
  %sl = tensor.extract_slice %x[1, 0] [4, 8] [1, 1] : tensor<6x8xf32> to tensor<4x8xf32>
  %sum = linalg.add ins(%sl, %bc : tensor<4x8xf32>, tensor<4x8xf32>) outs(%e : tensor<4x8xf32>) -> tensor<4x8xf32>
  %ins = tensor.insert_slice %sum into %x[2, 0] [4, 8] [1, 1] : tensor<4x8xf32> into tensor<6x8xf32>
  %flat = tensor.collapse_shape %ins [[0, 1]] : tensor<6x8xf32> into tensor<48xf32>
  %ex = tensor.expand_shape %x [[0, 1], [2]] output_shape [2, 3, 8] : tensor<6x8xf32> into tensor<2x3x8xf32>
  %cat = tensor.concat dim(0) %x, %ins : (tensor<6x8xf32>, tensor<6x8xf32>) -> tensor<12x8xf32>
  return %sum, %flat, %ex, %cat : tensor<4x8xf32>, tensor<48xf32>, tensor<2x3x8xf32>, tensor<12x8xf32>
}
"""


def test_broadcast_slices_reshapes_concat() -> None:
    x, b = rand(6, 8), rand(8)
    kern = kernel(SHAPES, "shapes", [x, b], [((4, 8), F32), ((48,), F32), ((2, 3, 8), F32), ((12, 8), F32)])
    s, flat, ex, cat = kern([x, b])
    want = x[1:5] + b
    ins = x.copy()
    ins[2:6] = want
    np.testing.assert_allclose(s, want, rtol=1e-6)
    np.testing.assert_allclose(flat, ins.reshape(-1), rtol=1e-6)
    np.testing.assert_array_equal(ex, x.reshape(2, 3, 8))
    np.testing.assert_allclose(cat, np.concatenate([x, ins]), rtol=1e-6)
    assert (x == kern.prepare(x, 0)).all()  # inputs are not written


DTYPES = """
#m = affine_map<(d0) -> (d0)>
func.func public @dtypes(%a: tensor<64xbf16>, %b: tensor<64xbf16>, %h: tensor<8x16xf16>, %w: tensor<16x32xf16>,
                         %m: tensor<64xi1>, %i: tensor<64xi32>, %d: tensor<64xf64>)
    -> (tensor<64xbf16>, tensor<8x32xf16>, tensor<64xi1>, tensor<64xi32>, tensor<64xf64>) attributes {llvm.emit_c_interface} {
  %eb = tensor.empty() : tensor<64xbf16>
  %ab = linalg.generic {indexing_maps = [#m, #m, #m], iterator_types = ["parallel"]}
      ins(%a, %b : tensor<64xbf16>, tensor<64xbf16>) outs(%eb : tensor<64xbf16>) {
  ^bb0(%x: bf16, %y: bf16, %o: bf16):
    %s = arith.mulf %x, %y : bf16
    %t = math.tanh %s : bf16
    linalg.yield %t : bf16
  } -> tensor<64xbf16>
  %zh = arith.constant 0.0 : f16
  %eh = tensor.empty() : tensor<8x32xf16>
  %fh = linalg.fill ins(%zh : f16) outs(%eh : tensor<8x32xf16>) -> tensor<8x32xf16>
  %mh = linalg.matmul ins(%h, %w : tensor<8x16xf16>, tensor<16x32xf16>) outs(%fh : tensor<8x32xf16>) -> tensor<8x32xf16>
  %e1 = tensor.empty() : tensor<64xi1>
  %ei = tensor.empty() : tensor<64xi32>
  %cmp = linalg.generic {indexing_maps = [#m, #m, #m], iterator_types = ["parallel"]}
      ins(%i, %m : tensor<64xi32>, tensor<64xi1>) outs(%e1 : tensor<64xi1>) {
  ^bb0(%x: i32, %y: i1, %o: i1):
    %c0 = arith.constant 0 : i32
    %p = arith.cmpi sgt, %x, %c0 : i32
    %r = arith.xori %p, %y : i1
    linalg.yield %r : i1
  } -> tensor<64xi1>
  %sel = linalg.generic {indexing_maps = [#m, #m, #m], iterator_types = ["parallel"]}
      ins(%i, %m : tensor<64xi32>, tensor<64xi1>) outs(%ei : tensor<64xi32>) {
  ^bb0(%x: i32, %y: i1, %o: i32):
    %c3 = arith.constant 3 : i32
    %s = arith.muli %x, %c3 : i32
    %r = arith.select %y, %s, %x : i32
    linalg.yield %r : i32
  } -> tensor<64xi32>
  %ed = tensor.empty() : tensor<64xf64>
  %dd = linalg.generic {indexing_maps = [#m, #m], iterator_types = ["parallel"]}
      ins(%d : tensor<64xf64>) outs(%ed : tensor<64xf64>) {
  ^bb0(%x: f64, %o: f64):
    %r = math.exp %x : f64
    %q = math.erf %r : f64
    linalg.yield %q : f64
  } -> tensor<64xf64>
  return %ab, %mh, %cmp, %sel, %dd : tensor<64xbf16>, tensor<8x32xf16>, tensor<64xi1>, tensor<64xi32>, tensor<64xf64>
}
"""


def test_dtypes_bf16_f16_bool_int_f64() -> None:
    bf = np.dtype(ml_dtypes.bfloat16)
    a, b = rand(64, dtype=bf), rand(64, dtype=bf)
    h, w = rand(8, 16, dtype=np.float16), rand(16, 32, dtype=np.float16)
    m = RNG.random(64) > 0.5
    i = RNG.integers(-5, 5, 64).astype(np.int32)
    d = RNG.standard_normal(64) * 0.5
    kern = kernel(
        DTYPES,
        "dtypes",
        [a, b, h, w, m, i, d],
        [((64,), bf), ((8, 32), np.float16), ((64,), np.bool_), ((64,), np.int32), ((64,), np.float64)],
    )
    ab, mh, cmp, sel, dd = kern([a, b, h, w, m, i, d])
    np.testing.assert_allclose(
        ab.astype(np.float32), np.tanh(a.astype(np.float32) * b.astype(np.float32)), rtol=3e-2, atol=1e-2
    )
    np.testing.assert_allclose(
        mh.astype(np.float32), h.astype(np.float32) @ w.astype(np.float32), rtol=1e-2, atol=2e-2
    )
    assert cmp.dtype == np.bool_
    np.testing.assert_array_equal(cmp, (i > 0) ^ m)
    np.testing.assert_array_equal(sel, np.where(m, i * 3, i))
    np.testing.assert_allclose(dd, erf(np.exp(d)), rtol=1e-12)


GATHER = """
#m2 = affine_map<(d0, d1) -> (d0, d1)>
#i = affine_map<(d0, d1) -> (d0)>
func.func public @embed(%ids: tensor<5xi64>, %table: tensor<10x16xf32>) -> tensor<5x16xf32> attributes {llvm.emit_c_interface} {
  %e = tensor.empty() : tensor<5x16xf32>
  %r = linalg.generic {indexing_maps = [#i, #m2], iterator_types = ["parallel", "parallel"]}
      ins(%ids : tensor<5xi64>) outs(%e : tensor<5x16xf32>) {
  ^bb0(%id: i64, %o: f32):
    %row = arith.index_cast %id : i64 to index
    %col = linalg.index 1 : index
    %v = tensor.extract %table[%row, %col] : tensor<10x16xf32>
    linalg.yield %v : f32
  } -> tensor<5x16xf32>
  return %r : tensor<5x16xf32>
}
"""


def test_gather_through_tensor_extract() -> None:
    ids, table = np.array([3, 0, 9, 3, 1], np.int64), rand(10, 16)
    (out,) = kernel(GATHER, "embed", [ids, table], [((5, 16), F32)])([ids, table])
    np.testing.assert_array_equal(out, table[ids])


BAD = """
func.func private @opaque(tensor<4xf32>) -> tensor<4xf32> loc("custom_call %y at model.py:7")
func.func public @bad(%x: tensor<4xf32>) -> tensor<4xf32> attributes {llvm.emit_c_interface} {
  %y = func.call @opaque(%x) : (tensor<4xf32>) -> tensor<4xf32> loc("custom_call %y at model.py:7")
  return %y : tensor<4xf32>
}
"""


def test_pipeline_errors_name_the_step_and_the_kiln_op() -> None:
    with pytest.raises(BackendError) as info:
        compile_module(HandModule(BAD, "bad", [((4,), F32)], [((4,), F32)]), strict=True)
    msg = str(info.value)
    assert "'jit' step failed" in msg and "@opaque" in msg
    assert "custom_call %y at model.py:7" in msg
    assert "Traceback" not in msg


def test_kiln_ops_of_locations() -> None:
    assert kiln_ops_of('loc("matmul %3 at f.py:2")') == ["matmul %3 at f.py:2"]
    assert kiln_ops_of('loc(fused["add %1 at a", "gelu %2 at b"])') == ["add %1 at a", "gelu %2 at b"]
    assert kiln_ops_of("loc(unknown)") == []


MATMUL = """
func.func public @mm(%a: tensor<{M}x{K}xf32>, %b: tensor<{K}x{N}xf32>) -> tensor<{M}x{N}xf32> attributes {{llvm.emit_c_interface}} {{
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<{M}x{N}xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<{M}x{N}xf32>) -> tensor<{M}x{N}xf32>
  %r = linalg.matmul ins(%a, %b : tensor<{M}x{K}xf32>, tensor<{K}x{N}xf32>) outs(%f : tensor<{M}x{N}xf32>) -> tensor<{M}x{N}xf32>
  return %r : tensor<{M}x{N}xf32>
}}
"""


def matmul_gflops(m: int, k: int, n: int, reps: int = 10, threads: int = 1) -> tuple[float, float]:
    """GFLOP/s of the mlir-cpu schedule and of NumPy (best of ``reps``) on an m x k x n matmul."""
    a, b = rand(m, k), rand(k, n)
    kern = kernel(MATMUL.format(M=m, K=k, N=n), "mm", [a, b], [((m, n), F32)], threads=threads)
    out = np.empty((m, n), np.float32)
    kern.call_raw([a, b, out])
    np.testing.assert_allclose(out, a @ b, rtol=1e-3, atol=1e-3)

    def best(f: Any) -> float:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return 2.0 * m * n * k / min(ts) / 1e9

    return best(lambda: kern.call_raw([a, b, out])), best(lambda: a @ b)


def test_matmul_512_gflops(capsys: pytest.CaptureFixture[str]) -> None:
    ours, ref = matmul_gflops(512, 512, 512)
    par, _ = matmul_gflops(512, 512, 512, threads=2)
    with capsys.disabled():
        print(
            f"\nmlir-cpu matmul 512^3: {ours:.1f} GFLOP/s (1 thread), {par:.1f} (2 threads); "
            f"numpy/BLAS: {ref:.1f} GFLOP/s"
        )
    assert ours > 0 and par > 0


# -- parallel kernels (OpenMP) ------------------------------------------------------------------
# Threads only split parallel loops (strips, batches, rows), never a reduction, so a parallel
# kernel's results are bitwise those of the sequential one.


@pytest.mark.parametrize(
    "m,k,n",
    [
        (128, 256, 512),  # column strips are the parallel loop
        (1, 768, 768),  # decode: strips of one row
        (64, 128, 64),  # no strips: blocks of rows
        (13, 24, 40),  # too small: stays sequential
    ],
)
def test_parallel_matmul_gelu_equals_sequential(m: int, k: int, n: int) -> None:
    a, b, bias = rand(m, k), rand(k, n), rand(n)
    args = [a, b, bias]
    (seq,) = kernel(MLP.format(M=m, K=k, N=n), "mlp", args, [((m, n), F32)])(args)
    (par,) = kernel(MLP.format(M=m, K=k, N=n), "mlp", args, [((m, n), F32)], threads=2)(args)
    np.testing.assert_array_equal(par, seq)
    h = a.astype(np.float64) @ b + bias
    np.testing.assert_allclose(par, 0.5 * h * (1 + erf(h / np.sqrt(2))), rtol=2e-5, atol=2e-5)


def test_parallel_row_reductions_equal_sequential() -> None:
    x, g, b = rand(128, 768), rand(768), rand(768)
    text = LAYERNORM.format(R=128, D=768)
    (seq,) = kernel(text, "ln", [x, g, b], [((128, 768), F32)])([x, g, b])
    (par,) = kernel(text, "ln", [x, g, b], [((128, 768), F32)], threads=2)([x, g, b])
    np.testing.assert_array_equal(par, seq)
    mu = x.mean(-1, keepdims=True)
    want = (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b
    np.testing.assert_allclose(par, want, rtol=1e-4, atol=1e-4)


def test_parallel_loops_become_openmp_only_when_asked() -> None:
    a, b, bias = rand(128, 256), rand(256, 512), rand(512)
    spec = hand(MLP.format(M=128, K=256, N=512), "mlp", [a, b, bias], [((128, 512), F32)])
    par = lowered_text(spec, CpuTiles(threads=2), num_threads=2)
    assert "omp.parallel" in par and "omp.wsloop" in par
    assert "omp.parallel" not in lowered_text(spec, CpuTiles(threads=1))


def attention_graph(h: int, s: int, d: int) -> tuple[Any, dict[str, np.ndarray]]:
    import kiln

    def attn(q: Any, k: Any, v: Any) -> Any:
        p = kiln.ops.softmax(q @ k.transpose(0, 2, 1), axis=-1)
        return p @ v

    q, k, v = rand(h, s, d), rand(h, s, d), rand(h, s, d)
    graph = kiln.jit(attn).lower(q, k, v).graph
    return graph, {n: x for n, x in zip(graph.input_names, (q, k, v), strict=True)}


def test_parallel_backend_batch_matmul_matches_numpy() -> None:
    graph, feeds = attention_graph(12, 128, 64)
    (got,) = MlirCpuBackend(threads=2).compile(graph)(feeds).values()
    (seq,) = MlirCpuBackend(threads=1).compile(graph)(feeds).values()
    q, k, v = (feeds[n].astype(np.float64) for n in graph.input_names)
    s = q @ k.transpose(0, 2, 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(got, (p / p.sum(-1, keepdims=True)) @ v, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got, seq)


def test_parallel_kernels_share_the_process_with_numba_parallel() -> None:
    """libomp is opened privately: numba's OpenMP layer (GNU libgomp) keeps working beside it."""
    import numba

    @numba.njit(parallel=True)
    def row_sums(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape[0])
        for i in numba.prange(x.shape[0]):
            out[i] = x[i].sum()
        return out

    a, b, bias = rand(128, 256), rand(256, 512), rand(512)
    mlp = kernel(MLP.format(M=128, K=256, N=512), "mlp", [a, b, bias], [((128, 512), F32)], threads=2)
    for _ in range(3):
        (y,) = mlp([a, b, bias])
        np.testing.assert_allclose(row_sums(y), y.astype(np.float64).sum(1), rtol=1e-4, atol=1e-3)


def test_backend_thread_options_are_checked() -> None:
    with pytest.raises(BackendError, match="threads must be >= 1"):
        MlirCpuBackend(threads=0)
    with pytest.raises(BackendError, match="spin_ms must be >= 0"):
        MlirCpuBackend(spin_ms=-1)


def test_missing_openmp_runtime_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.backends import openmp

    openmp.runtime.cache_clear()
    monkeypatch.setattr(openmp.metadata, "files", lambda name: [])
    try:
        with pytest.raises(BackendError, match="cmeel-libomp"):
            MlirCpuBackend(threads=None)
        MlirCpuBackend(threads=1)  # sequential kernels need no runtime
    finally:
        monkeypatch.undo()
        openmp.runtime.cache_clear()
