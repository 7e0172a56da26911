"""Property tests for the graph passes: on random graphs every pass and the default pipeline keep
the reference interpreter's results, and on purpose-built graphs each pass does its job.

The independent truth is :func:`kiln.ir.interpret.interpret` on the *un-transformed* graph (the
pass manager works on a copy), compared with the transformed graph on the same random inputs.

Tolerances: every value the generator builds is kept within |x| <= ``LIMIT`` (50), and every
denominator and sqrt/pow base is >= 0.3, so the only rounding the passes may change is a few ulps
(``x ** -0.5 -> rsqrt(x)``, summation order after transposes fold); results are compared with
``rtol=1e-4, atol=1e-4``.  Comparisons feeding ``where`` only use values that every pass keeps
bit-exact (IEEE add/mul/div/sqrt, max/min and data movement), so a condition cannot flip.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, Value
from kiln.ir.dtypes import f32, i32
from kiln.ir.errors import KilnError
from kiln.ir.interpret import interpret
from kiln.ir.ops import normalize_slice
from kiln.ir.types import TensorType
from kiln.passes.manager import DEFAULT_PIPELINE, PassManager

RTOL = 1e-4
ATOL = 1e-4
LIMIT = 50.0  # bound on |value| of everything the generator builds
MIN_POS = 0.3  # lower bound of every denominator and every sqrt/rsqrt/pow base
MAX_SIZE = 24  # elements per tensor
MAX_RANK = 4
SPLATS = (0.0, 1.0, 2.0, 0.5, -0.5)
FIRST_INPUT_SHAPES = ((2, 3), (2, 2, 3), (3, 3), (2, 2, 2))  # equal dims: wrong perms type-check
INPUT_SHAPES = ((2, 3), (3,), (1, 3), (2, 1), (3, 1), (2, 1, 3), (1, 3, 3))

# Ops whose results every pass leaves bit-identical (given bit-identical operands): correctly
# rounded IEEE arithmetic and data movement. Transcendentals and sums are excluded (ulp-level
# differences between layouts / summation orders), and so is pow (rewritten to sqrt/rsqrt/mul).
EXACT_OPS = {
    "add",
    "sub",
    "mul",
    "div",
    "neg",
    "abs",
    "maximum",
    "minimum",
    "relu",
    "sqrt",
    "reshape",
    "transpose",
    "squeeze",
    "unsqueeze",
    "cast",
    "broadcast_to",
    "slice",
    "concat",
    "reduce_max",
    "where",
}

PIPELINES = ["canonicalize", "constant-fold", "cse", "dce", DEFAULT_PIPELINE]


# --------------------------------------------------------------------------------------------
# A random graph generator
# --------------------------------------------------------------------------------------------


@dataclass
class Val:
    """A generated f32 value with what the generator knows about it."""

    v: Value
    bound: float  # max |x|
    low: float | None  # a positive lower bound, when known
    exact: bool  # bit-identical under every pass

    @property
    def shape(self) -> tuple[int, ...]:
        return self.v.tensor_type.static_shape


def _bshape(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        out = tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None
    if len(out) > MAX_RANK or math.prod(out) > MAX_SIZE:
        return None
    return out


@functools.cache
def _shapes_of_size(n: int, max_rank: int = 3) -> list[tuple[int, ...]]:
    """Every shape of rank <= max_rank with n elements."""
    if max_rank == 0:
        return [()] if n == 1 else []
    out = [
        (d, *rest) for d in range(1, n + 1) if n % d == 0 for rest in _shapes_of_size(n // d, max_rank - 1)
    ]
    return ([()] if n == 1 else []) + sorted(set(out), key=lambda s: (len(s), s))


@dataclass
class Gen:
    draw: Any
    b: GraphBuilder = field(default_factory=lambda: GraphBuilder("rand"))
    pool: list[Val] = field(default_factory=list)
    records: list[tuple[str, tuple[Val, ...], dict[str, Any], float, float | None]] = field(
        default_factory=list
    )
    others: list[Value] = field(default_factory=list)  # i32 and bool values, compared exactly

    # -- primitives ------------------------------------------------------------------------
    def op(self, name: str, *args: Val, bound: float, low: float | None = None, **kw: Any) -> Val:
        v = self.b.op(name, *(a.v for a in args), **kw)
        exact = name in EXACT_OPS and all(a.exact for a in args)
        val = Val(v, float(bound), low, exact)
        self.pool.append(val)
        self.records.append((name, args, kw, float(bound), low))
        return val

    def const(self, arr: Any) -> Val:
        arr = np.asarray(arr, dtype=np.float32)
        v = self.b.constant(arr)
        bound = float(np.max(np.abs(arr))) if arr.size else 0.0
        low = float(arr.min()) if arr.size and arr.min() >= MIN_POS else None
        val = Val(v, bound, low, True)
        self.pool.append(val)
        return val

    def splat(self, shape: tuple[int, ...], values: tuple[float, ...] = SPLATS) -> Val:
        return self.const(np.full(shape, self.draw(st.sampled_from(values)), dtype=np.float32))

    def random_const(self, shape: tuple[int, ...]) -> Val:
        elems = st.floats(-2, 2, width=32, allow_subnormal=False)
        return self.const(self.draw(arrays(np.float32, shape, elements=elems, fill=st.nothing())))

    def pick(self, pred: Any = None) -> Val:
        cands = [p for p in self.pool if pred is None or pred(p)]
        return self.draw(st.sampled_from(cands))

    def compatible_shapes(self, s: tuple[int, ...]) -> list[tuple[int, ...]]:
        opts = [(), s, (1,) * len(s), s[-1:], (2, *s), (1, *s)]
        out = []
        for o in opts:
            if o not in out and _bshape(s, o) is not None:
                out.append(o)
        return out

    def partner(self, x: Val, allow_pool: bool = True) -> Val:
        """A value that broadcasts with ``x``: from the pool, a splat, or a random constant."""
        kind = self.draw(st.sampled_from(["pool", "splat", "const"] if allow_pool else ["splat", "const"]))
        if kind == "pool":
            cands = [p for p in self.pool if _bshape(x.shape, p.shape) is not None]
            if cands:
                return self.draw(st.sampled_from(cands))
        shape = self.draw(st.sampled_from(self.compatible_shapes(x.shape)))
        return self.splat(shape) if kind == "splat" else self.random_const(shape)

    def tame(self, x: Val, limit: float = 1.0) -> Val:
        """x itself when |x| <= limit, else tanh(x)."""
        if x.bound <= limit:
            return x
        return self.op("tanh", x, bound=1.0)

    def positive(self, x: Val) -> Val:
        """A value >= MIN_POS derived from x."""
        if x.low is not None and x.low >= MIN_POS and x.bound <= 8:
            return x
        if self.draw(st.booleans()):
            t = self.tame(x)
            return self.op("exp", t, bound=math.e, low=math.exp(-1))
        a = self.op("abs", self.tame(x, 4.0), bound=min(x.bound, 4.0))
        one = self.const(np.ones(self.draw(st.sampled_from([(), a.shape])), np.float32))
        return self.op("add", a, one, bound=a.bound + 1, low=1.0)

    # -- steps -----------------------------------------------------------------------------
    def step(self) -> None:
        kind = self.draw(
            st.sampled_from(
                [
                    "unary",
                    "unary",
                    "binary",
                    "binary",
                    "binary",
                    "div",
                    "pow",
                    "neg_neg",
                    "reshape",
                    "reshape_chain",
                    "transpose",
                    "transpose_chain",
                    "squeeze_unsqueeze",
                    "broadcast",
                    "slice",
                    "concat",
                    "reduce",
                    "softmax",
                    "where",
                    "dup",
                    "siblings",
                    "rule",
                    "rule",
                    "rule",
                    "near_miss",
                    "const_expr",
                    "int",
                    "bool",
                ]
            )
        )
        getattr(self, f"step_{kind}")()

    def step_unary(self) -> None:
        x = self.pick()
        u = self.draw(
            st.sampled_from(["neg", "abs", "tanh", "relu", "sigmoid", "exp", "sqrt", "rsqrt", "cast"])
        )
        if u in ("neg", "abs", "relu"):
            self.op(u, x, bound=x.bound, low=x.low if u != "neg" else None)
        elif u == "cast":
            self.op("cast", x, bound=x.bound, low=x.low, dtype=f32)
        elif u in ("tanh", "sigmoid"):
            self.op(u, x, bound=1.0)
        elif u == "exp":
            t = self.tame(x, 3.0)
            self.op("exp", t, bound=math.exp(t.bound), low=math.exp(-t.bound))
        else:
            p = self.positive(x)
            assert p.low is not None
            if u == "sqrt":
                self.op("sqrt", p, bound=math.sqrt(p.bound), low=math.sqrt(p.low))
            else:
                self.op("rsqrt", p, bound=1 / math.sqrt(p.low), low=1 / math.sqrt(p.bound))

    def step_binary(self) -> None:
        name = self.draw(st.sampled_from(["add", "sub", "mul", "maximum", "minimum"]))
        x = self.pick()
        y = self.partner(x)
        if self.draw(st.integers(0, 3)) == 0:  # x + (-y), x - (-y)
            y = self.op("neg", y, bound=y.bound)
        if self.draw(st.booleans()):
            x, y = y, x
        if _bshape(x.shape, y.shape) is None:
            return
        if name == "mul" and x.bound * y.bound > LIMIT:
            x, y = self.tame(x), self.tame(y)
        if name in ("add", "sub") and x.bound + y.bound > LIMIT:
            x, y = self.tame(x), self.tame(y)
        bound = {"add": x.bound + y.bound, "sub": x.bound + y.bound, "mul": x.bound * y.bound}.get(
            name, max(x.bound, y.bound)
        )
        low = None
        if name == "add" and x.low is not None and y.low is not None:
            low = x.low + y.low
        if name == "maximum" and (x.low is not None or y.low is not None):
            low = max(x.low or 0.0, y.low or 0.0)
        self.op(name, x, y, bound=bound, low=low)

    def step_div(self) -> None:
        x = self.pick()
        how = self.draw(st.sampled_from(["pos", "splat", "sqrt", "one_over", "one_over_sqrt"]))
        if how in ("one_over", "one_over_sqrt"):  # 1 / p, 1 / sqrt(p): the reciprocal/rsqrt rules
            p = self.positive(x)
            assert p.low is not None
            if how == "one_over_sqrt":
                p = self.op("sqrt", p, bound=math.sqrt(p.bound), low=math.sqrt(p.low))
            assert p.low is not None
            one = self.const(
                np.ones(self.draw(st.sampled_from([(), p.shape, (1,) * len(p.shape)])), np.float32)
            )
            if _bshape(one.shape, p.shape) == p.shape:
                self.op("div", one, p, bound=1 / p.low, low=1 / p.bound)
            return
        if how == "splat":
            shape = self.draw(st.sampled_from(self.compatible_shapes(x.shape)))
            d = self.splat(shape, (1.0, 2.0, 0.5, -0.5))
            dlow = float(np.min(np.abs(self.b.graph.constants[d.v.name])))  # the value is named by its ref
        else:
            y = self.partner(x)
            d = self.positive(y)
            if how == "sqrt":
                assert d.low is not None
                d = self.op("sqrt", d, bound=math.sqrt(d.bound), low=math.sqrt(d.low))
            assert d.low is not None
            dlow = d.low
        if _bshape(x.shape, d.shape) is None:
            return
        if x.bound / dlow > LIMIT:
            x = self.tame(x)
        self.op("div", x, d, bound=x.bound / dlow)

    def step_pow(self) -> None:
        x = self.pick()
        if x.bound > 4:
            x = self.tame(x)
        p = self.positive(x)
        assert p.low is not None
        e = float(self.draw(st.sampled_from([1.0, 2.0, 0.5, -0.5])))
        shape = self.draw(st.sampled_from(self.compatible_shapes(p.shape)))
        c = self.const(np.full(shape, e, np.float32))
        bound = p.bound**e if e > 0 else p.low**e
        low = p.low**e if e > 0 else p.bound**e
        self.op("pow", p, c, bound=bound, low=low)

    def step_neg_neg(self) -> None:
        x = self.pick()
        n = self.op("neg", x, bound=x.bound)
        self.op("neg", n, bound=x.bound, low=x.low)

    def _reshape(self, x: Val) -> Val:
        target = self.draw(st.sampled_from(_shapes_of_size(math.prod(x.shape))))
        return self.op("reshape", x, bound=x.bound, low=x.low, shape=target)

    def step_reshape(self) -> None:
        self._reshape(self.pick())

    def step_reshape_chain(self) -> None:
        x = self.pick()
        for _ in range(self.draw(st.integers(2, 3))):
            x = self._reshape(x)

    def _transpose(self, x: Val) -> Val:
        perm = tuple(self.draw(st.permutations(range(len(x.shape)))))
        return self.op("transpose", x, bound=x.bound, low=x.low, perm=perm)

    def step_transpose(self) -> None:
        self._transpose(self.pick(lambda p: len(p.shape) >= 2))  # input x0 is always [2,3]

    def step_transpose_chain(self) -> None:
        x = self.pick(lambda p: len(p.shape) >= 2)
        for _ in range(self.draw(st.integers(2, 3))):
            x = self._transpose(x)

    def step_squeeze_unsqueeze(self) -> None:
        x = self.pick()
        ones = [i for i, d in enumerate(x.shape) if d == 1]
        if ones and self.draw(st.booleans()):
            axes = sorted(self.draw(st.sets(st.sampled_from(ones), min_size=1)))
            self.op("squeeze", x, bound=x.bound, low=x.low, axes=tuple(axes))
            return
        if len(x.shape) >= MAX_RANK:
            return
        k = self.draw(st.integers(1, MAX_RANK - len(x.shape)))
        rank = len(x.shape) + k
        axes = sorted(self.draw(st.sets(st.integers(0, rank - 1), min_size=k, max_size=k)))
        self.op("unsqueeze", x, bound=x.bound, low=x.low, axes=tuple(axes))

    def step_broadcast(self) -> None:
        x = self.pick()
        s = x.shape
        opts = [s, (2, *s), tuple(2 if d == 1 else d for d in s), tuple(3 if d == 1 else d for d in s)]
        opts = [o for o in opts if len(o) <= MAX_RANK and math.prod(o) <= MAX_SIZE]
        target = self.draw(st.sampled_from(opts))
        self.op("broadcast_to", x, bound=x.bound, low=x.low, shape=target)

    def step_slice(self) -> None:
        x = self.pick(lambda p: len(p.shape) >= 1)
        rank = len(x.shape)
        axes = sorted(self.draw(st.sets(st.integers(0, rank - 1), min_size=1)))
        starts, stops, steps = [], [], []
        for ax in axes:
            d = x.shape[ax]
            kind = self.draw(st.sampled_from(["full", "reverse", "part", "part_rev"]))
            if kind == "full":
                start, stop, step = None, None, 1
            elif kind == "reverse":
                start, stop, step = None, None, -1
            elif kind == "part":
                start = self.draw(st.integers(0, d - 1))
                stop = self.draw(st.integers(start + 1, d))
                step = self.draw(st.sampled_from([1, 2]))
            else:
                start, stop, step = self.draw(st.integers(0, d - 1)), None, -1
            s, e = normalize_slice(d, start, stop, step)
            starts.append(s)
            stops.append(e)
            steps.append(step)
        self.op(
            "slice",
            x,
            bound=x.bound,
            low=x.low,
            axes=tuple(axes),
            starts=tuple(starts),
            stops=tuple(stops),
            steps=tuple(steps),
        )

    def step_concat(self) -> None:
        x = self.pick(lambda p: len(p.shape) >= 1)
        axis = self.draw(st.integers(0, len(x.shape) - 1))
        if self.draw(st.booleans()):
            self.op("concat", x, bound=x.bound, low=x.low, axis=axis)
            return

        def fits(p: Val) -> bool:
            return len(p.shape) == len(x.shape) and all(
                a == b for i, (a, b) in enumerate(zip(p.shape, x.shape)) if i != axis
            )

        cands = [p for p in self.pool if fits(p)]
        y = self.draw(st.sampled_from(cands)) if self.draw(st.booleans()) else None
        if y is None:
            shape = tuple(self.draw(st.integers(1, 2)) if i == axis else d for i, d in enumerate(x.shape))
            y = self.random_const(shape)
        if math.prod(x.shape) + math.prod(y.shape) > MAX_SIZE:
            return
        low = min(x.low, y.low) if x.low is not None and y.low is not None else None
        self.op("concat", x, y, bound=max(x.bound, y.bound), low=low, axis=axis)

    def step_reduce(self) -> None:
        x = self.pick()
        rank = len(x.shape)
        axes = tuple(sorted(self.draw(st.sets(st.integers(0, rank - 1), max_size=rank)))) if rank else ()
        keepdims = self.draw(st.booleans())
        if self.draw(st.booleans()):
            n = math.prod(x.shape[a] for a in axes)
            if x.bound * n > LIMIT:
                x = self.tame(x)
            low = x.low * n if x.low is not None else None
            self.op("reduce_sum", x, bound=x.bound * n, low=low, axes=axes, keepdims=keepdims)
        else:
            self.op("reduce_max", x, bound=x.bound, low=x.low, axes=axes, keepdims=keepdims)

    def step_softmax(self) -> None:
        x = self.pick(lambda p: len(p.shape) >= 1)
        axis = self.draw(st.integers(0, len(x.shape) - 1))
        self.op("softmax", x, bound=1.0, axis=axis)

    def step_where(self) -> None:
        a = self.pick(lambda p: p.exact)
        b = self.partner(a, allow_pool=False) if self.draw(st.booleans()) else None
        if b is None:
            cands = [p for p in self.pool if p.exact and _bshape(a.shape, p.shape) is not None]
            b = self.draw(st.sampled_from(cands))
        assert b.exact
        cmp = self.draw(st.sampled_from(["gt", "lt", "ge", "le", "eq", "ne"]))
        cond = self.b.op(cmp, a.v, b.v)  # bool: kept out of the (f32) pool
        self.others.append(cond)
        cshape = cond.tensor_type.static_shape
        x = self.pick(lambda p: _bshape(cshape, p.shape) is not None)
        y = x if self.draw(st.integers(0, 3)) == 0 else self.partner(x)
        if _bshape(cshape, x.shape, y.shape) is None:
            return
        low = min(x.low, y.low) if x.low is not None and y.low is not None else None
        self.op("where", Val(cond, 1.0, None, True), x, y, bound=max(x.bound, y.bound), low=low)

    def step_dup(self) -> None:
        """Apply an already generated op again to the same operands: work for CSE."""
        if not self.records:
            return
        name, args, kw, bound, low = self.draw(st.sampled_from(self.records))
        self.op(name, *args, bound=bound, low=low, **kw)

    def step_rule(self) -> None:
        """One of canonicalize's patterns, on a random operand (the rewrite may or may not apply,
        depending on whether the constant broadcasts the operand up)."""
        x = self.pick()
        shape = self.draw(st.sampled_from(self.compatible_shapes(x.shape)))
        kind = self.draw(
            st.sampled_from(
                ["add0", "sub0", "mul1", "div1", "pow", "recip", "rsqrt", "subneg", "addneg", "where_same"]
            )
        )
        if kind in ("add0", "sub0", "mul1", "div1"):
            op, value = {
                "add0": ("add", 0.0),
                "sub0": ("sub", 0.0),
                "mul1": ("mul", 1.0),
                "div1": ("div", 1.0),
            }[kind]
            c = self.const(np.full(shape, value, np.float32))
            args = (c, x) if op in ("add", "mul") and self.draw(st.booleans()) else (x, c)
            self.op(op, *args, bound=x.bound, low=x.low)
        elif kind == "pow":
            self.step_pow()
        elif kind in ("recip", "rsqrt"):
            p = self.positive(self.tame(x, 4.0))
            assert p.low is not None
            if kind == "rsqrt":
                p = self.op("sqrt", p, bound=math.sqrt(p.bound), low=math.sqrt(p.low))
            assert p.low is not None
            one = self.const(np.ones(self.draw(st.sampled_from(self.compatible_shapes(p.shape))), np.float32))
            self.op("div", one, p, bound=1 / p.low, low=1 / p.bound)
        elif kind in ("subneg", "addneg"):
            y = self.partner(x)
            x, y = self.tame(x, LIMIT / 2), self.tame(y, LIMIT / 2)
            n = self.op("neg", y, bound=y.bound)
            args = (n, x) if kind == "addneg" and self.draw(st.booleans()) else (x, n)
            self.op("sub" if kind == "subneg" else "add", *args, bound=x.bound + y.bound)
        else:
            a = self.pick(lambda p: p.exact)
            c = self.b.op(
                "gt", a.v, self.splat(self.draw(st.sampled_from(self.compatible_shapes(a.shape)))).v
            )
            if _bshape(c.tensor_type.static_shape, x.shape) is not None:
                self.op("where", Val(c, 1.0, None, True), x, x, bound=x.bound, low=x.low)

    def step_near_miss(self) -> None:
        """Expressions that look like a rule but are not an identity: nothing may rewrite them."""
        x = self.tame(self.pick(), 4.0)
        shape = self.draw(st.sampled_from(self.compatible_shapes(x.shape)))
        zero = self.const(np.zeros(shape, np.float32))
        kind = self.draw(st.sampled_from(["mul0", "max0", "min0", "zero_sub", "x_sub_x", "zero_div", "pow3"]))
        if kind == "mul0":
            self.op("mul", *self.draw(st.permutations([x, zero])), bound=0.0)
        elif kind in ("max0", "min0"):
            self.op("maximum" if kind == "max0" else "minimum", x, zero, bound=x.bound)
        elif kind == "zero_sub":
            self.op("sub", zero, x, bound=x.bound)
        elif kind == "x_sub_x":
            self.op("sub", x, x, bound=2 * x.bound)
        elif kind == "zero_div":
            p = self.positive(x)
            self.op("div", zero, p, bound=0.0)
        else:
            p = self.positive(x)
            assert p.low is not None
            c = self.const(np.full(shape, 3.0, np.float32))
            if p.bound**3 <= LIMIT:
                self.op("pow", p, c, bound=p.bound**3, low=p.low**3)

    def step_siblings(self) -> None:
        """The same op on the same operand with different attributes and (often) the same result
        type: CSE must keep them apart."""
        x = self.pick(lambda p: len(p.shape) >= 1)
        shape, rank = x.shape, len(x.shape)
        kind = self.draw(st.sampled_from(["softmax", "slice", "reduce", "transpose", "swap"]))
        if kind == "swap":  # a - b and b - a, a / b and b / a
            y = self.tame(self.pick(lambda p: _bshape(p.shape, shape) is not None), 4.0)
            x = self.tame(x, 4.0)
            if self.draw(st.booleans()):
                self.op("sub", x, y, bound=x.bound + y.bound)
                self.op("sub", y, x, bound=x.bound + y.bound)
            else:
                p, q = self.positive(x), self.positive(y)
                assert p.low is not None and q.low is not None
                self.op("div", p, q, bound=p.bound / q.low)
                self.op("div", q, p, bound=q.bound / p.low)
        elif kind == "softmax" and rank >= 2:
            for axis in self.draw(st.permutations(range(rank)))[:2]:
                self.op("softmax", x, bound=1.0, axis=axis)
        elif kind == "slice":
            ax = self.draw(st.integers(0, rank - 1))
            d = shape[ax]
            n = self.draw(st.integers(1, d))
            for start in sorted({0, d - n, self.draw(st.integers(0, d - n))}):
                self.op(
                    "slice",
                    x,
                    bound=x.bound,
                    low=x.low,
                    axes=(ax,),
                    starts=(start,),
                    stops=(start + n,),
                    steps=(1,),
                )
        elif kind == "reduce":
            keepdims = self.draw(st.booleans())
            for ax in self.draw(st.permutations(range(rank)))[:2]:
                n = shape[ax]
                y = self.tame(x) if x.bound * n > LIMIT else x
                self.op("reduce_sum", y, bound=y.bound * n, axes=(ax,), keepdims=keepdims)
        elif rank >= 2:
            perms = list(itertools.permutations(range(rank)))
            for perm in self.draw(st.permutations(perms))[:2]:
                self.op("transpose", x, bound=x.bound, low=x.low, perm=perm)

    def step_const_expr(self) -> None:
        """An all-constant subexpression: work for constant-fold."""
        shape = self.draw(st.sampled_from([(), (3,), (1, 3), (2, 3)]))
        c1 = self.random_const(shape)
        c2 = self.partner(c1, allow_pool=False)
        name = self.draw(st.sampled_from(["add", "mul", "sub", "maximum"]))
        r = self.op(name, c1, c2, bound=c1.bound * c2.bound if name == "mul" else c1.bound + c2.bound)
        if self.draw(st.booleans()):
            r = self.op("tanh", r, bound=1.0)
        if self.draw(st.booleans()) and r.shape:
            r = self.op("reduce_sum", r, bound=r.bound * math.prod(r.shape), axes=(0,), keepdims=False)
        x = self.pick(lambda p: _bshape(p.shape, r.shape) is not None)
        if x.bound + r.bound <= LIMIT:
            self.op("add", x, r, bound=x.bound + r.bound)

    def step_int(self) -> None:
        """i32 arithmetic on a cast of an exact value (wrapping, and x / 0 = 0, are defined)."""
        x = self.pick(lambda p: p.exact)
        scale = self.const(np.float32(self.draw(st.sampled_from([1.0, 4.0, 16.0]))))
        v = self.b.op("cast", self.b.op("mul", x.v, scale.v), dtype=i32)
        for _ in range(self.draw(st.integers(1, 4))):
            kind = self.draw(
                st.sampled_from(["add", "sub", "mul", "div", "maximum", "minimum", "pow", "neg_neg", "cast"])
            )
            shape = v.tensor_type.static_shape
            if kind == "neg_neg":
                v = self.b.op("neg", self.b.op("neg", v))
            elif kind == "cast":
                v = self.b.op("cast", v, dtype=i32)
            else:
                vals = [1, 2] if kind == "pow" else [0, 1, 2, -1, 3]
                cshape = self.draw(st.sampled_from(self.compatible_shapes(shape)))
                c = self.b.constant(np.full(cshape, self.draw(st.sampled_from(vals)), np.int32))
                if kind in ("add", "mul", "maximum", "minimum") and self.draw(st.booleans()):
                    v = self.b.op(kind, c, v)
                else:
                    v = self.b.op(kind, v, c)
            self.others.append(v)

    def step_bool(self) -> None:
        """Comparisons, not(not(c)) and logical ops on exact values."""
        a = self.pick(lambda p: p.exact)
        b = self.partner(a, allow_pool=False)
        c = self.b.op(self.draw(st.sampled_from(["gt", "le", "eq"])), a.v, b.v)
        if self.draw(st.booleans()):
            c = self.b.op("logical_not", self.b.op("logical_not", c))
        if self.draw(st.booleans()):
            d = self.b.op("lt", a.v, self.splat(a.shape).v)
            c = self.b.op(self.draw(st.sampled_from(["logical_and", "logical_or", "logical_xor"])), c, d)
        self.others.append(c)


@dataclass
class Case:
    graph: Graph
    inputs: dict[str, np.ndarray]


@st.composite
def random_graphs(draw: Any) -> Case:
    g = Gen(draw)
    n_inputs = draw(st.integers(1, 3))
    first = draw(st.sampled_from(FIRST_INPUT_SHAPES))
    others = [s for s in INPUT_SHAPES if _bshape(first, s) == first]
    shapes = [first] + [draw(st.sampled_from(others)) for _ in range(n_inputs - 1)]
    inputs: dict[str, np.ndarray] = {}
    elems = st.floats(-2, 2, width=32, allow_subnormal=False)
    for i, s in enumerate(shapes):
        v = g.b.input(f"x{i}", TensorType(f32, s))
        g.pool.append(Val(v, 2.0, None, True))
        inputs[f"x{i}"] = draw(arrays(np.float32, s, elements=elems, fill=st.nothing()))
    for _ in range(draw(st.integers(0, 2))):
        x = g.pick()
        g.splat(draw(st.sampled_from(g.compatible_shapes(x.shape))))
    for _ in range(draw(st.integers(3, 16))):
        g.step()
    # Outputs: the last value and most of the computed values nothing uses (so that most of the
    # graph is observable), leaving some dead branches for DCE; sometimes any value at all.
    used = {v for n in g.b.graph.nodes for v in n.operands}
    producers = g.b.graph.producers()
    leaves = [
        p for p in g.pool[:-1] if p.v not in used and p.v in producers and producers[p.v].op != "constant"
    ]
    outs = [g.pool[-1], *(p for p in leaves if draw(st.integers(0, 3)) > 0)]
    for _ in range(draw(st.integers(0, 1))):
        outs.append(draw(st.sampled_from(g.pool)))
    for i, o in enumerate(outs):
        g.b.output(f"out{i}", o.v)
    if g.others and draw(st.booleans()):
        g.b.output("other", draw(st.sampled_from(g.others)))
    return Case(g.b.build(), inputs)


def run_pipeline(graph: Graph, pipeline: str) -> Graph:
    return PassManager.parse(pipeline, verify_each=True).run(graph)


def assert_same_results(before: Graph, after: Graph, inputs: dict[str, np.ndarray]) -> None:
    want = interpret(before, inputs)
    got = interpret(after, inputs)
    assert list(got) == list(want)
    for name in want:
        w, g = np.asarray(want[name]), np.asarray(got[name])
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=name)


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------------------------
# Random graphs: results are preserved
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", PIPELINES)
@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_pipeline_preserves_reference_results(pipeline: str, case: Case) -> None:
    note(case.graph.as_text())
    key = case.graph.structural_key()
    after = run_pipeline(case.graph, pipeline)
    note(after.as_text())
    assert case.graph.structural_key() == key, "the pass manager must not mutate its input"
    assert after.input_names == case.graph.input_names
    assert after.output_names == case.graph.output_names
    assert [v.type for _, v in after.outputs] == [v.type for _, v in case.graph.outputs]
    assert_same_results(case.graph, after, case.inputs)
    # Every one of these passes replaces a node by at most one node, or removes it.
    assert len(after.nodes) <= len(case.graph.nodes)


def _live_values(graph: Graph) -> set[Value]:
    live = {v for _, v in graph.outputs}
    for node in reversed(graph.nodes):
        if any(r in live for r in node.results):
            live.update(node.operands)
    return live


@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_dce_leaves_only_live_nodes(case: Case) -> None:
    after = run_pipeline(case.graph, "dce")
    live = _live_values(after)
    assert all(any(r in live for r in n.results) for n in after.nodes)
    # Exactly the nodes live in the input survive.
    live_before = _live_values(case.graph)
    n_live = sum(1 for n in case.graph.nodes if any(r in live_before for r in n.results))
    assert len(after.nodes) == n_live
    refs = {n.attrs.ref for n in after.nodes if n.op == "constant"}
    assert set(after.constants) == refs


@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_cse_leaves_no_duplicates(case: Case) -> None:
    after = run_pipeline(case.graph, "cse")
    keys = []
    datas: list[np.ndarray] = []
    for n in after.nodes:
        if n.op == "constant":
            arr = after.constants[n.attrs.ref]
            for other in datas:  # equal bytes: 0.0 and -0.0 are different constants
                assert not (
                    other.dtype == arr.dtype and other.shape == arr.shape and other.tobytes() == arr.tobytes()
                ), f"duplicate constants left: {after.as_text()}"
            datas.append(arr)
        else:
            keys.append((n.op, n.attrs, tuple(v.id for v in n.operands)))
    assert len(keys) == len(set(keys)), after.as_text()


@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_constant_fold_leaves_no_all_constant_node(case: Case) -> None:
    after = run_pipeline(case.graph, "constant-fold")
    producers = after.producers()
    for n in after.nodes:
        if n.op == "constant" or not n.operands:
            continue
        assert not all(v in producers and producers[v].op == "constant" for v in n.operands), (
            f"{n.describe()} has only constant operands after constant-fold:\n{after.as_text()}"
        )


@PROPERTY_SETTINGS
@given(case=random_graphs())
def test_canonicalize_normal_form(case: Case) -> None:
    after = run_pipeline(case.graph, "canonicalize")
    producers = after.producers()

    def operand_op(n: Any) -> str | None:
        p = producers.get(n.operands[0]) if n.operands else None
        return p.op if p is not None else None

    for n in after.nodes:
        assert n.op not in ("squeeze", "unsqueeze"), after.as_text()
        if n.op in ("neg", "transpose", "reshape", "logical_not"):
            assert operand_op(n) != n.op, f"{n.op} of {n.op} left:\n{after.as_text()}"
        if n.op in ("add", "sub"):  # x + (-y) -> x - y, x - (-y) -> x + y
            negated = [v for v in n.operands[n.op == "sub" :] if v in producers and producers[v].op == "neg"]
            assert not negated, after.as_text()
        if n.op == "where":
            assert n.operands[1] is not n.operands[2] or n.operands[1].type != n.results[0].type
        if n.op == "transpose":
            assert list(n.attrs.perm) != list(range(len(n.attrs.perm)))
        if n.op in ("reshape", "cast", "broadcast_to", "concat", "reduce_sum", "reduce_max"):
            # each of these is the identity when its type is its (single) operand's
            assert len(n.operands) != 1 or n.operands[0].type != n.results[0].type, (
                f"identity {n.op} left:\n{after.as_text()}"
            )
        neutral = {"add": 0.0, "sub": 0.0, "mul": 1.0, "div": 1.0, "pow": 1.0}
        if n.op in neutral:
            # x op neutral, with the type of x, is x (add and mul also with the constant first)
            sides = [(0, 1), (1, 0)] if n.op in ("add", "mul") else [(0, 1)]
            for keep, cst in sides:
                data = after.constant_of(producers[n.operands[cst]]) if n.operands[cst] in producers else None
                kept = producers.get(n.operands[keep])
                if kept is not None and kept.op == "constant":
                    continue  # 0 + zeros: only the first binding is tried (constant-fold's job anyway)
                if data is not None and np.all(data == neutral[n.op]):
                    assert n.operands[keep].type != n.results[0].type, after.as_text()
        if n.op == "pow":
            data = after.constant_of(producers[n.operands[1]]) if n.operands[1] in producers else None
            for e in (2.0, 0.5, -0.5):
                if data is not None and np.all(data == e):
                    assert n.operands[0].type != n.results[0].type, after.as_text()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_canonicalize_data_movement_chains(data: st.DataObject) -> None:
    """Random chains of transposes, reshapes, squeezes and unsqueezes (dims 1-3, often equal, so
    a wrongly composed permutation would still type-check) against NumPy."""
    rank = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.sampled_from([1, 2, 2, 3]), min_size=rank, max_size=rank)))
    b = GraphBuilder()
    v = b.input("x", TensorType(f32, shape))
    xv = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    want = xv
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["transpose", "transpose", "reshape", "squeeze", "unsqueeze"]))
        if kind == "transpose":
            perm = tuple(data.draw(st.permutations(range(want.ndim))))
            v, want = b.op("transpose", v, perm=perm), np.transpose(want, perm)
        elif kind == "reshape":
            target = data.draw(st.sampled_from(_shapes_of_size(want.size, 4)))
            v, want = b.op("reshape", v, shape=target), want.reshape(target)
        elif kind == "squeeze" and 1 in want.shape:
            ones = [i for i, d in enumerate(want.shape) if d == 1]
            axes = tuple(sorted(data.draw(st.sets(st.sampled_from(ones), min_size=1))))
            v, want = b.op("squeeze", v, axes=axes), np.squeeze(want, axes)
        elif kind == "unsqueeze" and want.ndim < 4:
            axis = data.draw(st.integers(0, want.ndim))
            v, want = b.op("unsqueeze", v, axes=(axis,)), np.expand_dims(want, axis)
    b.output("y", v)
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    note(g.as_text())
    note(after.as_text())
    np.testing.assert_array_equal(interpret(after, {"x": xv})["y"], want)
    counts = after.op_counts()
    assert set(counts) <= {"transpose", "reshape"}
    producers = after.producers()
    for n in after.nodes:  # no transpose of a transpose, no reshape of a reshape
        p = producers.get(n.operands[0])
        assert p is None or p.op != n.op, after.as_text()


# --------------------------------------------------------------------------------------------
# Purpose-built graphs: each pass does its job
# --------------------------------------------------------------------------------------------


def _input(b: GraphBuilder, name: str, *shape: int) -> Value:
    return b.input(name, TensorType(f32, tuple(shape)))


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, size=shape).astype(np.float32)


def test_canonicalize_removes_identities() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    zero = b.constant(np.float32(0))
    one = b.constant(np.ones((1, 3), np.float32))
    v = b.op("add", x, zero)  # x + 0
    v = b.op("add", zero, v)  # 0 + x (commutative)
    v = b.op("sub", v, zero)  # x - 0
    v = b.op("mul", one, v)  # 1 * x
    v = b.op("div", v, one)  # x / 1
    v = b.op("neg", b.op("neg", v))  # -(-x)
    v = b.op("cast", v, dtype=f32)
    v = b.op("reshape", v, shape=(2, 3))
    v = b.op("slice", v, axes=(0, 1), starts=(0, 0), stops=(2, 3), steps=(1, 1))
    v = b.op("concat", v, axis=1)
    v = b.op("reduce_sum", v, axes=(), keepdims=False)
    v = b.op("transpose", v, perm=(0, 1))
    b.output("y", v)
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    assert after.op_counts() == {}, after.as_text()
    assert after.outputs[0][1] is after.inputs[0]
    x_val = _rand(2, 3)
    np.testing.assert_array_equal(interpret(after, {"x": x_val})["y"], x_val)
    assert_same_results(g, after, {"x": x_val})


def test_canonicalize_composes_transposes() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3, 4)
    t1 = b.op("transpose", x, perm=(1, 2, 0))
    t2 = b.op("transpose", t1, perm=(2, 0, 1))  # the inverse: identity overall
    t3 = b.op("transpose", t1, perm=(0, 2, 1))
    t4 = b.op("transpose", t3, perm=(2, 0, 1))
    b.output("same", t2)
    b.output("moved", t4)
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    assert after.op_counts() == {"transpose": 1}, after.as_text()
    (node,) = after.nodes
    x_val = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    want = np.transpose(np.transpose(np.transpose(x_val, (1, 2, 0)), (0, 2, 1)), (2, 0, 1))
    assert node.attrs.perm == (2, 1, 0)
    np.testing.assert_array_equal(np.transpose(x_val, node.attrs.perm), want)
    out = interpret(after, {"x": x_val})
    np.testing.assert_array_equal(out["same"], x_val)
    np.testing.assert_array_equal(out["moved"], want)


def test_canonicalize_collapses_reshape_chains_and_squeezes() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    r = b.op("reshape", b.op("reshape", b.op("reshape", x, shape=(6,)), shape=(3, 2)), shape=(1, 6))
    back = b.op("reshape", b.op("reshape", x, shape=(3, 2)), shape=(2, 3))
    sq = b.op("squeeze", b.op("unsqueeze", x, axes=(0, 2)), axes=(0,))
    b.output("r", r)
    b.output("back", back)
    b.output("sq", sq)
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    assert after.op_counts() == {"reshape": 2}, after.as_text()
    producers = after.producers()
    assert after.outputs[1][1] is after.inputs[0]
    for name in ("r", "sq"):
        node = producers[dict(after.outputs)[name]]
        assert node.operands[0] is after.inputs[0]
    x_val = _rand(2, 3)
    out = interpret(after, {"x": x_val})
    np.testing.assert_array_equal(out["r"], x_val.reshape(1, 6))
    np.testing.assert_array_equal(out["back"], x_val)
    np.testing.assert_array_equal(out["sq"], x_val.reshape(2, 1, 3))


def test_canonicalize_power_and_division_rules() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    p = b.op("exp", x)
    b.output("sq", b.op("pow", p, b.constant(np.float32(2))))
    b.output("sqrt", b.op("pow", p, b.constant(np.float32(0.5))))
    b.output("rsqrt", b.op("pow", p, b.constant(np.float32(-0.5))))
    b.output("one", b.op("pow", p, b.constant(np.float32(1))))
    b.output("recip", b.op("div", b.constant(np.float32(1)), p))
    b.output("rs2", b.op("div", b.constant(np.float32(1)), b.op("sqrt", p)))
    b.output("subneg", b.op("sub", x, b.op("neg", p)))
    b.output("addneg", b.op("add", b.op("neg", p), x))
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    counts = after.op_counts()
    assert "pow" not in counts and "neg" not in counts and "div" not in counts, after.as_text()
    assert counts["rsqrt"] == 2  # x ** -0.5 and 1 / sqrt(x); canonicalize does not CSE them
    x_val = _rand(2, 3)
    e = np.exp(x_val)
    out = interpret(after, {"x": x_val})
    np.testing.assert_allclose(out["sq"], e * e, rtol=1e-6)
    np.testing.assert_allclose(out["sqrt"], np.sqrt(e), rtol=1e-6)
    np.testing.assert_allclose(out["rsqrt"], 1 / np.sqrt(e), rtol=1e-6)
    np.testing.assert_allclose(out["one"], e, rtol=1e-6)
    np.testing.assert_allclose(out["recip"], 1 / e, rtol=1e-6)
    np.testing.assert_allclose(out["rs2"], 1 / np.sqrt(e), rtol=1e-6)
    np.testing.assert_allclose(out["subneg"], x_val + e, rtol=1e-6)
    np.testing.assert_allclose(out["addneg"], x_val - e, rtol=1e-6)


def test_canonicalize_keeps_x_times_zero_for_floats() -> None:
    """x * 0 is not 0 for inf and NaN, so canonicalize must leave it."""
    b = GraphBuilder()
    x = _input(b, "x", 3)
    b.output("y", b.op("mul", x, b.constant(np.zeros(3, np.float32))))
    b.output("z", b.op("mul", b.constant(np.float32(0)), x))
    g = b.build()
    after = run_pipeline(g, DEFAULT_PIPELINE)
    assert after.op_counts().get("mul") == 2, after.as_text()
    x_val = np.array([np.inf, np.nan, 1.5], np.float32)
    out = interpret(after, {"x": x_val})
    for name in ("y", "z"):
        np.testing.assert_array_equal(out[name], np.array([np.nan, np.nan, 0.0], np.float32))


def test_canonicalize_keeps_broadcasting_identities() -> None:
    """x + zeros (or x * ones) that broadcasts x to a bigger shape is not x."""
    b = GraphBuilder()
    x = _input(b, "x", 3)
    b.output("add", b.op("add", x, b.constant(np.zeros((2, 3), np.float32))))
    b.output("mul", b.op("mul", b.constant(np.ones((4, 1), np.float32)), x))
    b.output("sub", b.op("sub", x, b.constant(np.zeros((1, 3), np.float32))))
    b.output("where", b.op("where", b.op("gt", x, b.constant(np.zeros((2, 3), np.float32))), x, x))
    g = b.build()
    after = run_pipeline(g, "canonicalize")
    counts = after.op_counts()
    assert counts.get("add") == 1 and counts.get("mul") == 1 and counts.get("sub") == 1, after.as_text()
    assert counts.get("where") == 1
    x_val = _rand(3)
    out = interpret(after, {"x": x_val})
    np.testing.assert_array_equal(out["add"], np.broadcast_to(x_val, (2, 3)))
    np.testing.assert_array_equal(out["mul"], np.broadcast_to(x_val, (4, 3)))
    np.testing.assert_array_equal(out["sub"], x_val.reshape(1, 3))
    np.testing.assert_array_equal(out["where"], np.broadcast_to(x_val, (2, 3)))


def test_canonicalize_removes_x_plus_zeros_that_broadcast_to_x() -> None:
    """x + 0 is removed when the zeros broadcast to x's own shape."""
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    b.output("y", b.op("add", x, b.constant(np.zeros((1, 3), np.float32))))
    after = run_pipeline(b.build(), "canonicalize")
    assert after.op_counts() == {}


