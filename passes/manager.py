"""The pass manager: named pipelines from strings, per-pass timing, IR dumps and verification.

A pipeline is ``name{opt=value,...},name,...``; ``kiln passes`` lists the passes and options.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..ir.core import Graph
from ..ir.errors import KilnError, PipelineError
from ..ir.registry import Context, default_context
from .base import Pass
from .bitslice import Bitslice
from .canonicalize import Canonicalize
from .fuse import Fuse
from .fuse_attention import FuseAttention
from .fuse_horizontal import FuseHorizontal
from .infer_shapes import InferShapes, Verify
from .quantize import Quantize
from .simplify import CSE, DCE, ConstantFold
from .unfuse import Unfuse


def builtin_passes() -> dict[str, type[Pass]]:
    """Every pass kiln ships, by pipeline name."""
    return {
        p.name: p
        for p in (
            Verify,
            InferShapes,
            Canonicalize,
            ConstantFold,
            CSE,
            DCE,
            Unfuse,
            FuseAttention,
            FuseHorizontal,
            Fuse,
            Quantize,
            Bitslice,
        )
    }


DEFAULT_PIPELINE = "canonicalize,constant-fold,cse,dce"

# options in braces; a quoted value may hold braces and commas (Pass.spec quotes such values)
# and an unquoted value may hold one level of braces: bits=auto{budget=3}
_ITEM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*(\{(?:[^{}"]|"(?:[^"\\]|\\.)*"|\{[^{}]*\})*\})?\s*(,|$)')
_OPT = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*("(?:[^"\\]|\\.)*"|(?:[^,{}]|\{[^{}]*\})*)\s*(,|$)')


def _convert_option(pass_name: str, f: dataclasses.Field[Any], hint: Any, raw: str) -> Any:
    raw = raw.strip()
    if raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1]
    try:
        if hint is bool:
            if raw not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return raw in ("true", "1")
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
            choices = [m.value for m in hint]
            if raw not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}")
            return hint(raw)
        return raw
    except ValueError as e:
        raise PipelineError(f"pass '{pass_name}' option '{f.name}={raw}': {e}") from None


def parse_pipeline(
    text: str, passes: dict[str, type[Pass]] | None = None, default: str | None = None
) -> list[Pass]:
    """``"canonicalize,cse,constant-fold{max_elements=100}"`` -> pass instances.

    With ``default`` (a target's pipeline), the item ``default`` stands for it:
    ``"quantize{bits=4},default"`` quantizes, then runs the target's usual passes.
    """
    registry = passes if passes is not None else builtin_passes()
    out: list[Pass] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m:
            raise PipelineError(f"bad pipeline at character {pos + 1}: {text[pos:]!r}")
        name, opts = m.group(1), m.group(2)
        if name == "default" and default is not None and not opts:
            out.extend(parse_pipeline(default, passes))
            pos = m.end()
            continue
        if name not in registry:
            raise PipelineError(
                f"unknown pass '{name}' in pipeline {text!r}; known: {', '.join(sorted(registry))}"
            )
        cls = registry[name]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        body = (opts or "{}")[1:-1].strip()
        opos = 0
        while opos < len(body):
            om = _OPT.match(body, opos)
            if not om:
                raise PipelineError(f"bad options for pass '{name}': {{{body}}}")
            key, raw = om.group(1), om.group(2)
            if key not in fields:
                raise PipelineError(
                    f"pass '{name}' has no option '{key}'; options: {', '.join(fields) or 'none'}"
                )
            kwargs[key] = _convert_option(name, fields[key], hints[key], raw)
            opos = om.end()
        out.append(cls(**kwargs))
        pos = m.end()
    return out


@dataclass
class PassManager:
    """Runs passes in order on a copy of the graph.

    ``verify_each`` checks the IR after every pass; ``print_after`` names passes after which the
    IR is printed to ``out`` (``print_after_all`` prints after every pass). Timings are kept in
    ``timings`` as (pass spec, seconds).
    """

    passes: Sequence[Pass]
    verify_each: bool = False
    print_after: frozenset[str] = frozenset()
    print_after_all: bool = False
    out: TextIO | None = None
    ctx: Context = field(default_factory=default_context)
    timings: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def parse(cls, pipeline: str, default: str | None = None, **kwargs: Any) -> PassManager:
        return cls(parse_pipeline(pipeline, default=default), **kwargs)

    def run(self, graph: Graph) -> Graph:
        known = {p.name for p in self.passes}
        unknown = set(self.print_after) - known
        if unknown:
            raise PipelineError(
                f"--print-ir-after names {sorted(unknown)}, not in the pipeline ({sorted(known)})"
            )
        g = graph.copy()
        self.timings = []
        for p in self.passes:
            t0 = time.perf_counter()
            try:
                g = p.run(g, self.ctx)
            except KilnError as e:
                raise PipelineError(f"pass '{p.spec()}' failed: {e}") from None
            self.timings.append((p.spec(), time.perf_counter() - t0))
            if self.verify_each:
                try:
                    g.verify(self.ctx)
                except KilnError as e:
                    raise PipelineError(
                        f"pass '{p.spec()}' produced invalid IR: {e} (see it with --print-ir-after={p.name})"
                    ) from None
            if self.print_after_all or p.name in self.print_after:
                out = self.out or sys.stderr
                out.write(f"// ----- IR after {p.spec()} -----\n{g.as_text()}")
        return g

    def timing_report(self) -> str:
        total = sum(t for _, t in self.timings) or 1e-12
        lines = [f"{'pass':<32} {'ms':>9} {'%':>6}"]
        for name, t in self.timings:
            lines.append(f"{name:<32} {t * 1e3:9.3f} {100 * t / total:6.1f}")
        lines.append(f"{'total':<32} {total * 1e3:9.3f}")
        return "\n".join(lines)
