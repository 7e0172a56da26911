"""Thread settings shared by the benchmarks: one thread count for every library, set before any
of them is imported (this module imports none of them)."""

from __future__ import annotations

import argparse
import os


def threads_from_argv(argv: list[str]) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=int, default=2)
    return int(p.parse_known_args(argv)[0].threads)


def set_thread_env(n: int) -> None:
    """Thread settings for every library; must run before any of them is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    keep = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads"))
    ]
    os.environ["XLA_FLAGS"] = " ".join(
        [*keep, "--xla_cpu_multi_thread_eigen=true", f"intra_op_parallelism_threads={n}"]
    )