def test_constant_fold_folds_constant_subgraph() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    c1 = b.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    c2 = b.constant(np.float32(0.25))
    sub = b.op("tanh", b.op("mul", b.op("add", c1, c2), c2))
    sub = b.op("transpose", sub, perm=(1, 0))
    b.output("y", b.op("add", x, b.op("transpose", sub, perm=(1, 0))))
    g = b.build()
    after = run_pipeline(g, "constant-fold,dce")
    assert after.op_counts() == {"constant": 1, "add": 1}, after.as_text()
    (data,) = after.constants.values()
    want = np.tanh((np.arange(6, dtype=np.float32).reshape(2, 3) + 0.25) * 0.25)
    np.testing.assert_allclose(data, want, rtol=1e-6)
    x_val = _rand(2, 3)
    np.testing.assert_allclose(interpret(after, {"x": x_val})["y"], x_val + want, rtol=1e-6)


def test_constant_fold_folds_to_a_scalar() -> None:
    """A reduction of constants to a 0-d result is folded like any other."""
    b = GraphBuilder()
    x = _input(b, "x", 3)
    s = b.op("reduce_sum", b.constant(np.array([1, 2, 3], np.float32)), axes=(0,))
    b.output("y", b.op("add", x, s))
    g = b.build()
    after = run_pipeline(g, "constant-fold,dce")
    assert after.op_counts() == {"constant": 1, "add": 1}, after.as_text()
    (data,) = after.constants.values()
    assert data.shape == () and data == 6.0
    x_val = _rand(3)
    np.testing.assert_array_equal(interpret(after, {"x": x_val})["y"], x_val + np.float32(6))


