"""Low-bit GEMM (M >= 16 activation rows) on Intel AMX tiles.

The GEMV kernels (llvm_kernels.py) decode each weight block in registers for at most four
activation rows; a GEMM would decode every block M/4 times and its vpdpbusd throughput is bound
by loads. Here, per 32 weight rows:

1. ``decode_rows`` (LLVM IR, the GEMV kernels' decoders) writes the codes ``u`` of 32 rows as
   bytes, in the kernels' block order (the activations are permuted to match, as for the GEMV);
2. per 32 activation rows and quantization group, ``amx_group`` runs ``tdpbusd`` on four 16x16
   int32 tiles (2 weight-row tiles x 2 activation-row tiles, u8 weights x s8 activations, the
   activations in the VNNI layout ``[K/4][M][4]``) and stores the integer dot products;
3. the group's scale and offset are applied in float (``s * (a * acc - c * sum(x))``, the same
   integers as every other int8 kernel), and the result is transposed into ``out``.

Groups must be whole blocks of the decoder and of 64 weights (``gl % max(sb, 64) == 0``: 4-bit
groups of 128, 8-bit of 64, per-channel scales); other formats keep the GEMV kernels. Linux grants
AMX state per process (``arch_prctl(ARCH_REQ_XCOMP_PERM)``), which ``amx_available`` requests.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

import llvmlite.binding as llvm
import llvmlite.ir as ir
import numpy as np
from numba import carray, cfunc, njit, types

from . import llvm_kernels as lk
from .ffi import call_i64, ptr_of

TILE = 16  # rows and int32 columns of an AMX tile
PANEL = 2 * TILE  # weight rows per decode, activation rows per tile pair

_AMX_GROUP = """
declare x86_amx @llvm.x86.tileloadd64.internal(i16, i16, ptr, i64)
declare x86_amx @llvm.x86.tdpbusd.internal(i16, i16, i16, x86_amx, x86_amx, x86_amx)
declare void @llvm.x86.tilestored64.internal(i16, i16, ptr, i64, x86_amx)
declare x86_amx @llvm.x86.tilezero.internal(i16, i16)

; For each group g < groups: c[g][i][j] (16x16 i32 tiles, i, j in 0..1, at c + 4096 g) = the
; sum over the group's `steps` blocks of 64 weights of A_i x B_j, where step s (counted over all
; groups) has the weight tiles A_0, A_1 at a + 2048 s (+1024; 16 rows x 64 u8, see decode_rows)
; and the activation tiles B_0, B_1 at b + bstep s (+1024; 16 k-quads x 16 rows x 4 s8, VNNI).
; All `pairs` pairs of activation tiles (b + 2048 p, c + 4096 groups p) in one call: entering
; and leaving AMX code (tile configuration, release) costs about 5 us here, as much as a pair.
define void @amx_group(i64 %a_addr, i64 %b_addr, i64 %bstep, i64 %c_addr, i64 %steps, i64 %groups, i64 %pairs) #0 {
entry:
  %a = inttoptr i64 %a_addr to ptr
  %total = mul i64 %steps, %groups
  %cpair = mul i64 %groups, 4096
  br label %pair
pair:
  %pi = phi i64 [0, %entry], [%pi1, %pair_end]
  %boff = mul i64 %pi, 2048
  %b_at = add i64 %b_addr, %boff
  %b = inttoptr i64 %b_at to ptr
  %coff = mul i64 %pi, %cpair
  %c_at = add i64 %c_addr, %coff
  %c = inttoptr i64 %c_at to ptr
  br label %group
group:
  %s0 = phi i64 [0, %pair], [%s_end, %store]
  %z = call x86_amx @llvm.x86.tilezero.internal(i16 16, i16 64)
  %s_end = add i64 %s0, %steps
  br label %loop
