"""A small emitter of MLIR text: SSA names, types, locations, and builders for the linalg forms
the lowering rules use (``linalg.generic`` with a scalar region, fills, empties).

The rules write upstream MLIR as text, one op per line, and the bindings parse and verify the
result (``kiln.ir.mlir.export``). Every op line carries the location of the kiln node it came
from, so that a verifier diagnostic names the kiln op, not a line of generated text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..core import Node, Value
from ..dtypes import DType, f32
from ..errors import KilnError
from ..types import TensorType


class MlirExportError(KilnError):
    """A graph (or one of its ops) has no MLIR form; the message names the op."""


def elem_type(dt: DType) -> str:
    """The MLIR element type of a kiln scalar type: integers are signless (signedness lives in
    the ops chosen: divsi/divui, extsi/extui, cmpi slt/ult, ...)."""
    if dt.is_bool:
        return "i1"
    if dt.kind == "bf":
        return "bf16"
    if dt.kind == "f":
        return f"f{dt.bits}"
    return f"i{dt.bits}"


def compute_dtype(dt: DType) -> DType:
    """kiln computes f16/bf16 in f32 and rounds every result (ir/interpret.py)."""
    return f32 if dt.is_float and dt.bits == 16 else dt


def tensor_type(shape: Sequence[int], dt: DType | str) -> str:
    el = dt if isinstance(dt, str) else elem_type(dt)
    return f"tensor<{''.join(f'{d}x' for d in shape)}{el}>"


def amap(rank: int, exprs: Sequence[str | int]) -> str:
    """``affine_map<(d0, d1) -> (d1, 0)>``: exprs are dim names (``"d1"``) or constants."""
    dims = ", ".join(f"d{i}" for i in range(rank))
    return f"affine_map<({dims}) -> ({', '.join(str(e) for e in exprs)})>"


def identity_map(rank: int) -> str:
    return amap(rank, [f"d{i}" for i in range(rank)])


def broadcast_map(in_shape: Sequence[int], out_shape: Sequence[int]) -> str:
    """The map reading an operand broadcast (NumPy rules, aligned right) to ``out_shape``."""
    rank, off = len(out_shape), len(out_shape) - len(in_shape)
    exprs: list[str | int] = [
        0 if d == 1 and out_shape[off + i] != 1 else f"d{off + i}" for i, d in enumerate(in_shape)
    ]
    return amap(rank, exprs)


def float_literal(v: float, dt: DType) -> str:
    """An MLIR float literal (hex bit patterns for inf/nan so every width parses)."""
    if math.isfinite(v):
        r = repr(float(v))  # exact for the f64 holding the value; MLIR wants a '.' in it
        return r if "." in r else f"{float(v):.17e}"
    import struct

    if dt.bits == 64:
        bits = struct.unpack("<Q", struct.pack("<d", v))[0]
        return f"0x{bits:016X}"
    b32 = struct.unpack("<I", struct.pack("<f", v))[0]
    if dt.kind == "bf":
        return f"0x{b32 >> 16:04X}"
    if dt.bits == 16:
        return {math.inf: "0x7C00", -math.inf: "0xFC00"}.get(v, "0x7E00")
    return f"0x{b32:08X}"


@dataclass(frozen=True)
class Scalar:
    """A scalar SSA value inside a region, in its compute type (f16/bf16 live as f32)."""

    name: str
    dtype: DType  # the kiln type whose semantics the value follows

    @property
    def mlir(self) -> str:
        return elem_type(compute_dtype(self.dtype))


@dataclass
class Region:
    """Builds the scalar body of a ``linalg.generic``: arith/math ops on :class:`Scalar` values."""

    em: Emitter
    lines: list[str] = field(default_factory=list)

    def op(self, text: str, dt: DType) -> Scalar:
        """``%new = <text>``; ``dt`` is the kiln type of the result (bool results: i1)."""
        name = self.em.fresh()
        self.lines.append(f"{name} = {text}")
        return Scalar(name, dt)

    def const(self, value: float | int | bool, dt: DType) -> Scalar:
        ct = compute_dtype(dt)
        if dt.is_bool:  # a bool attribute carries its type: no ": i1"
            return self.op(f"arith.constant {'true' if value else 'false'}", dt)
        lit = float_literal(float(value), ct) if dt.is_float else str(int(value))
        return self.op(f"arith.constant {lit} : {elem_type(ct)}", dt)

    def index(self, dim: int) -> str:
        name = self.em.fresh()
        self.lines.append(f"{name} = linalg.index {dim} : index")
        return name

    def round(self, s: Scalar, dt: DType) -> Scalar:
        """``s`` rounded to ``dt`` and kept in ``dt``'s compute type (a no-op but for f16/bf16)."""
        if compute_dtype(dt) == dt:
            return Scalar(s.name, dt)
        t = self.op(f"arith.truncf {s.name} : f32 to {elem_type(dt)}", dt)
        return self.op(f"arith.extf {t.name} : {elem_type(dt)} to f32", dt)

    def load(self, arg: str, dt: DType) -> Scalar:
        """A block argument of storage type ``dt`` in its compute type."""
        if compute_dtype(dt) == dt:
            return Scalar(arg, dt)
        return self.op(f"arith.extf {arg} : {elem_type(dt)} to f32", dt)

    def store(self, s: Scalar, dt: DType) -> str:
        """``s`` as a value of storage type ``dt`` (for ``linalg.yield``)."""
        if compute_dtype(dt) == dt:
            return s.name
        return self.op(f"arith.truncf {s.name} : f32 to {elem_type(dt)}", dt).name


