"""The ``kiln`` command: show, opt, run, quantize, passes, ops, targets.

Errors print one line (``kiln: error: ...``) and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
import typing
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .ir.errors import KilnError


def _parse_dims(items: Sequence[str] | None) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in items or ():
        name, eq, val = item.partition("=")
        if not eq or not val.isdigit():
            raise KilnError(f"bad --dim {item!r}: expected NAME=SIZE, e.g. --dim seq=128")
        dims[name] = int(val)
    return dims


def _load(path: str, weights: str | None, dims: Sequence[str] | None = None) -> typing.Any:
    from .ir.io import load

    p = Path(path)
    if not p.exists():
        raise KilnError(f"{path}: no such file")
    if p.suffix == ".onnx":
        from .frontends.onnx import from_onnx

        return from_onnx(p, dims=_parse_dims(dims))
    return load(p, weights=weights)


def _summary(graph: typing.Any) -> str:
    from .ir.cost import graph_costs

    table = graph_costs(graph)
    params = sum(int(np.size(v)) for v in graph.constants.values())
    pbytes = sum(int(np.asarray(v).nbytes) for v in graph.constants.values())
    lines = [
        f"// {len(graph.nodes)} nodes, {params:,} parameters ({pbytes / 2**20:.2f} MiB of constants)",
        f"// {'op':<14} {'count':>6} {'MFLOP':>12} {'MB moved':>10}",
    ]
    total_f = total_b = 0
    for op, (cnt, fl, by) in sorted(table.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0])):
        lines.append(f"// {op:<14} {cnt:>6} {fl / 1e6:>12.3f} {by / 1e6:>10.3f}")
        total_f, total_b = total_f + fl, total_b + by
    lines.append(f"// {'total':<14} {len(graph.nodes):>6} {total_f / 1e6:>12.3f} {total_b / 1e6:>10.3f}")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    graph = _load(args.file, args.weights, args.dim)
    graph.verify()
    if args.mlir:
        return _show_mlir(graph, args)
    if args.ptx:
        return _show_ptx(graph, args)
    if args.fusion or args.kernels or args.target:
        args.kernels = args.kernels or not args.fusion  # `--target T` alone shows T's generated code
        args.target = args.target or "numba-cpu"
        return _show_compiled(graph, args)
    sys.stdout.write(graph.as_text(locs=args.locs))
    if args.summary or Path(args.file).suffix == ".onnx":
        print(_summary(graph))
    return 0


def _fusion_report(graph: typing.Any) -> str:
    from .passes.fuse import kernel_counts

    ops, kernels = kernel_counts(graph)
    lines = [f"// {kernels} kernels for {ops} ops ({ops / max(kernels, 1):.1f}x fewer launches)"]
    for n in graph.nodes:
        if n.op == "fused":
            body = n.attrs.body
            members = [m.op for m in body.nodes if m.op != "constant"]
            outs = ", ".join(str(r.type) for r in n.results)
            lines.append(
                f"//   fused {n.attrs.kind:<11} {len(body.inputs)} in -> {outs}: {' > '.join(members)}"
            )
        elif n.op not in (
            "constant",
            "reshape",
            "squeeze",
            "unsqueeze",
            "transpose",
            "slice",
            "split",
            "broadcast_to",
        ):
            lines.append(f"//   {n.op:<17} -> {', '.join(str(r.type) for r in n.results)}")
    return "\n".join(lines)


def _show_compiled(graph: typing.Any, args: argparse.Namespace) -> int:
    from .backends import get_backend
    from .ir.targets import get_target
    from .runtime.executable import compile_graph

    if get_target(args.target).device == "gpu" and not args.fusion:
        # the generated code needs no GPU: show it without compiling (which would need one)
        print(get_backend(args.target).source(_pipelined(graph, args)))
        return 0
    exe = compile_graph(graph, args.target, args.pipeline)
    if args.fusion:
        sys.stdout.write(exe.graph.as_text())
        print(_fusion_report(exe.graph))
    if args.kernels:
        src = exe.backend.source(exe.graph)
        print(src if src else f"// target '{args.target}' generates no source (it interprets the IR)")
    return 0


def _pipelined(graph: typing.Any, args: argparse.Namespace) -> typing.Any:
    """``graph`` after ``-p`` (or, with ``--target``, that target's pipeline)."""
    from .ir.targets import get_target
    from .passes.manager import PassManager

    spec = (
        args.pipeline
        if args.pipeline is not None
        else get_target(args.target).pipeline
        if args.target
        else ""
    )
    return PassManager.parse(spec).run(graph) if spec else graph


def _show_mlir(graph: typing.Any, args: argparse.Namespace) -> int:
    from .ir.mlir import export

    g = _pipelined(graph, args)
    exported = export(g, dims=_parse_dims(args.dim), lower_kiln=not args.kiln_dialect)
    sys.stdout.write(exported.as_text(locs=args.locs))
    return 0


def _show_ptx(graph: typing.Any, args: argparse.Namespace) -> int:
    from .backends.mlir import MlirCudaBackend

    if args.target not in (None, "mlir-cuda"):
        raise KilnError(f"--ptx needs --target mlir-cuda (got --target {args.target})")
    args.target = "mlir-cuda"
    sys.stdout.write(MlirCudaBackend().ptx(_pipelined(graph, args), _parse_dims(args.dim), chip=args.chip))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from .passes.manager import DEFAULT_PIPELINE, builtin_passes

    for name, cls in builtin_passes().items():
        print(f"{name:<16} {cls.summary}")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if isinstance(hint, type) and issubclass(hint, enum.Enum):  # show the choices, not a repr
                print(f"    {f.name}: {' | '.join(str(m.value) for m in hint)} = {f.default.value}")  # type: ignore[attr-defined]
                continue
            t = getattr(hint, "__name__", str(hint))
            print(f"    {f.name}: {t} = {f.default!r}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0


def cmd_ops(args: argparse.Namespace) -> int:
    from .ir.registry import default_context

    for name, op in default_context().ops.items():
        kind = "composite" if op.composite else "primitive"
        operands = ", ".join(op.operands) + ("..." if op.variadic else "")
        attrs = ", ".join(f.name for f in dataclasses.fields(op.attrs))
        print(f"{name:<12} {kind:<9} ({operands}){' {' + attrs + '}' if attrs else ''}  {op.doc}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .ir.targets import TARGETS

    for t in TARGETS:
        print(f"{t.name:<12} {t.device:<4} {t.description}")
    return 0


def cmd_opt(args: argparse.Namespace) -> int:
    from .ir.io import save
    from .passes.manager import PassManager

    graph = _load(args.file, args.weights, args.dim)
    pm = PassManager.parse(
        args.pipeline,
        verify_each=args.verify_each,
        print_after=frozenset(args.print_ir_after or ()),
        print_after_all=args.print_ir_after_all,
        out=sys.stderr,
    )
    out = pm.run(graph)
    if args.output:
        save(out, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(out.as_text())
    if args.timing:
        print(pm.timing_report(), file=sys.stderr)
    return 0


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise KilnError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise KilnError(f"cannot read inputs {path}: {e}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime.executable import compile_graph

    graph = _load(args.file, args.weights, args.dim)
    inputs = _read_npz(args.inputs) if args.inputs else {}
    exe = compile_graph(graph, args.target, args.pipeline)
    outs = exe.run(inputs)
    if args.output:
        np.savez(args.output, **outs)
        print(f"wrote {len(outs)} outputs to {args.output}", file=sys.stderr)
    else:
        for name, v in outs.items():
            arr = np.asarray(v)
            print(f"{name}: {arr.dtype}{list(arr.shape)}")
            print(np.array2string(arr, threshold=20, edgeitems=3))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .ir.registry import default_context
    from .passes.manager import PassManager
    from .passes.quantize import quantize_model
    from .passes.quantize_report import compare_models, format_report, synthetic_inputs

    ctx = default_context()
    graph = _load(args.file, args.weights, args.dim)
    graph.verify(ctx)
    bind = " ".join(args.dim or ()) if not args.file.endswith(".onnx") else ""
    prep = (f'infer-shapes{{bind="{bind}"}},' if bind else "") + "canonicalize,constant-fold,cse,dce"
    graph = PassManager.parse(prep, ctx=ctx).run(graph)  # binds .kir dims; folds transposed weights
    from .ir.dtypes import Scheme
    from .ir.ops.quant import Act

    try:
        scheme, act = Scheme(args.scheme), Act(args.act)
    except ValueError as e:
        raise KilnError(f"kiln quantize: {e}") from None
    options = {
        "bits": args.bits, "group": args.group, "scheme": scheme, "act": act, "skip": args.skip or "",
        "embeddings": args.embeddings, "calibration": args.calibration or "", "scale_dtype": args.scale_dtype,
    }  # fmt: skip
    qgraph, layers = quantize_model(graph, ctx, **options)
    if args.layout != "packed":
        qgraph = PassManager.parse(f"bitslice{{layout={args.layout}}}", ctx=ctx).run(qgraph)
    if args.report:
        inputs = _read_npz(args.inputs) if args.inputs else synthetic_inputs(graph)
        print(format_report(layers, compare_models(graph, qgraph, inputs, ctx)), end="")
    if args.output:
        if args.output.endswith(".onnx"):
            from .frontends.onnx_export import to_onnx

            to_onnx(qgraph, args.output)
        else:
            from .ir.io import save

            save(qgraph, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    elif not args.report:
        sys.stdout.write(qgraph.as_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln",
        description="kiln: lower agent and transformer graphs to fused, quantized kernels.",
    )
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("show", help="print (and verify) an IR file")
    s.add_argument("file", help="a .kir text IR file or an .onnx model")
    s.add_argument("--weights", help="the constants (.npz); default: FILE with .npz")
    s.add_argument("--locs", action="store_true", help="print source locations")
    s.add_argument(
        "--summary", action="store_true", help="ops by type, parameters, FLOPs, bytes (always for .onnx)"
    )
    s.add_argument("--dim", action="append", metavar="NAME=SIZE", help="bind a symbolic dim")
    s.add_argument(
        "--target", help="print this target's generated code (jax: Python and StableHLO); default numba-cpu"
    )
    s.add_argument(
        "-p", "--pipeline", default=None, help="pipeline for --fusion/--kernels (default: the target's)"
    )
    s.add_argument(
        "--fusion", action="store_true", help="print the IR after the target's pipeline and its kernel groups"
    )
    s.add_argument("--kernels", action="store_true", help="print the generated kernel source")
    s.add_argument("--mlir", action="store_true", help="print the graph as an MLIR module (bind dims: --dim)")
    s.add_argument(
        "--kiln-dialect", action="store_true", help="with --mlir: keep quantized ops as kiln dialect ops"
    )
    s.add_argument("--ptx", action="store_true", help="print PTX (--target mlir-cuda; bind dims: --dim)")
    s.add_argument("--chip", default="sm_90", help="GPU architecture for --ptx (sm_80, sm_90, ...)")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("passes", help="list passes and their options")
    s.set_defaults(fn=cmd_passes)
    s = sub.add_parser("ops", help="list ops (primitive or composite), operands and attributes")
    s.set_defaults(fn=cmd_ops)
    s = sub.add_parser("targets", help="list compilation targets")
    s.set_defaults(fn=cmd_targets)

    s = sub.add_parser("opt", help="run a pass pipeline on an IR file (like mlir-opt)")
    s.add_argument("file")
    s.add_argument("-p", "--pipeline", required=True, help="e.g. canonicalize,cse,dce")
    s.add_argument("-o", "--output", help="write the result (.kir, weights beside it)")
    s.add_argument("--weights")
    s.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    s.add_argument("--print-ir-after", action="append", metavar="PASS", help="print IR after PASS")
    s.add_argument("--print-ir-after-all", action="store_true")
    s.add_argument("--timing", action="store_true", help="print per-pass times")
    s.add_argument("--dim", action="append", metavar="NAME=SIZE", help="bind a symbolic dim")
    s.set_defaults(fn=cmd_opt)

    s = sub.add_parser("run", help="run an IR file or ONNX model on inputs from a .npz")
    s.add_argument("file")
    s.add_argument("--inputs", help=".npz with one array per graph input, by name")
    s.add_argument("--target", default="reference")
    s.add_argument("-p", "--pipeline", default=None, help="pass pipeline (default cleanup)")
    s.add_argument("-o", "--output", help="write outputs to this .npz")
    s.add_argument("--weights")
    s.add_argument("--dim", action="append", metavar="NAME=SIZE", help="bind a symbolic dim")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("quantize", help="quantize a model's weights (1..8 bits); --report measures the error")
    s.add_argument("file", help="a .kir file or an .onnx model")
    s.add_argument("--bits", default="4", help="1..8, auto{budget=BITS} or auto{snr=DB} (default 4)")
    s.add_argument("--group", type=int, default=128, help="weights per scale along K; 0 = per channel")
    s.add_argument("--scheme", default="sym", help="sym, asym or bipolar")
    s.add_argument(
        "--act",
        default="f32",
        help="f32, int8 (dynamic per-row activation quantization) or binary (mean(|x|) * sign(x) per row)",
    )
    s.add_argument("--scale-dtype", default="f16", help="f16, bf16 or f32")
    s.add_argument("--layout", default="packed", help="packed, bitsliced, or auto (from the target's costs)")
    s.add_argument("--skip", help="comma-separated glob patterns of weight names to leave in float")
    s.add_argument("--embeddings", action="store_true", help="also quantize gathered embedding tables")
    s.add_argument("--calibration", help=".npz of model inputs whose activations measure each layer")
    s.add_argument("--inputs", help=".npz of model inputs for --report (default: synthetic)")
    s.add_argument("--report", action="store_true", help="print per-layer and whole-model error")
    s.add_argument("-o", "--output", help="write the quantized model (.kir, or .onnx with MatMulNBits)")
    s.add_argument("--weights")
    s.add_argument("--dim", action="append", metavar="NAME=SIZE", help="bind a symbolic dim")
    s.set_defaults(fn=cmd_quantize)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return int(args.fn(args))
    except KilnError as e:
        if args.debug:
            raise
        print(f"kiln: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