def test_constant_fold_respects_max_elements() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 8, 8)
    big = b.op("broadcast_to", b.constant(np.float32(3)), shape=(8, 8))
    b.output("y", b.op("add", x, big))
    g = b.build()
    assert run_pipeline(g, "constant-fold{max_elements=10}").op_counts()["broadcast_to"] == 1
    folded = run_pipeline(g, "constant-fold{max_elements=64},dce")
    assert "broadcast_to" not in folded.op_counts()
    x_val = _rand(8, 8)
    np.testing.assert_array_equal(interpret(folded, {"x": x_val})["y"], x_val + np.float32(3))


def test_cse_merges_duplicates_and_constants() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    c1 = b.constant(np.full((3,), 2, np.float32))
    c2 = b.constant(np.full((3,), 2, np.float32))  # same data as c1
    c3 = b.constant(np.full((3,), 2, np.float64).astype(np.float32).reshape(1, 3))  # other shape
    e1 = b.op("exp", b.op("mul", x, c1))
    e2 = b.op("exp", b.op("mul", x, c2))  # the same computation
    t1 = b.op("transpose", e1, perm=(1, 0))
    t2 = b.op("transpose", e2, perm=(1, 0))
    b.output("a", t1)
    b.output("b", t2)
    b.output("c", b.op("add", e1, c3))
    g = b.build()
    assert g.op_counts() == {"constant": 3, "mul": 2, "exp": 2, "transpose": 2, "add": 1}
    after = run_pipeline(g, "cse")
    assert after.op_counts() == {"constant": 2, "mul": 1, "exp": 1, "transpose": 1, "add": 1}
    assert len(after.constants) == 2
    assert dict(after.outputs)["a"] is dict(after.outputs)["b"]
    x_val = _rand(2, 3)
    out = interpret(after, {"x": x_val})
    want = np.exp(x_val * np.float32(2)).T
    np.testing.assert_allclose(out["a"], want, rtol=1e-6)
    np.testing.assert_allclose(out["b"], want, rtol=1e-6)
    np.testing.assert_allclose(out["c"], want.T + 2, rtol=1e-6)


