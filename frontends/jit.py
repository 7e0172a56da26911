"""``kiln.jit``: trace a Python function per input signature, compile it, and run it.

Staged like JAX: ``f.lower(*args)`` returns a :class:`Lowered` (the traced graph, ``as_text()``),
whose ``compile(target=...)`` returns a :class:`Compiled` (an executable that checks its
arguments). Calling ``f(*args)`` does both, cached per signature (shapes, dtypes, static values).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.core import Graph
from ..ir.dtypes import from_numpy
from ..ir.errors import KilnError, SignatureError, TraceError, VerifyError
from ..ir.registry import Context, default_context
from ..ir.types import TensorType
from ..runtime.executable import Executable, compile_graph
from .numpy_api import CURRENT
from .trace import Trace, Tracer


def _closure_names(fn: Callable[..., Any]) -> dict[int, str]:
    """Names of the NumPy arrays a function can see (globals and closure), for readable IR."""
    names: dict[int, str] = {}
    for name, val in getattr(fn, "__globals__", {}).items():
        if isinstance(val, np.ndarray):
            names.setdefault(id(val), name)
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    if code is not None:
        for name, cell in zip(code.co_freevars, cells, strict=False):
            try:
                val = cell.cell_contents
            except ValueError:
                continue
            if isinstance(val, np.ndarray):
                names[id(val)] = name
            elif isinstance(val, dict | list | tuple):
                items = val.items() if isinstance(val, dict) else enumerate(val)
                for k, v in items:
                    if isinstance(v, np.ndarray):
                        names.setdefault(id(v), f"{name}_{k}")
    return names


@dataclass(frozen=True)
class OutputTree:
    """How to rebuild the function's return value from the graph's flat outputs."""

    kind: str  # "single", "tuple", "list", "dict"
    keys: tuple[str, ...]

    def unflatten(self, vals: Sequence[Any]) -> Any:
        if self.kind == "single":
            return vals[0]
        if self.kind == "dict":
            return dict(zip(self.keys, vals, strict=True))
        return tuple(vals) if self.kind == "tuple" else list(vals)


def _flatten_outputs(out: Any, where: str) -> tuple[list[tuple[str, Any]], OutputTree]:
    if isinstance(out, dict):
        keys = tuple(str(k) for k in out)
        return list(zip(keys, out.values(), strict=True)), OutputTree("dict", keys)
    if isinstance(out, tuple | list):
        keys = tuple(f"out{i}" for i in range(len(out)))
        kind = "tuple" if isinstance(out, tuple) else "list"
        return list(zip(keys, out, strict=True)), OutputTree(kind, keys)
    return [("out", out)], OutputTree("single", ("out",))


class Lowered:
    """A traced function for one signature: ``.graph``, ``.as_text()``, ``.compile()``."""

    def __init__(self, graph: Graph, tree: OutputTree, jitted: Jitted, arrays: list[int]) -> None:
        self.graph = graph
        self.tree = tree
        self._jitted = jitted
        self.array_argnums = arrays

    def as_text(self) -> str:
        return self.graph.as_text()

    def compile(self, target: str | None = None, pipeline: str | None = None) -> Compiled:
        j = self._jitted
        exe = compile_graph(
            self.graph,
            target or j.target,
            j.pipeline if pipeline is None else pipeline,
            cache_dir=j.cache_dir,
            fallback=j.fallback,
            ctx=j.ctx,
        )
        return Compiled(exe, self.tree, self.array_argnums)


class Compiled:
    """An executable for one signature; checks each argument's shape and dtype."""

    def __init__(self, exe: Executable, tree: OutputTree, array_argnums: Sequence[int]) -> None:
        self.executable = exe
        self.tree = tree
        self.array_argnums = array_argnums

    @property
    def graph(self) -> Graph:
        return self.executable.graph

    def as_text(self) -> str:
        return self.executable.as_text()

    def __call__(self, *args: Any) -> Any:
        if self.array_argnums and max(self.array_argnums) >= len(args):
            raise SignatureError(
                f"{self.graph.name} was compiled for at least {max(self.array_argnums) + 1} "
                f"arguments, got {len(args)}"
            )
        arrays = [args[i] for i in self.array_argnums]
        outs = self.executable.run(dict(zip(self.executable.input_names, arrays, strict=False)))
        return self.tree.unflatten([outs[n] for n in self.executable.output_names])


