"""Generate a Numba row kernel for one fused group.

A group's body is evaluated row by row: ``R`` rows of ``C`` elements (see passes/fuse.py). Each
row runs one or more loops over ``j``; a reduction over the row (a max, a sum, a layer norm's
mean) ends a loop, and values computed in one loop and needed in a later one are kept in a row of
scratch. Composite ops expand here: softmax is three loops (max, sum of exp, scale), layer_norm
three (mean, variance, normalise), rms_norm two. Transcendentals use ``mathlib`` (vectorisable).
A leading matmul is not generated: the executor runs it with BLAS and passes its result in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...ir.core import Graph, Node, Value
from ...ir.dtypes import DType
from ...ir.errors import BackendError
from ...passes.fuse import access, rows_cols


@dataclass(frozen=True)
class KernelSpec:
    """A generated kernel: its source (one function, ``name`` and ``name_serial``) and how the
    executor must present each argument (full: R x C, col: R, row: C, scalar: 1)."""

    name: str
    source: str
    input_access: tuple[str, ...]
    output_access: tuple[str, ...]
    rows: int
    cols: int
    matmul: bool


@dataclass
class _Val:
    kind: str  # full, col, row, scalar, const
    expr: str  # for const: the literal; for inputs: the array name
    stage: int = 0  # full: the loop that computes it; col: the loop after which it exists
    dtype: str = "float32"
    scratch: bool = False


@dataclass
class _Prog:
    dtype: str
    vals: dict[Value, _Val] = field(default_factory=dict)
    # (stage, kind, target, text): kind "full" (in loop), "acc" (accumulate), "col" (between loops)
    ins: list[tuple[int, str, str, str]] = field(default_factory=list)
    accs: list[tuple[int, str, str, str]] = field(default_factory=list)  # (stage, name, op, dtype)
    dtypes: dict[str, str] = field(default_factory=dict)  # full value -> its NumPy dtype name
    n: int = 0

    def tmp(self, prefix: str = "t") -> str:
        self.n += 1
        return f"{prefix}{self.n}"


_NP = {"f32": "float32", "f64": "float64", "bool": "bool_"}


def _dt(v: Value) -> str:
    d = v.tensor_type.dtype
    if not isinstance(d, DType) or d.name not in _NP:
        raise BackendError(f"numba-cpu row kernels compute f32, f64 and bool, not {d}")
    return _NP[d.name]


def _lit(x: float, dtype: str) -> str:
    if dtype == "bool_":
        return "True" if x else "False"
    if x != x:
        return f"np.{dtype}(np.nan)"
    if x in (math.inf, -math.inf):
        return f"np.{dtype}({'-' if x < 0 else ''}np.inf)"
    return f"np.{dtype}({str(np.float32(x)) if dtype == 'float32' else repr(x)})"


class _Gen:
    def __init__(self, body: Graph) -> None:
        self.in_access_live: list[str] = []
        self.body = body
        first = (
            body.nodes[0]
            if body.nodes[0].op != "constant"
            else next(n for n in body.nodes if n.op != "constant")
        )
        self.space = first.results[0].tensor_type.shape
        self.R, self.C = rows_cols(self.space)
        self.matmul = first.op == "matmul"
        # The group's float type (a group may start with a comparison that yields bools).
        floats = [_dt(r) for n in body.nodes for r in n.results if _dt(r) in ("float32", "float64")]
        dt = floats[0] if floats else _dt(first.results[0])
        self.p = _Prog(dt)
        self.f32 = dt == "float32"

    # -- values -------------------------------------------------------------------------------
    def full_val(self, name: str, expr: str, stage: int, dtype: str) -> _Val:
        self.p.ins.append((stage, "full", name, expr))
        self.p.dtypes[name] = dtype
        return _Val("full", name, stage, dtype)

    def col_val(self, name: str, expr: str, stage: int, dtype: str) -> _Val:
        self.p.ins.append((stage, "col", name, expr))
        return _Val("col", name, stage, dtype)

    def reduce(self, x: _Val, op: str) -> _Val:
        """A row reduction of full ``x``: exists after loop ``x.stage``."""
        name = self.p.tmp("r")
        self.p.accs.append((x.stage, name, op, x.dtype))
        self.p.ins.append((x.stage, "acc", name, f"{op}:{self.ref(x, 0)}"))
        return _Val("col", name, x.stage + 1, x.dtype)

    def stage_of(self, *vs: _Val) -> int:
        return max([v.stage for v in vs if v.kind in ("full", "col")] + [0])

    def emit(self, expr: str, args: list[_Val], dtype: str) -> _Val:
        st = self.stage_of(*args)
        if any(a.kind in ("full", "row", "in_full") for a in args):
            return self.full_val(self.p.tmp(), expr, st, dtype)
        return self.col_val(self.p.tmp("c"), expr, st, dtype)

    # -- math ----------------------------------------------------------------------------------
    def fn(self, name: str, a: str) -> str:
        fast = {"exp": "fexp", "tanh": "ftanh", "erf": "ferf", "sigmoid": "fsigmoid"}
        if self.f32 and name in fast:
            return f"{fast[name]}({a})"
        if name == "sigmoid":
            return f"(1.0 / (1.0 + math.exp(-{a})))"
        return f"math.{name}({a})"

    def node(self, n: Node, args: list[_Val]) -> list[_Val]:
        def P(v: _Val) -> str:  # noqa: N802 - how v is read in a loop
            return self.ref(v, 0)

        e = [f"{{{i}}}" for i in range(len(args))]
        dt = _dt(n.results[0])
        one, half = _lit(1.0, dt), _lit(0.5, dt)
        binops = {"add": "+", "sub": "-", "mul": "*", "div": "/", "eq": "==", "ne": "!=", "lt": "<",
                  "le": "<=", "gt": ">", "ge": ">="}  # fmt: skip
        op = n.op
        if op in binops:
            text = f"({e[0]} {binops[op]} {e[1]})"
        elif op == "pow":
            k = args[1]
            if k.kind == "const" and k.expr in (_lit(2.0, dt), _lit(3.0, dt)):
                text = f"({e[0]} * {e[0]})" if k.expr == _lit(2.0, dt) else f"({e[0]} * {e[0]} * {e[0]})"
            elif k.kind == "const" and k.expr == _lit(0.5, dt):
                text = f"np.sqrt({e[0]})"
            else:
                text = f"({e[0]} ** {e[1]})"
        elif op in ("maximum", "minimum"):
            text = f"np.{op}({e[0]}, {e[1]})"
        elif op in ("logical_and", "logical_or", "logical_xor"):
            text = f"({e[0]} {dict(logical_and='&', logical_or='|', logical_xor='^')[op]} {e[1]})"
        elif op == "neg":
            text = f"(-{e[0]})"
        elif op == "abs":
            text = f"abs({e[0]})"
        elif op in ("exp", "tanh", "erf", "sigmoid", "log", "sin", "cos"):
            text = self.fn(op, e[0])
        elif op == "sqrt":
            text = f"np.sqrt({e[0]})"
        elif op == "rsqrt":
            text = f"({one} / np.sqrt({e[0]}))"
        elif op == "reciprocal":
            text = f"({one} / {e[0]})"
        elif op in ("floor", "ceil", "isnan"):
            text = f"np.{op}({e[0]})"
        elif op == "relu":
            text = f"np.maximum({e[0]}, {_lit(0.0, dt)})"
        elif op == "silu":
            text = f"({e[0]} * {self.fn('sigmoid', e[0])})"
        elif op == "gelu":
            if n.attrs.approximate == "tanh":  # type: ignore[attr-defined]
                # 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3): the reference's form, so
                # that +-inf give what it gives
                u = f"{_lit(0.7978845608028654, dt)} * ({e[0]} + {_lit(0.044715, dt)} * {e[0]} * {e[0]} * {e[0]})"
                text = f"({half} * {e[0]} * ({one} + {self.fn('tanh', u)}))"
            else:
                text = f"({half} * {e[0]} * ({one} + {self.fn('erf', f'{e[0]} * {_lit(0.7071067811865476, dt)}')}))"
        elif op == "logical_not":
            text = f"(not {e[0]})"
        elif op == "where":
            text = f"({e[1]} if {e[0]} else {e[2]})"
        elif op == "cast":
            target = n.attrs.dtype  # type: ignore[attr-defined]
            text = f"({e[0]} != 0)" if target.is_bool else f"np.{_NP[target.name]}({e[0]})"
        elif op == "reshape":
            return [args[0]]
        elif op in ("reduce_sum", "reduce_max", "reduce_min", "reduce_mean"):
            x = self.materialize(args[0])
            r = self.reduce(
                x, {"reduce_sum": "sum", "reduce_mean": "sum", "reduce_max": "max", "reduce_min": "min"}[op]
            )
            if op == "reduce_mean":
                return [self.col_val(self.p.tmp("c"), f"{r.expr} * invC", r.stage, dt)]
            return [r]
        elif op in ("softmax", "log_softmax"):
            x = self.materialize(args[0])
            m = self.reduce(x, "max")
            if op == "softmax":
                ex = self.full_val(self.p.tmp(), self.fn("exp", f"({P(x)} - {m.expr})"), m.stage, dt)
                s = self.reduce(ex, "sum")
                return [self.full_val(self.p.tmp(), f"({P(ex)} / {s.expr})", s.stage, dt)]
            sh = self.full_val(self.p.tmp(), f"({P(x)} - {m.expr})", m.stage, dt)
            s = self.reduce(self.full_val(self.p.tmp(), self.fn("exp", P(sh)), sh.stage, dt), "sum")
            ls = self.col_val(self.p.tmp("c"), f"math.log({s.expr})", s.stage, dt)
            return [self.full_val(self.p.tmp(), f"({P(sh)} - {ls.expr})", s.stage, dt)]
        elif op in ("layer_norm", "rms_norm"):
            x = self.materialize(args[0])
            eps = _lit(float(n.attrs.eps), dt)  # type: ignore[attr-defined]
            w = args[1]
            if op == "layer_norm":
                s1 = self.reduce(x, "sum")
                mean = self.col_val(self.p.tmp("c"), f"{s1.expr} * invC", s1.stage, dt)
                d = self.full_val(self.p.tmp(), f"({P(x)} - {mean.expr})", mean.stage, dt)
                s2 = self.reduce(self.full_val(self.p.tmp(), f"({P(d)} * {P(d)})", d.stage, dt), "sum")
                rs = self.col_val(self.p.tmp("c"), f"{one} / np.sqrt({s2.expr} * invC + {eps})", s2.stage, dt)
                b = args[2]
                expr = f"({P(d)} * {rs.expr} * {P(w)} + {P(b)})"
                return [self.full_val(self.p.tmp(), expr, rs.stage, dt)]
            s = self.reduce(self.full_val(self.p.tmp(), f"({P(x)} * {P(x)})", x.stage, dt), "sum")
            rs = self.col_val(self.p.tmp("c"), f"{one} / np.sqrt({s.expr} * invC + {eps})", s.stage, dt)
            return [self.full_val(self.p.tmp(), f"({P(x)} * {rs.expr} * {P(w)})", rs.stage, dt)]
        else:
            raise BackendError(f"numba-cpu has no row-kernel lowering for '{op}' (in a fused group)")
        return [self.emit(text.format(*[self.ref(a, self.stage_of(*args)) for a in args]), args, dt)]

    def materialize(self, v: _Val) -> _Val:
        if v.kind in ("full", "in_full"):
            return v
        return self.full_val(self.p.tmp(), self.ref(v, v.stage), v.stage, v.dtype)

    def ref(self, v: _Val, stage: int) -> str:
        """How ``v`` is read inside loop ``stage`` (placeholders resolved at emission)."""
        if v.kind in ("const", "col"):
            return v.expr
        if v.kind == "scalar":
            return f"{v.expr}[0]"
        if v.kind == "row":
            return f"{v.expr}[j]"
        if v.kind == "in_full":
            return f"{v.expr}[i, j]"
        return f"@{v.expr}@"  # a full value: resolved per loop (local, or scratch when earlier)

    # -- driver ---------------------------------------------------------------------------------
    def build(self, name: str) -> KernelSpec:
        body = self.body
        env: dict[Value, _Val] = {}
        in_access: list[str] = []
        params: list[str] = []
        nodes = list(body.nodes)
        mm_inputs: set[Value] = set()
        if self.matmul:
            mm = next(n for n in nodes if n.op != "constant")
            mm_inputs = set(mm.operands)
            env[mm.results[0]] = _Val("in_full", "mm", 0, self.p.dtype)
            params.append("mm")
            in_access.append("full")
            nodes.remove(mm)
        for k, v in enumerate(body.inputs):
            if v in mm_inputs and not any(v in n.operands for n in nodes):
                in_access.append("skip")
                continue
            acc = access(v.tensor_type, self.space)
            if acc is None:
                raise BackendError(f"input {k} of the fused group, {v.type}, does not fit its rows")
            kind = {"full": "in_full", "bcast": "in_full", "col": "col_in", "row": "row", "scalar": "scalar"}[
                acc
            ]
            pname = f"in{k}"
            params.append(pname)
            in_access.append(acc)
            env[v] = _Val(
                kind if kind != "col_in" else "col", f"{pname}[i]" if kind == "col_in" else pname, 0, _dt(v)
            )
        for n in nodes:
            if n.op == "constant":
                data = body.constants[n.attrs.ref]  # type: ignore[attr-defined]
                env[n.results[0]] = _Val(
                    "const", _lit(float(data.reshape(-1)[0]), _dt(n.results[0])), 0, _dt(n.results[0])
                )
                continue
            res = self.node(n, [env[v] for v in n.operands])
            env.update(zip(n.results, res, strict=True))
        out_access = []
        outs: list[tuple[str, _Val]] = []
        for k, (_, v) in enumerate(body.outputs):
            acc = access(v.tensor_type, self.space)
            if acc not in ("full", "col"):
                raise BackendError(f"output {v.type} of the fused group does not fit its rows")
            out_access.append(acc)
            val = env[v]
            if acc == "full" and val.kind not in ("full", "in_full"):
                val = self.materialize(val)
            outs.append((f"out{k}", val))
        self.in_access_live = [a for a in in_access if a != "skip"]
        source = self.render(name, params, outs)
        return KernelSpec(name, source, tuple(in_access), tuple(out_access), self.R, self.C, self.matmul)

    def render(self, name: str, params: list[str], outs: list[tuple[str, _Val]]) -> str:
        p = self.p
        last = max([s for s, *_ in p.ins] + [0])
        # which full values are read in a later loop than the one computing them
        defined: dict[str, int] = {t: s for s, kind, t, _ in p.ins if kind == "full"}
        later: set[str] = set()
        for s, _kind, _t, text in p.ins:
            for t2, s2 in defined.items():
                if s2 < s and f"@{t2}@" in text:
                    later.add(t2)
        lines = [f"def {name}({', '.join(params + [o for o, _ in outs])}):"]
        full_args = [p for p, a in zip(params, self.in_access_live, strict=True) if a in ("full", "bcast")]
        full_args += [o for o, v in outs if v.kind in ("full", "in_full")]
        if not full_args:  # nothing row-wide to read the width from: NumPy runs such a group
            raise BackendError("the fused group has no full-width operand or result")
        lines.append(f"    R, C = {full_args[0]}.shape")
        lines.append(f"    invC = np.{p.dtype}(1.0) / np.{p.dtype}(C)")
        lines.append("    for i in prange(R):")
        for t in sorted(later):
            lines.append(f"        sc_{t} = np.empty(C, np.{p.dtypes.get(t, p.dtype)})")

        def resolve(text: str, stage: int) -> str:
            for t2, s2 in defined.items():
                if f"@{t2}@" in text:
                    text = text.replace(f"@{t2}@", t2 if s2 == stage else f"sc_{t2}[j]")
            return text

        def col_lines(stage: int) -> None:
            for s, kind, t, text in p.ins:
                if kind == "col" and s == stage:
                    lines.append(f"        {t} = {resolve(text, stage)}")
            for o, v in outs:
                if v.kind == "col" and v.stage == stage:
                    lines.append(f"        {o}[i] = {v.expr}")

        for stage in range(last + 1):
            col_lines(stage)
            work = [x for x in p.ins if x[0] == stage and x[1] in ("full", "acc")]
            stores = [(o, v) for o, v in outs if v.kind in ("full", "in_full") and v.stage == stage]
            if not work and not stores:
                continue
            for s, nm, op, dt in p.accs:
                if s == stage:
                    init = {"sum": f"np.{dt}(0.0)", "max": f"np.{dt}(-np.inf)", "min": f"np.{dt}(np.inf)"}[op]
                    lines.append(f"        {nm} = {init}")
            lines.append("        for j in range(C):")
            for _s, kind, t, text in work:
                if kind == "full":
                    lines.append(f"            {t} = {resolve(text, stage)}")
                    if t in later:
                        lines.append(f"            sc_{t}[j] = {t}")
                else:
                    op, src = text.split(":", 1)
                    src = resolve(src, stage)
                    if op == "sum":
                        lines.append(f"            {t} += {src}")
                    else:
                        lines.append(
                            f"            {t} = np.{'maximum' if op == 'max' else 'minimum'}({t}, {src})"
                        )
            for o, v in stores:
                lines.append(f"            {o}[i, j] = {resolve(self.ref(v, stage), stage)}")
        col_lines(last + 1)
        return render_variants("\n".join(lines), name)


HEADER = (
    "import math\nimport numpy as np\nfrom numba import njit, prange\n"
    "from kiln.backends.numba_cpu.mathlib import JIT, fexp, ftanh, ferf, fsigmoid\n"
)


def render_variants(fn_text: str, name: str) -> str:
    """A module with a parallel and a serial copy of ``def name(...)`` (two functions, so that
    Numba's cache keeps both)."""
    par = fn_text.replace(f"def {name}(", f"def {name}_parallel(", 1)
    ser = fn_text.replace(f"def {name}(", f"def {name}_serial(", 1)
    return f"{HEADER}\n\n@njit(parallel=True, **JIT)\n{par}\n\n\n@njit(**JIT)\n{ser}\n"


def generate(body: Graph, name: str) -> KernelSpec:
    """The row kernel for a fused body (raises BackendError naming what cannot be lowered)."""
    return _Gen(body).build(name)
