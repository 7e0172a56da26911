"""Plans and runs a fused graph on the CPU: generated Numba kernels, BLAS matmuls, NumPy views.

Lowering table (op -> how it runs):
- ``fused``: its leading matmul (if any) with BLAS (``np.matmul(..., out=)``), then one generated
  row kernel (codegen.py) for the rest of the body;
- ``attention``: the streaming online-softmax kernel (attention.py); a decode attention (one
  query) over ``concat(past, new)`` K and V runs kv_attention.py's kernel, which writes the two
  concats (the next step's cache) while it reads them, the concat steps only naming their buffers;
- ``matmul``: BLAS into a planned buffer;
- views, free: reshape, squeeze, unsqueeze, transpose, slice, split, broadcast_to;
- copies into planned buffers: concat (``np.concatenate(out=)``), gather (``np.take(out=)``);
- the remaining ops run their NumPy reference semantics: index and shape ops that fusion does not
  reach (iota, topk, argmax, cumsum, triu, ...), reductions over other axes than the last, and
  fused groups or attention in dtypes the generated kernels do not handle (integers, f16, bf16).
Anything else is refused with the op's name, or run by the reference semantics with a warning
when the user asked for ``fallback``. Intermediate buffers are planned once (backends/memory.py)
and reused on every call. The blocks of the outputs (and of the values planned inside them, such as
a per-layer KV cache written in place into the stacked cache) are allocated anew for every call, so
the arrays a call returns are its own and are not copied out; steps reach such buffers through the
table ``bufs``, whose entries ``run`` refreshes. Outputs that are inputs, constants or results of
NumPy steps are copied.
"""

from __future__ import annotations

import itertools
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ...ir.core import Graph, Node, Value
from ...ir.dtypes import DType, QuantType, f32
from ...ir.errors import BackendError, KilnError
from ...ir.interpret import run_node
from ...ir.registry import Context
from ...ir.signature import bind_inputs
from ...ir.targets import Target
from ...ir.types import TensorType
from ...passes.fuse import elementwise_ops, kernel_counts
from ..memory import plan_buffers
from .attention import attention_source
from .cache import KernelCache
from .codegen import generate
from .kv_attention import KvAppend, KvAttention, find_kv_appends
from .kv_attention import kernel_source as kv_kernel_source

VIEWS = frozenset({"reshape", "squeeze", "unsqueeze", "transpose", "slice", "split", "broadcast_to"})
NUMPY_OPS = frozenset(
    [
        "iota",
        "topk",
        "argmax",
        "argmin",
        "cumsum",
        "cast",
        "triu",
        "tril",
        "einsum",
        "gather_nd",
        "reduce_sum",
        "reduce_mean",
        "reduce_max",
        "reduce_min",
        "reduce_prod",
        "softmax",
        "log_softmax",
        "layer_norm",
        "rms_norm",
        "where",
        "qgather",  # dequantizes only the gathered rows
    ]
)

Step = Callable[[list[Any]], None]


