"""Shared by the MLIR tests: one-op graphs on the mlir-cpu target against the reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from golden.test_golden import TOLERANCES

from kiln.backends import get_backend
from kiln.ir import dtypes as kd
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph
from kiln.ir.errors import BackendError
from kiln.ir.interpret import interpret
from kiln.ir.mlir import new_context, parse_module
from kiln.ir.types import TensorType

#: What mlir-cpu refuses by design (LLVM 22's memref lowering cannot load or store i1 buffers):
#: ops whose lowering keeps a bool temporary after bufferization. Bools at the function boundary
#: are widened to bytes and work.
I1_TEMPORARIES = "buffers of i1 or sub-byte integers remain after bufferization"


def mlir_cpu_backend() -> Any:
    return get_backend("mlir-cpu")


def assert_close(got: Any, want: np.ndarray, what: str) -> None:
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    rtol, atol = TOLERANCES[str(want.dtype)]
    np.testing.assert_allclose(
        got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True, err_msg=what
    )


def matches_reference(backend: Any, g: Graph, feeds: dict[str, np.ndarray], what: str) -> None:
    """``g`` on mlir-cpu equals the reference; what the backend refuses (odd-width integers at the
    boundary, i1 temporaries) must be refused with its reason, not crash."""
    refused = backend.unsupported(g)
    if refused:
        assert all("narrower than their storage" in r for r in refused), refused
        pytest.skip("refused by design: " + "; ".join(refused))
    want = interpret(g, feeds)
    try:
        got = backend.compile(g)(feeds)
    except BackendError as e:
        if I1_TEMPORARIES in str(e):
            pytest.skip(f"refused by design: {I1_TEMPORARIES}")
        raise
    for out, _ in g.outputs:
        assert_close(got[out], want[out], f"{what}: {out}")


def one_op(op: str, *args: Any, **attrs: Any) -> tuple[Graph, dict[str, np.ndarray]]:
    """A graph of one ``op`` on inputs x0, x1, ... (args: arrays or (DType, array)), and its feeds."""
    b = GraphBuilder("t")
    values, feeds = [], {}
    for i, a in enumerate(args):
        dt, arr = a if isinstance(a, tuple) else (kd.from_numpy(a.dtype), a)
        values.append(b.input(f"x{i}", TensorType(dt, tuple(arr.shape))))
        feeds[f"x{i}"] = arr
    for i, r in enumerate(b.op_values(op, *values, **attrs)):
        b.output(f"y{i}", r)
    return b.build(), feeds


def roundtrip(text: str) -> str:
    """print -> parse -> print is a fixed point (returns the text)."""
    with new_context() as ctx:
        again = str(parse_module(text, ctx))
    assert again == text
    return text
