"""Op definitions and the context that holds them.

Every op is defined once, as an :class:`OpDef`: its operands, its typed attributes, type inference
(which also verifies operand types), and its reference (NumPy) semantics. A :class:`Context` holds
a registry of op definitions; tests can create a fresh one, and nothing registers itself on import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .core import Attrs, NoAttrs
from .errors import UnknownOpError
from .types import Type

InferFn = Callable[[Any, Sequence[Type]], Sequence[Type]]
ReferenceFn = Callable[[Any, Sequence[Any], Sequence[Type]], Sequence[Any]]


@dataclass(frozen=True)
class OpDef:
    """The single definition of an op.

    - ``operands``: names of the operands (for docs and errors); with ``variadic`` the last
      one repeats one or more times.
    - ``infer(attrs, operand_types) -> result_types`` verifies operand types and infers results;
      it raises TypeInferenceError with a message naming the problem.
    - ``reference(attrs, args, result_types) -> results``: NumPy semantics on concrete arrays
      (result types have symbolic dims already bound).
    - ``composite``: the op is defined by (and may be expanded to) primitive ops; backends may
      lower it directly (a fused softmax) or expand it.
    - ``effects``: the op has side effects (never CSE'd, folded or dropped as dead).
    - ``elementwise``: each result element depends only on the same (broadcast) element of each
      operand; fusion and code generators read this instead of keeping their own op lists.
    """

    name: str
    operands: tuple[str, ...]
    infer: InferFn
    reference: ReferenceFn
    attrs: type[Attrs] = NoAttrs
    variadic: bool = False
    composite: bool = False
    effects: bool = False
    commutative: bool = False
    elementwise: bool = False
    doc: str = ""

    def check_arity(self, n: int) -> str | None:
        """None when ``n`` operands are acceptable, else a message saying what is expected."""
        k = len(self.operands)
        if self.variadic:
            if n < k:
                return f"'{self.name}' takes at least {k} operands ({', '.join(self.operands)}), got {n}"
            return None
        if n != k:
            names = ", ".join(self.operands) or "none"
            return f"'{self.name}' takes {k} operands ({names}), got {n}"
        return None


@dataclass
class Context:
    """Holds the op registry (and later, targets and backends) for one compilation world."""

    ops: dict[str, OpDef] = field(default_factory=dict)

    def register(self, *defs: OpDef | Iterable[OpDef]) -> None:
        for d in defs:
            for op in [d] if isinstance(d, OpDef) else d:
                if op.name in self.ops:
                    raise ValueError(f"op {op.name!r} registered twice")
                self.ops[op.name] = op

    def lookup(self, name: str, where: str = "") -> OpDef:
        try:
            return self.ops[name]
        except KeyError:
            near = _nearest(name, self.ops)
            hint = f"; did you mean '{near}'?" if near else ""
            at = f" {where}" if where else ""
            raise UnknownOpError(f"unknown op '{name}'{at}{hint} (`kiln ops` lists them)") from None

    def __contains__(self, name: str) -> bool:
        return name in self.ops


def _nearest(name: str, names: Iterable[str]) -> str | None:
    import difflib

    hits = difflib.get_close_matches(name, list(names), n=1)
    return hits[0] if hits else None


_default: Context | None = None


def default_context() -> Context:
    """The process-wide context with kiln's core ops, created on first use."""
    global _default
    if _default is None:
        from .ops import core_ops

        ctx = Context()
        ctx.register(core_ops())
        _default = ctx
    return _default
