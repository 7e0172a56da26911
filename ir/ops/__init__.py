"""kiln's core op set. ``core_ops()`` lists the definitions; a Context registers them explicitly."""

from __future__ import annotations

from ..registry import OpDef
from .contract import EinsumAttrs, GatherNdAttrs, contract_ops, explicit_equation
from .elementwise import CastAttrs, GeluAttrs, elementwise_ops
from .fused import AttentionAttrs, FusedAttrs, fused_ops
from .quant import Act, QMatmulAttrs, QuantizedArg, quant_ops
from .reduce import (
    ArgReduceAttrs,
    AxisAttrs,
    CumsumAttrs,
    NormAttrs,
    ReduceAttrs,
    reduce_ops,
)
from .shape import (
    AxesAttrs,
    ConstantAttrs,
    IotaAttrs,
    PermAttrs,
    ShapeAttrs,
    SliceAttrs,
    SplitAttrs,
    TopkAttrs,
    TriAttrs,
    normalize_slice,
    shape_ops,
)


def core_ops() -> list[OpDef]:
    """Every op kiln defines, in a stable order."""
    return [*elementwise_ops(), *reduce_ops(), *shape_ops(), *contract_ops(), *fused_ops(), *quant_ops()]


__all__ = [
    "Act",
    "QMatmulAttrs",
    "QuantizedArg",
    "AttentionAttrs",
    "FusedAttrs",
    "ArgReduceAttrs",
    "AxesAttrs",
    "AxisAttrs",
    "CastAttrs",
    "ConstantAttrs",
    "CumsumAttrs",
    "EinsumAttrs",
    "GatherNdAttrs",
    "GeluAttrs",
    "IotaAttrs",
    "NormAttrs",
    "PermAttrs",
    "ReduceAttrs",
    "ShapeAttrs",
    "SliceAttrs",
    "SplitAttrs",
    "TopkAttrs",
    "TriAttrs",
    "core_ops",
    "explicit_equation",
    "normalize_slice",
]
