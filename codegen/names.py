"""Legal, unique, stable Python identifiers for generated code."""

from __future__ import annotations

import builtins
import keyword
import re

_RESERVED = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"self", "torch", "nn", "F"}


def sanitize(name: str) -> str:
    """`layer1.0/conv 3x3` -> `layer1_0_conv_3x3`: a valid identifier, never a keyword."""
    ident = re.sub(r"\W+", "_", name).strip("_") or "v"
    if ident[0].isdigit():
        ident = f"v{ident}"
    if ident in _RESERVED:
        ident = f"{ident}_"
    return ident


class Namespace:
    """Hands out identifiers: sanitized, and suffixed `_1`, `_2` when already taken."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self._taken: set[str] = set(taken or ())
        self._next_suffix: dict[str, int] = {}  # keeps repeated bases O(1)

    def create(self, name: str) -> str:
        base = sanitize(name)
        candidate, n = base, self._next_suffix.get(base, 0)
        if n:
            candidate = f"{base}_{n}"
        while candidate in self._taken:
            n += 1
            candidate = f"{base}_{n}"
        self._next_suffix[base] = n + 1
        self._taken.add(candidate)
        return candidate

    def __contains__(self, name: str) -> bool:
        return name in self._taken