class Jitted:
    """A function traced and compiled per signature; see :func:`kiln.jit`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        target: str = "reference",
        pipeline: str | None = None,
        const_argnums: Sequence[int] = (),
        static_argnums: Sequence[int] = (),
        ctx: Context | None = None,
        cache_dir: str | None = None,
        fallback: bool = False,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.cache_dir = cache_dir
        self.fallback = fallback
        self.fn = fn
        self.target = target
        self.pipeline = pipeline
        self.const_argnums = tuple(const_argnums)
        self.static_argnums = tuple(static_argnums)
        self.ctx = ctx or default_context()
        self._lowered: dict[Any, Lowered] = {}
        self._compiled: dict[Any, tuple[Compiled, list[int]]] = {}
        self.trace_count = 0
        sig = None
        with contextlib.suppress(TypeError, ValueError):
            sig = inspect.signature(fn)
        self._param_names = (
            [
                p.name
                for p in sig.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if sig
            else []
        )

    def _arg_name(self, i: int) -> str:
        return self._param_names[i] if i < len(self._param_names) else f"arg{i}"

    def _classify(self, args: Sequence[Any]) -> tuple[Any, list[int]]:
        """The cache key of a call and the positions of its array (graph input) arguments."""
        key: list[Any] = []
        arrays: list[int] = []
        for i, a in enumerate(args):
            name = self._arg_name(i)
            if i in self.static_argnums:
                try:
                    hash(a)
                except TypeError:
                    raise SignatureError(
                        f"static argument '{name}' must be hashable, got {type(a).__name__}"
                    ) from None
                key.append(("static", a))
            elif isinstance(a, np.ndarray | np.generic):
                if i in self.const_argnums:
                    key.append(("const", id(a), a.shape, str(a.dtype)))
                    continue
                try:
                    dt = from_numpy(a.dtype)
                except VerifyError:
                    raise SignatureError(
                        f"argument '{name}': NumPy dtype {a.dtype} has no kiln dtype"
                    ) from None
                key.append(("array", np.shape(a), dt))
                arrays.append(i)
            elif isinstance(a, bool | int | float | str | None | tuple):
                key.append(("static", type(a).__name__, a))
            elif isinstance(a, Tracer):
                raise TraceError(f"argument '{name}' is a traced value: call jitted functions on arrays")
            else:
                raise SignatureError(
                    f"argument '{name}': expected a NumPy array or a Python scalar, got {type(a).__name__}"
                )
        return tuple(key), arrays

    def _trace(self, args: Sequence[Any], arrays: list[int]) -> Lowered:
        trace = Trace(
            getattr(self.fn, "__name__", "main").strip("<>") or "main", self.ctx, _closure_names(self.fn)
        )
        call_args: list[Any] = list(args)
        for i in self.const_argnums:
            if i < len(args):
                trace.const_names[id(args[i])] = self._arg_name(i)
        for i in arrays:
            a = np.asarray(args[i])
            call_args[i] = trace.input(self._arg_name(i), TensorType(from_numpy(a.dtype), tuple(a.shape)))
        token = CURRENT.set(trace)
        try:
            out = self.fn(*call_args)
        finally:
            CURRENT.reset(token)
        flat, tree = _flatten_outputs(out, self.fn.__name__)
        for name, v in flat:
            if isinstance(v, np.ndarray | np.generic | int | float | bool):
                v = trace.lift(v)
            if not isinstance(v, Tracer):
                raise TraceError(
                    f"{self.fn.__name__} returned a {type(v).__name__} as output '{name}': return "
                    "traced arrays (or a tuple, list or dict of them)"
                )
            trace.builder.output(name, v.value)
        self.trace_count += 1
        try:
            graph = trace.builder.build()
        except KilnError as e:
            raise TraceError(f"tracing {self.fn.__name__} produced invalid IR: {e}") from None
        return Lowered(graph, tree, self, arrays)

    def lower(self, *args: Any) -> Lowered:
        """Trace for the signature of ``args`` (cached)."""
        key, arrays = self._classify(args)
        if key not in self._lowered:
            self._lowered[key] = self._trace(args, arrays)
        return self._lowered[key]

    def __call__(self, *args: Any) -> Any:
        key, arrays = self._classify(args)
        if key not in self._compiled:
            lowered = self.lower(*args)
            compiled = lowered.compile()
            self._compiled[key] = (compiled, arrays)
        compiled, _ = self._compiled[key]
        return compiled(*args)

    def cache_size(self) -> int:
        return len(self._compiled)

    def __repr__(self) -> str:
        return f"kiln.jit({getattr(self.fn, '__name__', self.fn)!r}, target={self.target!r})"


def jit(
    fn: Callable[..., Any] | None = None,
    *,
    target: str = "reference",
    pipeline: str | None = None,
    const_argnums: Sequence[int] = (),
    static_argnums: Sequence[int] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    fallback: bool = False,
) -> Any:
    """Trace ``fn`` into kiln IR per input signature and run it on ``target``.

    NumPy arrays passed as arguments become graph inputs, except those at ``const_argnums``,
    which are baked in as constants (weights), as are arrays the function captures. Python
    scalars and the arguments at ``static_argnums`` are static: a new value retraces.
    ``pipeline`` is a pass pipeline (default: the target's). ``cache_dir`` keeps generated kernels
    (default ``$KILN_CACHE_DIR`` or ``~/.cache/kiln``); ``fallback`` lets a target run ops it
    cannot lower with the reference semantics (with a warning) instead of refusing them.
    """
    from ..ir.targets import get_target

    get_target(target)

    def wrap(f: Callable[..., Any]) -> Jitted:
        return Jitted(f, target, pipeline, const_argnums, static_argnums,
                      cache_dir=str(cache_dir) if cache_dir else None, fallback=fallback)  # fmt: skip

    return wrap(fn) if fn is not None else wrap