def test_cse_keeps_different_attributes_apart() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    b.output("s0", b.op("reduce_sum", x, axes=(0,), keepdims=True))
    b.output("s1", b.op("reduce_sum", x, axes=(0,), keepdims=False))
    b.output("s2", b.op("reduce_sum", x, axes=(1,), keepdims=True))
    c0 = b.constant(np.zeros((), np.float32))
    cneg0 = b.constant(np.array(-0.0, np.float32))  # different bytes, equal under ==
    b.output("d0", b.op("div", b.constant(np.ones((), np.float32)), c0))
    b.output("d1", b.op("div", b.constant(np.ones((), np.float32)), cneg0))
    g = b.build()
    after = run_pipeline(g, "cse")
    assert after.op_counts()["reduce_sum"] == 3
    out = interpret(after, {"x": _rand(2, 3)})
    assert out["d0"] == np.inf and out["d1"] == -np.inf


def test_cse_keeps_swapped_operands_apart() -> None:
    b = GraphBuilder()
    x, y = _input(b, "x", 2, 3), _input(b, "y", 2, 3)
    b.output("xy", b.op("sub", x, y))
    b.output("yx", b.op("sub", y, x))
    b.output("dxy", b.op("div", x, y))
    b.output("dyx", b.op("div", y, x))
    b.output("pxy", b.op("pow", b.op("abs", x), y))
    b.output("pyx", b.op("pow", b.op("abs", y), x))
    after = run_pipeline(b.build(), "cse")
    assert after.op_counts() == {"sub": 2, "div": 2, "pow": 2, "abs": 2}
    xv, yv = _rand(2, 3, seed=1), _rand(2, 3, seed=2)
    out = interpret(after, {"x": xv, "y": yv})
    np.testing.assert_array_equal(out["xy"], xv - yv)
    np.testing.assert_array_equal(out["yx"], yv - xv)
    np.testing.assert_allclose(out["dxy"], xv / yv, rtol=1e-6)
    np.testing.assert_allclose(out["dyx"], yv / xv, rtol=1e-6)
    np.testing.assert_allclose(out["pxy"], np.abs(xv) ** yv, rtol=1e-6)
    np.testing.assert_allclose(out["pyx"], np.abs(yv) ** xv, rtol=1e-6)


