"""Quick timing of the low-bit kernels: GEMV/GEMM on a 4096x4096 weight, 2 threads, weights hot.

Prints median microseconds and effective GB/s of weight bytes (codes + scales) for each bit width
and layout, NumPy float32 ``x @ W`` and onnxruntime MatMulNBits (4-bit) for reference.
Run: ``.venv/bin/python benchmarks/lowbit_kernels.py [--quick]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys
import time
from collections.abc import Callable

import numpy as np

from kiln.backends.numba_cpu.qkernels import make_qmatmul
from kiln.ir.dtypes import Layout, QuantType, Scheme
from kiln.ir.quant import pack

K = N = 4096
THREADS = 2


def median_us(fn: Callable[[], object], reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def ort_matmulnbits(
    u: np.ndarray, scales: np.ndarray, block: int, level: int
) -> Callable[[np.ndarray], object]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    codes = pack(QuantType(4, Scheme.SYM, block), u).reshape(N, K // block, block // 2)
    node = helper.make_node(
        "MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=K, N=N, bits=4, block_size=block,
        accuracy_level=level,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])],
        initializer=[
            onnx.numpy_helper.from_array(codes, "B"),
            onnx.numpy_helper.from_array(scales.astype(np.float32).reshape(-1), "S"),
        ],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"A": x})


def main() -> None:
    quick = "--quick" in sys.argv
    rng = np.random.default_rng(0)
    ms = [1, 16] if quick else [1, 16, 128]
    xs = {m: rng.standard_normal((m, K)).astype(np.float32) for m in ms}
    w = rng.standard_normal((K, N)).astype(np.float32)
    print(f"W {K}x{N}, {THREADS} threads, median us (GB/s of weight bytes)")
    for m in ms:
        t = median_us(lambda m=m: xs[m] @ w, 20 if m < 128 else 5)
        print(f"numpy f32        M={m:4d}: {t:9.1f} us ({w.nbytes / t / 1e3:6.1f} GB/s)")
    time.sleep(0.2)  # let BLAS threads go idle
    for bits in (8, 4, 3, 2, 1):
        u = rng.integers(0, 2**bits, (N, K), dtype=np.uint8)
        for layout in (Layout.PACKED, Layout.BITSLICED):
            q = QuantType(bits, Scheme.SYM if bits > 1 else Scheme.BIPOLAR, 128, layout=layout)
            codes = pack(q, u)
            scales = (rng.random((N, K // 128)) * 0.01).astype(np.float16)
            kern = make_qmatmul(q, K, N, act="int8", threads=THREADS)
            for m in ms:
                out = np.empty((m, N), np.float32)
                t = median_us(
                    lambda m=m, out=out, kern=kern, codes=codes, scales=scales: kern(
                        xs[m], codes, scales, None, out
                    ),
                    50 if m == 1 else 10,
                )
                gbs = (codes.nbytes + scales.nbytes) / t / 1e3
                print(f"q{bits} {layout:9s} M={m:4d}: {t:9.1f} us ({gbs:6.1f} GB/s) [{kern.path}]")
    time.sleep(0.2)
    u = rng.integers(0, 16, (N, K), dtype=np.uint8)
    for block in (32, 128):
        scales = (rng.random((N, K // block)) * 0.01).astype(np.float32)
        for level in (4, 0):
            run = ort_matmulnbits(u, scales, block, level)
            for m in ms:
                t = median_us(lambda m=m, run=run: run(xs[m]), 50 if m == 1 else 10)
                print(f"ort MatMulNBits b{block:3d} acc{level} M={m:4d}: {t:9.1f} us")
            time.sleep(0.1)


if __name__ == "__main__":
    main()
