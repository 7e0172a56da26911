"""GPT-2-small on CPU: kiln (reference, numba-cpu) against NumPy, JAX and onnxruntime, side by side.

Run: ``python benchmarks/transformer_cpu.py [--threads 2] [--quick] [--only prefill|decode|body]``.

Three workloads from ``examples/transformer.py`` (float32, batch 1): one block's prefill at seq 128,
one decode step against a 128-token KV cache, and the 12-layer body's prefill at seq 128
(``--quick``: d=256, 4 heads, d_ff 1024, seq 32, 2 layers, KV cache 32). Systems: plain NumPy,
kiln's reference target, kiln's numba-cpu target (when ``kiln.targets()`` has it), JAX (``jax.jit``,
CPU) and onnxruntime running ``kiln.to_onnx`` of the traced graph (ORT_ENABLE_ALL, CPU provider).

Every system's outputs are checked against NumPy (rtol 1e-3, atol 1e-3) before it is timed; a
mismatch is reported, not timed, and makes the script exit with status 1. Timing: warm-up calls,
then the median (and p10-p90) of N calls, N chosen so that each system runs about ``--budget``
seconds (at least 5 calls). The systems run one after another in this one process with a 0.3 s
pause between them (idle thread pools spin for a while after a call; see shared/STACK.md).

One ``--threads`` value applies to everyone: OMP/OpenBLAS/MKL/Numba thread counts, XLA_FLAGS and
OMP_WAIT_POLICY=PASSIVE are set below before NumPy, JAX, onnxruntime or kiln is imported, and
onnxruntime gets ``intra_op_num_threads``. For numba-cpu the script also measures compilation in
fresh processes (it re-runs itself with ``--compile-only WORKLOAD --cache-dir DIR``): once with an
empty cache directory (cold) and once more with the same directory (from cache).
"""

from __future__ import annotations

import argparse
import os
import sys

from bench_env import set_thread_env, threads_from_argv  # benchmarks/ is sys.path[0] for scripts

if __name__ == "__main__":
    set_thread_env(threads_from_argv(sys.argv[1:]))

import gc
import importlib.util
import json
import math
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import kiln

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("prefill", "decode", "body")
NUMBA_TARGET = "numba-cpu"
RTOL = ATOL = 1e-3
PAUSE_S = 0.3
MIN_CALLS = 5
COMPILE_TAG = "KILN_COMPILE_RESULT "


def load_transformer() -> ModuleType:
    """examples/transformer.py (examples/ is not a package)."""
    name = "kiln_example_transformer"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "transformer.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------------
# workloads


@dataclass
class Workload:
    """One model function in every form, with its inputs."""

    name: str
    title: str
    make_kiln: Callable[..., kiln.Jitted]  # (**jit_options) -> Jitted
    run_numpy: Callable[..., Any]
    make_jax: Callable[[], Callable[..., Any]]
    inputs: tuple[np.ndarray, ...]


def build_workload(name: str, quick: bool) -> Workload:
    tr = load_transformer()
    if quick:
        cfg, seq, past = tr.Config(d_model=256, n_heads=4, d_ff=1024, n_layers=2), 32, 32
    else:
        cfg, seq, past = tr.Config(), 128, 128
    rng = np.random.default_rng(1234)
    size = f"d={cfg.d_model} h={cfg.n_heads} ff={cfg.d_ff}"
    if name == "prefill":
        w = tr.init_layer(cfg, 0)
        x = rng.standard_normal((seq, cfg.d_model), dtype=np.float32)
        return Workload(
            name,
            f"block prefill, seq {seq} ({size})",
            lambda **o: tr.make_prefill_block(cfg, w, **o),
            lambda x: tr.numpy_prefill_block(cfg, w, x),
            lambda: tr.jax_prefill_block(cfg, w),
            (x,),
        )
    if name == "decode":
        w = tr.init_layer(cfg, 0)
        x = rng.standard_normal((1, cfg.d_model), dtype=np.float32)
        kv = (cfg.n_heads, past, cfg.head_dim)
        pk, pv = rng.standard_normal(kv, dtype=np.float32), rng.standard_normal(kv, dtype=np.float32)
        return Workload(
            name,
            f"decode step, KV cache {past} ({size})",
            lambda **o: tr.make_decode_step(cfg, w, **o),
            lambda x, k, v: tr.numpy_decode_step(cfg, w, x, k, v),
            lambda: tr.jax_decode_step(cfg, w),
            (x, pk, pv),
        )
    if name == "body":
        layers = tr.init_layers(cfg, 0)
        x = rng.standard_normal((seq, cfg.d_model), dtype=np.float32)
        return Workload(
            name,
            f"{cfg.n_layers}-layer body prefill, seq {seq} ({size})",
            lambda **o: tr.make_body(cfg, layers, **o),
            lambda x: tr.numpy_body(cfg, layers, x),
            lambda: tr.jax_body(cfg, layers),
            (x,),
        )
    raise ValueError(f"unknown workload {name!r}")


