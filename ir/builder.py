"""Build graphs op by op with type inference: the API frontends and passes use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .core import Attrs, Graph, Node, Value
from .dtypes import from_numpy
from .errors import AttributeError_, KilnError, TypeInferenceError, VerifyError
from .quant import QuantizedWeight
from .registry import Context, OpDef, default_context
from .types import TensorType, Type


def make_attrs(opdef: OpDef, attrs: Attrs | None, kwargs: dict[str, Any]) -> Attrs:
    """Build and verify the attribute dataclass of ``opdef`` from an instance or keywords."""
    if attrs is None:
        try:
            attrs = opdef.attrs(**kwargs)
        except TypeError as e:
            fields = list(opdef.attrs.__dataclass_fields__)
            raise AttributeError_(
                f"bad attributes {sorted(kwargs)} for '{opdef.name}': {e}; it takes {fields}"
            ) from None
    elif kwargs:
        raise AttributeError_(f"'{opdef.name}': pass attrs or keywords, not both")
    if not isinstance(attrs, opdef.attrs):
        raise AttributeError_(f"'{opdef.name}' takes {opdef.attrs.__name__}, got {type(attrs).__name__}")
    try:
        attrs.verify()
    except VerifyError as e:
        raise AttributeError_(f"'{opdef.name}': {e}") from None
    return attrs


def infer_types(opdef: OpDef, attrs: Attrs, types: Sequence[Type]) -> list[Type]:
    """Check arity and infer result types; errors are TypeInferenceError naming the op."""
    msg = opdef.check_arity(len(types))
    if msg:
        raise TypeInferenceError(msg)
    out = list(opdef.infer(attrs, types))
    for t in out:
        t.verify()
    return out


class GraphBuilder:
    """Appends typed nodes to a graph under construction.

    ``b.op("add", x, y)`` returns the single result (or a tuple for multi-result ops); attribute
    keywords build the op's attribute dataclass (``b.op("softmax", x, axis=1)``).
    """

    def __init__(self, name: str = "main", ctx: Context | None = None) -> None:
        self.ctx = ctx or default_context()
        self.graph = Graph(name, [], [], [])
        self._const_names: set[str] = set()
        self.loc: str | None = None

    def input(self, name: str, type: Type) -> Value:
        if any(v.name == name for v in self.graph.inputs):
            raise VerifyError(f"duplicate input name {name!r}")
        type.verify()
        v = Value(type, name)
        self.graph.inputs.append(v)
        return v

    def fresh_ref(self, hint: str = "c") -> str:
        base = hint or "c"
        name, i = base, 0
        while name in self._const_names or name in self.graph.constants:
            i += 1
            name = f"{base}_{i}"
        self._const_names.add(name)
        return name

    def constant(self, data: Any, name: str | None = None, dtype: Any = None) -> Value:
        """Add ``data`` (an array or scalar) to the constant table and return its value."""
        from .ops import ConstantAttrs

        arr = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
        t = TensorType(from_numpy(arr.dtype), tuple(arr.shape))
        ref = self.fresh_ref(name or "c")
        self.graph.constants[ref] = arr
        v = Value(t, name or ref)
        self.graph.nodes.append(Node("constant", (), ConstantAttrs(ref), (v,), self.loc))
        return v

    def quantized(self, qw: QuantizedWeight, name: str = "w") -> list[Value]:
        """Add a quantized weight's codes, scales (and zero points): the operands after ``x``."""
        from .ops import ConstantAttrs

        ref = self.fresh_ref(name)
        self.graph.constants[ref] = qw.codes
        w = Value(TensorType(qw.qtype, (qw.k, qw.n)), ref)
        self.graph.nodes.append(Node("constant", (), ConstantAttrs(ref), (w,), self.loc))
        vals = [w, self.constant(qw.scales, f"{ref}_scales")]
        if qw.zeros is not None:
            vals.append(self.constant(qw.zeros, f"{ref}_zeros"))
        return vals

    def op_values(
        self, op: str, *operands: Value, attrs: Attrs | None = None, **kwargs: Any
    ) -> tuple[Value, ...]:
        opdef = self.ctx.lookup(op)
        try:
            a = make_attrs(opdef, attrs, kwargs)
            types = infer_types(opdef, a, [v.type for v in operands])
        except KilnError as e:
            if self.loc:
                raise type(e)(f"{e} (at {self.loc})") from None
            raise
        results = tuple(Value(t) for t in types)
        self.graph.nodes.append(Node(op, operands, a, results, self.loc))
        return results

    def op(self, op: str, *operands: Value, attrs: Attrs | None = None, **kwargs: Any) -> Value:
        results = self.op_values(op, *operands, attrs=attrs, **kwargs)
        if len(results) != 1:
            raise TypeInferenceError(f"'{op}' has {len(results)} results; use op_values")
        return results[0]

    def output(self, name: str, value: Value) -> None:
        if name in self.graph.output_names:
            raise VerifyError(f"duplicate output name {name!r}")
        self.graph.outputs.append((name, value))

    def build(self, verify: bool = True) -> Graph:
        if verify:
            self.graph.verify(self.ctx)
        return self.graph
