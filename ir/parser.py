"""Parse the text form (see printer.py) back to a graph; errors carry line and column."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types as pytypes
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

from .builder import infer_types
from .core import Attrs, Graph, Node, Value
from .dtypes import DType, Layout, QuantType, Scheme, parse_dtype
from .errors import KilnError, ParseError, VerifyError
from .registry import Context, OpDef, default_context
from .types import HOST_KINDS, Dim, HostType, TensorType, Type

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+|\#[^\n]*)
  | (?P<nl>\n)
  | (?P<value>%[A-Za-z0-9_.]+|%"(?:[^"\\]|\\.)*")
  | (?P<symbol>@[A-Za-z0-9_.]+|@"(?:[^"\\]|\\.)*")
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?|\d+)|-inf)
  | (?P<arrow>->)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{}<>,:=!])
    """,
    re.VERBOSE,
)


@dataclasses.dataclass
class Tok:
    kind: str
    text: str
    line: int
    col: int


def tokenize(text: str, source: str | None) -> list[Tok]:
    toks: list[Tok] = []
    line, line_start, pos = 1, 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"unexpected character {text[pos]!r}", line, pos - line_start + 1, source)
        kind = m.lastgroup or ""
        if kind == "nl":
            line, line_start = line + 1, m.end()
        elif kind != "ws":
            tok = Tok(kind, m.group(), line, pos - line_start + 1)
            quoted = tok.text.find('"')
            if quoted >= 0:  # strings are JSON: reject raw control characters and bad escapes here
                try:
                    json.loads(tok.text[quoted:])
                except json.JSONDecodeError as e:
                    raise ParseError(f"bad string {tok.text!r}: {e.msg}", tok.line, tok.col, source) from None
            toks.append(tok)
        pos = m.end()
    toks.append(Tok("eof", "", line, pos - line_start + 1))
    return toks


