"""Helpers for the numba-cpu tests: comparison with the reference, compile-and-check.

The truth is :func:`kiln.ir.interpret.interpret` (the ops' NumPy reference semantics) on the
graph given to ``kiln.compile``. Every compile writes into a temporary cache directory (one per
test module, shared so that a kernel compiled once is loaded from Numba's cache afterwards, or
a test's own ``tmp_path`` where the test is about the cache itself).

Tolerances, stated once: float32 kernels use polynomial ``exp`` (max relative error about 4e-7),
``tanh``/``sigmoid``/``erf`` built on it (erf: 1.5e-7 absolute) and their own summation order in
row reductions, so float32 results are compared with ``rtol=2e-6, atol=1e-6``; float64 kernels
use libm (``rtol=atol=1e-12``); float16 groups run through NumPy (``rtol=atol=1e-3``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import kiln
from kiln.ir.core import Graph
from kiln.ir.interpret import interpret
from kiln_testing.examples import load_example  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parents[2]

TOLERANCES = {"float32": (2e-6, 1e-6), "float64": (1e-12, 1e-12), "float16": (1e-3, 1e-3)}


def assert_matches_reference(
    got: dict[str, Any], graph: Graph, inputs: dict[str, np.ndarray], ctx: Any = None
) -> None:
    want = interpret(graph, inputs, ctx)
    assert set(got) == set(want)
    for name, w in want.items():
        g, w = np.asarray(got[name]), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, g.dtype, w.shape, w.dtype)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            rtol, atol = TOLERANCES[str(w.dtype)]
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)


def compile_and_check(
    graph: Graph, inputs: dict[str, np.ndarray], cache_dir: Path, pipeline: str | None = "fuse"
) -> kiln.Executable:
    exe = kiln.compile(graph, "numba-cpu", pipeline=pipeline, cache_dir=cache_dir)
    assert_matches_reference(exe.run(inputs), graph, inputs)
    return exe


def uniform(
    shape: Sequence[int], lo: float = -2.0, hi: float = 2.0, dtype: Any = np.float32, seed: int = 0
) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, tuple(shape)).astype(dtype)
