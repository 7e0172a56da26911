"""The MLIR pass pipelines of the mlir-cpu and mlir-cuda targets, as named data, and the
transform-dialect schedule that tiles and vectorises the CPU kernels.

CPU, from the exported tensor-level module (func/arith/math/tensor/linalg):

  fuse        linalg-fuse-elementwise-ops: bias-add, gelu, scale chains and bool temporaries
              (compare -> select) become one generic (LLVM cannot store i1 buffers). The export
              collapses dims with tensor.reshape, which this pass does not propagate into matmuls
  bufferize   one-shot-bufferize across the function boundary; results become out-params
              (``modify-public-functions=1``: without it the public function keeps returning a
              fresh buffer and the caller's array stays zero); ownership-based deallocation
  generalize  named ops other than the matmuls become linalg.generic (one schedule for all)
  schedule    the transform script of :func:`cpu_schedule`: matmuls are split into column strips
              whose B panel is copied to a contiguous buffer, tiled to a register block (TM x TN,
              one k per step) and vectorised; the accumulator block is hoisted out of the k loop
              and the contraction lowered to broadcast-FMA outer products. Generics are tiled to
              one row and vectorised along the innermost loop.
  lower       what the schedule did not vectorise runs as loops; vectors, memrefs, math and the
              rest lower to the LLVM dialect

CUDA: fuse and bufferize as above, then every linalg op becomes an scf.parallel nest, tiled
(the tile is the thread block), mapped to blocks and threads, outlined into gpu.module kernels,
lowered to NVVM and serialised to PTX by ``gpu-module-to-binary{format=isa}``, which needs no GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import ModuleSpec, Stage, parse_module, run_stage
from .legalize import copies_to_linalg, widen_bool_boundary

if TYPE_CHECKING:
    from mlir import ir as mlir_ir

# -- CPU ----------------------------------------------------------------------------------------
FUSE = Stage(
    "fuse",
    "func.func(convert-elementwise-to-linalg),math-extend-to-supported-types,"
    "func.func(linalg-fuse-elementwise-ops),canonicalize,cse",
    "fuse producer/consumer elementwise generics on tensors (f16/bf16 math computed in f32)",
)
BUFFERIZE = Stage(
    "bufferize",
    "one-shot-bufferize{bufferize-function-boundaries=1 function-boundary-type-conversion=identity-layout-map},"
    "buffer-results-to-out-params{modify-public-functions=1 hoist-static-allocs=1},"
    "canonicalize,cse,buffer-deallocation-pipeline,convert-bufferization-to-memref,canonicalize,cse",
    "tensors to memrefs; results written into caller-owned out arrays; temporaries freed",
)


def cpu_lower(num_threads: int = 0) -> Stage:
    """Lowering to the LLVM dialect. The schedule's scf.forall loops become OpenMP worksharing
    loops with ``num_threads`` threads (0: the OpenMP runtime's default); memref.alloca_scope from
    the OpenMP conversion must be lowered before scf-to-cf, hence finalize-memref-to-llvm twice."""
    return Stage(
        "lower-to-llvm",
        "scf-forall-to-parallel,canonicalize,cse,func.func(convert-linalg-to-loops),convert-vector-to-scf,"
        f"expand-strided-metadata,lower-affine,convert-scf-to-openmp{{num-threads={num_threads}}},"
        "arith-expand,math-extend-to-supported-types,convert-math-to-llvm,convert-math-to-libm,"
        "finalize-memref-to-llvm,convert-scf-to-cf,convert-openmp-to-llvm,"
        "convert-vector-to-llvm{reassociate-fp-reductions=1},finalize-memref-to-llvm,"
        "convert-arith-to-llvm,convert-index-to-llvm,convert-func-to-llvm,convert-cf-to-llvm,convert-ub-to-llvm,"
        "reconcile-unrealized-casts,canonicalize,cse",
        "leftover linalg to loops; parallel loops to OpenMP; vector, memref, math (libm for erf and "
        "friends) and control flow to LLVM",
    )


def bufferized(spec: ModuleSpec, context: mlir_ir.Context, backend: str) -> mlir_ir.Module:
    """The steps both targets share: parse, bools widened at the boundary, fuse, bufferize, and
    memref.copy rewritten as linalg.copy. Runs inside ``context`` (with a location set)."""
    module = parse_module(spec, context, backend)
    widen_bool_boundary(module, spec.func_name)
    run_stage(module, FUSE, backend)
    run_stage(module, BUFFERIZE, backend)
    copies_to_linalg(module)
    return module


#: The steps of the CPU pipeline in order ("generalize" and "schedule" are transform scripts).
CPU_STAGES: tuple[str, ...] = ("parse", "fuse", "bufferize", "generalize", "schedule", "lower-to-llvm", "jit")

#: Named linalg ops the CPU schedule handles as themselves; every other named op is generalized.
MATMUL_OPS = ("linalg.matmul", "linalg.batch_matmul")

GENERALIZE_SCRIPT = """
module attributes {transform.with_named_sequence} {
  transform.named_sequence @__transform_main(%root: !transform.any_op {transform.readonly}) {
    %ops = transform.structured.match attributes {kiln.generalize} in %root : (!transform.any_op) -> !transform.any_op
    %g = transform.structured.generalize %ops : (!transform.any_op) -> !transform.any_op
    transform.yield
  }
}
"""


@dataclass(frozen=True)
class CpuTiles:
    """Tile sizes of the CPU schedule (from the target's hardware data).

    ``tm`` x ``tn``: the register block of a matmul (8 x 32 f32 = 16 zmm accumulators);
    ``strip``: the columns of B copied to a contiguous buffer per step (the copy turns B's row
    stride into a unit stride, which removes the cache-set conflicts of a large N);
    ``vector``: the innermost tile of an elementwise generic; ``max_reduce``: the longest
    innermost reduction vectorised whole.
    """

    tm: int = 8
    tn: int = 32
    strip: int = 64
    vector: int = 64
    max_reduce: int = 4096
    # multiply-accumulate generics over several contracted dims (the attention output projection
    # over heads x head-dim): off, the vector patterns looped forever on the GPT-2 block with it
    contractions: bool = False
    #: the outer tile loop of each op becomes an scf.forall (an OpenMP worksharing loop) when
    #: threads > 1 and the op does at least ``min_parallel`` loop iterations (smaller ops cost
    #: less than a fork/join)
    threads: int = 1
    min_parallel: int = 16384


# Pattern groups are applied one after the other (each to a fixpoint). lower_shape_cast is left
# to convert-vector-to-llvm: next to canonicalization it rewrote back and forth forever on a
# batch-matmul + transpose module.
_VECTOR_LOWERING = """
    transform.apply_patterns to %f {
      transform.apply_patterns.vector.reduction_to_contract
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.canonicalization
    } : !transform.any_op
    transform.apply_patterns to %f {
      transform.apply_patterns.vector.cast_away_vector_leading_one_dim
      transform.apply_patterns.canonicalization
    } : !transform.any_op
    transform.apply_patterns to %f {
      transform.apply_patterns.vector.lower_contraction lowering_strategy = "outerproduct"
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.lower_outerproduct
      transform.apply_patterns.canonicalization
    } : !transform.any_op
    transform.apply_patterns to %f {
      transform.apply_patterns.memref.fold_memref_alias_ops
      transform.apply_patterns.canonicalization
    } : !transform.any_op
    transform.apply_cse to %f : !transform.any_op
    %f2 = transform.structured.hoist_redundant_vector_transfers %f : (!transform.any_op) -> !transform.any_op
    transform.apply_patterns to %f2 {
      transform.apply_patterns.vector.lower_multi_reduction lowering_strategy = "innerreduction"
      transform.apply_patterns.vector.lower_transpose lowering_strategy = "eltwise"
      transform.apply_patterns.canonicalization
    } : !transform.any_op
    transform.apply_patterns to %f2 {
      transform.apply_patterns.vector.lower_transfer max_transfer_rank = 1
      transform.apply_patterns.vector.transfer_permutation_patterns
      transform.apply_patterns.vector.lower_broadcast
      transform.apply_patterns.canonicalization
    } : !transform.any_op
    transform.apply_patterns to %f2 {
      transform.apply_patterns.vector.lower_masks
      transform.apply_patterns.canonicalization
    } : !transform.any_op
"""


def _ops(op: mlir_ir.Operation) -> Iterator[mlir_ir.Operation]:
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                yield child.operation
                yield from _ops(child.operation)


def _shape(value: mlir_ir.Value) -> tuple[list[int], str] | None:
    """Static shape and element type of a memref/tensor value (None when dynamic or scalar)."""
    from mlir import ir as mlir_ir

    st = value.type
    if not isinstance(st, mlir_ir.MemRefType | mlir_ir.RankedTensorType):
        return None
    if not st.has_static_shape:
        return None
    return list(st.shape), str(st.element_type)


def _vectorizable_type(elem: str) -> bool:
    # i1 and sub-byte integers are stored one per byte in memrefs, but a vector load of them reads
    # packed bits: vectorised and scalar accesses would disagree, so such ops stay scalar.
    if elem in ("f16", "bf16", "f32", "f64"):
        return True
    return elem in ("i8", "i16", "i32", "i64")


def mark_for_generalize(module: mlir_ir.Module) -> int:
    """Tag named linalg ops other than the matmuls (fill, copy, transpose, broadcast, ...) so that
    GENERALIZE_SCRIPT turns them into generics; returns how many were tagged."""
    from mlir import ir as mlir_ir

    n = 0
    skip = (*MATMUL_OPS, "linalg.generic", "linalg.yield", "linalg.index")
    for op in _ops(module.operation):
        name = op.name
        named = "indexing_maps" in op.attributes or name in _NAMED_STRUCTURED
        if name.startswith("linalg.") and name not in skip and named:
            op.attributes["kiln.generalize"] = mlir_ir.UnitAttr.get()
            n += 1
    return n


_NAMED_STRUCTURED = {
    "linalg.fill",
    "linalg.copy",
    "linalg.transpose",
    "linalg.broadcast",
    "linalg.map",
    "linalg.reduce",
    "linalg.elementwise",
}


_DEFAULT_MAPS = {
    "linalg.matmul": "[affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d2, d1)>, "
    "affine_map<(d0, d1, d2) -> (d0, d1)>]",
    "linalg.batch_matmul": "[affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>, affine_map<(d0, d1, d2, d3) -> (d0, d3, d2)>, "
    "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>]",
}


def _divisor(n: int, options: Sequence[int]) -> int | None:
    return next((t for t in options if n % t == 0), None)


def _fit(n: int, cap: int) -> int:
    """The largest tile of at most ``cap`` that divides ``n``."""
    return next(t for t in range(min(n, cap), 0, -1) if n % t == 0)


def _matmul_schedule(i: int, op: mlir_ir.Operation, tiles: CpuTiles) -> list[str]:
    a, b, c = (_shape(op.operands[k]) for k in range(3))
    if a is None or b is None or c is None or op.name not in MATMUL_OPS:
        return []
    if (
        not all(_vectorizable_type(x[1]) for x in (a, b, c))
        or str(op.attributes["indexing_maps"]) != _DEFAULT_MAPS[op.name]
    ):
        return []  # transposed-operand variants run through the generic path of the vectoriser
    batch = op.name == "linalg.batch_matmul"
    m = a[0][-2]
    n = b[0][-1]
    pre = [1] if batch else []
    h = f"%mm{i}"
    lines = [
        f'{h} = transform.structured.match ops{{["{op.name}"]}} attributes {{kiln.s = {i} : i64}} in %root'
        " : (!transform.any_op) -> !transform.any_op"
    ]
    # Tiles divide the dims: partial tiles would need masked vectors, which the transfer lowering
    # does not handle well (it looped forever on a 5x50 matmul); an odd static width is fine.
    tm = _fit(m, tiles.tm)
    tn = _fit(n, tiles.tn)
    strip = _divisor(n, (tiles.strip, tiles.tn))
    cur = h
    parallel = tiles.threads > 1 and _volume(c[0]) * a[0][-1] >= tiles.min_parallel
    if strip is not None and n > strip and strip % tn == 0:
        sizes = [*pre, 0, strip, 0]
        nl = len(pre) + 1
        if parallel:  # strips (and batches) are the parallel loop; each thread packs its own panel
            lines.append(_forall(f"%s{i}", f"%sl{i}", cur, sizes))
            parallel = False
        else:
            lines.append(
                f"%s{i}, %sl{i}:{nl} = transform.structured.tile_using_for {cur} tile_sizes {sizes}"
                f" : (!transform.any_op) -> (!transform.any_op{', !transform.any_op' * nl})"
            )
        lines.append(
            f"%p{i} = transform.structured.promote %s{i} {{operands_to_promote = [1], "
            "use_full_tile_buffers = [false, false], alignment = 64}"
            " : (!transform.any_op) -> !transform.any_op"
        )
        lines.append(
            f'%cp{i} = transform.structured.match ops{{["linalg.copy"]}} in %sl{i}#0'
            " : (!transform.any_op) -> !transform.any_op"
        )
        lines.append(
            f"%cpt{i}, %cpl{i}:{nl} = transform.structured.tile_using_for %cp{i} tile_sizes {[1] * nl}"
            f" : (!transform.any_op) -> (!transform.any_op{', !transform.any_op' * nl})"
        )
        lines.append(f"transform.structured.vectorize %cpt{i} : !transform.any_op")
        cur = f"%p{i}"
    if parallel:  # no strips: batches, or blocks of rows
        blocks = m // tm
        rows = tm * _fit(blocks, max(1, blocks // (2 * tiles.threads)))
        lines.append(_forall(f"%pm{i}", f"%pml{i}", cur, [*pre, 0 if batch else rows, 0, 0]))
        cur = f"%pm{i}"
    sizes = [*pre, tm, tn, 1]
    nloops = len(sizes)
    lines.append(
        f"%t{i}, %tl{i}:{nloops} = transform.structured.tile_using_for {cur} tile_sizes {sizes}"
        f" : (!transform.any_op) -> (!transform.any_op{', !transform.any_op' * nloops})"
    )
    lines.append(f"transform.structured.vectorize %t{i} : !transform.any_op")
    return lines


def _volume(shape: Sequence[int]) -> int:
    v = 1
    for x in shape:
        v *= x
    return v


def _forall(tiled: str, loop: str, op: str, sizes: list[int]) -> str:
    """A tile_using_forall line: the tile loop becomes scf.forall (then scf.parallel, then an
    OpenMP worksharing loop in the lowering)."""
    return (
        f"{tiled}, {loop} = transform.structured.tile_using_forall {op} tile_sizes {sizes}"
        " : (!transform.any_op) -> (!transform.any_op, !transform.any_op)"
    )


def _loop_ranges(op: mlir_ir.Operation) -> list[int] | None:
    """Static loop sizes of a linalg.generic, read off its indexing maps and operand shapes."""
    from mlir import ir as mlir_ir

    maps = [a.value for a in op.attributes["indexing_maps"]]
    if not maps:
        return None
    sizes: list[int | None] = [None] * maps[0].n_dims
    for operand, amap in zip(op.operands, maps):
        s = _shape(operand)
        if s is None:
            if isinstance(operand.type, mlir_ir.ShapedType):
                return None
            continue  # a scalar operand
        for dim, expr in zip(s[0], amap.results):
            if isinstance(expr, mlir_ir.AffineDimExpr):
                sizes[expr.position] = dim
    if any(x is None for x in sizes):
        return None
    return [int(x) for x in sizes if x is not None]


def _inner_dim_is_minor(op: mlir_ir.Operation, d: int) -> bool:
    """Whether loop ``d`` indexes only the last dim of every operand it appears in. Otherwise the
    vector transfers are permuted (transposes): on a strided view with an offset their lowering
    read wrong addresses (NaNs in a GPT-2 K^T), so such generics stay scalar loops."""
    from mlir import ir as mlir_ir

    for a in op.attributes["indexing_maps"]:
        results = list(a.value.results)
        for pos, expr in enumerate(results):
            if isinstance(expr, mlir_ir.AffineDimExpr) and expr.position == d and pos != len(results) - 1:
                return False
            if not isinstance(expr, mlir_ir.AffineDimExpr | mlir_ir.AffineConstantExpr):
                return False
    return True


_BODY_OK = ("arith.", "math.", "linalg.yield", "linalg.index")


def _contraction_tiles(
    op: mlir_ir.Operation, ranges: list[int], iters: list[str], tiles: CpuTiles
) -> list[int] | None:
    """Tile sizes for a multiply-accumulate generic with two or more parallel loops (a matmul
    over several contracted dims, such as the attention output projection over heads x head-dim):
    a TM x TN register block over the last two parallel loops, one step of every reduction."""
    body = [c.name for c in _ops(op)]
    red = ["reduction" in it for it in iters]
    par = [d for d, r in enumerate(red) if not r]
    if not any(red) or len(par) < 2 or sorted(body) != ["arith.addf", "arith.mulf", "linalg.yield"]:
        return None
    sizes = [1] * len(ranges)
    sizes[par[-1]] = _fit(ranges[par[-1]], tiles.tn)
    sizes[par[-2]] = _fit(ranges[par[-2]], tiles.tm)
    return sizes


def _tile_and_vectorize(i: int, sizes: list[int]) -> list[str]:
    n = sum(1 for s in sizes if s)
    return [
        f'%g{i} = transform.structured.match ops{{["linalg.generic"]}} attributes {{kiln.s = {i} : i64}} in %root'
        " : (!transform.any_op) -> !transform.any_op",
        f"%gt{i}, %gl{i}:{n} = transform.structured.tile_using_for %g{i} tile_sizes {sizes}"
        f" : (!transform.any_op) -> (!transform.any_op{', !transform.any_op' * n})",
        f"transform.structured.vectorize %gt{i} : !transform.any_op",
    ]


def _generic_schedule(i: int, op: mlir_ir.Operation, tiles: CpuTiles) -> list[str]:
    ranges = _loop_ranges(op)
    if not ranges:
        return []
    for operand in op.operands:
        s = _shape(operand)
        if s is not None and not _vectorizable_type(s[1]):
            return []
    if not all(child.name.startswith(_BODY_OK) for child in _ops(op)):
        return []  # gathers (memref.load in the body) and calls run as scalar loops
    iters = [str(x) for x in op.attributes["iterator_types"]]
    if tiles.contractions:
        contraction = _contraction_tiles(op, ranges, iters, tiles)
        if contraction is not None:
            return _tile_and_vectorize(i, contraction)
    if not _inner_dim_is_minor(op, len(ranges) - 1):
        return []
    inner = ranges[-1]
    reduction = "reduction" in iters[-1]
    sizes = [1] * (len(ranges) - 1)
    if (reduction and inner <= tiles.max_reduce) or (not reduction and inner <= tiles.vector):
        sizes.append(0)  # the whole innermost loop is one vector
    else:
        sizes.append(_fit(inner, tiles.vector))
    h = f"%g{i}"
    lines = [
        f'{h} = transform.structured.match ops{{["linalg.generic"]}} attributes {{kiln.s = {i} : i64}} in %root'
        " : (!transform.any_op) -> !transform.any_op"
    ]
    cur = h
    outer = next((d for d in range(len(ranges) - 1) if "parallel" in iters[d] and ranges[d] > 1), None)
    if outer is not None and tiles.threads > 1 and _volume(ranges) >= tiles.min_parallel:
        # the outermost parallel loop, one index per iteration: the static OpenMP schedule gives
        # each thread a contiguous run of them
        lines.append(_forall(f"%gp{i}", f"%gpl{i}", h, [1 if d == outer else 0 for d in range(len(ranges))]))
        h = cur = f"%gp{i}"
        sizes[outer] = 0
    if any(sizes):
        nloops = sum(1 for s in sizes if s)
        lines.append(
            f"%gt{i}, %gl{i}:{nloops} = transform.structured.tile_using_for {h} tile_sizes {sizes}"
            f" : (!transform.any_op) -> (!transform.any_op{', !transform.any_op' * nloops})"
        )
        cur = f"%gt{i}"
    lines.append(f"transform.structured.vectorize {cur} : !transform.any_op")
    return lines


def _transform_script(body: list[str]) -> str:
    """The named sequence holding ``body`` (per-op tiling lines) and then the vector lowering."""
    return (
        "module attributes {transform.with_named_sequence} {\n"
        "  transform.named_sequence @__transform_main(%root: !transform.any_op {transform.readonly}) {\n    "
        + "\n    ".join(body)
        + '\n    %f = transform.structured.match ops{["func.func"]} in %root : (!transform.any_op) -> !transform.any_op'
        + _VECTOR_LOWERING
        + "    transform.yield\n  }\n}\n"
    )


def cpu_schedule(module: mlir_ir.Module, tiles: CpuTiles) -> tuple[str, int]:
    """The transform script for a bufferized, generalized module: per-op tiling and vectorisation
    (ops are tagged ``kiln.s = N`` so that each gets its own sizes), then the vector lowering.
    Returns the script and how many ops it vectorises."""
    from mlir import ir as mlir_ir

    body: list[str] = []
    count = 0
    i64 = mlir_ir.IntegerType.get_signless(64)
    for op in list(_ops(module.operation)):
        if op.name in MATMUL_OPS:
            lines = _matmul_schedule(count, op, tiles)
        elif op.name == "linalg.generic":
            lines = _generic_schedule(count, op, tiles)
        else:
            continue
        if lines:
            op.attributes["kiln.s"] = mlir_ir.IntegerAttr.get(i64, count)
            body.extend(lines)
            count += 1
    return _transform_script(body), count


# -- CUDA ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuTiles:
    """Tile sizes of the GPU schedule. Matmuls: a thread block computes ``bm`` x ``bn`` of C, each
    thread a ``tm`` x ``tn`` tile whose accumulators stay in registers across the k loop (the
    plain parallel-loop mapping gives each thread one element, re-stored to memory every k)."""

    # benchmarks/gpu.py --tiles on an H200 (2026-11-30), GPT-2 block prefill, ms: 32x32x4x4 2.48,
    # 32x64x4x4 2.77, 16x64x2x4 2.83, 64x64x4x4 4.21, 64x128x8x8 5.70, one element per thread 3.21
    bm: int = 32
    bn: int = 32
    tm: int = 4
    tn: int = 4
    #: every other op: one output element per thread along its innermost parallel dim, this many
    #: threads a block (coalesced whatever the op's rank); 0 leaves those ops to the parallel-loop
    #: tiling, whose tile sizes apply to the leading dims. H200, block prefill: 128 threads 1.86 ms,
    #: 256 1.85, 0 2.48 (the 12-layer body 29.9 / 30.1 / 30.7: one matmul dominates it)
    threads: int = 128


def _gpu_elementwise_schedule(i: int, op: mlir_ir.Operation, tiles: GpuTiles) -> list[str]:
    from mlir import ir as mlir_ir

    ranges = _loop_ranges(op)
    if ranges is None or op.name != "linalg.generic":
        return []
    kinds = ["reduction" in str(t) for t in op.attributes["iterator_types"]]
    parallel = [d for d, red in enumerate(kinds) if not red]
    if not parallel or not all(_vectorizable_type(x[1]) for x in map(_shape, op.operands) if x is not None):
        return []
    # the threads run along the output's innermost dim (coalesced), skipping unit dims (a
    # keepdim reduction's (rows, 1)); a reduction gets at most a warp a block, so that its rows
    # (each thread loops over one) spread over the multiprocessors
    out_map = op.attributes["indexing_maps"][len(op.operands) - 1].value
    wide = [d for d in parallel if ranges[d] > 1] or parallel
    dims = [e.position for e in out_map.results if isinstance(e, mlir_ir.AffineDimExpr)]
    inner = next((d for d in reversed(dims) if d in wide), wide[-1])
    cap = 32 if any(kinds) else tiles.threads
    if _volume([ranges[d] for d in parallel if d != inner]) == 1:
        cap = min(cap, ranges[inner] // 2)  # keep two blocks: a one-block loop folds away and would not map
    tx = _fit(ranges[inner], max(cap, 1))
    if tx < 2:
        return []  # nothing to spread over threads: left to the parallel-loop tiling
    blocks = [0 if red else (tx if d == inner else 1) for d, red in enumerate(kinds)]
    threads = [1 if d == inner else 0 for d in range(len(kinds))]
    any_op = "(!transform.any_op) -> (!transform.any_op, !transform.any_op)"
    return [
        f'%e{i} = transform.structured.match ops{{["linalg.generic"]}} attributes {{kiln.e = {i} : i64}} in %root'
        " : (!transform.any_op) -> !transform.any_op",
        f"%eb{i}, %ebl{i} = transform.structured.tile_using_forall %e{i} tile_sizes {blocks} : {any_op}",
        f"%et{i}, %etl{i} = transform.structured.tile_using_forall %eb{i} tile_sizes {threads} : {any_op}",
        f"%el{i} = transform.structured.convert_to_loops %et{i} : (!transform.any_op) -> !transform.any_op",
    ]


def _contraction_ranges(op: mlir_ir.Operation) -> list[int] | None:
    """Loop sizes of an f32 contraction whose only reduction is its last loop: a named matmul, or
    a generic with two inputs whose body is a multiply-add (the export's broadcasting matmuls)."""
    if not all(x is not None and x[1] == "f32" for x in (_shape(v) for v in op.operands)):
        return None
    if op.name in MATMUL_OPS:
        if str(op.attributes["indexing_maps"]) != _DEFAULT_MAPS[op.name]:
            return None
        a, b = _shape(op.operands[0]), _shape(op.operands[1])
        assert a is not None and b is not None
        return [*a[0][:-1], b[0][-1], a[0][-1]]
    if op.name != "linalg.generic" or len(op.operands) != 3:
        return None
    kinds = [str(t) for t in op.attributes["iterator_types"]]
    if (
        "#linalg.iterator_type<reduction>" not in kinds[-1:]
        or kinds.count("#linalg.iterator_type<reduction>") != 1
    ):
        return None
    body = [o.operation.name for o in op.regions[0].blocks[0].operations]
    if sorted(body) != ["arith.addf", "arith.mulf", "linalg.yield"]:
        return None
    return _loop_ranges(op)


def _gpu_matmul_schedule(i: int, op: mlir_ir.Operation, tiles: GpuTiles) -> list[str]:
    ranges = _contraction_ranges(op)
    if ranges is None or len(ranges) < 3:
        return []
    *lead, m, n, _k = ranges
    tm, tn = _fit(m, tiles.tm), _fit(n, tiles.tn)
    bm, bn = tm * _fit(m // tm, max(1, tiles.bm // tm)), tn * _fit(n // tn, max(1, tiles.bn // tn))
    if (m // bm) * (n // bn) * _volume(lead) < 2 or (bm // tm) * (bn // tn) < 2:
        return []  # a single block or thread loop folds away, and the rest would not map to the GPU
    pre, inner = [1] * len(lead), [0] * len(lead)
    if len(pre) + 2 > 3:
        return []  # more than three parallel dims: more than a grid has
    any_op = "(!transform.any_op) -> (!transform.any_op, !transform.any_op)"
    return [
        f'%g{i} = transform.structured.match ops{{["{op.name}"]}} attributes {{kiln.g = {i} : i64}} in %root'
        " : (!transform.any_op) -> !transform.any_op",
        f"%gb{i}, %gbl{i} = transform.structured.tile_using_forall %g{i} tile_sizes {[*pre, bm, bn]} : {any_op}",
        f"%gt{i}, %gtl{i} = transform.structured.tile_using_forall %gb{i} tile_sizes {[*inner, tm, tn]} : {any_op}",
        f"%gk{i}, %gkl{i} = transform.structured.tile_using_for %gt{i} tile_sizes {[*inner, 0, 0, 1]} : {any_op}",
        f"transform.structured.vectorize %gk{i} : !transform.any_op",
    ]


def gpu_schedule(module: mlir_ir.Module, tiles: GpuTiles) -> tuple[str, int]:
    """The transform script that register-tiles the f32 matmuls of a bufferized module: block
    tiles and thread tiles become nested scf.forall loops (mapped to blocks and threads after
    ``scf-forall-to-parallel``), the k loop runs on a vector accumulator hoisted out of it.
    Returns the script and how many matmuls it schedules (0: nothing to do)."""
    from mlir import ir as mlir_ir

    body: list[str] = []
    count = 0
    i64 = mlir_ir.IntegerType.get_signless(64)
    for op in list(_ops(module.operation)):
        lines = _gpu_matmul_schedule(count, op, tiles) if op.name in (*MATMUL_OPS, "linalg.generic") else []
        if lines:
            op.attributes["kiln.g"] = mlir_ir.IntegerAttr.get(i64, count)
        elif tiles.threads and op.name == "linalg.generic":
            lines = _gpu_elementwise_schedule(count, op, tiles)
            if lines:
                op.attributes["kiln.e"] = mlir_ir.IntegerAttr.get(i64, count)
        if lines:
            body.extend(lines)
            count += 1
    return _transform_script(body), count


def cuda_stages(chip: str, block: tuple[int, int], libdevice: str | None) -> tuple[Stage, ...]:
    """The GPU pipeline after fuse and bufferize: parallel loops tiled to ``block`` threads,
    mapped to blocks/threads, outlined, lowered to NVVM and serialised to PTX (no GPU needed).
    ``libdevice`` (a path to libdevice.10.bc) resolves math calls such as ``__nv_erff``."""
    link = f" l={libdevice}" if libdevice else ""
    return (
        Stage(
            "map-to-gpu",
            "func.func(convert-linalg-to-parallel-loops),canonicalize,"
            # fixed inner bounds with an in-bounds check: with min/max bounds a loop shorter than its
            # tile lost its block loop and stayed on the host
            f"func.func(scf-parallel-loop-tiling{{parallel-loop-tile-sizes={block[0]},{block[1]} no-min-max-bounds=1}}),"
            # the scheduled matmuls' foralls (block and thread tiles) join after the tiling
            "func.func(scf-forall-to-parallel),"
            "func.func(gpu-map-parallel-loops),func.func(convert-parallel-loops-to-gpu),"
            "gpu-kernel-outlining,lower-affine,canonicalize,cse",
            "linalg to scf.parallel, tiled into thread blocks, mapped to gpu.launch and outlined",
        ),
        Stage(
            "lower-to-nvvm",
            f"nvvm-attach-target{{chip={chip} O=3{link}}},"
            "gpu.module(convert-vector-to-scf,convert-scf-to-cf,expand-strided-metadata,lower-affine,arith-expand,"
            "math-extend-to-supported-types,convert-gpu-to-nvvm,convert-vector-to-llvm,canonicalize,cse,reconcile-unrealized-casts)",
            "kernels to the NVVM/LLVM dialects for the chosen chip",
        ),
        Stage(
            "serialize-ptx", "gpu-module-to-binary{format=isa}", "kernels to PTX text (LLVM's NVPTX backend)"
        ),
    )