# ----------------------------------------------------------------------------------------------
# systems


@dataclass
class System:
    """A system ready to run: ``call()`` runs it once; ``outputs()`` runs it and returns arrays."""

    call: Callable[[], Any]
    outputs: Callable[[], tuple[np.ndarray, ...]]
    setup_s: float
    extra: list[str] = field(default_factory=list)
    keep: list[Any] = field(default_factory=list)  # objects that must outlive the timing


@dataclass
class Result:
    name: str
    status: str = "ok"  # ok | not available | wrong result | error
    detail: str = ""
    times_ms: list[float] = field(default_factory=list)
    max_err: float | None = None
    setup_s: float | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.times_ms))


def as_tuple(out: Any) -> tuple[np.ndarray, ...]:
    if isinstance(out, tuple | list):
        return tuple(np.asarray(o) for o in out)
    return (np.asarray(out),)


def numpy_system(wl: Workload) -> System:
    def call() -> Any:
        return wl.run_numpy(*wl.inputs)

    return System(call, lambda: as_tuple(call()), 0.0)


def kiln_system(wl: Workload, target: str | None = None, cache_dir: str | None = None) -> System:
    t0 = time.perf_counter()
    jitted, note = make_jitted(wl, target, cache_dir)
    compiled = jitted.lower(*wl.inputs).compile()
    setup = time.perf_counter() - t0
    extra = [note] if note else []
    if cache_dir is not None:
        extra.append("setup s here: in-process compile with the cache the compile subprocesses filled")
    return System(
        lambda: compiled(*wl.inputs), lambda: as_tuple(compiled(*wl.inputs)), setup, extra, [compiled]
    )


def make_jitted(wl: Workload, target: str | None, cache_dir: str | None) -> tuple[kiln.Jitted, str]:
    """kiln.jit with ``target`` and ``cache_dir``; drops ``cache_dir`` if kiln.jit does not take it."""
    opts: dict[str, Any] = {} if target is None else {"target": target}
    if cache_dir is not None:
        try:
            return wl.make_kiln(**opts, cache_dir=cache_dir), ""
        except TypeError as e:
            if "cache_dir" not in str(e):
                raise
            return wl.make_kiln(**opts), "kiln.jit does not accept cache_dir: cache directory not set"
    return wl.make_kiln(**opts), ""


def jax_system(wl: Workload) -> System:
    import jax

    t0 = time.perf_counter()
    fn = wl.make_jax()
    jax.block_until_ready(fn(*wl.inputs))  # traces and compiles
    setup = time.perf_counter() - t0

    def call() -> Any:
        return jax.block_until_ready(fn(*wl.inputs))

    return System(call, lambda: as_tuple(call()), setup, keep=[fn])