loop:
  %s = phi i64 [%s0, %group], [%s1, %loop]
  %c00 = phi x86_amx [%z, %group], [%n00, %loop]
  %c01 = phi x86_amx [%z, %group], [%n01, %loop]
  %c10 = phi x86_amx [%z, %group], [%n10, %loop]
  %c11 = phi x86_amx [%z, %group], [%n11, %loop]
  %ka = mul i64 %s, 2048
  %kb = mul i64 %s, %bstep
  %pa0 = getelementptr i8, ptr %a, i64 %ka
  %pa1 = getelementptr i8, ptr %pa0, i64 1024
  %pb0 = getelementptr i8, ptr %b, i64 %kb
  %pb1 = getelementptr i8, ptr %pb0, i64 1024
  %ta0 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %pa0, i64 64)
  %ta1 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %pa1, i64 64)
  %tb0 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %pb0, i64 64)
  %tb1 = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %pb1, i64 64)
  %n00 = call x86_amx @llvm.x86.tdpbusd.internal(i16 16, i16 64, i16 64, x86_amx %c00, x86_amx %ta0, x86_amx %tb0)
  %n01 = call x86_amx @llvm.x86.tdpbusd.internal(i16 16, i16 64, i16 64, x86_amx %c01, x86_amx %ta0, x86_amx %tb1)
  %n10 = call x86_amx @llvm.x86.tdpbusd.internal(i16 16, i16 64, i16 64, x86_amx %c10, x86_amx %ta1, x86_amx %tb0)
  %n11 = call x86_amx @llvm.x86.tdpbusd.internal(i16 16, i16 64, i16 64, x86_amx %c11, x86_amx %ta1, x86_amx %tb1)
  %s1 = add i64 %s, 1
  %more = icmp slt i64 %s1, %s_end
  br i1 %more, label %loop, label %store
store:
  %g = udiv i64 %s0, %steps
  %goff = mul i64 %g, 4096
  %q00 = getelementptr i8, ptr %c, i64 %goff
  %q01 = getelementptr i8, ptr %q00, i64 1024
  %q10 = getelementptr i8, ptr %q00, i64 2048
  %q11 = getelementptr i8, ptr %q00, i64 3072
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %q00, i64 64, x86_amx %n00)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %q01, i64 64, x86_amx %n01)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %q10, i64 64, x86_amx %n10)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %q11, i64 64, x86_amx %n11)
  %gmore = icmp slt i64 %s_end, %total
  br i1 %gmore, label %group, label %pair_end
pair_end:
  %pi1 = add i64 %pi, 1
  %pmore = icmp slt i64 %pi1, %pairs
  br i1 %pmore, label %pair, label %done
done:
  ret void
}

