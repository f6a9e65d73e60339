"""Legal, unique, stable Python identifiers for generated code."""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from collections.abc import Callable

_RESERVED = frozenset(keyword.kwlist) | frozenset(dir(builtins)) | {"self", "torch", "nn", "F"}


def sanitize(name: str) -> str:
    """`layer1.0/conv 3x3` -> `layer1_0_conv_3x3`: a valid identifier, never a keyword."""
    ident = re.sub(r"\W+", "_", name).strip("_") or "v"
    if ident[0].isdigit():
        ident = f"v{ident}"
    if ident in _RESERVED:
        ident = f"{ident}_"
    return ident


# The public attributes every nn.Module has (torch 2.13; tests/test_odd_names.py checks the
# installed torch against it): a layer named `forward` or `training` must get another
# attribute. Listed, not read from torch, as `mtsc build` does not import torch.
MODULE_ATTRIBUTES = frozenset(
    {
        "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init",
        "children", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr",
        "float", "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule",
        "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
        "named_modules", "named_parameters", "parameters", "register_backward_hook",
        "register_buffer", "register_forward_hook", "register_forward_pre_hook",
        "register_full_backward_hook", "register_full_backward_pre_hook",
        "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
        "register_module", "register_parameter", "register_state_dict_post_hook",
        "register_state_dict_pre_hook", "requires_grad_", "set_extra_state", "set_submodule",
        "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
        "zero_grad",
    }
)  # fmt: skip


def class_attributes(source: str, class_name: str) -> set[str]:
    """The names class `class_name` of Python `source` defines: its methods, class attributes,
    and the `self.X` its methods assign or register (read from the text, not imported)."""
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    names = set()
    for stmt in cls.body:
        if isinstance(stmt, ast.FunctionDef):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names.add(stmt.target.id)
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign):
            names.update(t.attr for t in node.targets if _is_self_attribute(t))
        elif (  # self.register_buffer("name", ...) and the like
            isinstance(node, ast.Call)
            and _is_self_attribute(node.func)
            and node.func.attr.startswith("register_")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(node.args[0].value)
    return names


def _is_self_attribute(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


class Namespace:
    """Hands out identifiers: cleaned (`sanitize` by default: Python's), and suffixed `_1`,
    `_2` when already taken."""

    def __init__(
        self, taken: set[str] | None = None, clean: Callable[[str], str] = sanitize
    ) -> None:
        self._taken: set[str] = set(taken or ())
        self._clean = clean
        self._next_suffix: dict[str, int] = {}  # keeps repeated bases O(1)

    def create(self, name: str) -> str:
        base = self._clean(name)
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
