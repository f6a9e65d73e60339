"""The public error types of mtsc (defined in `mtsc.ir.errors`, which every layer may import)."""

from mtsc.ir.errors import InternalError, MtscError, Span

__all__ = ["InternalError", "MtscError", "Span"]