class Executor:
    """A planned, compiled graph: ``run(inputs) -> outputs``."""

    def __init__(
        self, graph: Graph, ctx: Context, target: Target, cache: KernelCache, fallback: bool
    ) -> None:
        t0 = time.perf_counter()
        self.graph = graph
        self.ctx = ctx
        self.target = target
        self.cache = cache
        self.fallback = fallback
        self.elementwise = elementwise_ops(ctx)
        self.sources: list[str] = []
        self._mm_values: dict[Node, Value] = {}
        self._in_place: dict[Node, set[int]] = {}  # concat -> operands planned inside its buffer
        # decode attentions that append to the KV cache themselves (kv_attention.py), and the
        # concats they fill; settled in plan()
        self._kv: dict[Node, KvAppend] = {a.attention: a for a in find_kv_appends(graph, VIEWS)}
        self._kv_concats: set[Node] = set()
        self.slot: dict[Value, int] = {}
        for v in graph.inputs:
            self.slot_of(v)
        refused = [f"{n.describe()}: no numba-cpu lowering" for n in graph.nodes if not self.lowered(n)]
        if refused and not fallback:
            raise BackendError(
                "target 'numba-cpu' cannot compile:\n  " + "\n  ".join(refused)
                + "\n(compile with fallback=True to run these ops with the reference semantics)"
            )  # fmt: skip
        # per-call buffers: value -> (output root, byte offset); bufs[j] = derive(buffer of v)
        self.fresh: dict[Value, tuple[Value, int]] = {}
        self.bufs: list[Any] = []
        self.refresh: list[tuple[int, Value, Callable[[np.ndarray], Any]]] = []
        self.out_root: dict[Value, Value] = {}
        self.pool: dict[Value, list[np.ndarray]] = {}  # output blocks by root, reused when unused
        self.buffers = self.plan()
        self.fresh_roots = list(dict.fromkeys(r for r, _ in self.fresh.values()))
        self.fresh_views = [  # what new_outputs slices, worked out once: computing types is slow
            (v, (r, off, off + _bytes(v), v.tensor_type.scalar_dtype.np_dtype, v.tensor_type.static_shape))
            for v, (r, off) in self.fresh.items()
        ]
        self.steps: list[Step] = [self.lower(n) for n in graph.nodes]
        self.out_slots = [
            (name, self.slot[v], self.out_root[v] if self.out_root[v] in self.fresh else None)
            for name, v in graph.outputs
        ]
        ops, kernels = kernel_counts(graph)
        self.stats: dict[str, Any] = {"kernels": kernels, "ops": ops, "peak_bytes": self.peak_bytes,
                                      "kv_append_attention": len(self._kv)}  # fmt: skip
        self.warm_up()
        self.stats["compile_s"] = time.perf_counter() - t0

    # -- planning -----------------------------------------------------------------------------
    def slot_of(self, v: Value) -> int:
        if v not in self.slot:
            self.slot[v] = len(self.slot)
        return self.slot[v]

    def lowered(self, n: Node) -> bool:
        if n.op in ("fused", "attention", "constant", "matmul", "qmatmul", "concat", "gather"):
            return True
        return n.op in VIEWS or n.op in NUMPY_OPS or n.op in self.elementwise

    def numpy_step(self, n: Node, ins: list[int], outs: list[int]) -> Step:
        """Run ``n`` with its reference (NumPy) semantics: the lowering of the rare ops."""
        graph, ctx = self.graph, self.ctx

        def numpy_op(env: list[Any]) -> None:
            ys = run_node(graph, n, [env[i] for i in ins], {}, ctx)
            for k, y in zip(outs, ys, strict=True):
                env[k] = y

        return numpy_op

    def plan(self) -> dict[Value, np.ndarray]:
        steps: list[tuple[list[Value], list[Value]]] = []
        alias: dict[Value, Value] = {}
        nbytes: dict[Value, int] = {}
        for n in self.graph.nodes:
            defs = list(n.results)
            if n.op == "fused" and n.attrs.body.nodes and self._leading_matmul(n) is not None:  # type: ignore[attr-defined]
                defs = [*defs, self._mm_value(n)]
            for r in n.results:
                if n.op in VIEWS:
                    alias[r] = n.operands[0]
                elif n.op not in ("constant",) and n.op not in NUMPY_OPS:
                    nbytes[r] = _bytes(r)
            for d in defs:
                if d not in n.results:
                    nbytes[d] = _bytes(d)
            steps.append((defs, list(n.operands)))
        outputs = {v for _, v in self.graph.outputs}
        slices = self._concat_destinations(alias, nbytes, outputs)
        self._kv = {
            a: kv for a, kv in self._kv.items()
            if kv.k_concat not in self._in_place and kv.v_concat not in self._in_place
        }  # fmt: skip
        for i, n in enumerate(self.graph.nodes):
            if n in self._kv:  # the concats' operands are read when the attention runs
                kv = self._kv[n]
                steps[i] = (steps[i][0], [*steps[i][1], *kv.k_concat.operands, *kv.v_concat.operands])
                self._kv_concats |= {kv.k_concat, kv.v_concat}
        alias.update({p: c for p, (c, _) in slices.items()})
        for v in outputs:  # the block an output is (or views) is allocated per call
            r = v
            while r in alias:
                r = alias[r]
            self.out_root[v] = r
        mp = plan_buffers(steps, nbytes, alias, pinned=outputs)
        self.peak_bytes = mp.peak_bytes
        blocks = [np.empty(max(s, 1), np.uint8) for s in mp.sizes]
        buffers: dict[Value, np.ndarray] = {}
        roots = set(self.out_root.values())
        for v, b in mp.block_of.items():
            buffers[v] = _view(blocks[b], 0, v)
            if v in roots:
                self.fresh[v] = (v, 0)
        for v in slices:  # a concat operand planned in place: its bytes of the concat's buffer
            off, root = 0, v
            while root in slices:
                root, o = slices[root]
                off += o
            buffers[v] = _view(blocks[mp.block_of[root]], off, v)
            if root in roots:
                self.fresh[v] = (root, off)
        return buffers

    def buf(self, v: Value, derive: Callable[[np.ndarray], Any] = lambda a: a) -> int:
        """The index in ``bufs`` of ``derive(buffer of v)``: fixed, or refreshed on every call when
        ``v`` lives in an output's block. Steps read ``bufs[j]`` when they run."""
        self.bufs.append(derive(self.buffers[v]))
        if v in self.fresh:
            self.refresh.append((len(self.bufs) - 1, v, derive))
        return len(self.bufs) - 1

    def new_outputs(self) -> dict[Value, np.ndarray]:
        """The output blocks of this call; ``bufs`` entries that live in them follow. A block an
        earlier call returned is taken again once nothing outside the pool refers to it (the caller
        dropped every array viewing it): freeing and remapping megabytes on every call, then
        faulting the pages in again, costs more than the kernels that fill them."""
        blocks: dict[Value, np.ndarray] = {}
        for r in self.fresh_roots:
            pool = self.pool.setdefault(r, [])
            i = _unused(pool)
            if i < 0:
                pool.append(np.empty(max(_bytes(r), 1), np.uint8))
                i = len(pool) - 1
            blocks[r] = pool[i]
            if len(pool) > POOLED_BLOCKS:  # callers keep many results alive: stop pooling them
                pool.pop(i)
        arrays = {
            v: blocks[r][lo:hi].view(dt).reshape(shape) for v, (r, lo, hi, dt, shape) in self.fresh_views
        }
        for j, v, derive in self.refresh:
            self.bufs[j] = derive(arrays[v])
        return blocks

    def _concat_destinations(
        self, alias: dict[Value, Value], nbytes: dict[Value, int], outputs: set[Value]
    ) -> dict[Value, tuple[Value, int]]:
        """Concat results that feed (through reshapes only) another concat whose slice for them is
        contiguous (every dim before its axis is 1: a stack of per-layer KV caches) are planned
        inside that slice, so the outer concat copies nothing for them: ``{inner: (outer, byte
        offset)}``. Only concats qualify as inner values: their lowering always writes its buffer."""
        producer = self.graph.producers()
        out: dict[Value, tuple[Value, int]] = {}
        for n in self.graph.nodes:
            if n.op != "concat" or n.result not in nbytes:
                continue
            axis = n.attrs.axis  # type: ignore[attr-defined]
            if int(np.prod(n.result.tensor_type.static_shape[:axis])) != 1:
                continue
            off, seen = 0, set()
            for x in n.operands:
                v = x
                while v in producer and producer[v].op in ("reshape", "squeeze", "unsqueeze"):
                    v = producer[v].operands[0]
                p = producer.get(v)
                ok = (p is not None and p.op == "concat" and v in nbytes and v not in outputs and v not in out
                      and v not in seen and v is not n.result and _bytes(v) == _bytes(x))  # fmt: skip
                if ok:
                    out[v] = (n.result, off)
                    self._in_place.setdefault(n, set()).add(n.operands.index(x))
                seen.add(v)
                off += _bytes(x)
        return out

    def _leading_matmul(self, n: Node) -> Node | None:
        first = next((m for m in n.attrs.body.nodes if m.op != "constant"), None)  # type: ignore[attr-defined]
        return first if first is not None and first.op == "matmul" else None

    def _mm_value(self, n: Node) -> Value:
        mm = self._leading_matmul(n)
        assert mm is not None
        if n not in self._mm_values:
            self._mm_values[n] = Value(mm.results[0].type, "mm")
        return self._mm_values[n]

    # -- lowering -------------------------------------------------------------------------------
    def lower(self, n: Node) -> Step:
        ins = [self.slot_of(v) for v in n.operands]
        outs = [self.slot_of(r) for r in n.results]
        op = n.op
        if op == "constant":
            data = self.graph.constants[n.attrs.ref]  # type: ignore[attr-defined]
            o = outs[0]

            def const(env: list[Any]) -> None:
                env[o] = data

            return const
        if op == "fused":
            return self.lower_fused(n, ins, outs)
        if op == "attention" and n in self._kv:
            return self.lower_kv_attention(self._kv[n], outs)
        if op == "attention":
            return self.lower_attention(n, ins, outs)
        if op == "qmatmul":
            return self.lower_qmatmul(n, ins, outs)
        bufs = self.bufs
        if op == "matmul":
            j = self.buf(n.results[0])
            a, b, o = ins[0], ins[1], outs[0]

            def matmul(env: list[Any]) -> None:
                env[o] = np.matmul(env[a], env[b], out=bufs[j])

            return matmul
        if op in VIEWS:
            return self.lower_view(n, ins, outs)
        if op == "concat" and n in self._kv_concats:
            jc, o = self.buf(n.results[0]), outs[0]

            def concat_by_attention(env: list[Any]) -> None:  # filled by the attention's step
                env[o] = bufs[jc]

            return concat_by_attention
        if op == "concat":
            axis, o = n.attrs.axis, outs[0]  # type: ignore[attr-defined]
            in_place = self._in_place.get(n, set())
            j = self.buf(n.results[0])
            if not in_place:

                def concat(env: list[Any]) -> None:
                    env[o] = np.concatenate([env[i] for i in ins], axis=axis, out=bufs[j])

                return concat
            bounds = np.cumsum([0, *(v.tensor_type.static_shape[axis] for v in n.operands)])
            keys = [
                (slice(None),) * axis + (slice(int(lo), int(hi)),) for lo, hi in itertools.pairwise(bounds)
            ]
            kept = sorted(in_place)

            def pieces(
                buf: np.ndarray,
            ) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, np.ndarray, int]]]:
                parts = [buf[key] for key in keys]
                copies = [(ins[k], parts[k]) for k in range(len(ins)) if k not in in_place]
                at, step = buf.ctypes.data, buf.strides[axis]  # (ctypes.data per part is slow)
                return copies, [(ins[k], parts[k], at + int(bounds[k]) * step) for k in kept]

            jp = self.buf(n.results[0], pieces)

            def concat_in_place(env: list[Any]) -> None:
                copies, checks = bufs[jp]
                for i, part, addr in checks:  # planned in place: copy only if the data is elsewhere
                    if env[i].ctypes.data != addr:
                        part[...] = env[i]
                for i, part in copies:
                    part[...] = env[i]
                env[o] = bufs[j]

            return concat_in_place
        if op == "gather":
            j = self.buf(n.results[0])
            axis, o = n.attrs.axis, outs[0]  # type: ignore[attr-defined]
            desc = n.describe()

            def gather(env: list[Any]) -> None:
                try:
                    env[o] = np.take(env[ins[0]], env[ins[1]], axis=axis, out=bufs[j])
                except IndexError as e:
                    raise KilnError(f"{desc}: {e}") from None

            return gather
        if op in NUMPY_OPS or op in self.elementwise:
            return self.numpy_step(n, ins, outs)
        if self.fallback:
            warnings.warn(f"numba-cpu: {n.describe()} has no lowering; it runs with the reference "
                          "semantics (fallback=True)", RuntimeWarning, stacklevel=2)  # fmt: skip
            return self.numpy_step(n, ins, outs)
        raise BackendError(f"{n.describe()}: no numba-cpu lowering")

    def lower_qmatmul(self, n: Node, ins: list[int], outs: list[int]) -> Step:
        """The low-bit kernels (qkernels.py): weights stay packed; x is flattened to [M, K]."""
        from .qkernels import kernel_source, make_qmatmul

        wt = n.operands[1].tensor_type
        q = wt.dtype
        assert isinstance(q, QuantType)
        k, cols = wt.static_shape
        if n.operands[0].tensor_type.scalar_dtype != f32:
            return self.numpy_step(n, ins, outs)  # f16/bf16 activations: the reference semantics
        kern = make_qmatmul(q, k, cols, act=str(n.attrs.act))  # type: ignore[attr-defined]
        self.sources.append(kernel_source(kern))
        bufs, j = self.bufs, self.buf(n.results[0])
        j2 = self.buf(n.results[0], _reshaper((-1, cols)))
        xi, wi, si, o = ins[0], ins[1], ins[2], outs[0]
        zi = ins[3] if len(ins) == 4 else None

        def qmatmul(env: list[Any]) -> None:
            x = np.ascontiguousarray(env[xi]).reshape(-1, k)
            kern(x, env[wi], env[si], None if zi is None else env[zi], bufs[j2])
            env[o] = bufs[j]

        return qmatmul

    def lower_view(self, n: Node, ins: list[int], outs: list[int]) -> Step:
        a = n.attrs
        i = ins[0]
        if n.op in ("reshape", "squeeze", "unsqueeze", "broadcast_to"):
            shape = n.results[0].tensor_type.static_shape
            o = outs[0]
            if n.op == "broadcast_to":

                def bcast(env: list[Any]) -> None:
                    env[o] = np.broadcast_to(env[i], shape)

                return bcast

            def reshape(env: list[Any]) -> None:
                env[o] = env[i].reshape(shape)

            return reshape
        if n.op == "transpose":
            perm, o = a.perm, outs[0]  # type: ignore[attr-defined]

            def transpose(env: list[Any]) -> None:
                env[o] = env[i].transpose(perm)

            return transpose
        if n.op == "slice":
            rank = n.operands[0].tensor_type.rank
            idx: list[slice] = [slice(None)] * rank
            for ax, s, e, st in zip(a.axes, a.starts, a.stops, a.steps, strict=True):  # type: ignore[attr-defined]
                idx[ax] = slice(s, None if e < 0 else e, st) if len(range(s, e, st)) else slice(0, 0)
            key, o = tuple(idx), outs[0]

            def slice_(env: list[Any]) -> None:
                env[o] = env[i][key]

            return slice_
        # split: views of consecutive pieces
        axis = a.axis  # type: ignore[attr-defined]
        bounds = np.cumsum([0, *a.sizes])  # type: ignore[attr-defined]
        rank = n.operands[0].tensor_type.rank
        keys = []
        for lo, hi in itertools.pairwise(bounds):
            k: list[slice] = [slice(None)] * rank
            k[axis] = slice(int(lo), int(hi))
            keys.append(tuple(k))

        def split(env: list[Any]) -> None:
            x = env[i]
            for o, k in zip(outs, keys, strict=True):
                env[o] = x[k]

        return split

    def kernel(self, source: str) -> tuple[str, Any, Any]:
        name, mod = self.cache.module(source)
        self.sources.append(source.replace("__KERNEL__", name))
        return name, getattr(mod, f"{name}_parallel"), getattr(mod, f"{name}_serial")

    def lower_fused(self, n: Node, ins: list[int], outs: list[int]) -> Step:
        body = n.attrs.body  # type: ignore[attr-defined]
        try:
            spec = generate(body, "__KERNEL__")
        except BackendError:
            # Integer, f16 or bf16 groups: no generated kernel; NumPy runs the body op by op.
            return self.numpy_step(n, ins, outs)
        name, par, ser = self.kernel(spec.source)
        fn = par if spec.rows > 1 and spec.rows * spec.cols >= self.target.parallel_min_elements else ser
        R, C = spec.rows, spec.cols  # noqa: N806
        shapes = {"full": (R, C), "bcast": (R, C), "col": (R,), "row": (C,), "scalar": (1,)}
        space = next(m for m in body.nodes if m.op != "constant").results[0].tensor_type.static_shape
        mm = self._leading_matmul(n) if spec.matmul else None
        mm_buf = self.buffers[self._mm_value(n)] if mm is not None else None
        mm_ins = [ins[body.inputs.index(v)] for v in mm.operands] if mm is not None else []
        arg_ins = [(ins[k], shapes[acc], acc == "bcast")
                   for k, acc in enumerate(spec.input_access[1 if mm else 0 :]) if acc != "skip"]  # fmt: skip
        bufs = self.bufs
        out_views = [
            self.buf(r, _reshaper(shapes[acc])) for r, acc in zip(n.results, spec.output_access, strict=True)
        ]
        out_arrays = [self.buf(r) for r in n.results]
        cache, first = self.cache, [True]

        def fused(env: list[Any]) -> None:
            args: list[Any] = []
            if mm_buf is not None:
                args.append(np.matmul(env[mm_ins[0]], env[mm_ins[1]], out=mm_buf).reshape(R, C))
            for k, shape, bcast in arg_ins:
                x = env[k]
                if bcast:
                    x = np.broadcast_to(x, space)
                args.append(np.ascontiguousarray(x).reshape(shape))
            args.extend(bufs[j] for j in out_views)
            if first[0]:
                first[0] = False
                cache.call_checked(name, fn, tuple(args))
            else:
                fn(*args)
            for k, j in zip(outs, out_arrays, strict=True):
                env[k] = bufs[j]

        return fused

    def lower_attention(self, n: Node, ins: list[int], outs: list[int]) -> Step:
        if n.results[0].tensor_type.scalar_dtype.name != "f32":
            return self.numpy_step(n, ins, outs)  # the kernel is float32 only
        name, par, ser = self.kernel(attention_source("__KERNEL__"))
        q, k, v = (x.tensor_type for x in n.operands[:3])
        lead = q.static_shape[:-2]
        nb = int(np.prod(lead)) if lead else 1
        sq, d = q.static_shape[-2:]
        sk, dv = k.static_shape[-2], v.static_shape[-1]
        fn = par if nb * sq * sk >= self.target.parallel_min_elements // 4 else ser
        bufs, j = self.bufs, self.buf(n.results[0])
        j3 = self.buf(n.results[0], _reshaper((nb, sq, dv)))
        scale = np.float32(n.attrs.scale)  # type: ignore[attr-defined]
        causal = bool(n.attrs.causal)  # type: ignore[attr-defined]
        scores = (*lead, sq, sk)
        o = outs[0]
        cache, first = self.cache, [True]

        def attention(env: list[Any]) -> None:
            qa = np.ascontiguousarray(env[ins[0]]).reshape(nb, sq, d)
            ka = np.ascontiguousarray(env[ins[1]]).reshape(nb, sk, d)
            va = np.ascontiguousarray(env[ins[2]]).reshape(nb, sk, dv)
            ba = np.broadcast_to(env[ins[3]], scores).reshape(nb, sq, sk)
            args = (qa, ka, va, ba, bufs[j3], scale, causal)
            if first[0]:
                first[0] = False
                cache.call_checked(name, fn, args)
            else:
                fn(*args)
            env[o] = bufs[j]

        return attention

    def lower_kv_attention(self, kv: KvAppend, outs: list[int]) -> Step:
        """Decode attention that writes the appended K and V caches as it reads them."""
        n = kv.attention
        q, k, v = (x.tensor_type.static_shape for x in n.operands[:3])
        nb = int(np.prod(q[:-2], dtype=np.int64))
        d, dv, sk = q[-1], v[-1], k[-2]
        (pk, nk), (pv, nv) = kv.k_concat.operands, kv.v_concat.operands
        t, s = pk.tensor_type.static_shape[-2], nk.tensor_type.static_shape[-2]
        slots = [self.slot_of(x) for x in (n.operands[0], pk, nk, pv, nv)]
        shapes = [(nb, 1, d), (nb, t, d), (nb, s, d), (nb, t, dv), (nb, s, dv)]
        bufs = self.bufs
        jk = self.buf(kv.k_concat.result, _reshaper((nb, sk, d)))
        jv = self.buf(kv.v_concat.result, _reshaper((nb, sk, dv)))
        jo, j = self.buf(n.results[0], _reshaper((nb, 1, dv))), self.buf(n.results[0])
        bias_v = n.operands[3]
        producer = self.graph.producers().get(bias_v)
        zero_bias = (
            producer is not None and producer.op == "constant"
            and not np.any(self.graph.constants[producer.attrs.ref])  # type: ignore[attr-defined]
        )  # fmt: skip
        bi = self.slot_of(bias_v)
        no_bias = np.zeros(0, np.float32)
        self.sources.append(kv_kernel_source())
        kern = KvAttention(
            float(n.attrs.scale),  # type: ignore[attr-defined]
            parallel=nb > 1 and nb * sk * (d + dv) >= self.target.parallel_min_elements,
        )
        o = outs[0]

        def kv_attention(env: list[Any]) -> None:
            q_, pk_, nk_, pv_, nv_ = (_rows(env[i], sh) for i, sh in zip(slots, shapes, strict=True))
            bias = no_bias if zero_bias else np.ascontiguousarray(
                np.broadcast_to(env[bi], (*q[:-2], 1, sk)), np.float32).reshape(nb, sk)  # fmt: skip
            kern.run(q_, pk_, nk_, pv_, nv_, bufs[jk], bufs[jv], bias, bufs[jo])
            env[o] = bufs[j]

        return kv_attention

    # -- running --------------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        vals, _ = bind_inputs(self.graph, inputs)
        env: list[Any] = [None] * len(self.slot)
        for v, x in zip(self.graph.inputs, vals, strict=True):
            env[self.slot[v]] = x
        blocks = self.new_outputs() if self.fresh else {}
        for step in self.steps:
            step(env)
        out: dict[str, Any] = {}
        for name, s, root in self.out_slots:
            y = env[s]
            block = blocks.pop(root, None) if root is not None else None  # each block goes out once
            mine = block is not None and isinstance(y, np.ndarray) and y.flags.writeable and _inside(y, block)
            out[name] = y if mine else np.array(y, copy=True)
        for j, _, _ in self.refresh:  # only the caller's arrays may hold this call's blocks now
            self.bufs[j] = None
        return out

    def warm_up(self) -> None:
        """Run once on zeros so that every kernel is compiled (or loaded from cache) now."""
        types = [v.type for v in self.graph.inputs]
        if not all(isinstance(t, TensorType) and t.is_static and isinstance(t.dtype, DType) for t in types):
            return  # symbolic or host inputs: kernels compile on the first call
        self.run({str(v.name): np.zeros(t.static_shape, t.scalar_dtype.np_dtype)  # type: ignore[union-attr]
                  for v, t in zip(self.graph.inputs, types, strict=True)})  # fmt: skip


