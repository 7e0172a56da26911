"""kiln's IR: types, values, nodes, graphs, op definitions, the verifier, text form and semantics.

``ir`` imports nothing else of kiln; frontends, passes, backends and the runtime build on it.
"""

from .builder import GraphBuilder
from .core import Attrs, Graph, NoAttrs, Node, Value
from .dtypes import DType, Layout, QuantType, Scheme
from .errors import KilnError
from .parser import parse
from .registry import Context, OpDef, default_context
from .types import Dim, HostType, Shape, TensorType, Type

__all__ = [
    "Attrs",
    "Context",
    "DType",
    "Dim",
    "Graph",
    "GraphBuilder",
    "HostType",
    "KilnError",
    "Layout",
    "NoAttrs",
    "Node",
    "OpDef",
    "QuantType",
    "Scheme",
    "Shape",
    "TensorType",
    "Type",
    "Value",
    "default_context",
    "parse",
]
