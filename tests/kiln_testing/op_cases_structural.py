"""Per-op reference cases: matmul, reductions, normalisations, data movement, contractions,
fused kernels and attention."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from kiln.ir import dtypes as kd
from kiln_testing.op_truths import (
    FLOATS,
    Case,
    add_exp_body,
    along,
    arg_truth,
    arr,
    attention_truth,
    canonical_slice,
    cumsum_truth,
    einsum_bmm_truth,
    elementwise,
    gather_truth,
    i4,
    ints,
    iota_truth,
    log_softmax_row,
    matmul_truth,
    norm_truth,
    rand,
    reduce_truth,
    softmax_row,
    topk_truth,
    transpose_truth,
    tri_truth,
    u3,
)


def structural_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append

    # matmul: 2-D, 1-D operands, batch broadcasting, f16/bf16, wrapping i8.
    for dt in FLOATS:
        add(
            Case(
                f"matmul-2d-{dt}",
                "matmul",
                (rand((3, 4), dt, seed=1), rand((4, 2), dt, seed=2)),
                matmul_truth,
            )
        )
    add(Case("matmul-1d-2d", "matmul", (rand((4,), kd.f32), rand((4, 3), kd.f32, seed=1)), matmul_truth))
    add(Case("matmul-2d-1d", "matmul", (rand((3, 4), kd.f32), rand((4,), kd.f32, seed=1)), matmul_truth))
    add(Case("matmul-1d-1d", "matmul", (rand((5,), kd.f32), rand((5,), kd.f32, seed=1)), matmul_truth))
    add(
        Case("matmul-batch-1d", "matmul", (rand((2, 3, 4), kd.f32), rand((4,), kd.f32, seed=1)), matmul_truth)
    )
    add(
        Case(
            "matmul-batch-broadcast",
            "matmul",
            (rand((2, 1, 3, 4), kd.f32), rand((5, 4, 2), kd.f32, seed=1)),
            matmul_truth,
        )
    )
    add(Case("matmul-i8-wraps", "matmul", (ints((2, 3), kd.i8), ints((3, 2), kd.i8, seed=1)), matmul_truth))
    add(Case("matmul-u8-wraps", "matmul", (ints((2, 3), kd.u8), ints((3, 2), kd.u8, seed=1)), matmul_truth))

    # Reductions over axes (0, 2) of [2,3,4], with and without keepdims; integer sums wrap.
    reducers: dict[str, Callable[[list[Any]], Any]] = {
        "reduce_sum": lambda r: math.fsum(r) if isinstance(r[0], float) else sum(r),
        "reduce_mean": lambda r: math.fsum(r) / len(r),
        "reduce_max": max,
        "reduce_min": min,
        "reduce_prod": math.prod,
    }
    for name, fn in reducers.items():
        for keepdims in (False, True):
            for axes in ((0, 2), (1,), ()):
                add(
                    Case(
                        f"{name}-f32-axes{list(axes)}-keepdims={keepdims}",
                        name,
                        (rand((2, 3, 4), kd.f32, 0.5, 1.5),),
                        reduce_truth(fn, axes, keepdims),
                        {"axes": axes, "keepdims": keepdims},
                    )
                )
        for dt in (kd.f16, kd.bf16):
            add(
                Case(
                    f"{name}-{dt}",
                    name,
                    (rand((3, 5), dt, 0.5, 1.5),),
                    reduce_truth(fn, (1,)),
                    {"axes": (1,)},
                )
            )
        if name != "reduce_mean":
            for dt in (kd.i8, i4, kd.u8):
                add(
                    Case(
                        f"{name}-{dt}",
                        name,
                        ((dt, ints((3, 5), dt)),),
                        reduce_truth(fn, (1,)),
                        {"axes": (1,)},
                    )
                )
    add(
        Case(
            "reduce_sum-all",
            "reduce_sum",
            (rand((2, 3), kd.f32),),
            reduce_truth(math.fsum, (0, 1)),
            {"axes": (0, 1)},
        )
    )

    # argmax/argmin with ties, select_last and keepdims.
    tied = arr([[1, 3, 3, 0], [2, 2, -1, -1], [0, 0, 0, 0]], np.float32)
    for name, largest in (("argmax", True), ("argmin", False)):
        for select_last in (False, True):
            for keepdims in (False, True):
                for axis in (0, 1):
                    attrs = {"axis": axis, "keepdims": keepdims, "select_last": select_last}
                    add(
                        Case(
                            f"{name}-axis{axis}-last={select_last}-keep={keepdims}",
                            name,
                            (tied,),
                            arg_truth(largest, axis, keepdims, select_last),
                            attrs,
                        )
                    )
        add(
            Case(
                f"{name}-i4",
                name,
                ((i4, arr([[-8, 7, 7], [3, -8, -8]], np.int8)),),
                arg_truth(largest, 1),
                {"axis": 1},
            )
        )
        add(
            Case(
                f"{name}-bool",
                name,
                (np.array([False, True, True, False]),),
                arg_truth(largest, 0),
                {"axis": 0},
            )
        )
    add(
        Case(
            "argmax-literal",
            "argmax",
            (arr([[1, 5, 5], [7, 7, 2]], np.int32),),
            lambda x: np.array([2, 1]),
            {"axis": 1, "select_last": True},
        )
    )

    # cumsum: exclusive/reverse in all combinations, along both axes; narrow ints wrap.
    for exclusive, reverse in itertools.product((False, True), repeat=2):
        for axis in (0, 1):
            attrs = {"axis": axis, "exclusive": exclusive, "reverse": reverse}
            tag = f"axis{axis}-excl={exclusive}-rev={reverse}"
            add(
                Case(
                    f"cumsum-f32-{tag}",
                    "cumsum",
                    (rand((3, 4), kd.f32),),
                    cumsum_truth(axis, exclusive, reverse),
                    attrs,
                )
            )
            add(
                Case(
                    f"cumsum-i4-{tag}",
                    "cumsum",
                    ((i4, ints((3, 4), i4)),),
                    cumsum_truth(axis, exclusive, reverse),
                    attrs,
                )
            )
    add(
        Case(
            "cumsum-literal-exclusive-reverse",
            "cumsum",
            (arr([1, 2, 3, 4], np.int32),),
            lambda x: np.array([9, 7, 4, 0]),
            {"axis": 0, "exclusive": True, "reverse": True},
        )
    )
    add(Case("cumsum-f16", "cumsum", (rand((6,), kd.f16),), cumsum_truth(0, False, False), {"axis": 0}))

    # softmax / log_softmax along the middle axis (and the last).
    for name, row in (("softmax", softmax_row), ("log_softmax", log_softmax_row)):
        for dt in FLOATS:
            for axis in (1, 2):
                x = rand((2, 3, 4), dt, -3, 3)
                add(
                    Case(
                        f"{name}-{dt}-axis{axis}",
                        name,
                        (x,),
                        lambda x, a=axis, r=row: along(x, a, r),
                        {"axis": axis},
                    )
                )

    # layer_norm / rms_norm over axes axis.. of [2,3,4].
    for dt in FLOATS:
        for axis in (1, 2):
            x = rand((2, 3, 4), dt, -2, 2)
            w, bias = rand(x.shape[axis:], dt, 0.5, 1.5, seed=1), rand(x.shape[axis:], dt, seed=2)
            add(
                Case(
                    f"layer_norm-{dt}-axis{axis}",
                    "layer_norm",
                    (x, w, bias),
                    norm_truth(axis, 1e-5, False),
                    {"axis": axis},
                )
            )
            add(
                Case(
                    f"rms_norm-{dt}-axis{axis}",
                    "rms_norm",
                    (x, w),
                    norm_truth(axis, 1e-6, True),
                    {"axis": axis, "eps": 1e-6},
                )
            )
    add(
        Case(
            "layer_norm-eps",
            "layer_norm",
            (rand((2, 4), kd.f32), np.ones(4, np.float32), np.zeros(4, np.float32)),
            norm_truth(1, 0.5, False),
            {"axis": 1, "eps": 0.5},
        )
    )

    # Data movement.
    x234 = arr(np.arange(24).reshape(2, 3, 4), np.float32)
    add(
        Case(
            "reshape",
            "reshape",
            (x234,),
            lambda x: np.array(list(x.ravel())).reshape(4, 6),
            {"shape": (4, 6)},
        )
    )
    add(Case("reshape-rank0", "reshape", (arr([5], np.int32),), lambda x: np.array(5), {"shape": ()}))
    add(
        Case(
            "broadcast_to",
            "broadcast_to",
            (arr([[1], [2]], np.int8),),
            lambda x: elementwise(lambda a, _: a, x, np.zeros((3, 2, 4))),
            {"shape": (3, 2, 4)},
        )
    )
    add(Case("transpose", "transpose", (x234,), lambda x: transpose_truth(x, (2, 0, 1)), {"perm": (2, 0, 1)}))
    add(
        Case(
            "transpose-i4",
            "transpose",
            ((i4, arr([[1, -2], [3, -8]], np.int8)),),
            lambda x: np.array([[1, 3], [-2, -8]]),
            {"perm": (1, 0)},
        )
    )
    slice_specs: dict[str, dict[int, slice]] = {
        "basic": {1: slice(1, 3)},
        "reverse": {2: slice(None, None, -1)},
        "neg-step-2": {2: slice(3, 0, -2)},
        "neg-to-start": {2: slice(-1, -5, -1)},
        "neg-stop-before-0": {0: slice(1, None, -1), 2: slice(None, None, -3)},
        "step3": {2: slice(0, None, 3)},
        "empty": {1: slice(2, 2)},
        "empty-neg": {1: slice(0, 2, -1)},
        "multi": {0: slice(1, 2), 1: slice(None, None, 2), 2: slice(-2, None)},
    }
    for tag, spec in slice_specs.items():
        key = tuple(spec.get(a, slice(None)) for a in range(3))
        add(Case(f"slice-{tag}", "slice", (x234,), lambda x, k=key: x[k], canonical_slice(x234.shape, spec)))
    a, b, c = (
        arr([[1, 2], [3, 4]], np.int32),
        arr([[5], [6]], np.int32),
        arr([[7, 8, 9], [10, 11, 12]], np.int32),
    )
    add(
        Case(
            "concat-axis1",
            "concat",
            (a, b, c),
            lambda *_: np.array([[1, 2, 5, 7, 8, 9], [3, 4, 6, 10, 11, 12]]),
            {"axis": 1},
        )
    )
    add(
        Case(
            "concat-axis0",
            "concat",
            (a, a),
            lambda *_: np.array([[1, 2], [3, 4], [1, 2], [3, 4]]),
            {"axis": 0},
        )
    )
    add(Case("concat-one", "concat", (b,), lambda *_: np.array([[5], [6]]), {"axis": 0}))
    x26 = arr(np.arange(12).reshape(2, 6), np.int32)
    add(
        Case(
            "split-axis1",
            "split",
            (x26,),
            lambda x: (x[:, :1], x[:, 1:1], x[:, 1:3], x[:, 3:]),
            {"axis": 1, "sizes": (1, 0, 2, 3)},
        )
    )
    add(Case("split-axis0", "split", (x26,), lambda x: (x[:1], x[1:]), {"axis": 0, "sizes": (1, 1)}))
    table = arr([[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]], np.float32)
    idx = arr([[0, -1], [2, -3]], np.int32)
    add(
        Case("gather-axis1-negative", "gather", (table, idx), lambda x, i: gather_truth(x, i, 1), {"axis": 1})
    )
    add(
        Case(
            "gather-axis0",
            "gather",
            (table, arr([1, -2, -1], np.int64)),
            lambda x, i: gather_truth(x, i, 0),
            {"axis": 0},
        )
    )
    add(
        Case(
            "gather-i4-indices",
            "gather",
            (table, (i4, arr([-3, 2, -1], np.int8))),
            lambda x, i: gather_truth(x, i, 1),
            {"axis": 1},
        )
    )
    add(
        Case(
            "gather-u8-indices",
            "gather",
            (table, arr([[2]], np.uint8)),
            lambda x, i: gather_truth(x, i, 1),
            {"axis": 1},
        )
    )
    # The reduction of an empty set is its identity (as in ONNX): -inf / the int minimum for max.
    empty = arr(np.zeros((0, 3)), np.float32)
    add(Case("reduce-max-empty", "reduce_max", (empty,), lambda x: np.full(3, -np.inf), {"axes": (0,)}))
    add(
        Case(
            "reduce-min-empty-i4",
            "reduce_min",
            ((i4, arr(np.zeros((2, 0)), np.int8)),),
            lambda x: np.full(2, 7),
            {"axes": (1,)},
        )
    )
    qq = arr(np.linspace(-1, 1, 2 * 3 * 4).reshape(2, 3, 4), np.float32)
    kk = arr(np.linspace(1, -1, 2 * 5 * 4).reshape(2, 5, 4), np.float32)
    vv = arr(np.arange(2 * 5 * 2).reshape(2, 5, 2) % 3 - 1.0, np.float32)
    bias = arr(np.array([0.0, -1.0, 0.5, 0.0, 2.0]), np.float32)
    add(Case("attention-bias", "attention", (qq, kk, vv, bias), attention_truth(0.7, False), {"scale": 0.7}))
    add(
        Case(
            "attention-causal",
            "attention",
            (qq, kk, vv, arr(0.0, np.float32)),
            attention_truth(0.5, True),
            {"scale": 0.5, "causal": True},
        )
    )
    add(
        Case(
            "fused-add-exp",
            "fused",
            (qq, qq),
            lambda a, b: np.exp(a + b),
            {"kind": "elementwise", "body": add_exp_body()},
        )
    )
    x234 = arr(np.arange(24).reshape(2, 3, 4) * 0.5, np.float32)
    y245 = arr(np.arange(40).reshape(2, 4, 5) % 7 - 3.0, np.float32)
    add(Case("einsum-bmm", "einsum", (x234, y245), einsum_bmm_truth, {"equation": "bij,bjk->bik"}))
    add(
        Case(
            "einsum-ellipsis-sum",
            "einsum",
            (x234,),
            lambda x: np.array([[sum(x[i, j]) for j in range(3)] for i in range(2)]),
            {"equation": "...j->..."},
        )
    )
    add(
        Case(
            "gather-nd",
            "gather_nd",
            (x234, arr([[[0, 1]], [[1, -1]]], np.int64)),
            lambda x, i: np.array([[x[0, 1]], [x[1, 2]]]),
            {},
        )
    )
    add(
        Case(
            "gather-nd-batch",
            "gather_nd",
            (x234, arr([[2], [0]], np.int32)),
            lambda x, i: np.array([x[0, 2], x[1, 0]]),
            {"batch_dims": 1},
        )
    )
    add(
        Case(
            "gather-scalar-index",
            "gather",
            (table, arr(-1, np.int32)),
            lambda x, i: np.array([2.5, 5.5]),
            {"axis": 1},
        )
    )
    x1 = arr(np.arange(6).reshape(1, 2, 1, 3), np.int32)
    add(Case("squeeze", "squeeze", (x1,), lambda x: np.array([[0, 1, 2], [3, 4, 5]]), {"axes": (0, 2)}))
    add(Case("squeeze-one", "squeeze", (x1,), lambda x: np.array([[[0, 1, 2]], [[3, 4, 5]]]), {"axes": (0,)}))
    add(
        Case(
            "unsqueeze",
            "unsqueeze",
            (arr([1, 2, 3], np.int32),),
            lambda x: np.array([[[1], [2], [3]]]),
            {"axes": (0, 2)},
        )
    )
    add(
        Case(
            "unsqueeze-last",
            "unsqueeze",
            (arr([[1, 2]], np.int32),),
            lambda x: np.array([[[1, 2]]]).reshape(1, 2, 1),
            {"axes": (2,)},
        )
    )
    add(
        Case(
            "unsqueeze-scalar",
            "unsqueeze",
            (arr(4, np.float32),),
            lambda x: np.array([[4.0]]),
            {"axes": (0, 1)},
        )
    )
    iotas = [
        (0.5, 3, 0.5, kd.f32),
        (0, 1, 0.25, kd.f16),
        (-1.0, 1.0, 0.3, kd.bf16),
        (0.0, 1.0, 0.1, kd.f64),
        (0, 5, 1, kd.i32),
        (5, -2, -2, kd.i64),
        (0, 10, 3, i4),
        (3, 3, 1, kd.i32),
        (0, 7, 1, u3),
    ]
    for start, stop, step, dt in iotas:
        attrs = {"start": start, "stop": stop, "step": step, "dtype": dt}
        add(Case(f"iota-{start}:{stop}:{step}-{dt}", "iota", (), iota_truth(start, stop, step), attrs))
    add(
        Case(
            "iota-literal",
            "iota",
            (),
            lambda: np.array([5, 3, 1, -1]),
            {"start": 5, "stop": -2, "step": -2, "dtype": kd.i32},
        )
    )
    tie = arr([[3, 1, 3, 2, 1], [0, 5, 5, 5, -1]], np.int32)
    for largest in (True, False):
        for k in (0, 3, 5):
            add(
                Case(
                    f"topk-ties-largest={largest}-k{k}",
                    "topk",
                    (tie,),
                    topk_truth(k, 1, largest),
                    {"k": k, "axis": 1, "largest": largest},
                )
            )
        add(
            Case(
                f"topk-axis0-largest={largest}",
                "topk",
                (tie,),
                topk_truth(1, 0, largest),
                {"k": 1, "axis": 0, "largest": largest},
            )
        )
        for dt in (kd.f32, kd.f16, kd.bf16):
            xf = arr([[0.5, -1.0, 0.5, 2.0], [-0.0, 0.0, -3.0, 1.0]], dt)
            add(
                Case(
                    f"topk-{dt}-largest={largest}",
                    "topk",
                    (xf,),
                    topk_truth(2, 1, largest),
                    {"k": 2, "axis": 1, "largest": largest},
                )
            )
        add(
            Case(
                f"topk-i8-min-largest={largest}",
                "topk",
                (arr([-128, 5, 3, -128, 127], np.int8),),
                topk_truth(3, 0, largest),
                {"k": 3, "axis": 0, "largest": largest},
            )
        )
        add(
            Case(
                f"topk-u64-largest={largest}",
                "topk",
                (arr([2**63, 1, 2**64 - 1, 0], np.uint64),),
                topk_truth(2, 0, largest),
                {"k": 2, "axis": 0, "largest": largest},
            )
        )
        add(
            Case(
                f"topk-bool-largest={largest}",
                "topk",
                (np.array([False, True, False, True]),),
                topk_truth(3, 0, largest),
                {"k": 3, "axis": 0, "largest": largest},
            )
        )
    add(
        Case(
            "topk-literal",
            "topk",
            (tie,),
            lambda x: (np.array([[3, 3, 2], [5, 5, 5]]), np.array([[0, 2, 3], [1, 2, 3]])),
            {"k": 3, "axis": 1},
        )
    )
    for name, upper in (("triu", True), ("tril", False)):
        for k in (-1, 0, 1, 5):
            add(Case(f"{name}-k{k}", name, (x234,), tri_truth(upper, k), {"k": k}))
        add(Case(f"{name}-i4", name, ((i4, arr([[1, -2], [3, -8]], np.int8)),), tri_truth(upper, 0)))
    add(
        Case(
            "triu-literal",
            "triu",
            (arr([[1, 2, 3], [4, 5, 6]], np.int32),),
            lambda x: np.array([[0, 2, 3], [0, 0, 6]]),
            {"k": 1},
        )
    )
    add(
        Case(
            "tril-literal",
            "tril",
            (arr([[1, 2, 3], [4, 5, 6]], np.int32),),
            lambda x: np.array([[0, 0, 0], [4, 0, 0]]),
            {"k": -1},
        )
    )
    return cases
