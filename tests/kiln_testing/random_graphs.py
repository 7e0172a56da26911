"""A hypothesis strategy for random kiln graphs, and the comparison helpers the pass tests share.

See tests/passes/test_properties.py for the tolerances and why conditions cannot flip.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, Value
from kiln.ir.dtypes import f32, i32
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
