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

import ctypes
from dataclasses import dataclass
from functools import cache
from typing import Any

import llvmlite.binding as llvm
import llvmlite.ir as ir

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F16, F32, PTR = ir.HalfType(), ir.FloatType(), ir.PointerType()
V64I8, V16I32, V16F = ir.VectorType(I8, 64), ir.VectorType(I32, 16), ir.VectorType(F32, 16)
FAST = ("fast",)
MAX_MB = 4

# void kernel(n0, n1, codes, scales, zeros, xq, x_stride, sx, xs, out, out_stride): all i64
KERNEL_CTYPE = ctypes.CFUNCTYPE(None, *([ctypes.c_int64] * 11))


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

    @property
    def sb(self) -> int:
        """Weights decoded per block."""
        return 512 // self.bits if self.decode == "split" else 64

    @property
    def groups(self) -> int:
        return self.k // self.gl

    @property
    def row_bytes(self) -> int:
        return self.k * self.bits // 8


def plan_for(
    bits: int, bitsliced: bool, k: int, gl: int, a: int, c_const: int, scale_f16: bool
) -> Plan | None:
    """The plan for this weight structure, or None when these kernels do not cover it."""
    if bitsliced:
        decode = "planes"
    elif 8 % bits == 0 and k % (512 // bits) == 0:
        decode = "split"
    else:
        decode = "gather"
    p = Plan(bits, decode, k, gl, a, c_const, scale_f16)
    sb = p.sb
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


def _declare(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    fn = module.globals.get(name)
    if isinstance(fn, ir.Function):
        return fn
    return ir.Function(module, ir.FunctionType(ret, args), name)


class _Gen:
    """Builds one kernel function; value and block names follow the math in the module docstring."""

    def __init__(self, p: Plan, mb: int, module: ir.Module) -> None:
        self.p, self.mb, self.m = p, mb, module
        self.dpbusd = _declare(module, "llvm.x86.avx512.vpdpbusd.512", V16I32, [V16I32, V64I8, V64I8])
        self.fma = _declare(module, "llvm.fma.v16f32", V16F, [V16F, V16F, V16F])
        self.rsum = _declare(module, "llvm.vector.reduce.fadd.v16f32", F32, [F32, V16F])

    def build(self) -> None:
        p, mb = self.p, self.mb
        fn = ir.Function(self.m, ir.FunctionType(ir.VoidType(), [I64] * 11), f"qdot_m{mb}")
        names = ["n0", "n1", "codes_addr", "scales_addr", "zeros_addr", "xq_addr", "x_stride", "sx_addr",
                 "xs_addr", "out_addr", "out_stride"]  # fmt: skip
        for arg, nm in zip(fn.args, names, strict=True):
            arg.name = nm
        a = dict(zip(names, fn.args, strict=True))
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.b = b
        ptr = {
            nm: b.inttoptr(a[nm + "_addr"], PTR, name=nm)
            for nm in ("codes", "scales", "zeros", "xq", "sx", "xs", "out")
        }
        # per activation row m of the block: its int8 row, group sums and scale
        xrow = [
            b.gep(ptr["xq"], [b.mul(a["x_stride"], I64(m))], source_etype=I8, name=f"x{m}") for m in range(mb)
        ]
        rows_loop = fn.append_basic_block("rows")
        done = fn.append_basic_block("done")
        b.cbranch(b.icmp_signed("<", a["n0"], a["n1"]), rows_loop, done)
        entry = b.block

        # --- for n in [n0, n1): one output per activation row ---
        b.position_at_end(rows_loop)
        n = b.phi(I64, "n")
        n.add_incoming(a["n0"], entry)
        b.comment("this row's codes, scales and zero points")
        codes = b.gep(ptr["codes"], [b.mul(n, I64(p.bits * p.k // 8))], source_etype=I8, name="codes_n")
        sdt = F16 if p.scale_f16 else F32
        scales = b.gep(ptr["scales"], [b.mul(n, I64(p.groups))], source_etype=sdt, name="scales_n")
        zeros = b.gep(ptr["zeros"], [b.mul(n, I64(p.groups))], source_etype=I8, name="zeros_n")
        self.codes, self.scales, self.sdt = codes, scales, sdt
        facc = self.block_loops(xrow)
        b.comment("y = xs * (a * sum_g s_g acc_g - sum_g s_g c_g sx_g)")
        corr = self.correction(scales, zeros, ptr["sx"])
        for m in range(mb):
            dot = b.call(self.rsum, [F32(0.0), facc[m]], name=f"dot{m}", fastmath=FAST)
            if p.a != 1:
                dot = b.fmul(dot, F32(float(p.a)), name=f"adot{m}")
            xs = b.load(b.gep(ptr["xs"], [I64(m)], source_etype=F32), typ=F32, name=f"xs{m}")
            y = b.fmul(b.fsub(dot, corr[m]), xs, name=f"y{m}")
            orow = b.add(b.mul(a["out_stride"], I64(m)), n)
            b.store(y, b.gep(ptr["out"], [orow], source_etype=F32))
        n_next = b.add(n, I64(1), name="n_next")
        n.add_incoming(n_next, b.block)
        b.cbranch(b.icmp_signed("<", n_next, a["n1"]), rows_loop, done)
        b.position_at_end(done)
        b.ret_void()

    def block_loops(self, xrow: list[ir.Value]) -> list[ir.Value]:
        """Loop over scale steps (a group, or a block holding several groups); lane-wise float sums."""
        p, b, mb = self.p, self.b, self.mb
        fn = b.function
        step = max(p.gl, p.sb)
        pre = b.block
        head = fn.append_basic_block("step")
        b.branch(head)
        b.position_at_end(head)
        t = b.phi(I64, "step_k0")  # first weight of this step
        t.add_incoming(I64(0), pre)
        facc = [b.phi(V16F, f"facc{m}") for m in range(mb)]
        for f in facc:
            f.add_incoming(ir.Constant(V16F, None), pre)
        zero_i = ir.Constant(V16I32, None)
        if step == p.sb:
            iacc = self.block(t, xrow, [zero_i] * mb)
        else:  # a group of several blocks: i32 sums over the group first
            b.comment(f"one group = {step // p.sb} blocks of {p.sb} weights: accumulate in i32")
            bpre = b.block
            inner = fn.append_basic_block("block")
            b.branch(inner)
            b.position_at_end(inner)
            j = b.phi(I64, "block_k0")
            j.add_incoming(t, bpre)
            ia = [b.phi(V16I32, f"iacc{m}") for m in range(mb)]
            for v in ia:
                v.add_incoming(zero_i, bpre)
            iacc = self.block(j, xrow, list(ia))
            j_next = b.add(j, I64(p.sb), name="block_next")
            for v, nv in zip(ia, iacc, strict=True):
                v.add_incoming(nv, b.block)
            j.add_incoming(j_next, b.block)
            after = fn.append_basic_block("group_end")
            b.cbranch(b.icmp_signed("<", j_next, b.add(t, I64(step))), inner, after)
            b.position_at_end(after)
        lane_scale = self.lane_scales(t)
        b.comment("lane-wise: facc += float(iacc) * scale of the lane's group")
        new = [
            b.call(
                self.fma,
                [b.sitofp(iacc[m], V16F, name=f"fiacc{m}"), lane_scale, facc[m]],
                name=f"facc{m}_next",
            )
            for m in range(mb)
        ]
        t_next = b.add(t, I64(step), name="step_next")
        for f, nf in zip(facc, new, strict=True):
            f.add_incoming(nf, b.block)
        t.add_incoming(t_next, b.block)
        out = fn.append_basic_block("steps_done")
        b.cbranch(b.icmp_signed("<", t_next, I64(p.k)), head, out)
        b.position_at_end(out)
        return new

    def lane_scales(self, k0: ir.Value) -> ir.Value:
        """<16 x float>: lane l holds the scale of the group lane l belongs to."""
        p, b = self.p, self.b
        g0 = b.sdiv(k0, I64(p.gl), name="g0")
        per = max(1, p.sb // p.gl)  # groups inside one block
        src = b.gep(self.scales, [g0], source_etype=self.sdt, name="s_ptr")
        vt = ir.VectorType(self.sdt, per)
        if per > 1:
            sv = b.load(src, typ=vt, name="s_groups", align=2)  # numpy only aligns the row start
        else:
            sv = b.insert_element(ir.Constant(vt, None), b.load(src, typ=self.sdt, name="s_group"), I32(0))
        if p.scale_f16:
            sv = b.fpext(sv, ir.VectorType(F32, per), name="s_f32")
        mask = ir.Constant(ir.VectorType(I32, 16), [lane * per // 16 for lane in range(16)])
        return b.shuffle_vector(sv, ir.Constant(sv.type, None), mask, name="lane_scale")

    def block(self, k0: ir.Value, xrow: list[ir.Value], iacc: list[ir.Value]) -> list[ir.Value]:
        """Decode the block of weights starting at ``k0`` and add its dot products to ``iacc``."""
        b = self.b
        parts = self.decode(k0)
        for j, u in enumerate(parts):
            for m in range(len(iacc)):
                xp = b.gep(xrow[m], [b.add(k0, I64(64 * j))], source_etype=I8)
                xv = b.load(xp, typ=V64I8, name=f"x{m}_{j}")
                xv.align = 1
                iacc[m] = b.call(self.dpbusd, [iacc[m], u, xv], name=f"iacc{m}")
        return iacc

    def decode(self, k0: ir.Value) -> list[ir.Value]:
        """The block's codes as unsigned byte vectors, one per vpdpbusd."""
        p, b = self.p, self.b
        bits, mask = p.bits, (1 << p.bits) - 1
        if p.decode == "split":
            b.comment(f"{p.sb} weights in 64 bytes; part j = (bytes >> {bits}j) & {mask}")
            src = b.gep(self.codes, [b.sdiv(b.mul(k0, I64(bits)), I64(8))], source_etype=I8)
            v = b.load(src, typ=V64I8, name="packed")
            v.align = 1
            out = []
            for j in range(8 // bits):
                part = b.lshr(v, ir.Constant(V64I8, [bits * j] * 64)) if j else v
                if bits * (j + 1) < 8:
                    part = b.and_(part, ir.Constant(V64I8, [mask] * 64))
                part.name = f"u{j}"
                out.append(part)
            return out
        if p.decode == "gather":
            nb = 8 * bits
            b.comment(f"64 weights in {nb} bytes: weight i is bits [{bits}i, {bits}i+{bits}) of the stream")
            src = b.gep(self.codes, [b.sdiv(b.mul(k0, I64(bits)), I64(8))], source_etype=I8)
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
            wp = b.gep(self.codes, [b.add(word, I64(i * p.k // 64))], source_etype=I64)
            bitmask = b.bitcast(b.load(wp, typ=I64, name=f"plane{i}"), ir.VectorType(I1, 64), name=f"m{i}")
            plus = b.add(u, ir.Constant(V64I8, [1 << i] * 64))
            u = b.select(bitmask, plus, u, name=f"u_{i}")
        return [u]

    def correction(self, scales: ir.Value, zeros: ir.Value, sx: ir.Value) -> list[ir.Value]:
        """Per activation row: sum_g s_g * c_g * sx[m, g] (a scalar loop LLVM vectorises)."""
        p, b, mb = self.p, self.b, self.mb
        fn = b.function
        pre = b.block
        loop = fn.append_basic_block("corr")
        b.branch(loop)
        b.position_at_end(loop)
        g = b.phi(I64, "g")
        g.add_incoming(I64(0), pre)
        accs = [b.phi(F32, f"corr{m}") for m in range(mb)]
        for acc in accs:
            acc.add_incoming(F32(0.0), pre)
        s = b.load(b.gep(scales, [g], source_etype=self.sdt), typ=self.sdt)
        if p.scale_f16:
            s = b.fpext(s, F32)
        if p.c_const >= 0:
            c: ir.Value = F32(float(p.c_const))
        else:
            c = b.uitofp(b.load(b.gep(zeros, [g], source_etype=I8), typ=I8), F32)
        sc = b.fmul(s, c, name="s_c", flags=FAST)
        new = []
        for m, acc in enumerate(accs):
            xg = b.load(b.gep(sx, [b.add(b.mul(I64(m), I64(p.groups)), g)], source_etype=F32), typ=F32)
            new.append(b.fadd(acc, b.fmul(sc, xg, flags=FAST), name=f"corr{m}_next", flags=FAST))
        g_next = b.add(g, I64(1), name="g_next")
        g.add_incoming(g_next, b.block)
        for acc, nv in zip(accs, new, strict=True):
            acc.add_incoming(nv, b.block)
        after = fn.append_basic_block("corr_done")
        b.cbranch(b.icmp_signed("<", g_next, I64(p.groups)), loop, after)
        b.position_at_end(after)
        return new


def generate_ir(p: Plan) -> str:
    """Readable LLVM IR for the MB = 1..4 kernels of ``p``."""
    mod = ir.Module(name=f"kiln_q{p.bits}_{p.decode}")
    gens = [_Gen(p, mb, mod) for mb in range(1, MAX_MB + 1)]
    for g in gens:
        g.build()
    head = (
        f"; kiln low-bit dot kernels: {p.bits}-bit {p.decode} decode, K={p.k}, group={p.gl}, a={p.a}, "
        f"c={'zero point' if p.c_const < 0 else p.c_const}, scales {'f16' if p.scale_f16 else 'f32'}\n"
        "; qdot_mB(n0, n1, codes, scales, zeros, xq, x_stride, sx, xs, out, out_stride):\n"
        ";   out[m, n] = xs[m] * (a * sum_g s[n,g] * (u[n] . xq[m])_g - sum_g s[n,g] c[n,g] sx[m,g])\n"
    )
    return head + str(mod)


@dataclass
class Compiled:
    """A compiled plan: its IR, the function per block height, and the engine that owns the code."""

    plan: Plan
    ir_text: str
    fns: tuple[Any, ...]  # ctypes function pointers, one per block height
    engine: llvm.ExecutionEngine


@cache
def _target_machine() -> llvm.TargetMachine:
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
    fns = tuple(KERNEL_CTYPE(engine.get_function_address(f"qdot_m{mb}")) for mb in range(1, MAX_MB + 1))
    return Compiled(p, text, fns, engine)


def assembly(c: Compiled) -> str:
    """The machine code of a compiled plan, as assembly text."""
    return _target_machine().emit_assembly(llvm.parse_assembly(c.ir_text))
