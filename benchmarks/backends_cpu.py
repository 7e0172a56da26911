"""kiln's CPU backends side by side: GPT-2-small's block prefill and 12-layer body on every CPU
target (reference, numba-cpu, jax, mlir-cpu), with hand-written JAX and onnxruntime as yardsticks.

Run: ``python benchmarks/backends_cpu.py [--threads 2] [--quick] [--only prefill|decode|body]``.

The workloads, the checks and the timing are those of ``benchmarks/transformer_cpu.py`` (this script
imports it): every system's outputs are checked against NumPy before it is timed; medians of N
calls with a pause between systems; one ``--threads`` value for everyone. Ratios are against
onnxruntime (``/ ORT``) and NumPy; the jax target is also compared with hand-written ``jax.jit``
(the issue's target: within 1.1x). mlir-cpu compiles per input shape; its setup column is the
MLIR pipeline plus the LLVM JIT.
"""

from __future__ import annotations

import sys

from bench_env import set_thread_env, threads_from_argv  # benchmarks/ is sys.path[0] for scripts

if __name__ == "__main__":
    set_thread_env(threads_from_argv(sys.argv[1:]))

import argparse
import gc
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import kiln

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("prefill", "decode", "body")


def load_transformer_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kiln_bench_transformer_cpu", ROOT / "benchmarks" / "transformer_cpu.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_workload(tc: ModuleType, name: str, args: argparse.Namespace, tmp: str) -> list[object]:
    wl = tc.build_workload(name, args.quick)
    want = tc.as_tuple(wl.run_numpy(*wl.inputs))
    cpu_targets = [t.name for t in kiln.targets() if t.device == "cpu"]
    if args.skip_reference or name == "body":
        cpu_targets = [t for t in cpu_targets if t != "reference"]  # the interpreter adds nothing here

    def kiln_target(t: str) -> Callable[[], object]:
        return lambda: tc.kiln_system(wl, None if t == "reference" else t)

    plan: list[tuple[str, Callable[[], object]]] = [("numpy", lambda: tc.numpy_system(wl))]
    plan += [(f"kiln {t}", kiln_target(t)) for t in cpu_targets]
    plan += [
        ("jax (by hand)", lambda: tc.jax_system(wl)),
        ("onnxruntime", lambda: tc.ort_system(wl, args.threads, tmp)),
    ]
    results = []
    for sys_name, build in plan:
        time.sleep(tc.PAUSE_S)
        results.append(tc.run_system(sys_name, build, want, args.budget))
    tc.print_table(wl.title, results)
    ok = {r.name: r.median for r in results if r.status == "ok"}
    if "kiln jax" in ok and "jax (by hand)" in ok:
        print(
            f"  kiln jax / hand-written jax.jit: {ok['kiln jax'] / ok['jax (by hand)']:.3f} (target <= 1.1)"
        )
    if "kiln mlir-cpu" in ok and "onnxruntime" in ok:
        print(
            f"  kiln mlir-cpu / onnxruntime: {ok['kiln mlir-cpu'] / ok['onnxruntime']:.2f} (target <= 2 on prefill)"
        )
    sys.stdout.flush()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    ap.add_argument("--quick", action="store_true", help="small sizes and short timing (smoke test)")
    ap.add_argument("--only", choices=WORKLOADS, help="run one workload (default: prefill and body)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed calls per system")
    ap.add_argument("--skip-reference", action="store_true", help="leave out kiln's NumPy interpreter")
    args = ap.parse_args()
    args.budget = args.budget if args.budget is not None else 0.1 if args.quick else 1.5
    tc = load_transformer_bench()
    tc.print_header(args, [t.name for t in kiln.targets()])
    failed = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        for name in (args.only,) if args.only else ("prefill", "body"):
            for r in run_workload(tc, name, args, tmp):
                if r.status in ("wrong result", "error"):  # type: ignore[attr-defined]
                    failed.append(f"{name}/{r.name}: {r.status}")  # type: ignore[attr-defined]
            gc.collect()
    if failed:
        print("\nFAILED: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