def ort_system(wl: Workload, threads: int, tmp: str) -> System:
    import onnxruntime as ort

    t0 = time.perf_counter()
    graph = wl.make_kiln().lower(*wl.inputs).graph
    path = os.path.join(tmp, f"{wl.name}.onnx")
    kiln.to_onnx(graph, path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    setup = time.perf_counter() - t0
    os.remove(path)
    feeds = dict(zip(graph.input_names, wl.inputs, strict=True))
    names = list(graph.output_names)
    return System(
        lambda: sess.run(names, feeds), lambda: as_tuple(sess.run(names, feeds)), setup, keep=[sess]
    )


# ----------------------------------------------------------------------------------------------
# measurement


def max_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> tuple[float, bool]:
    """The largest |got - want| over all outputs, and whether all are within rtol/atol."""
    if len(got) != len(want):
        return math.inf, False
    err, ok = 0.0, True
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            return math.inf, False
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        err = max(err, float(np.max(np.abs(g64 - w64))))
        ok = ok and bool(np.allclose(g64, w64, rtol=RTOL, atol=ATOL))
    return err, ok


def measure(call: Callable[[], Any], budget_s: float) -> list[float]:
    """Per-call times in ms: warm-up (3 calls and >= 0.1 s), then N calls, N >= MIN_CALLS."""
    t_end, n = time.perf_counter() + 0.1, 0
    while n < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        call()
        est = time.perf_counter() - t0
        n += 1
    calls = max(MIN_CALLS, min(100_000, int(budget_s / max(est, 1e-7))))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def run_system(
    name: str, build: Callable[[], System], want: tuple[np.ndarray, ...], budget_s: float
) -> Result:
    res = Result(name)
    try:
        _check_and_time(res, build, want, budget_s)
    except Exception as e:  # report and go on with the other systems
        res.status, res.detail = "error", f"{type(e).__name__}: {e}".splitlines()[0][:200]
    gc.collect()  # the system (sessions, executables, device arrays) is gone: free its memory
    return res


def _check_and_time(
    res: Result, build: Callable[[], System], want: tuple[np.ndarray, ...], budget_s: float
) -> None:
    system = build()
    res.setup_s, res.extra = system.setup_s, system.extra
    res.max_err, ok = max_error(system.outputs(), want)
    if not ok:
        res.status = "wrong result"
        res.detail = f"max |err| {res.max_err:.3g} exceeds rtol {RTOL} / atol {ATOL}"
        return
    res.times_ms = measure(system.call, budget_s)


# ----------------------------------------------------------------------------------------------
# numba-cpu compile time (fresh processes)


def compile_only(args: argparse.Namespace) -> None:
    """Child mode: compile one workload for ``args.target`` and print the timings as JSON."""
    wl = build_workload(args.compile_only, args.quick)
    t0 = time.perf_counter()
    jitted, note = make_jitted(wl, args.target, args.cache_dir)
    lowered = jitted.lower(*wl.inputs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    compiled(*wl.inputs)
    t3 = time.perf_counter()
    report: dict[str, Any] = {
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "first_call_s": t3 - t2,
        "total_s": t3 - t0,
        "stats": executable_stats(compiled),
        "note": note,
    }
    print(COMPILE_TAG + json.dumps(report), flush=True)


def compile_in_subprocess(
    workload: str, target: str, cache_dir: str, args: argparse.Namespace
) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-only", workload]
    cmd += ["--target", target, "--cache-dir", cache_dir, "--threads", str(args.threads)]
    cmd += ["--quick"] if args.quick else []
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, KILN_CACHE_DIR=cache_dir)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in r.stdout.splitlines():
        if line.startswith(COMPILE_TAG):
            result: dict[str, Any] = json.loads(line[len(COMPILE_TAG) :])
            return result
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"compile subprocess failed (exit {r.returncode}): {tail}")


def executable_stats(compiled: Any) -> dict[str, Any] | None:
    exe = getattr(compiled, "executable", None)
    stats = getattr(exe, "stats", None)
    if not callable(stats):
        return None
    try:
        out = stats()
    except Exception:
        return None
    return dict(out) if isinstance(out, dict) else None


def compile_report(workload: str, target: str, args: argparse.Namespace, tmp: str) -> tuple[list[str], str]:
    """Lines describing cold and cached compilation, and the cache directory (now warm)."""
    cache_dir = tempfile.mkdtemp(prefix=f"cache-{workload}-", dir=tmp)
    lines = []
    try:
        cold = compile_in_subprocess(workload, target, cache_dir, args)
        warm = compile_in_subprocess(workload, target, cache_dir, args)
    except Exception as e:
        return [f"compile time: n/a ({e})"], cache_dir
    for label, r in (("cold compile (empty cache)", cold), ("compile from cache", warm)):
        lines.append(
            f"{label}: {r['total_s']:.2f} s to first result (trace {r['lower_s']:.2f} s, "
            f"compile {r['compile_s']:.2f} s, first call {r['first_call_s']:.3f} s)"
        )
    if cold.get("note"):
        lines.append(cold["note"])
    stats = cold.get("stats") or {}

    def stat(key: str, fmt: Callable[[Any], str] = str) -> str:
        return fmt(stats[key]) if key in stats else "n/a"

    lines.append(
        f"kernels: {stat('kernels')} (IR ops before fusion: {stat('ops')}), "
        f"peak buffer bytes: {stat('peak_bytes', lambda b: f'{b:,} ({b / 2**20:.1f} MiB)')}, "
        f"stats compile_s: {stat('compile_s', lambda s: f'{s:.2f}')}"
    )
    return lines, cache_dir


# ----------------------------------------------------------------------------------------------
# report