def test_cse_merges_scalar_constants() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 1)
    for i in range(3):  # a [1]-shaped 2 first, then two 0-d 2s
        c = b.constant(np.array([2.0], np.float32) if i == 0 else np.float32(2.0))
        b.output(f"y{i}", b.op("mul", x, c))
    after = run_pipeline(b.build(), "cse")
    assert after.op_counts() == {"constant": 2, "mul": 2}, after.as_text()
    x_val = np.array([1.5], np.float32)
    out = interpret(after, {"x": x_val})
    for i in range(3):
        np.testing.assert_array_equal(out[f"y{i}"], [3.0])


def test_dce_removes_unused_nodes_and_prunes_constants() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    w = b.constant(_rand(2, 3, seed=1), name="w")
    dead_w = b.constant(_rand(3, 3, seed=2), name="dead_w")
    b.op("matmul", x, dead_w)  # dead
    b.op("tanh", b.op("exp", x))  # dead chain
    y = b.op("add", x, w)
    b.output("y", y)
    g = b.build()
    after = run_pipeline(g, "dce")
    assert after.op_counts() == {"constant": 1, "add": 1}
    assert set(after.constants) == {"w"}
    assert set(g.constants) == {"w", "dead_w"}  # the input graph keeps its weights
    x_val = _rand(2, 3)
    np.testing.assert_array_equal(interpret(after, {"x": x_val})["y"], x_val + _rand(2, 3, seed=1))


