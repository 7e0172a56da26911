"""Low-bit dot-product kernels written as LLVM IR (llvmlite) for CPUs with AVX-512 VNNI.

One generated function computes ``out[m, n]`` for a range of weight rows ``n`` and a block of ``MB``
int8 activation rows (``MB`` = 1..4, so a GEMM decodes each weight block once for four rows).
Every code block is decoded in registers into unsigned bytes ``u`` and multiplied with the int8
activations by ``vpdpbusd`` (u8 x s8 -> i32, exactly the operand order of weights x activations).
Three decoders:

- ``split`` (packed, bits in 1/2/4/8): one 64-byte load holds ``512/bits`` weights; shifting and
  masking it gives ``8/bits`` byte vectors whose weight order is a fixed permutation, so the
  activations are permuted to match once per call instead of shuffling the weights every time.
- ``gather`` (packed, any bits): 64 weights span ``8*bits`` bytes; a byte shuffle builds one 16-bit
  lane per weight, which is shifted and masked (vpermb + vpsrlvw), activations in natural order.
- ``planes`` (bit-sliced): each plane word is a 64-bit mask; ``u += 2^i`` under the mask (a masked
  byte add), so decoding costs two instructions per bit and the work scales with the bit width.

The i32 lanes of the accumulator each cover 4 bytes of one 64-byte vector, so a quantization group
of ``gl`` weights is a run of ``16*gl/sb`` lanes of a block of ``sb`` weights: scales are applied
lane-wise (one convert and one FMA per group) and the horizontal sum happens once per output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import llvmlite.binding as llvm
import llvmlite.ir as ir

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F16, F32, PTR = ir.HalfType(), ir.FloatType(), ir.PointerType()
V64I8, V16I32, V16F = ir.VectorType(I8, 64), ir.VectorType(I32, 16), ir.VectorType(F32, 16)
FAST = ("fast",)
MAX_MB = 4
# weight rows per loop iteration for each activation-block height: a GEMV (mb = 1) works on four
# rows at once so that four independent vpdpbusd/FMA chains hide their latency and share x loads
Widen = Callable[[ir.Value, int], ir.Value]  # (a <per x T> vector, per) -> its 32-bit widening
ROWS_PER_STEP = {1: 4, 2: 2, 3: 1, 4: 1}
PREFETCH_LOCALITY = 3  # llvm.prefetch locality: 3 = prefetcht0 (L1); t1 and t2 measured the same (session 5)
PREFETCH_BYTES = 4096  # how far ahead (in codes, rounded up to whole row groups) the kernels prefetch
# (4096x4096 GEMV, interleaved: 2-bit 145 -> 139 us, 1-bit 97.8 -> 96.5 us against 8192; 3, 4 and 8 bits equal)

# void kernel(n0, n1, codes, scales, zeros, xq, x_stride, xsum, xs, out, out_stride): all i64


def host_has_vnni() -> bool:
    """True when the CPU can run these kernels (AVX-512 BW/VL for masks and bytes, VNNI for dots)."""
    feats = llvm.get_host_cpu_features()
    return all(feats.get(f, False) for f in ("avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512vbmi"))


@dataclass(frozen=True)
class Plan:
    """The structure one kernel is specialised on."""

    bits: int
    decode: str  # "split" | "gather" | "planes"
    k: int
    gl: int  # group length (K for one group)
    a: int  # 1, or 2 for bipolar
    c_const: int  # the constant offset c, or -1 when c is the stored zero point (asym)
    scale_f16: bool  # scales stored as float16 (else float32)
    act: str = "int8"  # "int8": vpdpbusd on quantized activations; "f32": dequantize in register + FMA

    @property
    def sb(self) -> int:
        """Weights decoded per block."""
        return 512 // self.bits if self.decode == "split" else 64

    @property
    def groups(self) -> int:
        return self.k // self.gl

    @property
    def steps(self) -> int:
        """Scale steps per row: a group (when groups span blocks) or a block (holding groups)."""
        return self.k // max(self.gl, self.sb)

    @property
    def first_lanes(self) -> list[int]:
        """The accumulator lane that holds each group's activation sum within a step: lane l of a
        step belongs to group ``l * per // 16`` (per = groups per block); the other lanes hold 0,
        so the kernel's offset correction is one integer multiply-subtract per step."""
        per = max(1, self.sb // self.gl)
        return [q * 16 // per for q in range(per)]

    @property
    def row_bytes(self) -> int:
        return self.k * self.bits // 8

    @property
    def chunk_span(self) -> int:
        """Weights (in natural order) that one 16-byte chunk of a decoded part draws from: the
        ``split`` decoder interleaves ``8/bits`` weights per byte, the others keep the order."""
        return 16 * (8 // self.bits) if self.decode == "split" else 16


def plan_for(
    bits: int, bitsliced: bool, k: int, gl: int, a: int, c_const: int, scale_f16: bool, act: str = "int8"
) -> Plan | None:
    """The plan for this weight structure, or None when these kernels do not cover it."""
    if bitsliced:
        decode = "planes"
    elif 8 % bits == 0 and k % (512 // bits) == 0:
        decode = "split"
    else:
        decode = "gather"
    p = Plan(bits, decode, k, gl, a, c_const, scale_f16, act)
    sb = p.sb
    if act == "f32":  # every 16-weight chunk must lie in one group
        return p if k % sb == 0 and gl % p.chunk_span == 0 else None
    # a group must be whole lanes of a block, or whole blocks
    if k % sb or (gl % sb and (sb % gl or (16 * gl) % sb)):
        return None
    return p


def x_permutation(p: Plan) -> list[int] | None:
    """Where activation ``k`` goes inside each block (the ``split`` decoder's weight order)."""
    if p.decode != "split":
        return None
    r = 8 // p.bits
    return [i * r + j for j in range(r) for i in range(64)]


def kernel_name(mb: int, nr: int) -> str:
    return f"qdot_m{mb}_r{nr}"


def host_has_gfni() -> bool:
    return bool(llvm.get_host_cpu_features().get("gfni", False))


def _field_matrix(lo: int, width: int) -> ir.Constant:
    """The vgf2p8affineqb matrix (one qword, repeated per 8 bytes) that maps each byte x to
    ``(x >> lo) & (2**width - 1)``: result bit i is the parity of x AND matrix byte 7 - i."""
    qword = [0] * 8
    for i in range(width):
        qword[7 - i] = 1 << (lo + i)
    return ir.Constant(V64I8, qword * 8)


def _flat(rows: list[list[ir.Value]]) -> list[ir.Value]:
    return [v for row in rows for v in row]


def _splat(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    vec = b.insert_element(ir.Constant(V16F, None), v, I32(0))
    return b.shuffle_vector(vec, ir.Constant(V16F, None), ir.Constant(ir.VectorType(I32, 16), [0] * 16))


def _declare(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    fn = module.globals.get(name)
    if isinstance(fn, ir.Function):
        return fn
    return ir.Function(module, ir.FunctionType(ret, args), name)


class _Gen:
    """Builds one kernel function; value and block names follow the math in the module docstring."""

    def __init__(self, p: Plan, mb: int, nr: int, module: ir.Module) -> None:
        self.p, self.mb, self.nr, self.m = p, mb, nr, module
        self.dpbusd = _declare(module, "llvm.x86.avx512.vpdpbusd.512", V16I32, [V16I32, V64I8, V64I8])
        self.fma = _declare(module, "llvm.fma.v16f32", V16F, [V16F, V16F, V16F])
        self.rsum = _declare(module, "llvm.vector.reduce.fadd.v16f32", F32, [F32, V16F])
        self.prefetch = _declare(module, "llvm.prefetch.p0", ir.VoidType(), [PTR, I32, I32, I32])
        self.affine = (
            _declare(module, "llvm.x86.vgf2p8affineqb.512", V64I8, [V64I8, V64I8, ir.IntType(8)])
            if host_has_gfni()
            else None
        )

    def build(self) -> None:
        p, mb, nr = self.p, self.mb, self.nr
        fn = ir.Function(self.m, ir.FunctionType(ir.VoidType(), [I64] * 11), kernel_name(mb, nr))
        names = ["n0", "n1", "codes_addr", "scales_addr", "zeros_addr", "xq_addr", "x_stride", "xsum_addr",
                 "xs_addr", "out_addr", "out_stride"]  # fmt: skip
        for arg, nm in zip(fn.args, names, strict=True):
            arg.name = nm
        a = dict(zip(names, fn.args, strict=True))
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.b = b
        ptr = {
            nm: b.inttoptr(a[nm + "_addr"], PTR, name=nm)
            for nm in ("codes", "scales", "zeros", "xq", "xsum", "xs", "out")
        }
        # per activation row m of the block: its int8 (or float) row, group sums and scale
        xet = F32 if p.act == "f32" else I8
        xrow = [
            b.gep(ptr["xq"], [b.mul(a["x_stride"], I64(m))], source_etype=xet, name=f"x{m}")
            for m in range(mb)
        ]
        # the group sums of each activation row, laid out as accumulator lanes (see Plan.first_lanes)
        self.xsum = [
            b.gep(ptr["xsum"], [I64(m * p.steps * 16)], source_etype=I32, name=f"xsum{m}") for m in range(mb)
        ]
        rows_loop = fn.append_basic_block("rows")
        done = fn.append_basic_block("done")
        b.cbranch(b.icmp_signed("<", a["n0"], a["n1"]), rows_loop, done)
        entry = b.block

        # --- for n in [n0, n1) step nr ((n1 - n0) % nr == 0): one output per row and activation row ---
        b.position_at_end(rows_loop)
        n = b.phi(I64, "n")
        n.add_incoming(a["n0"], entry)
        b.comment(f"the codes, scales and zero points of rows n .. n+{nr - 1}")
        sdt = F16 if p.scale_f16 else F32
        self.sdt = sdt
        self.codes, self.scales, self.zeros = [], [], []
        for r in range(nr):
            nr_ = b.add(n, I64(r), name=f"n{r}")
            self.codes.append(
                b.gep(ptr["codes"], [b.mul(nr_, I64(p.row_bytes))], source_etype=I8, name=f"codes{r}")
            )
            self.scales.append(
                b.gep(ptr["scales"], [b.mul(nr_, I64(p.groups))], source_etype=sdt, name=f"scales{r}")
            )
            self.zeros.append(
                b.gep(ptr["zeros"], [b.mul(nr_, I64(p.groups))], source_etype=I8, name=f"zeros{r}")
            )
        facc = self.f32_loops(xrow) if p.act == "f32" else self.block_loops(xrow)
        b.comment("y = xs * sum over lanes of facc (f32 activations: the sum itself)")
        for r in range(nr):
            for m in range(mb):
                y = b.call(self.rsum, [F32(0.0), facc[r][m]], name=f"dot{r}_{m}", fastmath=FAST)
                if p.act != "f32":
                    xs = b.load(b.gep(ptr["xs"], [I64(m)], source_etype=F32), typ=F32, name=f"xs{m}")
                    y = b.fmul(y, xs, name=f"y{r}_{m}")
                orow = b.add(b.mul(a["out_stride"], I64(m)), b.add(n, I64(r)))
                b.store(y, b.gep(ptr["out"], [orow], source_etype=F32))
        n_next = b.add(n, I64(nr), name="n_next")
        n.add_incoming(n_next, b.block)
        b.cbranch(b.icmp_signed("<", n_next, a["n1"]), rows_loop, done)
        b.position_at_end(done)
        b.ret_void()

    def f32_loops(self, xrow: list[ir.Value]) -> list[list[ir.Value]]:
        """Float activations: each 16-weight chunk is decoded, dequantized in registers
        (``w = u * (a*s) - c*s``, one FMA) and multiplied into lane-wise float sums (another FMA)."""
        p, b, mb, nr = self.p, self.b, self.mb, self.nr
        fn = b.function
        pre = b.block
        head = fn.append_basic_block("block")
        b.branch(head)
        b.position_at_end(head)
        t = b.phi(I64, "block_k0")
        t.add_incoming(I64(0), pre)
        facc = [[b.phi(V16F, f"facc{r}_{m}") for m in range(mb)] for r in range(nr)]
        for f in _flat(facc):
            f.add_incoming(ir.Constant(V16F, None), pre)
        v16i8 = ir.VectorType(I8, 16)
        acc = [[f for f in row] for row in facc]
        for r in range(nr):
            parts = self.decode(t, r)
            for j, part in enumerate(parts):
                for q in range(4):
                    g = b.sdiv(b.add(t, I64(q * p.chunk_span)), I64(p.gl), name="g")
                    sv = b.load(b.gep(self.scales[r], [g], source_etype=self.sdt), typ=self.sdt, name="s")
                    s32 = b.fpext(sv, F32) if p.scale_f16 else sv
                    if p.c_const >= 0:
                        c32: ir.Value = F32(float(p.c_const))
                    else:
                        c32 = b.uitofp(b.load(b.gep(self.zeros[r], [g], source_etype=I8), typ=I8), F32)
                    mul = b.fmul(s32, F32(float(p.a)), name="as")
                    add = b.fneg(b.fmul(s32, c32), name="neg_cs")
                    chunk = b.shuffle_vector(part, ir.Constant(part.type, None),
                                             ir.Constant(ir.VectorType(I32, 16), list(range(16 * q, 16 * q + 16))))  # fmt: skip
                    assert chunk.type == v16i8
                    uf = b.uitofp(b.zext(chunk, V16I32), V16F, name=f"u{j}_{q}")
                    w = b.call(self.fma, [uf, _splat(b, mul), _splat(b, add)], name=f"w{r}_{j}_{q}")
                    for m in range(mb):
                        xp = b.gep(xrow[m], [b.add(t, I64(64 * j + 16 * q))], source_etype=F32)
                        xv = b.load(xp, typ=V16F, name=f"x{m}_{j}_{q}", align=4)
                        acc[r][m] = b.call(self.fma, [w, xv, acc[r][m]], name=f"facc{r}_{m}_next")
        t_next = b.add(t, I64(p.sb), name="block_next")
        for f, nf in zip(_flat(facc), _flat(acc), strict=True):
            f.add_incoming(nf, b.block)
        t.add_incoming(t_next, b.block)
        out = fn.append_basic_block("blocks_done")
        b.cbranch(b.icmp_signed("<", t_next, I64(p.k)), head, out)
        b.position_at_end(out)
        return acc

    def block_loops(self, xrow: list[ir.Value]) -> list[list[ir.Value]]:
        """Loop over scale steps (a group, or a block holding several groups); lane-wise float sums
        ``facc[r][m]`` per weight row r and activation row m."""
        p, b, mb, nr = self.p, self.b, self.mb, self.nr
        fn = b.function
        step = max(p.gl, p.sb)
        pre = b.block
        head = fn.append_basic_block("step")
        b.branch(head)
        b.position_at_end(head)
        t = b.phi(I64, "step_k0")  # first weight of this step
        t.add_incoming(I64(0), pre)
        facc = [[b.phi(V16F, f"facc{r}_{m}") for m in range(mb)] for r in range(nr)]
        for f in _flat(facc):
            f.add_incoming(ir.Constant(V16F, None), pre)
        zero_i = ir.Constant(V16I32, None)
        tix = b.sdiv(t, I64(step), name="step_index")
        xsl = []
        for m in range(mb):
            src = b.gep(self.xsum[m], [b.mul(tix, I64(16))], source_etype=I32)
            xsl.append(b.load(src, typ=V16I32, name=f"xsum_lanes{m}", align=4))  # NumPy aligns to 16 at best
        # with a constant offset and a = 1 the sums start at -c * xsum: no subtraction per row after
        folded = p.c_const >= 0 and p.a == 1
        init = [
            b.sub(zero_i, b.mul(ir.Constant(V16I32, [p.c_const] * 16), x), name=f"iacc_init{m}")
            if folded
            else zero_i
            for m, x in enumerate(xsl)
        ]
        if step == p.sb:
            iacc = self.block(t, xrow, [list(init) for _ in range(nr)])
        else:  # a group of several blocks: i32 sums over the group first
            b.comment(f"one group = {step // p.sb} blocks of {p.sb} weights: accumulate in i32")
            bpre = b.block
            inner = fn.append_basic_block("block")
            b.branch(inner)
            b.position_at_end(inner)
            j = b.phi(I64, "block_k0")
            j.add_incoming(t, bpre)
            ia = [[b.phi(V16I32, f"iacc{r}_{m}") for m in range(mb)] for r in range(nr)]
            for row in ia:
                for m, v in enumerate(row):
                    v.add_incoming(init[m], bpre)
            iacc = self.block(j, xrow, [list(row) for row in ia])
            j_next = b.add(j, I64(p.sb), name="block_next")
            for v, nv in zip(_flat(ia), _flat(iacc), strict=True):
                v.add_incoming(nv, b.block)
            j.add_incoming(j_next, b.block)
            after = fn.append_basic_block("group_end")
            b.cbranch(b.icmp_signed("<", j_next, b.add(t, I64(step))), inner, after)
            b.position_at_end(after)
        if not folded:
            b.comment("the offset, in integers: iacc = a * iacc - c * (sum of x over the lane's group)")
            for r in range(nr):
                cl = self.lane_offsets(t, r)
                for m in range(mb):
                    v = iacc[r][m]
                    if p.a != 1:
                        v = b.mul(v, ir.Constant(V16I32, [p.a] * 16), name=f"a_iacc{r}_{m}")
                    iacc[r][m] = b.sub(v, b.mul(cl, xsl[m]), name=f"iacc{r}_{m}_off")
        b.comment("lane-wise: facc += float(iacc) * scale of the lane's group")
        new = []
        for r in range(nr):
            lane_scale = self.lane_scales(t, r)
            new.append([
                b.call(self.fma, [b.sitofp(iacc[r][m], V16F, name=f"fiacc{r}_{m}"), lane_scale, facc[r][m]],
                       name=f"facc{r}_{m}_next")
                for m in range(mb)
            ])  # fmt: skip
        t_next = b.add(t, I64(step), name="step_next")
        for f, nf in zip(_flat(facc), _flat(new), strict=True):
            f.add_incoming(nf, b.block)
        t.add_incoming(t_next, b.block)
        out = fn.append_basic_block("steps_done")
        b.cbranch(b.icmp_signed("<", t_next, I64(p.k)), head, out)
        b.position_at_end(out)
        return new

    def lane_offsets(self, k0: ir.Value, r: int) -> ir.Value:
        """<16 x i32>: the offset c of each lane's group (a constant, or the stored zero points)."""
        if self.p.c_const >= 0:
            return ir.Constant(V16I32, [self.p.c_const] * 16)
        return self.per_lane(
            self.zeros[r], I8, 1, k0, lambda v, t: self.b.zext(v, ir.VectorType(I32, t)), "zero"
        )

    def lane_scales(self, k0: ir.Value, r: int) -> ir.Value:
        """<16 x float>: lane l holds the scale of the group lane l belongs to."""
        widen = (
            (lambda v, t: self.b.fpext(v, ir.VectorType(F32, t))) if self.p.scale_f16 else (lambda v, t: v)
        )
        return self.per_lane(self.scales[r], self.sdt, 2 if self.p.scale_f16 else 4, k0, widen, "scale")

    def per_lane(
        self, row: ir.Value, etype: ir.Type, align: int, k0: ir.Value, widen: Widen, what: str
    ) -> ir.Value:
        """A per-group value of the step starting at ``k0`` (``row[g]``, the groups of one block
        loaded together), widened to 32 bits and spread so that lane l holds its group's value."""
        p, b = self.p, self.b
        g0 = b.sdiv(k0, I64(p.gl), name=f"{what}_g0")
        per = max(1, p.sb // p.gl)  # groups inside one block
        src = b.gep(row, [g0], source_etype=etype, name=f"{what}_ptr")
        vt = ir.VectorType(etype, per)
        if per > 1:  # NumPy aligns only the row start: load at element alignment
            v = b.load(src, typ=vt, name=f"{what}_groups", align=align)
        else:  # splat before widening: a broadcast load the convert can take as its operand
            one = b.insert_element(
                ir.Constant(ir.VectorType(etype, 16), None),
                b.load(src, typ=etype, name=f"{what}_group"),
                I32(0),
            )
            zero = ir.Constant(ir.VectorType(I32, 16), [0] * 16)
            return widen(b.shuffle_vector(one, ir.Constant(one.type, None), zero, name=f"splat_{what}"), 16)
        v = widen(v, per)
        mask = ir.Constant(ir.VectorType(I32, 16), [lane * per // 16 for lane in range(16)])
        return b.shuffle_vector(v, ir.Constant(v.type, None), mask, name=f"lane_{what}")

    def block(self, k0: ir.Value, xrow: list[ir.Value], iacc: list[list[ir.Value]]) -> list[list[ir.Value]]:
        """Decode the block of weights starting at ``k0`` in every row and add its dot products to
        ``iacc[r][m]``; each activation vector is loaded once for all rows."""
        b = self.b
        # Rows n .. n+nr-1 are read side by side, so the same offset a few rows on is being read
        # right now; what is worth fetching is that offset in the row group about
        # PREFETCH_BYTES further on, the lines its step will read (4096x4096 4-bit GEMV 244 -> 208 us).
        span = self.nr * self.p.row_bytes
        dist = span * -(-PREFETCH_BYTES // span)
        b.comment(f"prefetch the codes the row group {dist // span} groups on will read at this offset")
        for r in range(self.nr):
            ahead = b.add(b.sdiv(b.mul(k0, I64(self.p.bits)), I64(8)), I64(dist))
            b.call(
                self.prefetch,
                [b.gep(self.codes[r], [ahead], source_etype=I8), I32(0), I32(PREFETCH_LOCALITY), I32(1)],
            )
        parts = [self.decode(k0, r) for r in range(self.nr)]
        for j in range(len(parts[0])):
            for m in range(self.mb):
                xp = b.gep(xrow[m], [b.add(k0, I64(64 * j))], source_etype=I8)
                xv = b.load(xp, typ=V64I8, name=f"x{m}_{j}")
                xv.align = 1
                for r in range(self.nr):
                    # chained through one accumulator: the independent rows (and blocks, out of
                    # order) hide the latency, and there are no partial sums to add up
                    iacc[r][m] = b.call(self.dpbusd, [iacc[r][m], parts[r][j], xv], name=f"iacc{r}_{m}")
        return iacc

    def decode(self, k0: ir.Value, r: int) -> list[ir.Value]:
        """Row r's codes of the block as unsigned byte vectors, one per vpdpbusd."""
        p, b = self.p, self.b
        codes = self.codes[r]
        bits, mask = p.bits, (1 << p.bits) - 1
        if p.decode == "split":
            b.comment(f"{p.sb} weights in 64 bytes; part j = (bytes >> {bits}j) & {mask}")
            src = b.gep(codes, [b.sdiv(b.mul(k0, I64(bits)), I64(8))], source_etype=I8)
            v = b.load(src, typ=V64I8, name="packed")
            v.align = 1
            out = []
            for j in range(8 // bits):
                if j and self.affine is not None:
                    # one GF(2) affine map per part moves bits [bits*j, bits*j+bits) down and clears
                    # the rest (a shift and a mask otherwise: 2-bit decode 6 -> 4 uops per row)
                    part = b.call(self.affine, [v, _field_matrix(bits * j, bits), ir.IntType(8)(0)])
                else:
                    part = b.lshr(v, ir.Constant(V64I8, [bits * j] * 64)) if j else v
                    if bits * (j + 1) < 8:
                        part = b.and_(part, ir.Constant(V64I8, [mask] * 64))
                part.name = f"u{j}"
                out.append(part)
            return out
        if p.decode == "gather":
            nb = 8 * bits
            b.comment(f"64 weights in {nb} bytes: weight i is bits [{bits}i, {bits}i+{bits}) of the stream")
            src = b.gep(codes, [b.sdiv(b.mul(k0, I64(bits)), I64(8))], source_etype=I8)
            v = b.load(src, typ=ir.VectorType(I8, nb), name="packed")
            v.align = 1
            idx = []
            for i in range(64):
                lo = (i * bits) // 8
                idx += [lo, min(lo + 1, nb - 1)]
            pairs = b.shuffle_vector(v, ir.Constant(v.type, None), ir.Constant(ir.VectorType(I32, 128), idx))
            w16 = b.bitcast(pairs, ir.VectorType(I16, 64), name="pairs")
            sh = b.lshr(w16, ir.Constant(ir.VectorType(I16, 64), [(i * bits) % 8 for i in range(64)]))
            u16 = b.and_(sh, ir.Constant(ir.VectorType(I16, 64), [mask] * 64))
            return [b.trunc(u16, V64I8, name="u")]
        b.comment(f"{bits} bit planes: u += 2^i where plane i has a one")
        word = b.sdiv(k0, I64(64), name="word")
        u: ir.Value = ir.Constant(V64I8, None)
        for i in range(bits):
            wp = b.gep(codes, [b.add(word, I64(i * p.k // 64))], source_etype=I64)
            bitmask = b.bitcast(b.load(wp, typ=I64, name=f"plane{i}"), ir.VectorType(I1, 64), name=f"m{i}")
            plus = b.add(u, ir.Constant(V64I8, [1 << i] * 64))
            u = b.select(bitmask, plus, u, name=f"u_{i}")
        return [u]


def generate_ir(p: Plan) -> str:
    """Readable LLVM IR for the MB = 1..4 kernels of ``p``."""
    mod = ir.Module(name=f"kiln_q{p.bits}_{p.decode}")
    gens = [_Gen(p, mb, nr, mod) for mb in range(1, MAX_MB + 1) for nr in sorted({1, ROWS_PER_STEP[mb]})]
    for g in gens:
        g.build()
    head = (
        f"; kiln low-bit dot kernels ({p.act} activations): {p.bits}-bit {p.decode} decode, K={p.k}, group={p.gl}, a={p.a}, "
        f"c={'zero point' if p.c_const < 0 else p.c_const}, scales {'f16' if p.scale_f16 else 'f32'}\n"
        "; qdot_mB_rR(n0, n1, codes, scales, zeros, xq, x_stride, sx, xs, out, out_stride): B activation\n"
        ";   rows, R weight rows per step ((n1 - n0) % R == 0)\n"
        ";   out[m, n] = xs[m] * sum_g s[n,g] * (a * (u[n] . xq[m])_g - c[n,g] * xsum[m,g])\n"
    )
    return head + str(mod)


@dataclass
class Compiled:
    """A compiled plan: its IR, the function per block height, and the engine that owns the code."""

    plan: Plan
    ir_text: str
    addresses: tuple[
        tuple[int, int, int], ...
    ]  # per block height: (R, address of the R-row kernel, of the 1-row one)
    engine: llvm.ExecutionEngine


def _target_machine() -> llvm.TargetMachine:
    """A new target machine for the host CPU. Not shared: an MCJIT engine takes ownership of the
    one it is given and frees it with itself (a shared one crashed the next compile once an
    uncached engine had been dropped)."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    feats = llvm.get_host_cpu_features().flatten()
    return target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=feats, opt=3, codemodel="jitdefault"
    )


@cache
def compile_plan(p: Plan) -> Compiled:
    """Compile ``p`` once per process (opt level 3, host CPU), keeping the engine alive."""
    text = generate_ir(p)
    mod = llvm.parse_assembly(text)
    mod.verify()
    tm = _target_machine()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    addresses = tuple(
        (ROWS_PER_STEP[mb], engine.get_function_address(kernel_name(mb, ROWS_PER_STEP[mb])),
         engine.get_function_address(kernel_name(mb, 1)))
        for mb in range(1, MAX_MB + 1)
    )  # fmt: skip
    return Compiled(p, text, addresses, engine)
