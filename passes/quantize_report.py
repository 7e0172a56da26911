"""The accuracy report of a quantized model: per layer, and for the whole model's outputs.

Per layer: width, bytes, and the error of the layer's output against float32 on calibration
activations (relative error and SNR), as measured by the quantize pass. For the whole model: each
output of the quantized graph against the float graph, both run with the reference semantics on
the same inputs (max abs error, SNR, and for outputs with a class axis the top-1 agreement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..ir.core import Graph
from ..ir.dtypes import DType
from ..ir.errors import KilnError
from ..ir.interpret import interpret
from ..ir.quant import snr_db
from ..ir.registry import Context
from ..ir.types import TensorType
from .quantize import LayerReport


@dataclass(frozen=True)
class OutputAgreement:
    """One model output, quantized against float."""

    name: str
    max_abs_error: float
    snr_db: float
    top1: float | None  # fraction of rows whose argmax over the last axis agrees; None for scalars


def synthetic_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a graph with static shapes: floats N(0, 1); integers index the table they gather."""
    rng = np.random.default_rng(seed)
    bound: dict[object, int] = {}
    for n in graph.nodes:  # token ids: the rows of the embedding table that reads them
        if n.op in ("gather", "qgather") and n.operands[-1] in graph.inputs:
            tt = n.operands[0].tensor_type
            rows = tt.shape[n.attrs.axis] if n.op == "gather" else tt.shape[1]  # type: ignore[attr-defined]
            if isinstance(rows, int):
                bound[n.operands[-1]] = rows
    out: dict[str, np.ndarray] = {}
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or not isinstance(t.dtype, DType):
            raise KilnError(f"input '{v.name}' is {t}: give inputs with --inputs")
        if not t.is_static:
            raise KilnError(f"input '{v.name}' has symbolic dims {t}: bind them with --dim NAME=SIZE")
        if t.dtype.is_float:
            out[str(v.name)] = rng.standard_normal(t.static_shape).astype(t.dtype.np_dtype)
        elif t.dtype.is_bool:
            out[str(v.name)] = rng.integers(0, 2, t.static_shape).astype(np.bool_)
        else:
            hi = min(bound.get(v, 2), int(t.dtype.max_value) + 1)
            out[str(v.name)] = rng.integers(0, hi, t.static_shape).astype(t.dtype.np_dtype)
    return out


def compare_models(
    float_graph: Graph, quant_graph: Graph, inputs: Mapping[str, np.ndarray], ctx: Context
) -> list[OutputAgreement]:
    """Run both graphs with the reference semantics and compare every float output."""
    ref = interpret(float_graph, inputs, ctx)
    got = interpret(quant_graph, inputs, ctx)
    rows: list[OutputAgreement] = []
    for name, y in ref.items():
        a, b = np.asarray(y), np.asarray(got[name])
        if a.dtype.kind != "f":
            continue
        top1 = None
        if a.ndim >= 1 and a.shape[-1] > 1:
            top1 = float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1)))
        err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        rows.append(OutputAgreement(name, err, float(snr_db(a, b)), top1))
    return rows


def format_report(layers: list[LayerReport], outputs: list[OutputAgreement]) -> str:
    """The report as text tables (rich), layers first, then the model's outputs."""
    import io

    from rich.console import Console
    from rich.table import Table

    t = Table(title="quantized layers (output error on calibration activations)")
    for col in ("layer", "kind", "K x N", "bits", "bytes", "float bytes", "rel. error", "SNR dB"):
        t.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in layers:
        t.add_row(
            r.name, r.kind, f"{r.k}x{r.n}", str(r.bits), f"{r.bytes:,}", f"{r.float_bytes:,}",
            f"{r.rel_error:.4f}", f"{r.snr_db:.2f}",
        )  # fmt: skip
    qb = sum(r.bytes for r in layers)
    fb = sum(r.float_bytes for r in layers)
    m = Table(title="whole model: quantized vs float32 outputs (reference semantics)")
    for col in ("output", "max abs error", "SNR dB", "top-1 agreement"):
        m.add_column(col, justify="left" if col == "output" else "right")
    for o in outputs:
        m.add_row(
            o.name, f"{o.max_abs_error:.4g}", f"{o.snr_db:.2f}", "-" if o.top1 is None else f"{o.top1:.3f}"
        )
    buf = io.StringIO()
    console = Console(file=buf, width=120, color_system=None)
    console.print(t)
    ratio = f" ({fb / qb:.2f}x smaller)" if qb else ""
    console.print(f"{len(layers)} weights: {qb:,} bytes quantized, {fb:,} as float32{ratio}")
    console.print(m)
    return buf.getvalue()
