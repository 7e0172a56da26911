"""Malformed IR text raises ParseError at the right line and column, with a helpful message."""

import re

import pytest

from kiln.ir.errors import KilnError, ParseError
from kiln.ir.parser import Parser, parse
from kiln.ir.registry import default_context

GOOD = """graph @g(%x: f32[2,2]) -> (y: f32[2,2]) {
  %0 = neg(%x) : f32[2,2]
  %1 = softmax(%0) {axis=1} : f32[2,2]
  return y=%1
}
"""


def test_good_text_parses() -> None:
    g = parse(GOOD)
    assert g.as_text() == GOOD


def position(text: str, needle: str | None, nth: int = 1) -> tuple[int, int]:
    """1-based (line, col) of the nth occurrence of ``needle`` (None: the end of the text)."""
    if needle is None:
        i = len(text)
    else:
        i = -1
        for _ in range(nth):
            i = text.index(needle, i + 1)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def bad(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


# (id, text, where the error points: (needle, nth) or None for the end, message pattern)
MALFORMED: list[tuple[str, str, tuple[str | None, int], str]] = [
    (
        "unknown-op",
        bad("neg(%x)", "negate(%x)"),
        ("negate", 1),
        r"unknown op 'negate'; did you mean 'neg'",
    ),
    (
        "unknown-attribute",
        bad("{axis=1}", "{axis=1, axes=[1]}"),
        ("axes", 1),
        r"unknown attribute 'axes' for 'softmax' \(it takes: axis\)",
    ),
    (
        "bad-attribute-value",
        bad("{axis=1}", '{axis="one"}'),
        ('"one"', 1),
        r"attribute 'axis' of 'softmax': expected an integer",
    ),
    (
        "missing-attribute",
        bad(" {axis=1}", ""),
        (": f32[2,2]\n  return", 1),
        r"'softmax' is missing attribute\(s\) axis",
    ),
    (
        "undefined-value",
        bad("softmax(%0)", "softmax(%zz)"),
        ("%zz", 1),
        r"%zz is used before it is defined",
    ),
    (
        "undefined-in-return",
        bad("y=%1", "y=%2"),
        ("%2", 1),
        r"%2 is used before it is defined",
    ),
    (
        "use-before-definition",
        bad("neg(%x)", "neg(%1)"),
        ("%1", 1),
        r"%1 is used before it is defined",
    ),
    (
        "defined-twice",
        bad("%1 = softmax(%0)", "%0 = softmax(%0)"),
        ("%0", 2),
        r"%0 is defined twice",
    ),
    (
        "input-defined-twice",
        bad("(%x: f32[2,2])", "(%x: f32[2,2], %x: f32[2])"),
        ("%x", 2),
        r"%x is defined twice",
    ),
    (
        "unknown-dtype",
        bad("neg(%x) : f32[2,2]", "neg(%x) : float32[2,2]"),
        ("float32", 1),
        r"unknown dtype 'float32': expected f16/f32/f64/bf16/bool/iN/uN",
    ),
    (
        "bad-float-width",
        bad("neg(%x) : f32[2,2]", "neg(%x) : f33[2,2]"),
        ("f33", 1),
        r"float width must be 16, 32 or 64, got 33",
    ),
    (
        "bad-int-width",
        bad("(%x: f32[2,2])", "(%x: f32[2,2], %q: i65[2])"),
        ("i65", 1),
        r"integer width must be 1\.\.64, got 65",
    ),
    (
        "bad-dim",
        bad("neg(%x) : f32[2,2]", "neg(%x) : f32[2,-2]"),
        ("-2", 1),
        r"bad dim '-2'",
    ),
    (
        "unclosed-shape",
        bad("neg(%x) : f32[2,2]", "neg(%x) : f32[2 2]"),
        ("2]\n  %1", 1),
        r"expected '\]' to close the shape, found '2'",
    ),
    (
        "bad-host-type",
        bad("(%x: f32[2,2])", "(%x: f32[2,2], %h: !file)"),
        ("file", 1),
        r"unknown host type !file",
    ),
    (
        "bad-quant-scheme",
        bad("(%x: f32[2,2])", "(%x: f32[2,2], %w: q<4,sim,g128,f16,packed>[8])"),
        ("sim", 1),
        r"bad scheme 'sim': expected one of sym, asym, bipolar",
    ),
    (
        "bad-quant-layout",
        bad("(%x: f32[2,2])", "(%x: f32[2,2], %w: q<4,sym,g128,f16,dense>[8])"),
        ("dense", 1),
        r"bad layout 'dense': expected one of packed, bitsliced",
    ),
    (
        "bad-quant-bits",
        bad("(%x: f32[2,2])", "(%x: f32[2,2], %w: q<4.5,sym,g128,f16,packed>[8])"),
        ("4.5", 1),
        r"bad quantized width '4\.5'",
    ),
    (
        "quant-bits-range",
        bad("(%x: f32[2,2])", "(%x: f32[2,2], %w: q<9,sym,g128,f16,packed>[8])"),
        ("q<9", 1),
        r"quantized width must be 1\.\.8 bits, got 9",
    ),
    (
        "missing-return",
        bad("  return y=%1\n", ""),
        ("}", 2),
        r"missing 'return' before the end of the graph",
    ),
    (
        "missing-return-at-eof",
        bad("  return y=%1\n}\n", ""),
        (None, 1),
        r"missing 'return' before the end of the graph",
    ),
    (
        "result-type-disagrees",
        bad("%1 = softmax(%0) {axis=1} : f32[2,2]", "%1 = softmax(%0) {axis=1} : f32[2,3]"),
        ("%1", 1),
        r"'softmax' results typed f32\[2,3\], but the op infers f32\[2,2\]",
    ),
    (
        "result-dtype-disagrees",
        bad("neg(%x) : f32[2,2]", "neg(%x) : f16[2,2]"),
        ("%0", 1),
        r"'neg' results typed f16\[2,2\], but the op infers f32\[2,2\]",
    ),
    (
        "operand-type-error",
        bad("neg(%x)", "matmul(%x, %y)").replace("(%x: f32[2,2])", "(%x: f32[2,2], %y: f32[3,2])"),
        ("%0", 1),
        r"'matmul' contraction mismatch",
    ),
    (
        "signature-disagrees",
        bad("-> (y: f32[2,2])", "-> (y: f32[2,3])"),
        ("y:", 1),
        r"the signature's results y: f32\[2,3\] do not match the return y: f32\[2,2\]",
    ),
    (
        "result-count",
        bad("%1 = softmax", "%1, %2 = softmax"),
        ("%1", 1),
        r"2 results but 1 types",
    ),
    (
        "unterminated-graph",
        GOOD[: GOOD.rindex("}")],
        (None, 1),
        r"expected '\}', found 'end of input'",
    ),
    (
        "junk-character",
        bad("neg(%x)", "neg(%x) $"),
        ("$", 1),
        r"unexpected character '\$'",
    ),
    (
        "bad-string-escape",
        bad("return y=%1", 'return "y\\q"=%1'),
        ('"y', 1),
        r"bad string .*: Invalid \\escape",
    ),
    (
        "raw-newline-in-string",
        bad("{axis=1}", '{axis="a\nb"}'),
        ('"a', 1),
        r"bad string .*: Invalid control character",
    ),
    (
        "junk-after-graph",
        GOOD + "extra\n",
        ("extra", 1),
        r"unexpected 'extra' after the graph",
    ),
    (
        "duplicate-output",
        bad("return y=%1", "return y=%1, y=%0").replace("-> (y: f32[2,2])", "-> (y: f32[2,2], z: f32[2,2])"),
        ("y=%0", 1),
        r"duplicate output name 'y'",
    ),
    (
        "dense-on-non-constant",
        bad("neg(%x) :", "neg(%x) dense<[1]> :"),
        ("dense", 1),
        r"only constants carry dense<\.\.\.> data",
    ),
    (
        "dense-wrong-shape",
        bad("  %0 = neg(%x)", '  %c = constant {ref="c"} dense<[1, 2, 3]> : f32[2]\n  %0 = neg(%x)'),
        ("dense", 1),
        r"bad constant data: data of shape \[3\] does not match f32\[2\]",
    ),
    (
        "dense-int-out-of-range",
        bad("  %0 = neg(%x)", '  %c = constant {ref="c"} dense<[300, 1]> : i8[2]\n  %0 = neg(%x)'),
        ("dense", 1),
        r"bad constant data: .*300",
    ),
    (
        "dense-float-in-int",
        bad("  %0 = neg(%x)", '  %c = constant {ref="c"} dense<[1.5]> : i32[1]\n  %0 = neg(%x)'),
        ("dense", 1),
        r"bad constant data: i32 data must be integers",
    ),
    (
        "dense-narrow-out-of-range",
        bad("  %0 = neg(%x)", '  %c = constant {ref="c"} dense<[9]> : i4[1]\n  %0 = neg(%x)'),
        ("%c", 1),
        r"outside the range of i4",
    ),
    (
        "iota-infinite",
        bad(
            "  %0 = neg(%x)", "  %i = iota() {start=0, stop=inf, step=1, dtype=f32} : f32[1]\n  %0 = neg(%x)"
        ),
        (": f32[1]", 1),
        r"'iota': iota start, stop and step must be finite",
    ),
    (
        "missing-graph-keyword",
        GOOD.replace("graph @g", "grph @g", 1),
        ("grph", 1),
        r"expected 'graph' to start a graph, found 'grph'",
    ),
]


@pytest.mark.parametrize(("text", "where", "message"), [pytest.param(*m[1:], id=m[0]) for m in MALFORMED])
def test_malformed_text_raises_parse_error(text: str, where: tuple[str | None, int], message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(text)
    e = info.value
    assert isinstance(e, KilnError)
    line, col = position(text, *where)
    assert (e.line, e.col) == (line, col), f"{e} (expected {line}:{col})"
    assert re.search(message, str(e)), str(e)
    assert str(e).startswith(f"line {line}:{col}: ")


def test_parse_error_quotes_the_source() -> None:
    with pytest.raises(ParseError) as info:
        parse(bad("neg(%x)", "negate(%x)"), source="model.kir")
    assert str(info.value).startswith("model.kir:2:8: ") and info.value.source == "model.kir"


@pytest.mark.parametrize(
    "text",
    [
        "f33[2]",
        "q<4,foo,g128,f16,packed>[2]",
        "q<4.5,sym,g128,f16,packed>[2]",
        "q<4,sym,128,f16,packed>[2]",
        "!nope",
        "f32[2",
    ],
)
def test_bad_type_text_raises_parse_error(text: str) -> None:
    with pytest.raises(ParseError) as info:
        Parser(text, default_context(), None, None).parse_type()
    assert info.value.line == 1 and info.value.col >= 1
