"""Per-op reference cases: elementwise ops, where and cast."""

from __future__ import annotations

import math

import numpy as np

from kiln.ir import dtypes as kd
from kiln_testing.op_truths import (
    BF16,
    BINARY_FLOAT,
    BINARY_INT,
    BOOL_OPS,
    FLOATS,
    UNARY_FLOAT,
    Case,
    arr,
    gelu_exact,
    gelu_tanh,
    i4,
    int_div,
    int_pow,
    ints,
    nan_max,
    nan_min,
    rand,
    u3,
    vec,
)


def elementwise_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append

    # Unary float ops in f32, f16 and bf16; gelu in both forms; isnan with nan/inf.
    for name, (values, f) in UNARY_FLOAT.items():
        for dt in FLOATS:
            add(Case(f"{name}-{dt}", name, (arr(values, dt),), vec(f)))
    for dt in FLOATS:
        x = rand((2, 5), dt, -3, 3)
        add(Case(f"gelu-none-{dt}", "gelu", (x,), vec(gelu_exact)))
        add(Case(f"gelu-tanh-{dt}", "gelu", (x,), vec(gelu_tanh), {"approximate": "tanh"}))
        specials = arr([math.nan, 0.0, math.inf, -math.inf, -1.5], dt)
        add(Case(f"isnan-{dt}", "isnan", (specials,), vec(math.isnan)))
    add(
        Case("logical_not", "logical_not", (np.array([[True, False], [False, False]]),), vec(lambda v: not v))
    )
    # Signed-integer unary ops wrap: -(-8) and |-8| are -8 in i4; relu of ints.
    add(Case("neg-i4-wraps", "neg", ((i4, arr([-8, -1, 0, 7], np.int8)),), vec(lambda v: -v)))
    add(Case("neg-i8-wraps", "neg", (arr([-128, -1, 127], np.int8),), vec(lambda v: -v)))
    add(Case("abs-i4-wraps", "abs", ((i4, arr([-8, -3, 0, 5], np.int8)),), vec(abs)))
    add(Case("abs-u8", "abs", (arr([0, 200, 255], np.uint8),), vec(abs)))
    add(Case("relu-i8", "relu", (arr([-128, -1, 0, 5, 127], np.int8),), vec(lambda v: max(v, 0))))

    # Binary float ops broadcasting [2,1,3] with [4,1]; pow on positive bases.
    for name, f in BINARY_FLOAT.items():
        for dt in FLOATS:
            lo = 0.5 if name == "pow" else -2.0
            x, y = rand((2, 1, 3), dt, lo, 2.0, seed=1), rand((4, 1), dt, -2.0, 2.0, seed=2)
            if name in ("eq", "ne", "le", "ge"):
                xf = x.astype(np.float64)
                y = arr([[xf[0, 0, 0]], [xf[1, 0, 2]], [0.0], [xf[0, 0, 1]]], dt)  # some equal pairs
            add(Case(f"{name}-{dt}-broadcast", name, (x, y), vec(f)))
    # NaN propagation and float division by zero.
    nan_l, nan_r = (
        arr([math.nan, 1.0, -2.0, math.nan], np.float32),
        arr([0.5, math.nan, 3.0, math.nan], np.float32),
    )
    add(Case("maximum-nan", "maximum", (nan_l, nan_r), vec(nan_max)))
    add(Case("minimum-nan", "minimum", (nan_l, nan_r), vec(nan_min)))
    add(
        Case(
            "div-f32-by-zero",
            "div",
            (arr([1.0, -1.0, 0.0, 2.0], np.float32), arr([0.0, 0.0, 0.0, -0.0], np.float32)),
            lambda x, y: np.array([math.inf, -math.inf, math.nan, -math.inf]),
        )
    )
    # Integer binary ops: broadcasting in i32, wrapping in i8, i4 and u3, truncating division.
    for name, f in BINARY_INT.items():
        x, y = ints((2, 1, 3), kd.i32, seed=3) // 65536, ints((4, 1), kd.i32, seed=4) // 65536
        if name in ("eq", "ne", "le", "ge"):
            y[1, 0] = x[0, 0, 1]
        add(Case(f"{name}-i32-broadcast", name, (x, y), vec(f)))
        add(Case(f"{name}-i8-wraps", name, (ints((3, 4), kd.i8, seed=5), ints((4,), kd.i8, seed=6)), vec(f)))
        add(
            Case(
                f"{name}-i4-wraps",
                name,
                ((i4, ints((3, 4), i4, seed=7)), (i4, ints((4,), i4, seed=8))),
                vec(f),
            )
        )
        add(
            Case(
                f"{name}-u3-wraps",
                name,
                ((u3, ints((3, 4), u3, seed=9)), (u3, ints((4,), u3, seed=10))),
                vec(f),
            )
        )
    add(
        Case(
            "add-i4-7+1",
            "add",
            ((i4, arr([7, -8, 3, -1], np.int8)), (i4, arr([1, -1, 4, -8], np.int8))),
            lambda x, y: np.array([-8, 7, 7, 7]),
        )
    )
    add(
        Case(
            "sub-u3-0-1",
            "sub",
            ((u3, arr([0, 7, 3], np.uint8)), (u3, arr([1, 7, 5], np.uint8))),
            lambda x, y: np.array([7, 0, 6]),
        )
    )
    add(
        Case(
            "div-i32-trunc-and-zero",
            "div",
            (arr([7, -7, 7, -7, 5, -5, 0, -1], np.int32), arr([2, 2, -2, -2, 0, 0, 0, 3], np.int32)),
            lambda x, y: np.array([3, -3, -3, 3, 0, 0, 0, 0]),
        )
    )
    add(Case("div-i8-min-by-minus-one", "div", (arr([-128], np.int8), arr([-1], np.int8)), vec(int_div)))
    add(
        Case(
            "div-u64-large",
            "div",
            (arr([2**64 - 1, 2**63 + 4, 10, 5], np.uint64), arr([1, 2, 3, 0], np.uint64)),
            lambda x, y: np.array([2**64 - 1, 2**62 + 2, 3, 0], dtype=object),
        )
    )
    add(
        Case(
            "pow-i32-negative-exponents",
            "pow",
            (arr([2, 1, -1, -1, 0, 3, -2], np.int32), arr([-1, -3, -3, -2, 2, 4, 3], np.int32)),
            vec(int_pow),
        )
    )
    add(Case("pow-i8-wraps", "pow", (arr([3, -3, 2], np.int8), arr([5, 5, 7], np.int8)), vec(int_pow)))
    # Bool ops, with broadcasting [2,1] and [3].
    bl, br = np.array([[True], [False]]), np.array([True, False, True])
    for name, f in BOOL_OPS.items():
        add(Case(f"{name}-bool", name, (bl, br), vec(f)))
    # where broadcasts its three operands: [2,1] cond, [1,3] then, [] else.
    cond = np.array([[True], [False]])
    for dt in [*FLOATS, kd.i32]:
        then = rand((1, 3), dt) if dt.is_float else ints((1, 3), dt)
        other = arr(0.5, dt) if dt.is_float else arr(-7, dt)
        add(Case(f"where-{dt}", "where", (cond, then, other), vec(lambda c, a, b: a if c else b)))

    # cast: truncation toward zero then wrap; bools; float rounding.
    f2i = arr([-9.7, -8.5, -1.5, -0.5, 0.5, 7.9, 8.2, 15.9, 300.7], np.float32)
    for dt in (i4, u3, kd.i8, kd.u8, kd.i32):
        add(Case(f"cast-f32-to-{dt}", "cast", (f2i,), vec(math.trunc), {"dtype": dt}))
    add(
        Case(
            "cast-f32-to-i4-literal",
            "cast",
            (arr([9.7, -9.7, 7.5], np.float32),),
            lambda x: np.array([-7, 7, 7]),
            {"dtype": i4},
        )
    )
    add(
        Case(
            "cast-f32-to-i32-wraps",
            "cast",
            (arr([3e9, -3e9], np.float32),),
            vec(math.trunc),
            {"dtype": kd.i32},
        )
    )
    big = arr([1e19, 3e19, -1e19, 1.5e19], np.float64)
    for dt in (kd.i64, kd.u64):
        add(Case(f"cast-f64-beyond-int64-to-{dt}", "cast", (big,), vec(lambda v: int(v)), {"dtype": dt}))
    add(
        Case(
            "cast-nan-inf-to-i32",
            "cast",
            (arr([math.nan, math.inf, -math.inf, 2.5], np.float32),),
            lambda x: np.array([0, 0, 0, 2]),
            {"dtype": kd.i32},
        )
    )
    add(
        Case(
            "cast-f16-to-i8",
            "cast",
            (arr([-3.75, 2.5, 127.0], np.float16),),
            vec(math.trunc),
            {"dtype": kd.i8},
        )
    )
    add(Case("cast-u8-to-i4", "cast", (arr([200, 15, 8, 7], np.uint8),), vec(lambda v: v), {"dtype": i4}))
    add(Case("cast-i8-to-u8", "cast", (arr([-1, -128, 5], np.int8),), vec(lambda v: v), {"dtype": kd.u8}))
    add(
        Case(
            "cast-i4-to-i32", "cast", ((i4, arr([-8, -1, 7], np.int8)),), vec(lambda v: v), {"dtype": kd.i32}
        )
    )
    bool_in = arr([-1.5, -0.0, 0.0, 0.25, math.nan, math.inf], np.float32)
    add(Case("cast-f32-to-bool", "cast", (bool_in,), vec(lambda v: v != 0), {"dtype": kd.boolean}))
    add(
        Case(
            "cast-i8-to-bool",
            "cast",
            (arr([-128, 0, 1, 2], np.int8),),
            vec(lambda v: v != 0),
            {"dtype": kd.boolean},
        )
    )
    add(
        Case(
            "cast-i4-to-bool",
            "cast",
            ((i4, arr([-8, 0, 1], np.int8)),),
            vec(lambda v: v != 0),
            {"dtype": kd.boolean},
        )
    )
    flags = np.array([True, False, True])
    for dt in (kd.f32, kd.f16, kd.bf16, kd.i8, i4, u3):
        add(Case(f"cast-bool-to-{dt}", "cast", (flags,), vec(lambda v: 1 if v else 0), {"dtype": dt}))
    fine = arr([0.1, 1 / 3, 1000.06, -(2.0**-20), 70000.0, 3.0e38], np.float32)
    for dt in (kd.f16, kd.bf16, kd.f64):
        add(Case(f"cast-f32-to-{dt}-rounds", "cast", (fine,), vec(lambda v: v), {"dtype": dt}))
    add(
        Case(
            "cast-bf16-to-f16", "cast", (arr([1.5, -0.1, 300.0], BF16),), vec(lambda v: v), {"dtype": kd.f16}
        )
    )
    add(
        Case(
            "cast-i32-to-f16",
            "cast",
            (arr([1, -2049, 65504, 70000], np.int32),),
            vec(float),
            {"dtype": kd.f16},
        )
    )

    return cases
