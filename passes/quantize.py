"""quantize: matmul weights (and, if asked, embedding tables) become quantized constants.

``x @ W`` with a constant float ``W: [K, N]`` becomes ``qmatmul(x, codes, scales[, zeros])`` with
codes in the packed layout (``bitslice`` picks bit-sliced layouts afterwards). Weights are rounded
to nearest with a clipping search per group (:func:`kiln.ir.quant.quantize`), so quantizing a model
is deterministic. ``bits=auto{budget=3}`` (average code bits per weight) or ``bits=auto{snr=20}``
(least output SNR per layer, dB) picks each layer's width from its measured sensitivity: the
output error of the layer on calibration activations at each candidate width.
"""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.dtypes import DType, Layout, QuantType, Scheme, parse_dtype
from ..ir.errors import PipelineError, VerifyError
from ..ir.interpret import interpret
from ..ir.ops.quant import Act
from ..ir.quant import QuantizedWeight, quantize, snr_db
from ..ir.registry import Context
from ..ir.types import TensorType
from .base import Pass, Rewriter


@dataclass(frozen=True)
class BitsChoice:
    """A fixed width, or ``auto`` under a size budget (bits per weight) or an SNR floor (dB)."""

    fixed: int = 0
    budget: float = 0.0
    snr: float = 0.0

    @staticmethod
    def parse(text: str) -> BitsChoice:
        t = text.strip()
        if t.isdigit():
            return BitsChoice(fixed=int(t))
        if t == "auto" or (t.startswith("auto{") and t.endswith("}")):
            opts: dict[str, float] = {}
            for item in filter(None, (p.strip() for p in t[5:-1].split(","))):
                key, _, val = item.partition("=")
                if key.strip() not in ("budget", "snr"):
                    raise PipelineError(
                        f"quantize bits={t}: unknown auto option {key.strip()!r} (budget, snr)"
                    )
                try:
                    opts[key.strip()] = float(val)
                except ValueError:
                    raise PipelineError(f"quantize bits={t}: {key.strip()} needs a number") from None
            if len(opts) != 1:
                raise PipelineError(
                    f"quantize bits={t}: give exactly one of auto{{budget=BITS}} or auto{{snr=DB}}"
                )
            return BitsChoice(budget=opts.get("budget", 0.0), snr=opts.get("snr", 0.0))
        raise PipelineError(f"quantize bits={t!r}: expected 1..8, auto{{budget=BITS}} or auto{{snr=DB}}")


@dataclass(frozen=True)
class LayerReport:
    """What quantization did to one weight: its width, its bytes and its output error."""

    name: str
    kind: str  # "matmul" or "embedding"
    k: int
    n: int
    bits: int
    bytes: int
    float_bytes: int
    snr_db: float  # of the layer output on calibration activations
    rel_error: float  # ||y - y_q|| / ||y||
    snr_by_bits: dict[int, float] = field(default_factory=dict)


@dataclass
class _Site:
    node: Node
    name: str
    kind: str
    w: np.ndarray  # [K, N] float; an embedding table is stored transposed
    acts: np.ndarray  # calibration rows [R, K]


