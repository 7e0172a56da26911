"""kiln on an NVIDIA GPU, in one command: ``python benchmarks/gpu.py [--quick] [--tests]``.

``--tests`` first runs the GPU tests (tests/backends/test_mlir_cuda.py and the golden harness on
mlir-cuda). The benchmark then runs GPT-2-small's block prefill (seq 128) and 12-layer body on:

  kiln mlir-cuda   upstream MLIR's parallel-loop kernels (linalg -> scf.parallel -> gpu -> NVVM ->
                   PTX), run by kiln's launch plan through the CUDA driver; end to end (upload,
                   launches, download) and the kernels alone (CUDA events around the launches)
  kiln jax         kiln's jax target, XLA on the GPU
  jax (hand)       the hand-written jax.jit version of the same model, XLA on the GPU: the yardstick
  numpy            float64-accumulated CPU NumPy (for the check and for scale)

Every system's outputs are checked against NumPy (rtol = atol = 1e-3) before it is timed. Ratios
are system time / hand-written JAX time (lower is faster).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from backends_cpu import load_transformer_bench  # benchmarks/ is sys.path[0] for scripts

import kiln

ROOT = Path(__file__).resolve().parents[1]


def run_tests() -> int:
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
        "tests/backends/test_mlir_cuda.py", "tests/golden/test_golden.py", "-k", "cuda or gpu",
    ]  # fmt: skip
    print("$ " + " ".join(cmd[2:]), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def device_ms(runner: Any, driver: Any, calls: int) -> float:
    """Median over ``calls`` of the kernels alone, timed with CUDA events."""
    runner.launch_all()
    driver.synchronize()
    times = []
    for _ in range(calls):
        a, b = driver.event(), driver.event()
        driver.record(a)
        runner.launch_all()
        driver.record(b)
        times.append(driver.elapsed_ms(a, b))
    return float(np.median(times))


def mlir_cuda(wl: Any, block: tuple[int, int] | None, tiles: Any, slowest: int) -> tuple[Any, float, str]:
    from kiln.backends.mlir.cuda import MlirCudaBackend
    from kiln.backends.mlir.cudadrv import CudaDriver
    from kiln.ir.targets import get_target

    t0 = time.perf_counter()
    graph = wl.make_kiln().lower(*wl.inputs).graph
    graph = kiln.PassManager.parse(get_target("mlir-cuda").pipeline).run(graph)
    run = MlirCudaBackend(block=block, tiles=tiles).compile(graph)
    feeds = dict(zip(graph.input_names, wl.inputs, strict=True))
    names = list(graph.output_names)
    run(feeds)
    setup = time.perf_counter() - t0
    (_, runner), *_ = run.runners.values()  # type: ignore[attr-defined]
    plan = runner.plan
    if slowest:
        from kiln.backends.mlir.cuda import profile

        rows = profile(runner, CudaDriver.get())
        total = sum(ms for ms, _ in rows)
        print(
            f"  profile of mlir-cuda {block or 'default'}: {total:.3f} ms in {len(rows)} steps; the slowest:"
        )
        for ms, what in rows[:slowest]:
            print(f"    {ms:8.3f} ms  {what}")
    note = (
        f"{len(plan.launches)} kernel launches, {len(plan.buffers)} device buffers, blocks "
        f"{sorted({launch.block for launch in plan.launches})}; kernels alone "
        f"{device_ms(runner, CudaDriver.get(), 20):.3f} ms (CUDA events)"
    )
    return (lambda: tuple(run(feeds)[n] for n in names)), setup, note


def jax_gpu(tc: ModuleType, wl: Any) -> tuple[Any, float, str]:
    import jax

    t0 = time.perf_counter()
    fn = wl.make_jax()
    jax.block_until_ready(fn(*wl.inputs))  # traces and compiles
    setup = time.perf_counter() - t0
    return (
        (lambda: tc.as_tuple(jax.block_until_ready(fn(*wl.inputs)))),
        setup,
        f"device {jax.devices()[0].device_kind}",
    )


def kiln_jax(tc: ModuleType, wl: Any) -> tuple[Any, float, str]:
    t0 = time.perf_counter()
    compiled = wl.make_kiln(target="jax").lower(*wl.inputs).compile()
    compiled(*wl.inputs)
    setup = time.perf_counter() - t0
    return (lambda: tc.as_tuple(compiled(*wl.inputs))), setup, ""


def bench(tc: ModuleType, name: str, args: argparse.Namespace) -> list[str]:
    wl = tc.build_workload(name, args.quick)
    want = tc.as_tuple(wl.run_numpy(*wl.inputs))
    systems: dict[str, Any] = {
        "numpy": lambda: ((lambda: tc.as_tuple(wl.run_numpy(*wl.inputs))), 0.0, "CPU"),
        "jax (hand)": lambda: jax_gpu(tc, wl),
        "kiln jax": lambda: kiln_jax(tc, wl),
    }
    from kiln.backends.mlir.pipeline import GpuTiles

    for block in args.blocks or [None]:
        for tiles in args.tiles or ["default"]:
            label = "kiln mlir-cuda" + (f" {block[0]}x{block[1]}" if block else "")
            label += "" if tiles == "default" else f" mm {tiles}"
            t = (
                GpuTiles()
                if tiles == "default"
                else None
                if tiles == "none"
                else GpuTiles(*map(int, tiles.split("x")))
            )
            systems[label] = lambda block=block, t=t: mlir_cuda(wl, block, t, args.profile)
    rows: list[tuple[str, float | None, str]] = []
    failed = []
    for sys_name, build in systems.items():
        try:
            call, setup, note = build()
            err, ok = tc.max_error(tc.as_tuple(call()), want)
            if not ok:
                rows.append((sys_name, None, f"wrong result: max |err| {err:.3g}"))
                failed.append(f"{name}/{sys_name}")
                continue
            ms = float(np.median(tc.measure(call, args.budget)))
            rows.append((sys_name, ms, f"max |err| {err:.2e}, setup {setup:.1f} s; {note}"))
        except Exception as e:  # report and go on
            rows.append((sys_name, None, f"error: {type(e).__name__}: {str(e).splitlines()[0][:300]}"))
            failed.append(f"{name}/{sys_name}")
    hand = next((ms for n, ms, _ in rows if n == "jax (hand)" and ms), None)
    print(f"\n== {wl.title}")
    print(f"{'system':<36} {'median ms':>10} {'/ jax':>7}  notes")
    for sys_name, ms, note in rows:
        if ms is None:
            print(f"{sys_name:<36} {'-':>10} {'-':>7}  {note}")
        else:
            ratio = f"{ms / hand:7.2f}" if hand else f"{'-':>7}"
            print(f"{sys_name:<36} {ms:10.3f} {ratio}  {note}")
    sys.stdout.flush()
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model sizes (smoke test)")
    ap.add_argument("--tests", action="store_true", help="run the GPU tests first")
    ap.add_argument("--only", choices=("prefill", "body"), help="one workload")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per system")
    ap.add_argument(
        "--blocks",
        type=lambda s: [tuple(int(v) for v in b.split("x")) for b in s.split(",")],
        help="mlir-cuda thread blocks to compare, e.g. 16x16,1x256 (default: the target's)",
    )
    ap.add_argument(
        "--tiles",
        type=lambda s: s.split(","),
        help="mlir-cuda matmul tiles bm x bn x tm x tn to compare, or none, e.g. 32x64x4x4,none",
    )
    ap.add_argument(
        "--profile", type=int, default=0, help="print the N slowest mlir-cuda kernels (CUDA events)"
    )
    args = ap.parse_args()
    from kiln.backends.mlir.cudadrv import CudaDriver, CudaError

    try:
        drv = CudaDriver.get()
    except CudaError as e:
        print(f"gpu.py: {e}")
        return 2
    version = ctypes.c_int()
    drv.lib.cuDriverGetVersion(ctypes.byref(version))
    print(f"GPU: {drv.name} ({drv.chip}), CUDA driver API {version.value}; {os.cpu_count()} CPUs")
    status = run_tests() if args.tests else 0
    tc = load_transformer_bench()
    import jax

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; numpy {np.__version__}")
    failed = []
    for name in (args.only,) if args.only else ("prefill", "body"):
        failed += bench(tc, name, args)
    if failed:
        print("\nFAILED: " + "; ".join(failed))
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