def test_default_pipeline_on_a_mixed_graph() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 2, 3)
    k = b.op("add", b.constant(np.float32(1)), b.constant(np.float32(1)))  # folds to 2
    a = b.op("mul", b.op("add", x, b.constant(np.float32(0))), k)
    a2 = b.op("mul", x, b.constant(np.float32(2)))  # the same after folding, CSE merges
    s = b.op("softmax", b.op("transpose", b.op("transpose", a, perm=(1, 0)), perm=(1, 0)), axis=1)
    s2 = b.op("softmax", a2, axis=1)
    b.op("exp", s)  # dead
    b.output("y", b.op("sub", s, b.op("neg", s2)))
    g = b.build()
    after = run_pipeline(g, DEFAULT_PIPELINE)
    assert after.op_counts() == {"constant": 1, "mul": 1, "softmax": 1, "add": 1}, after.as_text()
    x_val = _rand(2, 3)
    e = np.exp(2 * x_val - np.max(2 * x_val, axis=1, keepdims=True))
    sm = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(interpret(after, {"x": x_val})["y"], 2 * sm, rtol=1e-5)
    assert_same_results(g, after, {"x": x_val})


def test_empty_reductions_fold_to_identities_and_empty_argmax_is_left_to_run_time() -> None:
    """max over an empty axis is the identity (-inf), as in ONNX, and folds; argmax over an empty
    axis has no answer: constant-fold leaves it and the interpreter raises a KilnError."""
    b = GraphBuilder()
    x = _input(b, "x", 3)
    m = b.op("reduce_max", b.constant(np.zeros((0, 3), np.float32)), axes=(0,))
    b.output("y", b.op("add", x, m))
    g = b.build()
    np.testing.assert_array_equal(interpret(g, {"x": _rand(3)})["y"], np.full(3, -np.inf, np.float32))
    folded = run_pipeline(g, "constant-fold,dce")
    assert folded.op_counts() == {"constant": 1, "add": 1}
    b = GraphBuilder()
    b.output("i", b.op("argmax", b.constant(np.zeros((0, 3), np.float32)), axis=0))
    g = b.build()
    assert run_pipeline(g, "constant-fold").op_counts() == {"constant": 1, "argmax": 1}
    with pytest.raises(KilnError, match="argmax"):
        interpret(g, {})
    # reducing the non-empty axis of an empty tensor is fine, and folds
    b = GraphBuilder()
    x = _input(b, "x", 0)
    m = b.op("reduce_max", b.constant(np.zeros((0, 3), np.float32)), axes=(1,))
    b.output("y", b.op("add", x, m))
    after = run_pipeline(b.build(), "constant-fold,dce")
    assert after.op_counts() == {"constant": 1, "add": 1}
    assert interpret(after, {"x": np.zeros(0, np.float32)})["y"].shape == (0,)


def test_constant_fold_of_softmax_over_an_empty_axis() -> None:
    b = GraphBuilder()
    x = _input(b, "x", 0, 3)
    s = b.op("softmax", b.constant(np.zeros((0, 3), np.float32)), axis=0)
    b.output("y", b.op("add", x, s))
    g = b.build()
    xv = np.zeros((0, 3), np.float32)
    assert interpret(g, {"x": xv})["y"].shape == (0, 3)
    after = run_pipeline(g, "constant-fold,dce")
    assert after.op_counts() == {"constant": 1, "add": 1}
    assert interpret(after, {"x": xv})["y"].shape == (0, 3)