attributes #0 = { "target-features"="+amx-tile,+amx-int8,+avx512f" }
"""


def supports(p: lk.Plan) -> bool:
    """Whether the AMX GEMM covers this plan: int8 activations and groups of whole 64-weight
    steps, which are whole decoder blocks, or (``split`` decoder) any multiple of 64 inside a
    block, whose parts decode_rows regroups (see ``split_groups``)."""
    if p.act != "int8" or p.gl % 64:
        return False
    return p.gl % p.sb == 0 or split_groups(p)


def split_groups(p: lk.Plan) -> bool:
    """Groups inside a ``split`` block: part j of a block holds the block's weights i r + j
    (i < 64, r = 8 / bits), so group h of the block is bytes ``[h gl/r, (h+1) gl/r)`` of every
    part. decode_rows stores them group by group (the chunk h of parts 0 .. r-1 in turn), so that
    each 64-weight step lies in one group; ``amx_order`` permutes the activations to match."""
    return p.decode == "split" and p.gl < p.sb


def amx_order(p: lk.Plan) -> np.ndarray:
    """For each position of the AMX steps along K, the position of its activation in the GEMV
    kernels' order (llvm_kernels.x_permutation): the identity unless ``split_groups``."""
    if not split_groups(p):
        return np.arange(p.k, dtype=np.int64)
    r, w = 8 // p.bits, p.gl * p.bits // 8  # parts per block, bytes of a group per part
    block = [j * 64 + h * w + c for h in range(p.sb // p.gl) for j in range(r) for c in range(w)]
    return (np.arange(0, p.k, p.sb)[:, None] + np.array(block)[None, :]).reshape(-1).astype(np.int64)


@cache
def amx_available() -> bool:
    """AMX-INT8 on this CPU and the process's permission to use its tile state (Linux)."""
    feats = llvm.get_host_cpu_features()
    if not (feats.get("amx-int8", False) and feats.get("amx-tile", False)):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        arch_prctl, req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
        return int(libc.syscall(arch_prctl, req_xcomp_perm, xfeature_xtiledata)) == 0
    except (OSError, AttributeError):
        return False


def _decode_ir(p: lk.Plan, mod: ir.Module) -> None:
    """``decode_rows(codes, row0, nrows, dst)``: the codes of rows row0 .. row0+nrows-1 as bytes
    in the kernels' block order, laid out as AMX tiles: the 64 weights of step s of row r at
    ``dst + (32 s + r) * 64``, so each 16-row tile is 1 KiB contiguous (a row stride of K put all
    16 rows of a tile in one L1 set)."""
    i64 = lk.I64
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [i64] * 4), "decode_rows")
    codes_a, row0, nrows, dst_a = fn.args
    gen = lk._Gen(p, 1, 1, mod)
    entry = fn.append_basic_block("entry")
    rows_bb, blocks_bb, row_end, done = (
        fn.append_basic_block(x) for x in ("rows", "blocks", "row_end", "done")
    )
    b = ir.IRBuilder(entry)
    gen.b = b
    codes = b.inttoptr(codes_a, lk.PTR)
    dst = b.inttoptr(dst_a, lk.PTR)
    b.cbranch(b.icmp_signed(">", nrows, i64(0)), rows_bb, done)
    b.position_at_end(rows_bb)
    r = b.phi(i64, "r")
    r.add_incoming(i64(0), entry)
    row = b.add(row0, r)
    gen.codes = [b.gep(codes, [b.mul(row, i64(p.row_bytes))], source_etype=lk.I8)]
    b.branch(blocks_bb)
    b.position_at_end(blocks_bb)
    k0 = b.phi(i64, "k0")
    k0.add_incoming(i64(0), rows_bb)
    step0 = b.sdiv(k0, i64(64))
    # part j's chunk h (w bytes) goes to byte h gl + j w of the block: group by group when groups
    # lie inside a split block (split_groups), else each part is one whole 64-byte step
    w, per = (p.gl * p.bits // 8, p.sb // p.gl) if split_groups(p) else (64, 1)
    for j, part in enumerate(gen.decode(k0, 0)):
        for h in range(per):
            byte = h * p.gl + j * w  # w divides 64: a chunk never straddles two steps
            piece = part if w == 64 else b.shuffle_vector(
                part, ir.Constant(part.type, None), ir.Constant(ir.VectorType(lk.I32, w), list(range(h * w, h * w + w)))
            )  # fmt: skip
            step = b.add(step0, i64(byte // 64))
            at = b.add(b.mul(b.add(b.mul(step, i64(PANEL)), r), i64(64)), i64(byte % 64))
            st = b.store(piece, b.gep(dst, [at], source_etype=lk.I8))
            st.align = 1
    k1 = b.add(k0, i64(p.sb))
    k0.add_incoming(k1, b.block)
    b.cbranch(b.icmp_signed("<", k1, i64(p.k)), blocks_bb, row_end)
    b.position_at_end(row_end)
    r1 = b.add(r, i64(1))
    r.add_incoming(r1, row_end)
    b.cbranch(b.icmp_signed("<", r1, nrows), rows_bb, done)
    b.position_at_end(done)
    b.ret_void()


def _epilogue_ir(p: lk.Plan, mod: ir.Module) -> None:
    """``amx_epilogue(c, f, sxt, scales, zeros, n0, nv, g, groups)``: for rows r < nv of a panel
    and the 32 activation rows of ``f``: ``f[r, m] += s[n0 + r, g] * (a * c[r, m] - z * sxt[m])``,
    with ``c`` group g's four int32 tiles (tile (r // 16, m // 16), row r % 16), ``sxt`` the
    group's 32 activation sums, ``z`` the constant offset or the stored zero point."""
    i64, f32 = lk.I64, lk.F32
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [i64] * 9), "amx_epilogue")
    c_a, f_a, sxt_a, sc_a, z_a, n0, nv, g, groups = fn.args
    entry, body, done = (fn.append_basic_block(x) for x in ("entry", "rows", "done"))
    b = ir.IRBuilder(entry)
    fma = lk._declare(mod, "llvm.fma.v16f32", lk.V16F, [lk.V16F, lk.V16F, lk.V16F])
    cp, fp, xp = (b.inttoptr(v, lk.PTR) for v in (c_a, f_a, sxt_a))
    scp, zp = b.inttoptr(sc_a, lk.PTR), b.inttoptr(z_a, lk.PTR)
    xs = [b.load(b.gep(xp, [i64(16 * j)], source_etype=f32), typ=lk.V16F, name=f"xsum{j}") for j in range(2)]
    for v in xs:
        v.align = 4
    b.cbranch(b.icmp_signed(">", nv, i64(0)), body, done)
    b.position_at_end(body)
    r = b.phi(i64, "r")
    r.add_incoming(i64(0), entry)
    at = b.add(b.mul(b.add(n0, r), groups), g)
    s = lk._splat(b, b.load(b.gep(scp, [at], source_etype=f32), typ=f32, name="s"))
    if p.c_const >= 0:
        z: ir.Value = f32(float(p.c_const))
    else:
        z = b.uitofp(b.load(b.gep(zp, [at], source_etype=lk.I8), typ=lk.I8), f32)
    zv = lk._splat(b, z)
    tile = b.mul(b.sdiv(r, i64(16)), i64(2))
    rr = b.srem(r, i64(16))
    for j in range(2):
        ci = b.add(b.mul(b.add(b.mul(b.add(tile, i64(j)), i64(16)), rr), i64(16)), i64(0))
        cv = b.load(b.gep(cp, [ci], source_etype=lk.I32), typ=lk.V16I32, name=f"acc{j}")
        cv.align = 4
        acc = b.sitofp(cv, lk.V16F)
        if p.a != 1:
            acc = b.fmul(acc, ir.Constant(lk.V16F, [float(p.a)] * 16))
        t = b.fsub(acc, b.fmul(zv, xs[j]), name=f"off{j}")
        fo_p = b.gep(fp, [b.add(b.mul(r, i64(32)), i64(16 * j))], source_etype=f32)
        fo = b.load(fo_p, typ=lk.V16F)
        fo.align = 4
        st = b.store(b.call(fma, [s, t, fo]), fo_p)
        st.align = 4
    r1 = b.add(r, i64(1))
    r.add_incoming(r1, b.block)
    b.cbranch(b.icmp_signed("<", r1, nv), body, done)
    b.position_at_end(done)
    b.ret_void()


@dataclass(frozen=True)
class AmxCompiled:
    ir_text: str
    decode: int  # address of decode_rows(codes, row0, nrows, dst)
    group: int  # address of amx_group(a, b, bstep, c, steps, groups, pairs)
    epilogue: int  # address of amx_epilogue(c, f, sxt, scales, zeros, n0, nv, g, groups)
    engine: llvm.ExecutionEngine


@cache
def compile_amx(p: lk.Plan) -> AmxCompiled:
    mod = ir.Module(name=f"kiln_amx_q{p.bits}_{p.decode}")
    _decode_ir(p, mod)
    _epilogue_ir(p, mod)
    text = str(mod) + "\n" + _AMX_GROUP
    m = llvm.parse_assembly(text)
    m.verify()
    tm = lk._target_machine()
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(m, pb)
    engine = llvm.create_mcjit_compiler(m, tm)
    engine.finalize_object()
    return AmxCompiled(
        text,
        engine.get_function_address("decode_rows"),
        engine.get_function_address("amx_group"),
        engine.get_function_address("amx_epilogue"),
        engine,
    )


# --- the driver (Numba): panels of 32 weight rows, forked over threads like the GEMV chunks -------


@njit(fastmath=True)
def vnni_activations(xq, xv, sx, sxt, order):  # type: ignore[no-untyped-def]
    """The activations as AMX B tiles: ``xv[s, t, kk, 4 l + i] = xq[16 t + l, order[64 s + 4 kk + i]]``
    (VNNI order, rows past M zero; ``order``: amx_order), and ``sxt[g, m] = sx[m, g]``."""
    m_rows, k = xq.shape
    xv[:] = 0
    sxt[:] = 0
    for m in range(m_rows):
        t, lane = m // 16, m % 16
        row = xq[m]
        for s in range(k // 64):
            for kk in range(16):
                for i in range(4):
                    xv[s, t, kk, 4 * lane + i] = row[order[64 * s + 4 * kk + i]]
        for g in range(sx.shape[1]):
            sxt[g, m] = sx[m, g]


@njit(fastmath=True)
def amx_panel(  # type: ignore[no-untyped-def]
    pair, dec, grp, epi, codes_p, n, k, gl, scales_p, zeros_p, xv_p, mp, sxt, xs, m_rows, out
):
    """Weight rows ``32 pair .. 32 pair + 31`` against every activation row (module docstring)."""
    n0 = pair * 32
    nv = min(32, n - n0)
    panel = np.zeros((k // 64, 32, 64), np.uint8)  # tile order; rows past N stay zero
    groups = k // gl
    pairs = mp // 32
    c = np.empty((pairs, groups, 4, 16, 16), np.int32)
    f = np.empty((32, 32), np.float32)
    call_i64(dec, (codes_p, n0, nv, panel.ctypes.data), (panel,))  # type: ignore[call-arg]
    call_i64(
        grp, (panel.ctypes.data, xv_p, (mp // 16) * 1024, c.ctypes.data, gl // 64, groups, pairs), (panel, c)
    )  # type: ignore[call-arg]
    for pi in range(pairs):
        mp0 = 32 * pi
        f[:] = 0
        for g in range(groups):
            call_i64(epi, (c[pi, g].ctypes.data, f.ctypes.data, sxt.ctypes.data + 4 * (g * mp + mp0),  # type: ignore[call-arg]
                      scales_p, zeros_p, n0, nv, g, groups), (c, f, sxt))  # fmt: skip
        for r in range(nv):
            for mm in range(min(32, m_rows - mp0)):
                out[mp0 + mm, n0 + r] = f[r, mm] * xs[mp0 + mm]


#: the parameter block of panel_body, int64 each (addresses of the compiled functions and arrays)
PARAMS = ("decode", "group", "epilogue", "codes", "scales", "zeros", "xv", "sxt", "xs", "out",
          "n", "k", "gl", "mp", "m_rows")  # fmt: skip
N_PARAMS = len(PARAMS)


@cfunc(types.void(types.int64, types.int64))
def panel_body(pair, params):  # type: ignore[no-untyped-def]
    """One panel on a libomp thread (omp_fork.kiln_fork); ``params``: the block named by PARAMS."""
    p = carray(ptr_of(params, np.int64(0)), (N_PARAMS,))  # type: ignore[call-arg]
    n, k, gl, mp, m_rows = p[10], p[11], p[12], p[13], p[14]
    sxt = carray(ptr_of(p[7], np.float32(0)), (k // gl, mp))  # type: ignore[call-arg]
    xs = carray(ptr_of(p[8], np.float32(0)), (mp,))  # type: ignore[call-arg]
    out = carray(ptr_of(p[9], np.float32(0)), (m_rows, n))  # type: ignore[call-arg]
    amx_panel(pair, p[0], p[1], p[2], p[3], n, k, gl, p[4], p[5], p[6], mp, sxt, xs, m_rows, out)


PANEL_BODY = panel_body.address


@njit
def run_panels(fork, threads, params, n_panels):  # type: ignore[no-untyped-def]
    """Every panel: forked on libomp when ``threads`` > 1, else on the calling thread."""
    if threads > 1:
        call_i64(fork, (PANEL_BODY, params.ctypes.data, n_panels, threads), (params,))  # type: ignore[call-arg]
    else:
        for pair in range(n_panels):
            call_i64(PANEL_BODY, (pair, params.ctypes.data), (params,))  # type: ignore[call-arg]