def _rows(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as ``shape`` with unit stride along the last axis (kv_attention's layout)."""
    y = x.reshape(shape)
    if y.strides[-1] != y.itemsize or min(y.strides) < 0:
        y = np.ascontiguousarray(y)
    return y


def _reshaper(shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: a.reshape(shape)


POOLED_BLOCKS = 4  # per output: a decode loop holds two (the last result, fed back, and the new one)


def _unused(pool: list[np.ndarray]) -> int:
    """The index of a block only ``pool`` refers to (every view of a block holds a reference to
    it: NumPy points views at the array owning the memory), or -1."""
    for i in range(len(pool)):
        if sys.getrefcount(pool[i]) <= _SOLE_REFS:
            return i
    return -1


def _sole_refs() -> int:
    pool = [np.empty(1, np.uint8)]
    return sys.getrefcount(pool[0])  # the same expression as in _unused, on a block nothing views


_SOLE_REFS = _sole_refs()


def _view(block: np.ndarray, offset: int, v: Value) -> np.ndarray:
    t = v.tensor_type
    return block[offset : offset + _bytes(v)].view(t.scalar_dtype.np_dtype).reshape(t.static_shape)


def _inside(y: np.ndarray, block: np.ndarray) -> bool:
    """Whether ``y``'s data lies in ``block`` (a step may have put a NumPy result in its place)."""
    lo = block.ctypes.data
    return bool(y.size) and lo <= y.ctypes.data < lo + block.nbytes


def _bytes(v: Value) -> int:
    t = v.tensor_type
    return int(np.prod(t.static_shape, dtype=np.int64)) * t.scalar_dtype.np_dtype.itemsize
