"""A parallel-for over chunks on LLVM's libomp, for the quantized matmul driver.

``fork(body, params, n_chunks, n_threads)`` runs ``body(c, params)`` for every chunk ``c`` on a
team of ``n_threads`` (static round robin: thread t takes t, t + T, ...). ``body`` is the address
of a C function ``void(i64, i64)`` (a numba ``cfunc``); the fork itself is a few lines of LLVM IR
calling ``__kmpc_fork_call``, because neither numba nor ctypes can call it without the GIL.

Why not numba's prange: numba's OpenMP workers sleep between regions (the backend sets
OMP_WAIT_POLICY=PASSIVE so that they do not steal BLAS's cores), and waking them costs 50-200 us,
more than a GPT-2 GEMV takes. libomp's workers spin for a blocktime set per call (see
``backends/openmp.set_spin``), so back-to-back GEMVs of a decode step start in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import llvmlite.binding as llvm
from llvmlite import ir

from .. import openmp
from .llvm_kernels import _target_machine

_RUNTIME = ("__kmpc_global_thread_num", "__kmpc_push_num_threads", "__kmpc_fork_call")
_QUERIES = ("omp_get_thread_num", "omp_get_num_threads")


def fork_ir() -> str:
    """The LLVM IR of ``kiln_fork(body, params, n_chunks, n_threads)`` and its outlined task."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    mod = ir.Module(name="kiln_omp_fork")
    loc = b";unknown;kiln_fork;0;0;;\x00"
    loc_t = ir.ArrayType(i8, len(loc))
    loc_g = ir.GlobalVariable(mod, loc_t, "kiln_fork_loc")
    loc_g.global_constant = True
    loc_g.initializer = ir.Constant(loc_t, bytearray(loc))
    ident_t = ir.LiteralStructType([i32, i32, i32, i32, i8.as_pointer()])  # OpenMP's ident_t
    ident = ir.GlobalVariable(mod, ident_t, "kiln_fork_ident")
    ident.global_constant = True
    ident.initializer = ident_t([i32(0), i32(2), i32(0), i32(0), loc_g.bitcast(i8.as_pointer())])  # 2: KMPC

    body_t = ir.FunctionType(ir.VoidType(), [i64, i64])
    micro_t = ir.FunctionType(ir.VoidType(), [i32.as_pointer(), i32.as_pointer()], var_arg=True)
    get_tid = ir.Function(mod, ir.FunctionType(i32, []), "omp_get_thread_num")
    get_nt = ir.Function(mod, ir.FunctionType(i32, []), "omp_get_num_threads")
    gtid_fn = ir.Function(mod, ir.FunctionType(i32, [ident_t.as_pointer()]), "__kmpc_global_thread_num")
    push = ir.Function(
        mod, ir.FunctionType(ir.VoidType(), [ident_t.as_pointer(), i32, i32]), "__kmpc_push_num_threads"
    )
    fork_call = ir.Function(
        mod,
        ir.FunctionType(ir.VoidType(), [ident_t.as_pointer(), i32, micro_t.as_pointer()], var_arg=True),
        "__kmpc_fork_call",
    )

    # the outlined task: (gtid*, btid*, body, params, n_chunks); chunks t, t + T, ...
    task = ir.Function(
        mod,
        ir.FunctionType(ir.VoidType(), [i32.as_pointer(), i32.as_pointer(), i64, i64, i64]),
        "kiln_fork_task",
    )
    task.linkage = "internal"
    _, _, fn, params, n = task.args
    entry, loop, done = (task.append_basic_block(x) for x in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    tid = b.sext(b.call(get_tid, []), i64)
    nt = b.sext(b.call(get_nt, []), i64)
    callee = b.inttoptr(fn, body_t.as_pointer())
    b.cbranch(b.icmp_signed("<", tid, n), loop, done)
    b = ir.IRBuilder(loop)
    c = b.phi(i64)
    c.add_incoming(tid, entry)
    b.call(callee, [c, params])
    nxt = b.add(c, nt)
    c.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    ir.IRBuilder(done).ret_void()

    fork = ir.Function(mod, ir.FunctionType(ir.VoidType(), [i64, i64, i64, i64]), "kiln_fork")
    fn, params, n, threads = fork.args
    entry, push_bb, go = (fork.append_basic_block(x) for x in ("entry", "push", "go"))
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", threads, i64(0)), push_bb, go)
    b = ir.IRBuilder(push_bb)
    b.call(push, [ident, b.call(gtid_fn, [ident]), b.trunc(threads, i32)])
    b.branch(go)
    b = ir.IRBuilder(go)
    b.call(fork_call, [ident, i32(3), b.bitcast(task, micro_t.as_pointer()), fn, params, n])
    b.ret_void()
    return str(mod)


@dataclass(frozen=True)
class Fork:
    address: int  # of kiln_fork: void(i64 body, i64 params, i64 n_chunks, i64 n_threads)
    engine: llvm.ExecutionEngine  # owns the code


@cache
def compiled_fork() -> Fork:
    """Compile the fork once per process, its libomp calls bound to the private runtime (raises
    BackendError when the runtime is not installed)."""
    for name in (*_RUNTIME, *_QUERIES):
        llvm.add_symbol(name, openmp.address(name))
    mod = llvm.parse_assembly(fork_ir())
    mod.verify()
    engine = llvm.create_mcjit_compiler(mod, _target_machine())
    engine.finalize_object()
    return Fork(engine.get_function_address("kiln_fork"), engine)
