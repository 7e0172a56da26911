"""The errors kiln raises for user mistakes.

Every error a user can cause is a :class:`KilnError` subclass whose message says what was wrong,
where (a line and column, an op, a node, a Python line, a pass) and what to do about it.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of every error kiln raises for a user mistake."""


class ParseError(KilnError):
    """Malformed IR text; carries the 1-based line and column."""

    def __init__(self, message: str, line: int, col: int, source: str | None = None) -> None:
        self.line = line
        self.col = col
        self.source = source
        where = f"{source}:" if source else "line "
        text = f"{where}{line}:{col}: {message}"
        super().__init__(text)


class VerifyError(KilnError):
    """The IR breaks an invariant: a type mismatch, a use before definition, a bad attribute."""


class TypeInferenceError(VerifyError):
    """An op cannot accept the types of its operands."""


class UnknownOpError(KilnError):
    """An op name that the context's registry does not know."""


class AttributeError_(VerifyError):  # noqa: N801, N818 - avoids shadowing the builtin
    """A missing, unknown or ill-typed op attribute."""


class TraceError(KilnError):
    """A problem while tracing a Python function (control flow on traced values, bad operands)."""


class SignatureError(KilnError):
    """Arguments do not match the signature a graph or a compiled function expects."""


class PipelineError(KilnError):
    """A bad pipeline string, an unknown pass or option, or a pass that failed."""


class BackendError(KilnError):
    """A backend cannot compile or run what it was given."""