@dataclass(frozen=True)
class Quantize(Pass):
    """Rewrite matmuls with constant weights (and gathers from constant tables) to quantized ops.

    1-bit weights have no symmetric integer level but zero, so ``bits=1`` with the default
    ``scheme=sym`` quantizes as ``bipolar`` (+-s); the report and the IR show the scheme used.
    """

    name = "quantize"
    summary = (
        "quantize matmul weights to 1..8 bits (group-wise, RTN + clipping search; bits=auto mixes widths)"
    )

    bits: str = "4"
    group: int = 128
    scheme: Scheme = Scheme.SYM
    scale_dtype: str = "f16"
    act: Act = Act.F32
    skip: str = ""  # comma-separated glob patterns over weight names (constant refs) and locations
    embeddings: bool = False
    clip_search: int = 10
    min_size: int = 4096  # smaller weights stay float: the scales would outweigh the savings
    choices: str = "2,3,4,8"  # the widths bits=auto picks from
    calibration: str = ""  # .npz of graph inputs: real activations for bits=auto (else Gaussian rows)

    def run(self, graph: Graph, ctx: Context) -> Graph:
        graph, _ = self.apply(graph, ctx)
        return graph

    def qtype(self, bits: int) -> QuantType:
        sd = parse_dtype(self.scale_dtype)
        if not isinstance(sd, DType) or not sd.is_float:
            raise PipelineError(f"quantize scale_dtype={self.scale_dtype}: expected f16, bf16 or f32")
        scheme = Scheme.BIPOLAR if bits == 1 and self.scheme == Scheme.SYM else self.scheme
        q = QuantType(bits, scheme, self.group, sd, Layout.PACKED)
        try:
            q.verify()
        except VerifyError as e:
            raise PipelineError(f"quantize: {e}") from None
        return q

    def apply(self, graph: Graph, ctx: Context) -> tuple[Graph, list[LayerReport]]:
        """Quantize ``graph`` in place; also returns a report per quantized weight."""
        choice = BitsChoice.parse(self.bits)
        if choice.fixed and not 1 <= choice.fixed <= 8:
            raise PipelineError(f"quantize bits={choice.fixed}: kiln quantizes to 1..8 bits")
        sites = self._sites(graph, ctx)
        trials: dict[tuple[str, int], QuantizedWeight] = {}  # (weight, bits): each quantized once
        widths = self._choose(sites, choice, trials)
        done: dict[str, tuple[QuantizedWeight, LayerReport]] = {}
        for s in sites:
            if s.name not in done:
                done[s.name] = self._quantize_site(s, widths[s.name], trials)
        by_node = {s.node: s for s in sites}
        reports = [r for _, r in done.values()]
        users = graph.users()
        for name in done:  # a float weight only the rewritten nodes read is dropped: its name is reused
            const = next(n for n in graph.nodes if n.op == "constant" and n.attrs.ref == name)  # type: ignore[attr-defined]
            if all(u in by_node for u in users.get(const.result, [])):
                del graph.constants[name]

        def visit(node: Node, rw: Rewriter) -> list[Value] | None:
            s = by_node.get(node)
            if s is None:
                return None
            qw, _ = done[s.name]
            operands = rw.quantized(qw, s.name)
            if s.kind == "embedding":
                return [rw.op("qgather", *operands, node.operands[1])]
            return [rw.op("qmatmul", node.operands[0], *operands, act=self.act)]

        Rewriter(graph, ctx).run(visit)
        from .simplify import DCE

        DCE().run(graph, ctx)
        return graph, reports

    # --- which weights ---------------------------------------------------------------------

    def _skipped(self, name: str, loc: str | None) -> bool:
        pats = [p.strip() for p in self.skip.split(",") if p.strip()]
        return any(fnmatch.fnmatchcase(name, p) or (loc and fnmatch.fnmatchcase(loc, p)) for p in pats)

    def _sites(self, graph: Graph, ctx: Context) -> list[_Site]:
        producer = graph.producers()
        found: list[tuple[Node, str, str, np.ndarray, Value | None]] = []
        for node in graph.nodes:
            is_mm = node.op == "matmul"
            is_emb = self.embeddings and node.op == "gather" and node.attrs.axis == 0  # type: ignore[attr-defined]
            if not (is_mm or is_emb):
                continue
            src = node.operands[1] if is_mm else node.operands[0]
            p = producer.get(src)
            if p is None or p.op != "constant":
                continue
            name = p.attrs.ref  # type: ignore[attr-defined]
            w = graph.constants.get(name)
            t = src.type
            if w is None or w.ndim != 2 or not isinstance(t, TensorType) or not isinstance(t.dtype, DType):
                continue
            if not t.dtype.is_float or w.size < self.min_size or self._skipped(name, node.loc):
                continue
            found.append(
                (
                    node,
                    name,
                    "matmul" if is_mm else "embedding",
                    w if is_mm else w.T,
                    node.operands[0] if is_mm else None,
                )
            )
        acts = self._calibration(graph, ctx, [x for *_, x in found if x is not None])
        return [
            _Site(node, name, kind, np.asarray(w, np.float32), _rows(acts, x, name, w.shape[0]))
            for node, name, kind, w, x in found
        ]

    def _calibration(self, graph: Graph, ctx: Context, xs: list[Value]) -> dict[Value, np.ndarray]:
        """Each matmul's input activations on the calibration inputs (empty without a file)."""
        if not self.calibration or not xs:
            return {}
        try:
            with np.load(self.calibration, allow_pickle=False) as npz:
                inputs = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as e:
            raise PipelineError(f"quantize calibration={self.calibration}: cannot read it ({e})") from None
        uniq = list(dict.fromkeys(xs))
        extra = [(f"__calib{i}", x) for i, x in enumerate(uniq)]
        probe = Graph(graph.name, graph.inputs, graph.nodes, [*graph.outputs, *extra], graph.constants)
        out = interpret(probe, inputs, ctx)  # the same nodes, with each matmul input as an output
        return {
            x: np.asarray(out[f"__calib{i}"], np.float32).reshape(-1, np.shape(out[f"__calib{i}"])[-1])
            for i, x in enumerate(uniq)
        }

    # --- how many bits ---------------------------------------------------------------------

    def _quantize_site(
        self, s: _Site, bits: int, trials: dict[tuple[str, int], QuantizedWeight]
    ) -> tuple[QuantizedWeight, LayerReport]:
        qw = self._try(s, bits, trials)
        snr, rel = _output_error(s, qw)
        k, n = s.w.shape
        by_bits = {b: _output_error(s, q)[0] for (nm, b), q in trials.items() if nm == s.name}
        rep = LayerReport(s.name, s.kind, k, n, bits, qw.nbytes, s.w.size * 4, snr, rel, by_bits)
        return qw, rep

    def _choose(
        self, sites: list[_Site], choice: BitsChoice, trials: dict[tuple[str, int], QuantizedWeight]
    ) -> dict[str, int]:
        """Each weight's width; bits=auto quantizes every weight at every candidate width (kept in
        ``trials``) and compares the relative output noise power."""
        names = list(dict.fromkeys(s.name for s in sites))
        if choice.fixed:
            return dict.fromkeys(names, choice.fixed)
        try:
            widths = sorted({int(c) for c in self.choices.split(",") if c.strip()})
        except ValueError:
            raise PipelineError(f"quantize choices={self.choices!r}: expected widths like 2,3,4,8") from None
        if not widths or not all(1 <= b <= 8 for b in widths):
            raise PipelineError(f"quantize choices={self.choices!r}: widths must be 1..8")
        first = {s.name: s for s in sites}
        err = {
            nm: {b: _output_error(first[nm], self._try(first[nm], b, trials))[1] ** 2 for b in widths}
            for nm in names
        }
        if choice.snr:
            floor = 10 ** (-choice.snr / 10)  # relative noise power
            return {nm: next((b for b in widths if err[nm][b] <= floor), widths[-1]) for nm in names}
        size = {nm: first[nm].w.size for nm in names}
        total = sum(size.values())
        if choice.budget < widths[0]:
            raise PipelineError(
                f"quantize bits=auto{{budget={choice.budget}}} is below the narrowest width {widths[0]}"
            )
        pick = dict.fromkeys(names, widths[0])
        used = widths[0] * total
        while True:  # greedy: the upgrade that removes the most error per extra bit, while it fits
            best: tuple[float, str, int] | None = None
            for nm in names:
                i = widths.index(pick[nm])
                if i + 1 == len(widths):
                    continue
                nb = widths[i + 1]
                extra = (nb - pick[nm]) * size[nm]
                if used + extra > choice.budget * total:
                    continue
                gain = (err[nm][pick[nm]] - err[nm][nb]) / extra
                if best is None or gain > best[0]:
                    best = (gain, nm, nb)
            if best is None:
                return pick
            _, nm, nb = best
            used += (nb - pick[nm]) * size[nm]
            pick[nm] = nb

    def _try(self, s: _Site, bits: int, trials: dict[tuple[str, int], QuantizedWeight]) -> QuantizedWeight:
        if (s.name, bits) not in trials:
            trials[s.name, bits] = quantize(s.w, self.qtype(bits), name=s.name, clip_search=self.clip_search)
        return trials[s.name, bits]


def _gaussian(name: str, k: int, rows: int = 32) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # deterministic per weight
    return rng.standard_normal((rows, k)).astype(np.float32)


def _rows(acts: dict[Value, np.ndarray], x: Value | None, name: str, k: int) -> np.ndarray:
    if x is not None and x in acts:
        return acts[x]
    return _gaussian(name, k)


def _output_error(s: _Site, qw: QuantizedWeight) -> tuple[float, float]:
    """(SNR dB, relative error) of the layer output on the site's calibration rows."""
    y = s.acts.astype(np.float64) @ s.w.astype(np.float64)
    yq = s.acts.astype(np.float64) @ qw.dequantize().astype(np.float64)
    den = float(np.linalg.norm(y))
    return float(snr_db(y, yq)), float(np.linalg.norm(y - yq)) / den if den else 0.0


def quantize_model(graph: Graph, ctx: Context, **options: Any) -> tuple[Graph, list[LayerReport]]:
    """Quantize a copy of ``graph`` with ``Quantize(**options)``; returns it and the per-layer report."""
    try:
        p = Quantize(**options)
    except TypeError as e:
        raise PipelineError(f"quantize: {e}") from None
    return p.apply(graph.copy(), ctx)