class Parser:
    def __init__(
        self,
        text: str,
        ctx: Context,
        weights: Mapping[str, np.ndarray] | None,
        source: str | None,
    ) -> None:
        self.toks = tokenize(text, source)
        self.i = 0
        self.ctx = ctx
        self.weights = weights or {}
        self.source = source
        self.values: dict[str, Value] = {}

    # -- token helpers ----------------------------------------------------------------------
    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def error(self, msg: str, tok: Tok | None = None) -> ParseError:
        t = tok or self.tok
        return ParseError(msg, t.line, t.col, self.source)

    def next(self) -> Tok:
        t = self.tok
        self.i += 1
        return t

    def at(self, text: str) -> bool:
        return self.tok.text == text and self.tok.kind != "string"

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str = "") -> Tok:
        if not self.at(text):
            found = self.tok.text or "end of input"
            raise self.error(f"expected '{text}'{' ' + what if what else ''}, found '{found}'")
        return self.next()

    def expect_kind(self, kind: str, what: str) -> Tok:
        if self.tok.kind != kind:
            raise self.error(f"expected {what}, found '{self.tok.text or 'end of input'}'")
        return self.next()

    @staticmethod
    def strip_sigil(text: str) -> str:
        body = text[1:]
        return json.loads(body) if body.startswith('"') else body

    def name(self) -> str:
        t = self.tok
        if t.kind in ("ident", "string"):
            self.i += 1
            return json.loads(t.text) if t.kind == "string" else t.text
        raise self.error(f"expected a name, found '{t.text or 'end of input'}'")

    # -- types ------------------------------------------------------------------------------
    def parse_type(self) -> Type:
        start = self.tok
        try:
            if self.accept("!"):
                kind = self.expect_kind("ident", "a host type (str, bytes, json, tokens, handle)")
                if kind.text not in HOST_KINDS:
                    raise self.error(f"unknown host type !{kind.text}", kind)
                tag = ""
                if self.accept("<"):
                    tag = self.expect_kind("ident", "a handle tag").text
                    self.expect(">")
                t: Type = HostType(kind.text, tag)  # type: ignore[arg-type]
                t.verify()
                return t
            dt_tok = self.expect_kind("ident", "a type such as f32[2,3]")
            dtype: DType | QuantType
            if dt_tok.text == "q":
                dtype = self.parse_quant()
            else:
                dtype = parse_dtype(dt_tok.text)
            self.expect("[", "to open the shape")
            dims: list[Dim] = []
            while not self.at("]"):
                d = self.next()
                if d.kind == "number" and d.text.isdigit():
                    dims.append(int(d.text))
                elif d.kind == "ident":
                    dims.append(d.text)
                else:
                    raise self.error(f"bad dim '{d.text}': dims are sizes or symbol names", d)
                if not self.accept(","):
                    break
            self.expect("]", "to close the shape")
            tt = TensorType(dtype, tuple(dims))
            tt.verify()
            return tt
        except VerifyError as e:
            raise self.error(str(e), start) from None

    def parse_quant(self) -> QuantType:
        self.expect("<")
        bits_tok = self.expect_kind("number", "quantized bits")
        if not bits_tok.text.isdigit():
            raise self.error(f"bad quantized width '{bits_tok.text}': expected an integer", bits_tok)
        bits = int(bits_tok.text)
        self.expect(",")
        scheme = self.enum_ident(Scheme, "a scheme")
        self.expect(",")
        g = self.expect_kind("ident", "a group such as g128").text
        if not (g.startswith("g") and g[1:].isdigit()):
            raise self.error(f"bad group '{g}': expected g<N>")
        self.expect(",")
        scale = parse_dtype(self.expect_kind("ident", "a scale dtype").text)
        self.expect(",")
        layout = self.enum_ident(Layout, "a layout")
        self.expect(">")
        q = QuantType(bits, scheme, int(g[1:]), scale, layout)
        q.verify()
        return q

    def enum_ident(self, cls: type[Scheme] | type[Layout], what: str) -> Any:
        tok = self.expect_kind("ident", what)
        try:
            return cls(tok.text)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise self.error(
                f"bad {cls.__name__.lower()} '{tok.text}': expected one of {allowed}", tok
            ) from None

    # -- attributes -------------------------------------------------------------------------
    def parse_literal(self) -> Any:
        t = self.tok
        if self.accept("["):
            items = []
            while not self.at("]"):
                items.append(self.parse_literal())
                if not self.accept(","):
                    break
            self.expect("]")
            return items
        self.i += 1
        if t.kind == "number":
            if t.text == "-inf":
                return float("-inf")
            is_float = any(c in t.text for c in ".eE")
            return float(t.text) if is_float else int(t.text)
        if t.kind == "string":
            return json.loads(t.text)
        if t.kind == "ident":
            if t.text == "graph":
                self.i -= 1
                return self.parse_region()
            if t.text in ("true", "false"):
                return t.text == "true"
            if t.text in ("inf", "nan"):
                return float(t.text)
            return _Ident(t.text)
        raise self.error(f"expected a value, found '{t.text or 'end of input'}'", t)

    def parse_attrs(self, opdef: OpDef) -> Attrs:
        raw: dict[str, tuple[Any, Tok, Tok]] = {}
        if self.accept("{"):
            while not self.at("}"):
                key_tok = self.expect_kind("ident", "an attribute name")
                if key_tok.text in raw:
                    raise self.error(f"attribute '{key_tok.text}' is given twice", key_tok)
                self.expect("=")
                val_tok = self.tok
                raw[key_tok.text] = (self.parse_literal(), val_tok, key_tok)
                if not self.accept(","):
                    break
            self.expect("}")
        cls = opdef.attrs
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, (val, tok, key_tok) in raw.items():
            if key not in fields:
                allowed = ", ".join(fields) or "none"
                raise self.error(
                    f"unknown attribute '{key}' for '{opdef.name}' (it takes: {allowed})", key_tok
                )
            try:
                kwargs[key] = convert(val, hints[key])
            except (TypeError, ValueError, VerifyError) as e:
                raise self.error(f"attribute '{key}' of '{opdef.name}': {e}", tok) from None
        missing = [
            n
            for n, f in fields.items()
            if n not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise self.error(f"'{opdef.name}' is missing attribute(s) {', '.join(missing)}")
        attrs = cls(**kwargs)
        try:
            attrs.verify()
        except VerifyError as e:
            raise self.error(f"'{opdef.name}': {e}") from None
        return attrs

    # -- graph ------------------------------------------------------------------------------
    def define(self, tok: Tok, t: Type) -> Value:
        name = self.strip_sigil(tok.text)
        if name in self.values:
            raise self.error(f"%{name} is defined twice", tok)
        v = Value(t, name)
        self.values[name] = v
        return v

    def use(self) -> Value:
        tok = self.expect_kind("value", "a %value")
        name = self.strip_sigil(tok.text)
        if name not in self.values:
            raise self.error(f"%{name} is used before it is defined", tok)
        return self.values[name]

    def parse_graph(self) -> Graph:
        graph = self.parse_graph_def()
        if self.tok.kind != "eof":
            raise self.error(f"unexpected '{self.tok.text}' after the graph")
        return graph

    def parse_region(self) -> Graph:
        """A nested graph (a fused kernel's body): its own value names, checked like any graph."""
        saved = self.values
        self.values = {}
        try:
            graph = self.parse_graph_def()
        finally:
            self.values = saved
        return graph

    def parse_graph_def(self) -> Graph:
        self.expect("graph", "to start a graph")
        gname = self.strip_sigil(self.expect_kind("symbol", "a graph name such as @main").text)
        self.expect("(")
        inputs: list[Value] = []
        while not self.at(")"):
            tok = self.expect_kind("value", "an input such as %x")
            self.expect(":")
            inputs.append(self.define(tok, self.parse_type()))
            if not self.accept(","):
                break
        self.expect(")")
        declared: list[tuple[str, Type, Tok]] = []
        if self.accept("->"):
            self.expect("(")
            while not self.at(")"):
                ntok = self.tok
                n = self.name()
                self.expect(":")
                declared.append((n, self.parse_type(), ntok))
                if not self.accept(","):
                    break
            self.expect(")")
        self.expect("{")
        graph = Graph(gname, inputs, [], [])
        while not self.at("return"):
            if self.tok.kind == "eof" or self.at("}"):
                raise self.error("missing 'return' before the end of the graph")
            graph.nodes.append(self.parse_node(graph))
        self.expect("return")
        while not self.at("}"):
            ntok = self.tok
            n = self.name()
            self.expect("=")
            v = self.use()
            if n in graph.output_names:
                raise self.error(f"duplicate output name {n!r}", ntok)
            graph.outputs.append((n, v))
            if not self.accept(","):
                break
        self.expect("}")
        if declared:
            got = [(n, v.type) for n, v in graph.outputs]
            if [(n, t) for n, t, _ in declared] != got:
                raise self.error(
                    "the signature's results "
                    + ", ".join(f"{n}: {t}" for n, t, _ in declared)
                    + " do not match the return "
                    + ", ".join(f"{n}: {t}" for n, t in got),
                    declared[0][2],
                )
        return graph

    def parse_node(self, graph: Graph) -> Node:
        start = self.tok
        result_toks = [self.expect_kind("value", "a result such as %0")]
        while self.accept(","):
            result_toks.append(self.expect_kind("value", "a result"))
        self.expect("=")
        op_tok = self.expect_kind("ident", "an op name")
        try:
            opdef = self.ctx.lookup(op_tok.text)
        except KilnError as e:
            raise self.error(str(e), op_tok) from None
        operands: list[Value] = []
        if self.accept("("):
            while not self.at(")"):
                operands.append(self.use())
                if not self.accept(","):
                    break
            self.expect(")")
        attrs = self.parse_attrs(opdef)
        dense: np.ndarray | None = None
        dense_tok = self.tok
        if self.accept("dense"):
            self.expect("<")
            dense_val = self.parse_literal()
            self.expect(">")
        self.expect(":", "before the result types")
        types = [self.parse_type()]
        while self.accept(","):
            types.append(self.parse_type())
        loc = None
        if self.accept("loc"):
            self.expect("(")
            loc = json.loads(self.expect_kind("string", "a location string").text)
            self.expect(")")
        if len(types) != len(result_toks):
            raise self.error(f"{len(result_toks)} results but {len(types)} types", start)
        results = [self.define(t, ty) for t, ty in zip(result_toks, types, strict=True)]
        node = Node(op_tok.text, operands, attrs, results, loc)
        if node.op == "constant":
            ref = attrs.ref  # type: ignore[attr-defined]
            if dense_tok.text == "dense":
                try:
                    dense = make_dense(dense_val, types[0])
                except (ValueError, TypeError, OverflowError, VerifyError) as e:
                    raise self.error(f"bad constant data: {e}", dense_tok) from None
            elif ref in self.weights:
                dense = np.asarray(self.weights[ref])
            if ref in graph.constants:
                raise self.error(f"constant ref {ref!r} is used twice", start)
            if dense is not None:
                graph.constants[ref] = dense
        elif dense_tok.text == "dense":
            raise self.error("only constants carry dense<...> data", dense_tok)
        self.check_node(graph, node, start)
        return node

    def check_node(self, graph: Graph, node: Node, tok: Tok) -> None:
        from .verifier import verify_node

        if node.op != "constant":
            opdef = self.ctx.lookup(node.op)
            try:
                inferred = infer_types(opdef, node.attrs, [v.type for v in node.operands])
            except KilnError as e:
                raise self.error(str(e), tok) from None
            got = [r.type for r in node.results]
            if inferred != got:
                raise self.error(
                    f"'{node.op}' results typed {', '.join(map(str, got))}, but the op infers "
                    + ", ".join(map(str, inferred)),
                    tok,
                )
        try:
            verify_node(graph, node, self.ctx)
        except KilnError as e:
            raise self.error(str(e), tok) from None


class _Ident(str):
    """A bare identifier in an attribute value (a dtype, or a symbolic dim)."""


def convert(val: Any, hint: Any) -> Any:
    """Convert a parsed literal to the attribute field's annotated type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, pytypes.UnionType):
        errors = []
        for arm in typing.get_args(hint):
            try:
                return convert(val, arm)
            except (TypeError, ValueError, VerifyError) as e:
                errors.append(str(e))
        raise TypeError(f"{val!r} does not fit {hint}")
    if origin is tuple:
        if not isinstance(val, list):
            raise TypeError(f"expected a list, got {val!r}")
        arm = typing.get_args(hint)[0]
        return tuple(convert(x, arm) for x in val)
    if hint is Graph:
        if not isinstance(val, Graph):
            raise TypeError(f"expected a graph (a region), got {val!r}")
        return val
    if hint is DType:
        if not isinstance(val, _Ident):
            raise TypeError(f"expected a dtype, got {val!r}")
        return parse_dtype(val)
    if hint is bool:
        if not isinstance(val, bool):
            raise TypeError(f"expected true or false, got {val!r}")
        return val
    if hint is int:
        if isinstance(val, bool) or not isinstance(val, int):
            raise TypeError(f"expected an integer, got {val!r}")
        return val
    if hint is float:
        if isinstance(val, bool) or not isinstance(val, int | float):
            raise TypeError(f"expected a number, got {val!r}")
        return float(val)
    if hint is str:
        if isinstance(val, _Ident):
            return str(val)  # symbolic dims are bare identifiers
        if not isinstance(val, str):
            raise TypeError(f"expected a string, got {val!r}")
        return val
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        try:
            return hint(str(val))
        except ValueError:
            raise TypeError(f"expected one of {[m.value for m in hint]}, got {val!r}") from None
    raise TypeError(f"unsupported attribute type {hint}")


def make_dense(val: Any, t: Type) -> np.ndarray:
    if not isinstance(t, TensorType) or not isinstance(t.dtype, DType):
        raise VerifyError(f"dense data needs a plain tensor type, got {t}")
    if t.dtype.is_int:
        if any(isinstance(x, float) for x in np.ravel(np.array(val, dtype=object))):
            raise VerifyError(f"{t.dtype} data must be integers")
        arr = np.array(val, dtype=t.dtype.np_dtype)  # exact, and OverflowError when out of range
    else:
        arr = np.array(val, dtype=np.float64 if t.dtype.is_float else None)
        if t.dtype.is_bool:
            arr = arr.astype(np.bool_)
        arr = arr.astype(t.dtype.np_dtype)
    if arr.size == 0 and 0 in t.shape:
        arr = arr.reshape(t.static_shape)  # dense<[]> holds any empty shape
    if tuple(arr.shape) != t.shape:
        raise VerifyError(f"data of shape {list(arr.shape)} does not match {t}")
    return arr


def parse(
    text: str,
    *,
    weights: Mapping[str, np.ndarray] | None = None,
    ctx: Context | None = None,
    source: str | None = None,
) -> Graph:
    """Parse IR text to a verified graph. ``weights`` supplies the data of large constants."""
    return Parser(text, ctx or default_context(), weights, source).parse_graph()