def print_table(title: str, results: list[Result]) -> None:
    by_name = {r.name: r for r in results if r.status == "ok"}
    ort_ms = by_name["onnxruntime"].median if "onnxruntime" in by_name else None
    np_ms = by_name["numpy"].median if "numpy" in by_name else None
    print(f"\n== {title}")
    head = f"{'system':<16} {'median ms':>10} {'p10-p90 ms':>17} {'/ ORT':>7} {'/ NumPy':>8} {'max |err|':>10} {'setup s':>8} {'calls':>6}"
    print(head)
    print("-" * len(head))
    for r in results:
        if r.status != "ok":
            detail = f": {r.detail}" if r.detail else ""
            err = f" (max |err| {r.max_err:.2e})" if r.max_err is not None and r.status == "error" else ""
            print(f"{r.name:<16} {r.status}{detail}{err}")
            continue
        p10, p90 = np.percentile(r.times_ms, [10, 90])
        med = r.median
        vs_ort = f"{med / ort_ms:7.2f}" if ort_ms else f"{'-':>7}"
        vs_np = f"{med / np_ms:8.2f}" if np_ms else f"{'-':>8}"
        spread = f"{p10:.3f}-{p90:.3f}"
        setup = f"{r.setup_s:8.2f}" if r.setup_s is not None else f"{'':>8}"
        print(
            f"{r.name:<16} {med:10.3f} {spread:>17} {vs_ort} {vs_np} {r.max_err or 0.0:10.2e} {setup} {len(r.times_ms):6d}"
        )
    for r in results:
        for line in r.extra:
            print(f"  {r.name}: {line}")


def sgemm_gflops(n: int = 1024) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def print_header(args: argparse.Namespace, targets: list[str]) -> None:
    import jax
    import onnxruntime as ort

    try:
        import numba

        numba_v = numba.__version__
    except ImportError:
        numba_v = "not installed"
    size = "quick (d=256, 4 heads, seq 32, 2 layers)" if args.quick else "GPT-2 small (fp32, batch 1)"
    print(f"transformer_cpu: {size}; threads={args.threads} for every system; {os.cpu_count()} CPUs")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, jax {jax.__version__}, "
        f"onnxruntime {ort.__version__}, numba {numba_v}, kiln {kiln.__version__}; kiln targets: {', '.join(targets)}"
    )
    print(f"NumPy sgemm 1024^3 in this run: {sgemm_gflops():.0f} GFLOP/s (this machine's limit, for context)")
    print(
        f"Timing: warm-up, then the median of N calls (~{args.budget:g} s per system, >= {MIN_CALLS} calls); "
        f"outputs checked against NumPy (rtol {RTOL}, atol {ATOL}) first; a {PAUSE_S} s pause before each "
        "system so that idle thread pools stop spinning. Ratios: system time / peer time (lower is faster)."
    )


def run_workload(name: str, args: argparse.Namespace, targets: list[str], tmp: str) -> list[Result]:
    wl = build_workload(name, args.quick)
    want = as_tuple(wl.run_numpy(*wl.inputs))
    results = []
    numba_lines: list[str] = []
    numba_cache: str | None = None
    if NUMBA_TARGET in targets:
        time.sleep(PAUSE_S)
        numba_lines, numba_cache = compile_report(name, NUMBA_TARGET, args, tmp)

    plan: list[tuple[str, Callable[[], System] | None]] = [
        ("numpy", lambda: numpy_system(wl)),
        ("kiln reference", lambda: kiln_system(wl)),
        (
            f"kiln {NUMBA_TARGET}",
            (lambda: kiln_system(wl, NUMBA_TARGET, numba_cache)) if NUMBA_TARGET in targets else None,
        ),
        ("jax", lambda: jax_system(wl)),
        ("onnxruntime", lambda: ort_system(wl, args.threads, tmp)),
    ]
    for sys_name, build in plan:
        if build is None:
            results.append(Result(sys_name, "not available", f"target '{NUMBA_TARGET}' is not registered"))
            continue
        time.sleep(PAUSE_S)
        res = run_system(sys_name, build, want, args.budget)
        if sys_name == f"kiln {NUMBA_TARGET}":
            res.extra = numba_lines + res.extra
        results.append(res)
    print_table(wl.title, results)
    sys.stdout.flush()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    ap.add_argument("--quick", action="store_true", help="small sizes and short timing (smoke test)")
    ap.add_argument("--only", choices=WORKLOADS, help="run one workload")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed calls per system")
    ap.add_argument("--compile-only", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--target", default=NUMBA_TARGET, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.budget is None:
        args.budget = 0.1 if args.quick else 1.5
    return args


def main() -> int:
    args = parse_args()
    if args.compile_only:
        compile_only(args)
        return 0
    targets = [t.name for t in kiln.targets()]
    print_header(args, targets)
    failed = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        for name in (args.only,) if args.only else WORKLOADS:
            for r in run_workload(name, args, targets, tmp):
                if r.status in ("wrong result", "error"):
                    failed.append(f"{name}/{r.name}: {r.status}")
            gc.collect()  # the workload's weights and systems are gone
    if failed:
        print("\nFAILED: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
