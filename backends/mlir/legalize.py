"""Boundary legalisation shared by the MLIR backends.

LLVM 22's memref-to-LLVM lowering asserts (aborting the process) on loads and stores of memrefs
whose elements are narrower than a byte, and i1 is one. kiln bools therefore cross the function
boundary as i8 (NumPy bools are one byte holding 0 or 1): i1 tensor arguments and results are
widened here, with ``arith.trunci``/``arith.extui`` at the edges that elementwise fusion folds into
their users. :func:`sub_byte_buffers` finds what is still narrow after bufferization, so the
backends refuse it with an error instead of crashing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def _walk(op: Any) -> Iterator[Any]:
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                yield child.operation
                yield from _walk(child.operation)


def _narrow(t: Any) -> bool:
    from mlir import ir

    if not isinstance(t, ir.MemRefType):
        return False
    e = t.element_type
    return isinstance(e, ir.IntegerType) and e.width < 8


def _public_func(module: Any, name: str) -> Any:
    for op in module.body.operations:
        if op.operation.name == "func.func" and str(op.attributes["sym_name"]) == f'"{name}"':
            return op
    return None


def widen_bool_boundary(module: Any, func_name: str) -> int:
    """Make i1 tensor arguments and results of ``@func_name`` i8 (in place); returns how many.
    Needs ``convert-elementwise-to-linalg`` afterwards (the casts are arith ops on tensors)."""
    from mlir import ir
    from mlir.dialects import arith

    func = _public_func(module, func_name)
    if func is None or not func.regions[0].blocks:
        return 0
    i1, i8 = ir.IntegerType.get_signless(1), ir.IntegerType.get_signless(8)

    def wide(t: Any) -> Any:
        return ir.RankedTensorType.get(list(t.shape), i8) if isinstance(t, ir.RankedTensorType) else t

    def is_bool(t: Any) -> bool:
        return isinstance(t, ir.RankedTensorType) and t.element_type == i1

    entry = func.regions[0].blocks[0]
    count = 0
    for arg in entry.arguments:
        if is_bool(arg.type):
            narrow = arg.type
            uses = [(u.owner, u.operand_number) for u in arg.uses]
            arg.set_type(wide(narrow))
            for owner, index in uses:  # one cast per use: fusion only folds single-use producers
                with ir.InsertionPoint.at_block_begin(entry), func.location:
                    owner.operands[index] = arith.trunci(narrow, arg)
            count += 1
    ftype = ir.FunctionType(ir.TypeAttr(func.attributes["function_type"]).value)
    results = list(ftype.results)
    for op in _walk(func):
        if op.name == "func.return":
            for i, v in enumerate(op.operands):
                if is_bool(v.type):
                    with ir.InsertionPoint(op), op.location:
                        op.operands[i] = arith.extui(wide(v.type), v)
                    count += 1
    results = [wide(t) if is_bool(t) else t for t in results]
    inputs = [a.type for a in entry.arguments]
    func.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs, results))
    return count


def sub_byte_buffers(module: Any) -> list[str]:
    """Ops that still read or write memrefs of elements narrower than a byte, one line each
    (the op's location names the kiln op it came from)."""
    out: list[str] = []
    for op in _walk(module.operation):
        if any(_narrow(v.type) for v in [*op.operands, *op.results]):
            line = f"{op.name} at {op.location}"
            if line not in out:
                out.append(line)
    return out


def copies_to_linalg(module: Any) -> int:
    """Rewrite every ``memref.copy`` as ``linalg.copy``: bufferization copies views it returns
    (a strided slice as a result), and LLVM lowers memref.copy of a strided view to a call of
    ``memrefCopy`` from MLIR's C runner library, which the bindings do not ship. linalg.copy
    lowers to loops like every other linalg op. Returns the number rewritten."""
    from mlir import ir
    from mlir.dialects import linalg

    copies = [op for op in _walk(module.operation) if op.name == "memref.copy"]
    for op in copies:
        with ir.InsertionPoint(op), op.location:
            linalg.copy(op.operands[0], outs=[op.operands[1]])
        op.erase()
    return len(copies)
