"""The IR checker: every invariant a well-formed graph keeps, checked apart from construction."""

from __future__ import annotations

import numpy as np

from .builder import infer_types
from .core import Graph, Node, Value
from .dtypes import DType, QuantType
from .errors import KilnError, VerifyError
from .quant import QuantizeError, check_shape, codes_dtype, codes_shape
from .registry import Context, default_context
from .types import TensorType, Type


def types_match(expected: Type, given: Type) -> bool:
    return expected == given


def check_quantized_constant(ref: str, t: TensorType, arr: np.ndarray) -> None:
    """A quantized constant holds its codes in the layout of its type (see kiln.ir.quant)."""
    q = t.dtype
    assert isinstance(q, QuantType)
    if t.rank != 2 or not t.is_static:
        raise VerifyError(f"quantized constant @{ref} must be a static [K, N] matrix, got {t}")
    k, n = t.static_shape
    try:
        check_shape(q, k, f"for @{ref}")
    except QuantizeError as e:
        raise VerifyError(str(e)) from None
    want = codes_shape(q, k, n)
    if arr.dtype != codes_dtype(q) or tuple(arr.shape) != want:
        raise VerifyError(
            f"quantized constant @{ref} holds {arr.dtype}{list(arr.shape)} but {t} is stored as "
            f"{codes_dtype(q)}{list(want)}"
        )


def check_constant(graph: Graph, node: Node) -> None:
    ref = node.attrs.ref  # type: ignore[attr-defined]
    t = node.results[0].type
    data = graph.constants.get(ref)
    if data is None:
        return  # data not loaded (text without weights); checked when run
    if isinstance(t, TensorType) and isinstance(t.dtype, QuantType):
        check_quantized_constant(ref, t, np.asarray(data))
        return
    if not isinstance(t, TensorType) or not isinstance(t.dtype, DType):
        raise VerifyError(f"constant @{ref} must have a tensor type, got {t}")
    arr = np.asarray(data)
    if arr.dtype != t.dtype.np_dtype or tuple(arr.shape) != t.shape:
        got = f"{arr.dtype}{list(arr.shape)}"
        raise VerifyError(f"constant @{ref} holds {got} but is typed {t}")
    if t.dtype.is_int and arr.size and (arr.min() < t.dtype.min_value or arr.max() > t.dtype.max_value):
        raise VerifyError(f"constant @{ref} holds values outside the range of {t.dtype}")


def verify_node(graph: Graph, node: Node, ctx: Context) -> None:
    opdef = ctx.lookup(node.op)
    if not isinstance(node.attrs, opdef.attrs):
        raise VerifyError(f"attributes {type(node.attrs).__name__}, expected {opdef.attrs.__name__}")
    node.attrs.verify()
    if node.op == "constant":
        if node.operands or len(node.results) != 1:
            raise VerifyError("a constant has no operands and one result")
        node.results[0].type.verify()
        check_constant(graph, node)
        return
    inferred = infer_types(opdef, node.attrs, [v.type for v in node.operands])
    if len(inferred) != len(node.results):
        raise VerifyError(f"has {len(node.results)} results, the op defines {len(inferred)}")
    for i, (want, got) in enumerate(zip(inferred, (r.type for r in node.results), strict=True)):
        if not types_match(want, got):
            raise VerifyError(f"result #{i} is typed {got}, but the op infers {want}")


def verify(graph: Graph, ctx: Context | None = None) -> None:
    """Raise VerifyError naming the node and the broken invariant, or return None."""
    ctx = ctx or default_context()
    defined: set[Value] = set()
    names: set[str] = set()
    for v in graph.inputs:
        v.type.verify()
        if not v.name:
            raise VerifyError(f"graph @{graph.name}: every input needs a name")
        if v.name in names:
            raise VerifyError(f"graph @{graph.name}: duplicate input name {v.name!r}")
        names.add(v.name)
        defined.add(v)
    later = {r for n in graph.nodes for r in n.results}
    for node in graph.nodes:
        for i, v in enumerate(node.operands):
            if v not in defined:
                why = (
                    "is defined later (a cycle, or nodes out of order)"
                    if v in later
                    else "is never defined in this graph"
                )
                raise VerifyError(f"{node.describe()}: operand #{i} {v!r} {why}")
        try:
            verify_node(graph, node, ctx)
        except KilnError as e:
            raise VerifyError(f"{node.describe()}: {e}") from None
        for r in node.results:
            if r in defined:
                raise VerifyError(f"{node.describe()}: value {r!r} is defined twice (not SSA)")
            defined.add(r)
    onames: set[str] = set()
    for name, v in graph.outputs:
        if name in onames:
            raise VerifyError(f"graph @{graph.name}: duplicate output name {name!r}")
        onames.add(name)
        if v not in defined:
            raise VerifyError(f"graph @{graph.name}: output {name!r} is never defined")