#: The body of a generic: (region, block arguments as scalars (ins, then outs)) -> yielded scalars.
BodyFn = Callable[[Region, list[Scalar]], list[Scalar]]


@dataclass(frozen=True)
class Operand:
    """An SSA tensor with its static shape and kiln dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: DType

    @property
    def type(self) -> str:
        return tensor_type(self.shape, self.dtype)


@dataclass
class Emitter:
    """Accumulates the body of one ``func.func``; rules call its builders."""

    lines: list[str] = field(default_factory=list)
    names: dict[int, Operand] = field(default_factory=dict)  # Value.id -> its SSA tensor
    loc: str = "unknown"
    counter: int = 0
    indent: str = "    "

    # -- names and values -------------------------------------------------------------------
    def fresh(self, hint: str = "v") -> str:
        self.counter += 1
        return f"%{hint}{self.counter}"

    def bind(self, v: Value, op: Operand) -> None:
        self.names[v.id] = op

    def get(self, v: Value) -> Operand:
        return self.names[v.id]

    def at(self, node: Node) -> None:
        """Later lines come from ``node`` (their location names it)."""
        first = (node.results[0].name or str(node.results[0].id)) if node.results else "?"
        text = f"{node.op} %{first}" + (f" at {node.loc}" if node.loc else "")
        self.loc = text.replace("\\", "\\\\").replace('"', '\\"')

    def line(self, text: str) -> None:
        self.lines.append(f'{self.indent}{text} loc("{self.loc}")')

    def op(self, text: str, shape: Sequence[int], dt: DType) -> Operand:
        """``%new = <text>`` producing a tensor of ``shape`` and ``dt``."""
        name = self.fresh()
        self.line(f"{name} = {text}")
        return Operand(name, tuple(shape), dt)

    # -- builders -----------------------------------------------------------------------------
    def empty(self, shape: Sequence[int], dt: DType) -> Operand:
        return self.op(f"tensor.empty() : {tensor_type(shape, dt)}", shape, dt)

    def scalar(self, value: float | int | bool, dt: DType) -> str:
        """A function-level ``arith.constant`` of storage type ``dt``."""
        if dt.is_bool:
            lit = "true" if value else "false"  # a bool attribute carries its type
        else:
            lit = f"{float_literal(float(value), dt) if dt.is_float else int(value)} : {elem_type(dt)}"
        name = self.fresh("c")
        self.line(f"{name} = arith.constant {lit}")
        return name

    def splat(self, value: float | int | bool, shape: Sequence[int], dt: DType) -> Operand:
        """A tensor filled with ``value`` (``linalg.fill``)."""
        c = self.scalar(value, dt)
        e = self.empty(shape, dt)
        return self.op(
            f"linalg.fill ins({c} : {elem_type(dt)}) outs({e.name} : {e.type}) -> {e.type}", shape, dt
        )

    def generic(
        self,
        ins: Sequence[tuple[Operand, str]],
        outs: Sequence[tuple[Operand, str]],
        iterators: Sequence[str],
        body: BodyFn,
        widen: bool = True,
    ) -> list[Operand]:
        """``linalg.generic``: ``ins``/``outs`` are (tensor, indexing map); ``body`` gets the block
        arguments as scalars in their compute types and returns one scalar per output.
        ``widen=False`` keeps f16/bf16 in their storage type (code that only moves or selects)."""
        maps = ", ".join(m for _, m in [*ins, *outs])
        its = ", ".join(f'"{i}"' for i in iterators)
        results = [self.fresh() for _ in outs]
        head = f"{', '.join(results)} = " if results else ""
        ins_s = (
            f" ins({', '.join(o.name for o, _ in ins)} : {', '.join(o.type for o, _ in ins)})" if ins else ""
        )
        outs_s = f" outs({', '.join(o.name for o, _ in outs)} : {', '.join(o.type for o, _ in outs)})"
        args = [self.fresh("a") for _ in [*ins, *outs]]
        dts = [o.dtype for o, _ in [*ins, *outs]]
        block = ", ".join(f"{a}: {elem_type(d)}" for a, d in zip(args, dts, strict=True))
        r = Region(self)
        scalars = [r.load(a, d) if widen else Scalar(a, d) for a, d in zip(args, dts, strict=True)]
        ys = body(r, scalars)
        yields = [r.store(y, o.dtype) if widen else y.name for y, (o, _) in zip(ys, outs, strict=True)]
        out_types = ", ".join(o.type for o, _ in outs)
        if len(outs) > 1:  # several result types are written in parentheses
            out_types = f"({out_types})"
        pad = self.indent + "  "
        self.lines.append(
            f"{self.indent}{head}linalg.generic {{indexing_maps = [{maps}], iterator_types = [{its}]}}"
            f"{ins_s}{outs_s} {{"
        )
        self.lines.append(f"{self.indent}^bb0({block}):")
        self.lines.extend(f'{pad}{ln} loc("{self.loc}")' for ln in r.lines)
        yt = ", ".join(elem_type(o.dtype) for o, _ in outs)
        self.lines.append(f'{pad}linalg.yield {", ".join(yields)} : {yt} loc("{self.loc}")')
        self.lines.append(f'{self.indent}}} -> {out_types} loc("{self.loc}")')
        return [Operand(n, o.shape, o.dtype) for n, (o, _) in zip(results, outs, strict=True)]

    def map(self, ins: Sequence[Operand], shape: Sequence[int], dt: DType, body: BodyFn) -> Operand:
        """An elementwise generic over ``shape``: operands broadcast to it (NumPy rules)."""
        shape = tuple(shape)
        init = self.empty(shape, dt)
        pairs = [(o, broadcast_map(o.shape, shape)) for o in ins]
        (y,) = self.generic(pairs, [(init, identity_map(len(shape)))], ["parallel"] * len(shape),
                            lambda r, xs: body(r, xs[: len(ins)]))  # fmt: skip
        return y


def tensor_of(t: TensorType, dims: dict[str, int]) -> tuple[tuple[int, ...], DType]:
    """The static shape (symbolic dims bound from ``dims``) and scalar type of ``t``."""
    shape = []
    for d in t.shape:
        if isinstance(d, str):
            if d not in dims:
                raise MlirExportError(
                    f"symbolic dim '{d}' is not bound: MLIR export specialises shapes; pass "
                    f"dims={{'{d}': N}} (kiln show --mlir --dim {d}=N)"
                )
            shape.append(dims[d])
        else:
            shape.append(d)
    if not isinstance(t.dtype, DType):
        raise MlirExportError(f"{t} is quantized: export its op (qmatmul/qgather) with its format")
    return tuple(shape), t.dtype


#: A lowering rule: (emitter, node, operand tensors, result (shape, dtype)s) -> result tensors.
Rule = Callable[[Emitter, Node, list[Operand], list[tuple[tuple[int, ...], DType]]], list[Operand]]


def _groups(big: Sequence[int], small: Sequence[int]) -> list[list[int]] | None:
    """Consecutive dims of ``big`` grouped so that each group's product is a dim of ``small``
    (the reassociation of tensor.expand_shape / collapse_shape), or None when there is none."""
    if not small:
        return [] if all(d == 1 for d in big) else None
    groups, i = [], 0
    for j, s in enumerate(small):
        if i >= len(big):
            return None
        g, p = [i], big[i]
        i += 1
        while p < s and p != 0 and i < len(big):
            g.append(i)
            p *= big[i]
            i += 1
        if p != s:
            return None
        if j == len(small) - 1:
            if any(d != 1 for d in big[i:]):
                return None
            g += list(range(i, len(big)))
            i = len(big)
        else:
            while i < len(big) and big[i] == 1 and small[j + 1] != 1:
                g.append(i)
                i += 1
        groups.append(g)
    return groups if i == len(big) else None


def _reassoc(groups: list[list[int]]) -> str:
    return "[" + ", ".join("[" + ", ".join(map(str, g)) + "]" for g in groups) + "]"


def reshape(em: Emitter, x: Operand, shape: Sequence[int]) -> Operand:
    """``x`` viewed with ``shape`` (same size): tensor.collapse_shape / expand_shape, through 1-D
    when neither shape refines the other."""
    shape = tuple(shape)
    if shape == x.shape:
        return x
    if len(shape) > len(x.shape) and (g := _groups(shape, x.shape)) is not None:
        out = tensor_type(shape, x.dtype)
        return em.op(
            f"tensor.expand_shape {x.name} {_reassoc(g)} output_shape [{', '.join(map(str, shape))}] "
            f": {x.type} into {out}",
            shape,
            x.dtype,
        )
    if len(shape) < len(x.shape) and (g := _groups(x.shape, shape)) is not None:
        out = tensor_type(shape, x.dtype)
        # tensor.reshape, not collapse_shape: MLIR's elementwise fusion propagates collapse_shape
        # into the consuming op by expanding its loops, which turned GPT-2's attention output
        # (transpose + collapse) and the next linalg.matmul into a 4-loop contraction that the
        # CPU schedule cannot vectorise (the block ran 166 ms instead of about 35).
        dims = em.op(
            f"arith.constant dense<[{', '.join(map(str, shape))}]> : tensor<{len(shape)}xi64>",
            (len(shape),),
            DType("i", 64),
        )
        return em.op(
            f"tensor.reshape {x.name}({dims.name}) : ({x.type}, {dims.type}) -> {out}", shape, x.dtype
        )
    flat = reshape(em, x, (math.prod(x.shape),))
    return reshape(em, flat, shape)


def transpose(em: Emitter, x: Operand, perm: Sequence[int]) -> Operand:
    """``np.transpose(x, perm)`` as ``linalg.transpose`` (``x`` itself for the identity)."""
    perm = tuple(perm)
    if perm == tuple(range(len(perm))):
        return x
    shape = tuple(x.shape[p] for p in perm)
    init = em.empty(shape, x.dtype)
    return em.op(
        f"linalg.transpose ins({x.name} : {x.type}) outs({init.name} : {init.type}) "
        f"permutation = [{', '.join(map(str, perm))}]",
        shape,
        x.dtype,
    )
