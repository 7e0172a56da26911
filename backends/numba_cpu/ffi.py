"""Calls by address from Numba code: the generated LLVM kernels and libomp's fork take plain
int64 arguments (addresses and sizes), so one Numba driver serves every compiled kernel."""

from __future__ import annotations

from llvmlite import ir as llir
from numba import types
from numba.extending import intrinsic


@intrinsic
def call_i64(typingctx, fptr, args, keep):  # type: ignore[no-untyped-def]
    """``fptr(*args)`` for a C function ``void f(int64, ...)`` with ``len(args)`` parameters;
    ``args`` is a tuple of integers. ``keep``: the arrays whose memory the call uses through the
    addresses in ``args``. Passing them holds their references until the call returns: Numba
    frees an array after its last use, which would otherwise be the ``.ctypes.data`` that took
    its address."""
    if not isinstance(args, types.BaseTuple) or not all(isinstance(t, types.Integer) for t in args):  # type: ignore[attr-defined]
        return None
    n = len(args)
    sig = types.void(types.int64, args, keep)

    def codegen(context, builder, signature, llargs):  # type: ignore[no-untyped-def]
        i64 = llir.IntType(64)
        vals = [
            context.cast(builder, builder.extract_value(llargs[1], i), signature.args[1][i], types.int64)
            for i in range(n)
        ]
        fnty = llir.FunctionType(llir.VoidType(), [i64] * n)
        builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), vals)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def ptr_of(typingctx, addr, kind):  # type: ignore[no-untyped-def]
    """An int64 address as a pointer to the type of ``kind`` (a typed zero), for ``carray``."""
    sig = types.CPointer(kind)(types.int64, kind)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen
