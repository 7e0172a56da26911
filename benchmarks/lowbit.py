"""Low-bit matmuls on CPU: kiln numba-cpu at 8..1 bits against NumPy float32 and onnxruntime, side by side.

Part 1, kernels: ``y = x @ W`` with W 4096x4096 (group 128) for 1 (GEMV), 16 and 128 activation
rows: NumPy float32; onnxruntime MatMulNBits 4-bit (block 32 and 128, accuracy_level 0 and 4) and
2-bit (block 128, accuracy_level 4); onnxruntime's dynamically int8-quantized MatMul
(``quantize_dynamic``: DynamicQuantizeLinear + MatMulInteger); kiln at 8, 4, 3, 2 and 1 bits in
the packed and the bit-sliced layout with int8 activations, 4-bit with float32 activations, and
1/2/4-bit with binary activations (popcount kernels on bit-sliced weights, the float kernel on the
binarized rows for packed ones).
Weights are hot (the same W every call). It prints microseconds, GB/s of weight bytes (codes and
scales) and each time over onnxruntime's fastest 4-bit configuration.

Part 1b, layout costs: each layout's kernel with float and with binary activations at M=1 and
M=16, printed as the entries of ``Target.qkernel_cost`` that the bitslice pass chooses from.

Part 2, a GPT-2-small decode step through all 12 layers (KV cache 128): NumPy, onnxruntime
float32 (kiln's traced graph exported with kiln.to_onnx, all graph optimisations), kiln numba-cpu
float32, and kiln numba-cpu with 4-bit and 2-bit weights (quantize{...,act=int8},default). It
prints milliseconds, weight bytes and the effective weight bandwidth next to the machine's memory
bandwidth measured in the same run.

Threads: ``--threads`` (default 2) for every system; the variables are set before NumPy, numba or
onnxruntime load. Run: ``python benchmarks/lowbit.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys


def _set_threads(argv: list[str]) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=int, default=2)
    n = int(p.parse_known_args(argv)[0].threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


if __name__ == "__main__":
    _set_threads(sys.argv[1:])

import importlib.util  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import kiln  # noqa: E402
from kiln.backends.numba_cpu.qkernels import make_qmatmul  # noqa: E402
from kiln.ir.dtypes import Layout, QuantType, Scheme  # noqa: E402
from kiln.ir.quant import pack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def median_us(fn: Callable[[], object], budget_s: float, min_calls: int = 5) -> float:
    """Median microseconds per call after warm-up, over about ``budget_s`` seconds of calls."""
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    est = max((time.perf_counter() - t0) / 3, 1e-7)
    times = []
    for _ in range(max(min_calls, min(20_000, int(budget_s / est)))):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def pause() -> None:
    time.sleep(0.3)  # idle thread pools (OpenBLAS, OpenMP, onnxruntime) stop spinning


def read_us(threads: int) -> Callable[[np.ndarray], float]:
    """``time(a)``: median us of reading every 8-byte word of ``a`` (an XOR of them), split into
    one contiguous run per thread on libomp's spinning team, as the GEMV kernels split their
    weight rows. The floor for any kernel that reads ``a`` once."""
    from numba import carray, cfunc, njit, types

    from kiln.backends import openmp
    from kiln.backends.numba_cpu import omp_fork
    from kiln.backends.numba_cpu.ffi import call_i64, ptr_of

    @cfunc(types.void(types.int64, types.int64))
    def part(c: int, params: int) -> None:
        p = carray(ptr_of(params, np.int64(0)), (3,))  # type: ignore[call-arg]
        words = carray(ptr_of(p[0] + 8 * c * p[1], np.uint64(0)), (p[1],))  # type: ignore[call-arg]
        acc = np.uint64(0)
        for i in range(p[1]):
            acc ^= words[i]
        carray(ptr_of(p[2], np.uint64(0)), (threads,))[c] = acc  # type: ignore[call-arg]

    @njit
    def run(fork: int, body: int, params: np.ndarray, parts: int) -> None:
        call_i64(fork, (body, params.ctypes.data, parts, parts), (params,))  # type: ignore[call-arg]

    fork, body = omp_fork.compiled_fork().address, part.address
    sink = np.zeros(threads, np.uint64)

    def time_read(a: np.ndarray) -> float:
        words = a.reshape(-1).view(np.uint64)
        params = np.array([words.ctypes.data, words.size // threads, sink.ctypes.data], np.int64)
        openmp.set_spin(5)
        return median_us(lambda: run(fork, body, params, threads), 0.5)

    return time_read


def memory_bandwidth(threads: int) -> tuple[float, float]:
    """GB/s of a parallel read of 16 MiB (cache-resident here) and of 512 MiB (memory)."""
    time_read = read_us(threads)
    out = []
    for mib in (16, 512):
        a = np.ones(mib << 17, np.uint64)
        out.append(a.nbytes / time_read(a) / 1e3)
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------
# part 1: kernels


def ort_session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_matmulnbits(
    u: np.ndarray, scales: np.ndarray, bits: int, block: int, level: int, threads: int
) -> Any:
    import onnx
    from onnx import TensorProto, helper

    n, k = u.shape
    codes = pack(QuantType(bits, Scheme.SYM, block), u).reshape(n, k // block, block * bits // 8)
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=block, accuracy_level=level)  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[onnx.numpy_helper.from_array(codes, "B"),
                     onnx.numpy_helper.from_array(scales.astype(np.float32).reshape(-1), "S")],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    return ort_session(model, threads)


def ort_int8_dynamic(w: np.ndarray, threads: int, tmp: str) -> Any:
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization import QuantType as OrtQuantType
    from onnxruntime.quantization import quantize_dynamic

    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[onnx.numpy_helper.from_array(w, "W")],
    )  # fmt: skip
    src, dst = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "int8.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), src)
    quantize_dynamic(src, dst, weight_type=OrtQuantType.QInt8)
    return ort_session(onnx.load(dst), threads)


def kernels(threads: int, quick: bool, tmp: str) -> None:
    k = n = 2048 if quick else 4096
    rows = [1, 16] if quick else [1, 16, 128]
    budget = 0.3 if quick else 1.5
    rng = np.random.default_rng(0)
    xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in rows}
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    table: list[tuple[str, float, dict[int, float]]] = []  # (name, weight bytes, us per M)
    runs: dict[str, Callable[[np.ndarray], object]] = {}

    def add(name: str, nbytes: float, run: Callable[[np.ndarray], object]) -> None:
        table.append((name, nbytes, {m: median_us(lambda m=m: run(xs[m]), budget) for m in rows}))
        runs[name] = run
        pause()

    add("numpy float32", w.nbytes, lambda x: x @ w)
    u4 = rng.integers(1, 16, (n, k), dtype=np.uint8)
    for bits, block, level in ((4, 32, 0), (4, 32, 4), (4, 128, 0), (4, 128, 4), (2, 128, 4)):
        u = u4 if bits == 4 else rng.integers(0, 4, (n, k), dtype=np.uint8)
        scales = (rng.random((n, k // block)) * 0.01 + 0.001).astype(np.float32)
        sess = ort_matmulnbits(u, scales, bits, block, level, threads)
        add(f"onnxruntime MatMulNBits {bits}-bit b{block} acc{level}", u.size * bits / 8 + scales.nbytes / 2,
            lambda x, s=sess: s.run(None, {"A": x}))  # fmt: skip
    sess8 = ort_int8_dynamic(w, threads, tmp)
    add("onnxruntime int8 dynamic (MatMulInteger)", w.size, lambda x: sess8.run(None, {"A": x}))
    for bits in (8, 4, 3, 2, 1):
        u = rng.integers(0, 2**bits, (n, k), dtype=np.uint8)
        scheme = Scheme.SYM if bits > 1 else Scheme.BIPOLAR
        for layout in (Layout.PACKED, Layout.BITSLICED):
            q = QuantType(bits, scheme, 128, layout=layout)
            codes = pack(q, u)
            scales = (rng.random((n, k // 128)) * 0.01 + 0.001).astype(np.float16)
            kern = make_qmatmul(q, k, n, act="int8", threads=threads)
            outs = {m: np.empty((m, n), np.float32) for m in rows}
            add(f"kiln {bits}-bit {layout} (int8 act, {kern.path})", codes.nbytes + scales.nbytes,
                lambda x, kern=kern, codes=codes, scales=scales, outs=outs:
                kern(x, codes, scales, None, outs[x.shape[0]]))  # fmt: skip
    # the kernels a CPU without AVX-512 VNNI runs: bit-serial popcounts (bit-sliced), unpack
    # (packed); and binary activations (one bit each): popcounts with bit-sliced weights, the
    # float kernels on the binarized rows for packed ones
    sliced = Layout.BITSLICED
    for bits, layout, act, kind in ((4, sliced, "int8", "popcount"), (2, sliced, "int8", "popcount"),
                                    (1, sliced, "int8", "popcount"), (4, Layout.PACKED, "int8", "unpack"),
                                    (1, sliced, "binary", None), (2, sliced, "binary", None),
                                    (4, sliced, "binary", None), (4, Layout.PACKED, "binary", None)):  # fmt: skip
        q = QuantType(bits, Scheme.SYM if bits > 1 else Scheme.BIPOLAR, 128, layout=layout)
        codes = pack(q, rng.integers(0, 2**bits, (n, k), dtype=np.uint8))
        scales = (rng.random((n, k // 128)) * 0.01 + 0.001).astype(np.float16)
        kern = make_qmatmul(q, k, n, act=act, threads=threads, kernel=kind)
        outs = {m: np.empty((m, n), np.float32) for m in rows}
        add(f"kiln {bits}-bit {layout} ({act} act, {kern.path})", codes.nbytes + scales.nbytes,
            lambda x, kern=kern, codes=codes, scales=scales, outs=outs:
            kern(x, codes, scales, None, outs[x.shape[0]]))  # fmt: skip
    q4 = QuantType(4, Scheme.SYM, 128)
    c4, s4 = pack(q4, u4), (rng.random((n, k // 128)) * 0.01).astype(np.float16)
    kf = make_qmatmul(q4, k, n, act="f32", threads=threads)
    outs = {m: np.empty((m, n), np.float32) for m in rows}
    add(f"kiln 4-bit packed (f32 act, {kf.path})", c4.nbytes + s4.nbytes,
        lambda x: kf(x, c4, s4, None, outs[x.shape[0]]))  # fmt: skip

    ort4 = [t for t in table if t[0].startswith("onnxruntime MatMulNBits 4-bit")]
    best = {m: min(t[2][m] for t in ort4) for m in rows}
    print(f"\n== kernels: y = x @ W, W {k}x{n}, group/block 128 unless named; {threads} threads; median us")
    head = "".join(f"{'M=' + str(m):>10}" for m in rows)
    print(f"{'system':<58}{head}{'GB/s M=1':>10}" + "".join(f"{'/ORT4 M=' + str(m):>12}" for m in rows))
    for name, nbytes, us in table:
        cols = "".join(f"{us[m]:>10.1f}" for m in rows)
        ratios = "".join(f"{us[m] / best[m]:>12.2f}" for m in rows)
        print(f"{name:<58}{cols}{nbytes / us[1] / 1e3:>10.1f}{ratios}")
    print(
        "/ORT4: time over onnxruntime's fastest 4-bit MatMulNBits configuration at that M (lower is faster)"
    )
    best_ort = min(ort4, key=lambda t: t[2][1])[0]
    heads = ["numpy float32", best_ort] + [
        next(t[0] for t in table if t[0].startswith(f"kiln {b}-bit packed (int8 act")) for b in (4, 2, 1)
    ]
    # the floor: reading as many bytes as the 4-bit weight holds (codes and scales), split as the
    # GEMV splits them; NumPy's time over it bounds how much faster than NumPy any 4-bit GEMV can be
    floor = "read of the 4-bit weight's bytes (the floor)"
    weight = np.ones(-(-(c4.nbytes + s4.nbytes) // (8 * threads)) * 8 * threads, np.uint8)
    time_read = read_us(threads)
    interleaved(heads, {h: runs[h] for h in heads}, xs[1], rounds=3 if quick else 7,
                floor=(floor, lambda: time_read(weight)))  # fmt: skip


def layout_costs(threads: int, quick: bool) -> None:
    """For the bitslice pass: each layout's kernel at M=1 (GEMV) and M=16 (GEMM) with float and
    binary activations, printed as entries of ``Target.qkernel_cost`` (the int8 ones are the
    kernel table's rows)."""
    k = n = 2048 if quick else 4096
    rng = np.random.default_rng(2)
    xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in (1, 16)}
    print(f"\n== layout costs (Target.qkernel_cost entries), {k}x{n}, {threads} threads, median us")
    for act in ("binary", "f32"):
        for bits in (1, 2, 3, 4, 8):
            for layout in (Layout.PACKED, Layout.BITSLICED):
                q = QuantType(bits, Scheme.SYM if bits > 1 else Scheme.BIPOLAR, 128, layout=layout)
                codes = pack(q, rng.integers(0, 2**bits, (n, k), dtype=np.uint8))
                scales = (rng.random((n, k // 128)) * 0.01 + 0.001).astype(np.float16)
                kern = make_qmatmul(q, k, n, act=act, threads=threads)
                us = []
                for m in (1, 16):
                    out = np.empty((m, n), np.float32)
                    call = partial(kern, xs[m], codes, scales, None, out)
                    us.append(median_us(call, 0.2 if quick else 0.6))
                print(f'("{layout}", "gemv", {bits}, "{act}", {us[0]:.1f}), ("{layout}", "gemm", {bits}, "{act}", '
                      f"{us[1]:.1f}),  # {kern.path}")  # fmt: skip


def interleaved(names: list[str], runs: dict[str, Callable[[np.ndarray], object]], x: np.ndarray,
                rounds: int, floor: tuple[str, Callable[[], float]]) -> None:  # fmt: skip
    """The headline GEMVs again, in rounds that take each system in turn: a machine that speeds up
    or slows down between the table's rows (a shared host) then moves every system of a round
    alike, and the ratios are taken within each round."""
    us: dict[str, list[float]] = {n: [] for n in [*names, floor[0]]}
    for _ in range(rounds):
        for name in names:
            us[name].append(median_us(lambda name=name: runs[name](x), 0.3))
            time.sleep(0.05)
        us[floor[0]].append(floor[1]())
    print(f"\n== GEMV M=1 in {rounds} interleaved rounds (median us per round; ratios within each round)")
    for name in [*names, floor[0]]:
        v = us[name]
        print(f"{name:<58}{'min':>6}{min(v):>9.1f}{'median':>9}{float(np.median(v)):>9.1f}")
    k4, k2, k1 = (np.array(us[n]) for n in names[2:])
    read = np.array(us[floor[0]])
    for label, ratio in (
        ("NumPy float32 / kiln 4-bit", np.array(us[names[0]]) / k4),
        ("onnxruntime 4-bit / kiln 4-bit", np.array(us[names[1]]) / k4),
        ("kiln 4-bit / kiln 2-bit", k4 / k2),
        ("kiln 2-bit / kiln 1-bit", k2 / k1),
        ("kiln 4-bit / the floor", k4 / read),
        ("NumPy float32 / the floor (the most possible)", np.array(us[names[0]]) / read),
    ):
        print(
            f"{label:<46} median {float(np.median(ratio)):.2f}x  (rounds: {', '.join(f'{r:.2f}' for r in ratio)})"
        )


# ----------------------------------------------------------------------------------------------
# part 2: GPT-2-small decode, 12 layers


def load_transformer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kiln_example_transformer", ROOT / "examples" / "transformer.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def decode(threads: int, quick: bool, tmp: str) -> None:
    import onnxruntime as ort

    T = load_transformer()  # noqa: N806
    cfg = T.Config(d_model=256, n_heads=4, d_ff=1024, n_layers=2) if quick else T.Config()
    layers = T.init_layers(cfg)
    rng = np.random.default_rng(1)
    kv = 16 if quick else 128
    x = rng.standard_normal((1, cfg.d_model)).astype(np.float32)
    pk = (rng.standard_normal((cfg.n_layers, cfg.n_heads, kv, cfg.head_dim)) * 0.5).astype(np.float32)
    pv = (rng.standard_normal((cfg.n_layers, cfg.n_heads, kv, cfg.head_dim)) * 0.5).astype(np.float32)
    args = (x, pk, pv)
    want = T.numpy_decode_body(cfg, layers, *args)
    budget = 0.5 if quick else 3.0
    wbytes = sum(p[k].nbytes for p in layers for k in ("w_qkv", "w_o", "w_fc", "w_proj"))
    rows: list[tuple[str, float, float, str]] = []  # name, ms, weight bytes, note

    def err(got: Any) -> str:
        y = np.asarray(got[0] if isinstance(got, tuple | list) else got)
        rel = float(np.linalg.norm(y - want[0]) / np.linalg.norm(want[0]))
        return f"rel. err of y {rel:.1e}"

    rows.append(("numpy float32", median_us(lambda: T.numpy_decode_body(cfg, layers, *args), budget) / 1e3,
                 wbytes, ""))  # fmt: skip
    pause()
    body = T.make_decode_body(cfg, layers, target="numba-cpu")
    graph = body.lower(*args).graph
    path = os.path.join(tmp, "decode.onnx")
    kiln.to_onnx(graph, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = dict(zip(graph.input_names, args, strict=True))
    rows.append(("onnxruntime float32", median_us(lambda: sess.run(None, feeds), budget) / 1e3, wbytes,
                 err(sess.run(None, feeds))))  # fmt: skip
    pause()
    body(*args)
    rows.append(
        ("kiln numba-cpu float32", median_us(lambda: body(*args), budget) / 1e3, wbytes, err(body(*args)))
    )
    pause()
    for bits in (4, 2):
        pipe = f"quantize{{bits={bits},group=128,act=int8}},default"
        qbody = T.make_decode_body(cfg, layers, target="numba-cpu", pipeline=pipe)
        t0 = time.perf_counter()
        got = qbody(*args)
        setup = time.perf_counter() - t0
        exe = qbody.lower(*args).compile(target="numba-cpu", pipeline=pipe)
        qbytes = sum(
            exe.graph.constants[n.operands[i].name].nbytes  # type: ignore[index]
            for n in exe.graph.nodes if n.op == "qmatmul" for i in range(1, len(n.operands))
        )  # fmt: skip
        ms = median_us(lambda q=qbody: q(*args), budget) / 1e3
        rows.append(
            (
                f"kiln numba-cpu {bits}-bit (int8 act)",
                ms,
                qbytes,
                f"{err(got)}; quantize+compile {setup:.1f} s",
            )
        )
        pause()
    l3, dram = memory_bandwidth(threads)
    ort_ms = rows[1][1]
    title = f"{cfg.n_layers}-layer GPT-2{'' if not quick else '-tiny'} decode step, KV cache {kv}"
    print(f"\n== {title}; {threads} threads; median ms")
    print(
        f"memory read bandwidth in this run: {l3:.1f} GB/s (16 MiB, cache-resident), {dram:.1f} GB/s (512 MiB)"
    )
    print(f"{'system':<34}{'ms':>9}{'/ORT f32':>10}{'weight MB':>11}{'weight GB/s':>13}  note")
    for name, ms, nbytes, note in rows:
        print(
            f"{name:<34}{ms:>9.3f}{ms / ort_ms:>10.2f}{nbytes / 1e6:>11.1f}{nbytes / ms / 1e6:>13.1f}  {note}"
        )


def accuracy(quick: bool) -> None:
    """Weight SNR of plain round-to-nearest against kiln's clipping search (+ scale refit), Gaussian W."""
    from kiln.ir.quant import quantize, snr_db

    k = 512 if quick else 2048
    w = np.random.default_rng(2).standard_normal((k, 1024)).astype(np.float32)
    print(f"\n== accuracy: SNR dB of the dequantized weight, Gaussian W {k}x1024 (higher is better)")
    print(f"{'format':<26}{'round-to-nearest':>18}{'kiln (clip search)':>20}")
    for bits, scheme, group in ((4, Scheme.SYM, 128), (4, Scheme.SYM, 32), (4, Scheme.ASYM, 128), (4, Scheme.ASYM, 32),
                                (3, Scheme.SYM, 128), (2, Scheme.ASYM, 32), (1, Scheme.BIPOLAR, 32), (8, Scheme.SYM, 128)):  # fmt: skip
        q = QuantType(bits, scheme, group)
        rtn = quantize(w, q, clip_search=0, refit=False)
        best = quantize(w, q)
        name = f"{bits}-bit {scheme} g{group}"
        print(f"{name:<26}{snr_db(w, rtn.dequantize()):>18.2f}{snr_db(w, best.dequantize()):>20.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    ap.add_argument("--quick", action="store_true", help="small sizes and short timing (smoke test)")
    ap.add_argument("--part", choices=("kernels", "costs", "decode", "accuracy", "all"), default="all")
    args = ap.parse_args()
    import numba
    import onnxruntime

    print(f"lowbit: {args.threads} threads; numpy {np.__version__}, numba {numba.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("kernels", "all"):
            kernels(args.threads, args.quick, tmp)
        if args.part in ("costs", "all"):
            layout_costs(args.threads, args.quick)
        if args.part in ("decode", "all"):
            decode(args.threads, args.quick, tmp)
        if args.part in ("accuracy", "all"):
            accuracy(args.quick)


if __name__ == "__main__":
    main()
