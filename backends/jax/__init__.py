"""The jax target: a whole graph as ONE ``jax.jit`` function (XLA fuses and schedules it).

The graph is printed as Python source, one line per IR node (codegen.py, from a lowering table
keyed by op name; helpers in lib.py), executed, and wrapped in ``jax.jit``. Weights are jit
arguments placed on the JAX device once, at compile time, never literals in the HLO (big literals
make XLA compile slowly); only single-element constants are literals. Intermediate arrays never
leave the device: the program is one XLA executable. ``source`` prints the Python and, for graphs
with static shapes, the StableHLO that jax lowers it to.

Assumes ``jax_enable_x64``: kiln has i64/u64/f64 values (argmax results, cumsums, indices) that
jax would otherwise silently narrow to 32 bits. The backend turns it on when it is constructed
(``jax.config.update``, process-wide); it changes only the defaults of dtype-less constructors,
and the generated code always names its dtypes, so f32 programs stay f32.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ...ir.core import Graph
from ...ir.errors import BackendError
from ...ir.registry import Context, default_context
from ...ir.signature import bind_inputs, bind_type
from ...ir.types import TensorType
from ..base import CompiledFn
from . import lib
from .codegen import RULES, Emitter, Program, Rule, unsupported

__all__ = ["JaxBackend", "RULES", "Rule"]

_serial = itertools.count()
_PRECISIONS = ("auto", "highest", "default")


class JaxBackend:
    """One jitted XLA program per graph; weights held on the device between calls.

    ``precision`` of float matmuls: "highest" (full f32, what the reference computes; XLA on GPUs
    would otherwise use TF32 and miss the golden tolerances), "default" (XLA's choice), or "auto":
    "default" where that is full f32 already (CPU, where "highest" measured a few percent slower on
    a GPT-2 decode step), else "highest".
    """

    name = "jax"

    def __init__(self, ctx: Context | None = None, *, precision: str = "auto") -> None:
        if precision not in _PRECISIONS:
            raise BackendError(f"jax precision must be one of {list(_PRECISIONS)}, got {precision!r}")
        jax.config.update("jax_enable_x64", True)  # see the module docstring
        self.ctx = ctx or default_context()
        if precision == "auto":
            precision = "default" if jax.default_backend() == "cpu" else "highest"
        self.precision = lax.Precision.HIGHEST if precision == "highest" else None
        self.rules: dict[str, Rule] = RULES

    # -- the Backend protocol ------------------------------------------------------------------
    def unsupported(self, graph: Graph) -> list[str]:
        return unsupported(graph, self.rules)

    def compile(self, graph: Graph) -> CompiledFn:
        prog, fn = self._build(graph)
        jitted = jax.jit(fn)
        weights = tuple(jax.device_put(w) for w in prog.weights)
        names = tuple(graph.output_names)
        if all(isinstance(v.type, TensorType) and v.type.is_static for v in graph.inputs):
            # Trace and compile now: errors surface at compile time, and the first call is fast.
            zeros = [np.zeros(t.static_shape, t.scalar_dtype.np_dtype) for t in self._input_types(graph)]
            self._guard(graph, prog, lambda: jax.block_until_ready(jitted(*zeros, *weights)))

        fast = self._fast_signature(graph)

        def run(inputs: Mapping[str, Any]) -> dict[str, Any]:
            # The common case (exact arrays for a static signature) costs a few comparisons;
            # anything else goes through the full checks and their error messages.
            try:
                vals = [inputs[n] for n, _, _ in fast] if len(inputs) == len(fast) else None
            except KeyError:
                vals = None
            if vals is None or not all(
                type(x) is np.ndarray and x.dtype == dt and x.shape == shape
                for x, (_, dt, shape) in zip(vals, fast, strict=True)
            ):
                vals, _ = bind_inputs(graph, inputs)
            try:
                outs = jitted(*vals, *weights)
            except Exception as e:
                raise self._error(graph, prog, e) from None
            return {n: np.asarray(o) for n, o in zip(names, outs, strict=True)}

        run.program = prog  # type: ignore[attr-defined]
        run.jitted = jitted  # type: ignore[attr-defined]
        run.weights = weights  # type: ignore[attr-defined]
        return run

    def source(self, graph: Graph) -> str:
        """The generated Python, then the StableHLO (for graphs whose input shapes are static)."""
        prog = self.program(graph)
        symbolic = self._unbound(graph, {})
        if symbolic:
            hlo = (
                f"// StableHLO: bind the symbolic dims {', '.join(symbolic)} first "
                "(JaxBackend.stablehlo(graph, dims))"
            )
        else:
            hlo = self.stablehlo(graph, {})
        return f"{prog.source}\n// ----- StableHLO -----\n{hlo}"

    # -- more ----------------------------------------------------------------------------------
    def program(self, graph: Graph) -> Program:
        """The generated kernel (raises BackendError listing what cannot be lowered)."""
        problems = self.unsupported(graph)
        if problems:
            raise BackendError(
                f"target 'jax' cannot compile graph @{graph.name}:\n  " + "\n  ".join(problems)
            )
        return Emitter(graph, self.rules).program()

    def stablehlo(self, graph: Graph, dims: Mapping[str, int]) -> str:
        """The StableHLO text of the graph's program for inputs with ``dims`` bound."""
        unbound = self._unbound(graph, dims)
        if unbound:
            raise BackendError(
                f"graph @{graph.name} has symbolic dims {', '.join(unbound)}: bind them to print "
                f"StableHLO (e.g. {', '.join(f'{d}=128' for d in unbound)})"
            )
        prog, fn = self._build(graph)
        args = [
            jax.ShapeDtypeStruct(t.static_shape, t.scalar_dtype.np_dtype)
            for t in self._input_types(graph, dims)
        ]
        args += [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in prog.weights]
        text: str = self._guard(graph, prog, lambda: jax.jit(fn).lower(*args).as_text())
        return text

    # -- internals -----------------------------------------------------------------------------
    def _build(self, graph: Graph) -> tuple[Program, Callable[..., Any]]:
        prog = self.program(graph)
        filename = f"<kiln-jax @{graph.name} #{next(_serial)}>"
        prog.filename = filename
        # registered so that tracebacks (and the node lookup in _error) show the generated lines
        linecache.cache[filename] = (len(prog.source), None, prog.source.splitlines(True), filename)
        namespace: dict[str, Any] = {
            "jax": jax,
            "jnp": jnp,
            "lax": lax,
            "lib": lib,
            "HIGHEST": self.precision,
        }
        namespace.update(prog.qtypes)
        exec(compile(prog.source, filename, "exec"), namespace)
        kernel: Callable[..., Any] = namespace["kernel"]
        return prog, kernel

    @staticmethod
    def _fast_signature(graph: Graph) -> list[tuple[str, np.dtype, tuple[int, ...] | None]]:
        """(name, storage dtype, shape) per input; shape None where only the full check will do
        (symbolic dims, narrow integers whose range must be checked)."""
        out: list[tuple[str, np.dtype, tuple[int, ...] | None]] = []
        for name, v in zip(graph.input_names, graph.inputs, strict=True):
            t = v.tensor_type
            dt = t.scalar_dtype
            exact = t.is_static and dt.is_storage_exact
            out.append((name, dt.np_dtype, t.static_shape if exact else None))
        return out

    @staticmethod
    def _input_types(graph: Graph, dims: Mapping[str, int] | None = None) -> list[TensorType]:
        out = []
        for v in graph.inputs:
            t = bind_type(v.type, dims or {})
            assert isinstance(t, TensorType)  # unsupported() refused host inputs
            out.append(t)
        return out

    @staticmethod
    def _unbound(graph: Graph, dims: Mapping[str, int]) -> list[str]:
        names = [d for v in graph.inputs if isinstance(v.type, TensorType) for d in v.type.shape]
        return list(dict.fromkeys(d for d in names if isinstance(d, str) and d not in dims))

    def _guard(self, graph: Graph, prog: Program, thunk: Callable[[], Any]) -> Any:
        try:
            return thunk()
        except Exception as e:
            raise self._error(graph, prog, e) from None

    @staticmethod
    def _error(graph: Graph, prog: Program, e: Exception) -> BackendError:
        """A BackendError naming the node whose generated line raised (or the graph)."""
        if isinstance(e, BackendError):
            return e
        node = None
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == prog.filename:
                node = prog.line_nodes.get(tb.tb_lineno, node)
            tb = tb.tb_next
        detail = "\n    ".join(str(e).strip().splitlines()[:4])
        where = node.describe() if node is not None else f"graph @{graph.name}"
        return BackendError(f"{where}: jax failed: {type(e).__name__}: {detail}")
