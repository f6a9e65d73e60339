"""Lowering: evaluate an `.mtl` syntax tree at compile time and build the operator graph.

Blocks are inlined; every op becomes one IR node with a hierarchical name and its source span.
Shapes are inferred as nodes are created, so `channels(x)` and friends work in conditions.

Naming: an op called in scope `S` is `S.<op><n>` (`layer1.0.conv1`), an unlabelled block call
is `S.<block><n>`. A labelled statement `L: ...` opens scope `S.L` in which block calls are
numbered `S.L.0`, `S.L.1`, ...; if the statement makes exactly one call, that call is `S.L`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsc.fsutil import read_model, read_source
from mtsc.grammar import PRELUDE, ast
from mtsc.grammar.parser import parse
from mtsc.ir.errors import MtscError, Span, describe_value
from mtsc.ir.graph import BackboneRef, Call, Graph, Node, Sharing, TaskSpec
from mtsc.ir.ops import (
    DSL_SPELLING,
    Op,
    OpError,
    Shape,
    check_input_count,
    did_you_mean,
    infer_shape,
    op_by_name,
    spec_of,
)
from mtsc.runtime.objectives import SEGMENTATION_METRICS, check_loss, check_metric

# DSL spellings of ops, beyond their canonical names.
OP_ALIASES: dict[str, Op] = {
    "conv": Op.CONV2D,
    "deconv": Op.DECONV2D,
    "bn": Op.BATCHNORM,
    "batchnorm2d": Op.BATCHNORM,
    "cat": Op.CONCAT,
    "interpolate": Op.UPSAMPLE,
    "fc": Op.LINEAR,
}

MAX_CALL_DEPTH = 64
# Bounds on compile-time work, so a typo cannot hang the compiler.
MAX_INT = 2**63
MAX_ITEMS = 100_000
# Statements run, loop iterations and repeats, all told (about a second of work): nested loops
# multiply, so bounding each one alone is not enough.
MAX_STEPS = 1_000_000
# Ops in the graph (ResNet-152 has about 500): past this, each pass takes seconds.
MAX_OPS = 100_000


@dataclass(frozen=True, slots=True)
class Tensor:
    """A value computed at run time: the IR node that produces it."""

    nid: int
    shape: Shape

    def describe(self) -> str:
        return "tensor " + "x".join(map(str, self.shape))


@dataclass(slots=True)
class _Block:
    defn: ast.BlockDef
    globals: dict[str, Any]  # the constants of the file that defines it


@dataclass(slots=True)
class _Scope:
    prefix: str
    sharing: Sharing | None
    labelled: bool = False
    counters: dict[str, int] = field(default_factory=dict)
    # each direct call's name in the scope, in order: True where it was named by a count
    direct_calls: dict[str, bool] = field(default_factory=dict)

    def child_name(self, base: str, *, block: bool) -> str:
        if self.labelled and block:
            seg = str(sum(c.isdigit() for c in self.direct_calls))
        else:
            # relu6's first is relu6_1, never the 61st relu; a name a label took is passed over
            separator = "_" if base[-1].isdigit() else ""
            n = self.counters.get(base, 0) + 1
            while f"{base}{separator}{n}" in self.direct_calls:
                n += 1
            self.counters[base] = n
            seg = f"{base}{separator}{n}"
        self.direct_calls[seg] = True
        return f"{self.prefix}.{seg}" if self.prefix else seg


def _real_path(path: Path) -> Path:
    """The path with symlinks resolved. `os.path.realpath` leaves a symlink loop in place for
    the read to report, where `Path.resolve` raises RuntimeError (Python 3.11)."""
    return Path(os.path.realpath(path))


class _Return(Exception):
    def __init__(self, value: Any, span: Span) -> None:
        self.value = value
        self.span = span  # of the `return` statement


def _describe(value: Any) -> str:
    """A value as the DSL writes it, for messages."""
    if isinstance(value, Tensor):
        return value.describe()
    return describe_value(value, _describe)


class Lowerer:
    def __init__(self, *, read_file: Callable[[Path], str] | None = None) -> None:
        self.read_file = read_file or read_source
        self.blocks: dict[str, _Block] = {}
        self.graph: Graph | None = None
        self.call_stack: list[str] = []
        self.var_hint: str | None = None
        self.node_spans: dict[str, Span] = {}
        self.created: list[int] = []
        self.loaded: set[Path] = set()
        # each imported file's constants, once loaded: name -> (value, where it is defined)
        self.file_consts: dict[Path, dict[str, tuple[Any, Span]]] = {}
        self.prelude_loaded = False
        self.steps = 0

    # ------------------------------------------------------------------ files and imports

    def load_module(
        self, module: ast.Module, chain: tuple[Path, ...]
    ) -> dict[str, tuple[Any, Span]]:
        """Register a file's blocks (and its imports'); return its evaluated constants, each
        with where it is defined."""
        consts: dict[str, Any] = {}
        defined_at: dict[str, Span] = {}
        for item in module.items:
            if isinstance(item, ast.Import):
                for name, (value, span) in self._import(item, module, chain).items():
                    # a file imported along two paths gives the same constant twice
                    if defined_at.get(name, span) != span:
                        raise MtscError(
                            item.span,
                            f"constant {name!r} of {item.path!r} (at {span}) is already "
                            f"defined at {defined_at[name]}",
                        )
                    consts[name], defined_at[name] = value, span
        for item in module.items:
            if isinstance(item, ast.BlockDef):
                self._define_block(item, consts)
            elif isinstance(item, ast.Const):
                if item.name in defined_at:
                    raise MtscError(
                        item.span, f"{item.name!r} is already defined at {defined_at[item.name]}"
                    )
                value = self.eval(item.value, consts, _Scope("", None))
                if isinstance(value, Tensor):
                    raise MtscError(item.span, "top-level constants must be compile-time values")
                consts[item.name], defined_at[item.name] = value, item.span
        return {name: (value, defined_at[name]) for name, value in consts.items()}

    def _import(
        self, item: ast.Import, module: ast.Module, chain: tuple[Path, ...]
    ) -> dict[str, tuple[Any, Span]]:
        base = Path(module.file).parent
        path = _real_path(base / item.path)
        if path in chain:
            cycle = " -> ".join(p.name for p in (*chain[chain.index(path) :], path))
            raise MtscError(item.span, f"import cycle: {cycle}")
        if path in self.loaded:
            # Imported before by another file: its constants are visible here too.
            return self.file_consts[path]
        try:
            text = self.read_file(path)
        except OSError as err:
            raise MtscError(item.span, f"cannot import {item.path!r}: {err.strerror}") from None
        self.loaded.add(path)
        # shown as the importing file's path leads to it, as that file's own path is shown
        imported = parse(text, os.path.normpath(base / item.path))
        for other in imported.items:
            if isinstance(other, (ast.InputDecl, ast.Backbone, ast.Tasks)):
                raise MtscError(
                    other.span,
                    "an imported file may hold only blocks, constants and imports",
                )
        consts = self.load_module(imported, (*chain, path))
        self.file_consts[path] = consts
        return consts

    def _define_block(self, defn: ast.BlockDef, consts: dict[str, Any]) -> None:
        if defn.name in self.blocks:
            first = self.blocks[defn.name].defn.name_span
            raise MtscError(defn.name_span, f"block {defn.name!r} is already defined at {first}")
        if op_by_name(defn.name) or defn.name in OP_ALIASES or defn.name in BUILTINS:
            raise MtscError(defn.name_span, f"block name {defn.name!r} is the name of an op")
        seen: set[str] = set()
        for param in defn.params:
            if param.name in seen:
                raise MtscError(param.span, f"duplicate parameter {param.name!r}")
            seen.add(param.name)
        self._decorator_sharing(defn.decorators)
        self.blocks[defn.name] = _Block(defn, consts)

    def _load_prelude(self) -> None:
        if not self.prelude_loaded:
            self.prelude_loaded = True
            prelude = parse(self.read_file(PRELUDE), str(PRELUDE))
            self.load_module(prelude, (PRELUDE,))

    # ------------------------------------------------------------------ the model

    def lower(self, module: ast.Module) -> Graph:
        path = _real_path(Path(module.file))
        self.loaded.add(path)
        consts = {name: value for name, (value, _) in self.load_module(module, (path,)).items()}
        self.graph = Graph(Path(module.file).stem, source=module.file)
        backbones = [i for i in module.items if isinstance(i, ast.Backbone)]
        if not backbones:
            raise MtscError(
                Span(module.file, 1, 1, source=module.source),
                "the model has no `backbone { ... }` section",
            )
        if len(backbones) > 1:
            raise MtscError(backbones[1].span, "a model has exactly one backbone section")
        env = dict(consts)
        for item in module.items:
            if isinstance(item, ast.InputDecl):
                self._declare_input(item, env)
        if not self.graph.input_ids():
            raise MtscError(
                backbones[0].span, "the model declares no input (`input image: 3x224x224`)"
            )
        out = self._run_backbone(backbones[0], env)
        self.graph.outputs["backbone"] = out.nid
        tasks = [i for i in module.items if isinstance(i, ast.Tasks)]
        if len(tasks) > 1:
            raise MtscError(tasks[1].span, "a model has at most one tasks section")
        if tasks:
            tensors = {k: v for k, v in env.items() if isinstance(v, Tensor)}
            self.graph.tasks = self._tasks(tasks[0], consts, tensors)
            image = env[self.graph.node(self.graph.input_ids()[0]).name]
            for task in self.graph.tasks:
                head = self._lower_head(task, out, image, tensors)
                _check_scored_classes(task, head.shape)
                self.graph.outputs[task.name] = head.nid
        return self.graph

    def _lower_head(
        self, task: TaskSpec, features: Tensor, image: Tensor, tensors: dict[str, Tensor]
    ) -> Tensor:
        """Inline the task's head block on the backbone output (and the backbone `tensors`
        its options name); its nodes are tagged `task`."""
        call = ast.Call(task.head.name, (), task.head.loc, task.head.loc)
        scope = _Scope(f"heads.{task.name}", None, labelled=True)
        first_new = len(self.created)
        saved, self.var_hint = self.var_hint, task.name
        kwargs = {
            key: tensors[value.name] if isinstance(value, BackboneRef) else value
            for key, value in task.head.kwargs
        }
        try:
            out = self.call_block(call, [features, image], kwargs, scope, note_call=False)
        except MtscError as err:
            raise _in_head(err, task) from None
        finally:
            self.var_hint = saved
        self._collapse(scope.prefix, next(iter(scope.direct_calls)), self.created[first_new:])
        if not isinstance(out, Tensor):
            raise MtscError(task.head.loc, f"head {task.head.name!r} must return a tensor")
        for nid in self.created[first_new:]:
            self.graph.update(nid, task=task.name)
        if out.nid not in self.created[first_new:]:
            raise MtscError(task.head.loc, f"head {task.head.name!r} must compute something")
        return out

    def _declare_input(self, decl: ast.InputDecl, env: dict[str, Any]) -> None:
        if decl.name in env:
            raise MtscError(decl.span, f"{decl.name!r} is already defined")
        if len(decl.shape) != 3:
            raise MtscError(
                decl.span, "an input shape is channels x height x width, e.g. 3x224x224"
            )
        if 0 in decl.shape:
            raise MtscError(decl.span, "an input shape has no zero sizes")
        node = Node(Op.INPUT, decl.name, {"shape": decl.shape}, decl.shape, decl.span)
        self._check_name(decl.name, decl.span)
        nid = self.graph.add(node)
        env[decl.name] = Tensor(nid, decl.shape)

    def _run_backbone(self, backbone: ast.Backbone, env: dict[str, Any]) -> Tensor:
        scope = _Scope("", self._decorator_sharing(backbone.decorators))
        try:
            self.exec_body(backbone.body, env, scope)
        except _Return as ret:
            if not isinstance(ret.value, Tensor):
                raise MtscError(
                    ret.span, f"the backbone must return a tensor, not {_describe(ret.value)}"
                ) from None
            return ret.value
        raise MtscError(
            backbone.end_span or backbone.span,
            "the backbone ends without `return`; return the tensor the heads read",
        )

    def _tasks(
        self, section: ast.Tasks, consts: dict[str, Any], tensors: dict[str, Tensor]
    ) -> tuple[TaskSpec, ...]:
        """The tasks; a head option may name one of the backbone's `tensors`."""
        specs: dict[str, TaskSpec] = {}
        for task in section.tasks:
            if task.name in specs:
                raise MtscError(task.span, f"duplicate task {task.name!r}")
            head = self._static_call(task.head, consts, "head", tensors)
            self._check_head(head, task.head)
            options: dict[str, Any] = {}
            for opt in task.options:
                if opt.key in options:
                    raise MtscError(opt.span, f"{opt.key}= given twice")
                if opt.key == "weight":
                    weight = self.eval(opt.value, consts, _Scope("", None))
                    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                        raise MtscError(opt.span, "weight= must be a number")
                    if not 0 < weight < math.inf:
                        raise MtscError(
                            opt.span, f"weight= must be a finite number > 0, got {weight}"
                        )
                    options["weight"] = float(weight)
                else:
                    call = self._static_call(opt.value, consts, opt.key)
                    check = check_loss if opt.key == "loss" else check_metric
                    try:
                        check(call.name, dict(call.kwargs))
                    except ValueError as err:
                        raise MtscError(call.loc, str(err)) from None
                    options[opt.key] = call
            specs[task.name] = TaskSpec(task.name, head, loc=task.span, **options)
        if not specs:
            raise MtscError(section.span, "the tasks section is empty")
        return tuple(specs.values())

    def _static_call(
        self,
        expr: ast.Expr,
        consts: dict[str, Any],
        what: str,
        tensors: dict[str, Tensor] | None = None,
    ) -> Call:
        """A head, loss or metric: `name` or `name(key=value, ...)` with constant values; a
        head's value may also be the name of one of the backbone's `tensors`."""
        if isinstance(expr, ast.Name):
            return Call(expr.id, (), expr.span)
        if isinstance(expr, ast.Call):
            kwargs = []
            for arg in expr.args:
                if arg.name is None:
                    raise MtscError(arg.span, f"{what} arguments are given by name: key=value")
                value = self.eval(arg.value, {**consts, **(tensors or {})}, _Scope("", None))
                if isinstance(value, Tensor) and isinstance(arg.value, ast.Name):
                    value = BackboneRef(arg.value.id)
                elif isinstance(value, Tensor):
                    raise MtscError(
                        arg.span,
                        f"a {what} takes a backbone tensor by its name ({arg.name}=x), "
                        "not an expression: compute it in the backbone",
                    )
                kwargs.append((arg.name, value))
            return Call(expr.func, tuple(kwargs), expr.span)
        raise MtscError(expr.span, f"a {what} is a name or a call like name(key=value)")

    def _check_head(self, head: Call, expr: ast.Expr) -> None:
        if head.name not in self.blocks:
            self._load_prelude()
        block = self.blocks.get(head.name)
        if block is None:
            raise MtscError(
                head.loc,
                f"unknown head {head.name!r}" + did_you_mean(head.name, sorted(self.blocks)),
            )
        params = [p.name for p in block.defn.params]
        # A head block takes (features, input, ...options).
        if len(params) < 2:
            raise MtscError(
                head.loc, f"head block {head.name!r} must take (features, input, ...) parameters"
            )
        for key, _ in head.kwargs:
            if key in params[:2]:  # the block forgot `input`: its option came second
                role = ("features", "input")[params.index(key)]
                fixed = ", ".join(["x", "input", *params[params.index(key) :]])
                raise MtscError(
                    head.loc,
                    f"head {head.name!r} takes {key!r} as its {role}: a head block takes "
                    f"(features, input, ...options), as in `block {head.name}({fixed})`",
                )
            if key not in params[2:]:
                raise MtscError(
                    head.loc,
                    f"head {head.name!r} has no option {key!r}" + did_you_mean(key, params[2:]),
                )
        missing = [p.name for p in block.defn.params[2:] if p.default is None]
        missing = [m for m in missing if m not in dict(head.kwargs)]
        if missing:
            raise MtscError(head.loc, f"head {head.name!r} needs {', '.join(missing)}=")
        if block.defn.span.file == str(PRELUDE):
            for key, value in head.kwargs:
                _check_builtin_head_option(head, key, value)

    # ------------------------------------------------------------------ statements

    def exec_body(self, body: Sequence[ast.Stmt], env: dict[str, Any], scope: _Scope) -> None:
        for before, stmt in itertools.pairwise(body):
            if isinstance(before, ast.Return):
                raise MtscError(stmt.span, "this statement comes after `return`: it never runs")
        for stmt in body:
            self.exec_stmt(stmt, env, scope)

    def _step(self, span: Span) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise MtscError(
                span,
                f"unrolling the model takes over {MAX_STEPS} steps (statements, loop iterations "
                "and repeats, all told); is a range() or repeat count far larger than meant?",
            )

    def exec_stmt(self, stmt: ast.Stmt, env: dict[str, Any], scope: _Scope) -> None:
        self._step(stmt.span)
        sharing = self._decorator_sharing(stmt.decorators) or scope.sharing
        if stmt.label is None:
            inner = (
                scope
                if sharing is scope.sharing
                else _Scope(
                    scope.prefix,
                    sharing,
                    scope.labelled,
                    scope.counters,
                    scope.direct_calls,
                )
            )
            self._exec_plain(stmt, env, inner)
            return
        prefix = f"{scope.prefix}.{stmt.label}" if scope.prefix else stmt.label
        automatic = scope.direct_calls.get(stmt.label)
        if automatic is not None:
            raise MtscError(
                stmt.label_span,
                f"label {stmt.label!r} is already the name of an earlier op or block call "
                "without a label (those are named after the op or block and a count); choose "
                "another label"
                if automatic
                else f"duplicate label {stmt.label!r} in this scope",
            )
        scope.direct_calls[stmt.label] = False
        inner = _Scope(prefix, sharing, labelled=True)
        first_new = len(self.created)
        self._exec_plain(stmt, env, inner)
        if len(inner.direct_calls) == 1:
            self._collapse(prefix, next(iter(inner.direct_calls)), self.created[first_new:])

    def _collapse(self, prefix: str, seg: str, ids: Sequence[int]) -> None:
        """A labelled statement that made one call: `L.conv1` becomes `L`."""
        long = f"{prefix}.{seg}"
        for nid in ids:
            if nid not in self.graph:
                continue
            name = self.graph.node(nid).name
            if name == long or name.startswith(long + "."):
                new = prefix + name[len(long) :]
                span = self.node_spans.pop(name)
                self._check_name(new, span)
                self.graph.update(nid, name=new)

    def _exec_plain(self, stmt: ast.Stmt, env: dict[str, Any], scope: _Scope) -> None:
        if isinstance(stmt, ast.Assign):
            saved, self.var_hint = self.var_hint, stmt.target
            first_new = len(self.created)
            try:
                value = env[stmt.target] = self.eval(stmt.value, env, scope)
            finally:
                self.var_hint = saved
            self._check_pin(stmt, value, first_new)
            if isinstance(value, Tensor) and value.nid in self.created[first_new:]:
                # The generated code names a value as the user did where it was assigned,
                # not as inside the block that made it (`return` there names it `out`).
                node = self.graph.node(value.nid)
                self.graph.update(value.nid, meta={**node.meta, "var": stmt.target})
        elif isinstance(stmt, ast.Return):
            saved, self.var_hint = self.var_hint, "out"
            first_new = len(self.created)
            try:
                value = self.eval(stmt.value, env, scope)
            finally:
                self.var_hint = saved
            self._check_pin(stmt, value, first_new)
            raise _Return(value, stmt.span)
        elif isinstance(stmt, ast.If):
            for cond, body in stmt.branches:
                if self._condition(cond, env, scope):
                    self.exec_body(body, env, scope)
                    return
            if stmt.orelse is not None:
                self.exec_body(stmt.orelse, env, scope)
        elif isinstance(stmt, ast.For):
            items = self.eval(stmt.iterable, env, scope)
            if not isinstance(items, tuple):
                raise MtscError(
                    stmt.iterable.span,
                    f"cannot loop over {_describe(items)}; use a list or range()",
                )
            for item in items:
                self._step(stmt.span)
                self._bind_targets(stmt, item, env)
                self.exec_body(stmt.body, env, scope)
        elif isinstance(stmt, ast.Assert):
            self._check_pin(stmt, None, len(self.created))
            if not self._condition(stmt.test, env, scope):
                raise MtscError(
                    stmt.span, f"assertion failed: {stmt.message or 'condition is false'}"
                )
        else:
            raise AssertionError(stmt)

    def _bind_targets(self, stmt: ast.For, item: Any, env: dict[str, Any]) -> None:
        if len(stmt.targets) == 1:
            env[stmt.targets[0]] = item
            return
        if not isinstance(item, tuple) or len(item) != len(stmt.targets):
            raise MtscError(
                stmt.iterable.span,
                f"cannot unpack {_describe(item)} into {len(stmt.targets)} names",
            )
        env.update(zip(stmt.targets, item, strict=True))

    def _condition(self, expr: ast.Expr, env: dict[str, Any], scope: _Scope) -> bool:
        value = self.eval(expr, env, scope)
        if not isinstance(value, bool):
            raise MtscError(expr.span, f"a condition must be true or false, got {_describe(value)}")
        return value

    def _check_pin(self, stmt: ast.Stmt, value: Any, first_new: int) -> None:
        """A pin on a statement that makes no op (a number, an assert, `return x` of a value
        made earlier) would pin nothing: it is most likely meant for where the ops are made."""
        if not stmt.decorators or self.created[first_new:]:
            return
        if isinstance(stmt, ast.Assert):
            gives = ""
        elif isinstance(value, Tensor):
            gives = " (it names a value made earlier)"
        else:
            gives = f" (it gives {_describe(value)})"
        pin = stmt.decorators[0]
        raise MtscError(
            pin.span,
            f"@{pin.name} pins the ops its statement makes, and this statement makes none"
            f"{gives}; pin the statement that makes them",
        )

    def _decorator_sharing(self, decorators: Sequence[ast.Decorator]) -> Sharing | None:
        """The pin the decorators give: one at most, as two would leave it unclear which
        was meant."""
        sharing = None
        for dec in decorators:
            try:
                pin = Sharing(dec.name)
            except ValueError:
                names = [s.value for s in Sharing]
                raise MtscError(
                    dec.span,
                    f"unknown decorator '@{dec.name}'; use @shared or @specific"
                    + did_you_mean(dec.name, names),
                ) from None
            if sharing is not None:
                again = "again" if pin is sharing else f"after @{sharing.value}"
                raise MtscError(dec.span, f"@{pin.value} {again}: pin ops with one decorator")
            sharing = pin
        return sharing

    # ------------------------------------------------------------------ expressions

    def eval(self, expr: ast.Expr, env: dict[str, Any], scope: _Scope) -> Any:
        if isinstance(expr, ast.Num | ast.Str | ast.Bool):
            return expr.value
        if isinstance(expr, ast.Name):
            if expr.id in env:
                return env[expr.id]
            known = sorted([*env, "true", "false"])  # Python's True is the DSL's true
            raise MtscError(expr.span, f"undefined name {expr.id!r}" + did_you_mean(expr.id, known))
        if isinstance(expr, ast.TupleLit | ast.ListLit):
            return tuple(self.eval(e, env, scope) for e in expr.items)
        if isinstance(expr, ast.BinOp):
            return self._binop(expr, env, scope)
        if isinstance(expr, ast.UnaryOp):
            value = self.eval(expr.operand, env, scope)
            if expr.op == "not":
                if not isinstance(value, bool):
                    raise MtscError(expr.span, f"'not' needs true or false, got {_describe(value)}")
                return not value
            if isinstance(value, Tensor):  # -x: the power op's -1 * x
                return self.add_op(Op.POWER, "power", [value], {"scale": -1.0}, expr.span, scope)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MtscError(expr.span, f"cannot negate {_describe(value)}")
            return -value
        if isinstance(expr, ast.Index):
            return self._index(expr, env, scope)
        if isinstance(expr, ast.Call):
            return self.call(expr, [], env, scope)
        if isinstance(expr, ast.Repeat):
            return self.repeat(expr, None, env, scope)
        if isinstance(expr, ast.Pipe):
            value = self.eval(expr.value, env, scope)
            stage = expr.stage
            if isinstance(stage, ast.Name):
                call = ast.Call(stage.id, (), stage.span, stage.span)
                return self.call(call, [value], env, scope)
            if isinstance(stage, ast.Call):
                return self.call(stage, [value], env, scope)
            return self.repeat(stage, value, env, scope)
        raise AssertionError(expr)

    def _index(self, expr: ast.Index, env: dict[str, Any], scope: _Scope) -> Any:
        value = self.eval(expr.value, env, scope)
        idx = self.eval(expr.index, env, scope)
        if not isinstance(value, tuple):
            raise MtscError(expr.value.span, f"cannot index {_describe(value)}")
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise MtscError(expr.index.span, f"an index must be an integer, got {_describe(idx)}")
        if not -len(value) <= idx < len(value):
            raise MtscError(expr.index.span, f"index {idx} out of range for {len(value)} items")
        return value[idx]

    def _binop(self, expr: ast.BinOp, env: dict[str, Any], scope: _Scope) -> Any:
        op = expr.op
        left = self.eval(expr.left, env, scope)
        if op in ("and", "or"):
            if not isinstance(left, bool):
                raise MtscError(
                    expr.left.span, f"'{op}' needs true or false, got {_describe(left)}"
                )
            if (op == "and" and not left) or (op == "or" and left):
                return left
            right = self.eval(expr.right, env, scope)
            if not isinstance(right, bool):
                raise MtscError(
                    expr.right.span, f"'{op}' needs true or false, got {_describe(right)}"
                )
            return right
        right = self.eval(expr.right, env, scope)
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            return self._tensor_binop(expr, left, right, scope)
        try:
            return _ARITH[op](left, right)
        except ZeroDivisionError:
            raise MtscError(expr.span, "division by zero") from None
        except _LimitError as err:
            raise MtscError(expr.span, str(err)) from None
        except (TypeError, ValueError, OverflowError):
            raise MtscError(
                expr.span, f"cannot apply '{op}' to {_describe(left)} and {_describe(right)}"
            ) from None

    def _tensor_binop(self, expr: ast.BinOp, left: Any, right: Any, scope: _Scope) -> Tensor:
        if isinstance(left, Tensor) and isinstance(right, Tensor):
            if expr.op == "-":
                attrs = {"coeffs": (1.0, -1.0)}
                return self.add_op(Op.ADD, "sub", [left, right], attrs, expr.span, scope)
            op = {"+": Op.ADD, "*": Op.MUL}.get(expr.op)
            if op is None:
                raise MtscError(
                    expr.span, f"'{expr.op}' is not defined for two tensors (use +, - or *)"
                )
            return self.add_op(op, op.value, [left, right], {}, expr.span, scope)
        tensor, number = (left, right) if isinstance(left, Tensor) else (right, left)
        attrs = _affine(expr.op, number, tensor_first=tensor is left)
        if expr.op == "/" and tensor is left and number == 0:
            raise MtscError(expr.span, "division by zero")
        if attrs is None:
            raise MtscError(
                expr.span, f"cannot apply '{expr.op}' to {_describe(left)} and {_describe(right)}"
            )
        return self.add_op(Op.POWER, "power", [tensor], attrs, expr.span, scope)

    # ------------------------------------------------------------------ calls

    def call(self, call: ast.Call, piped: list[Any], env: dict[str, Any], scope: _Scope) -> Any:
        positional = list(piped)
        kwargs: dict[str, Any] = {}
        kw_spans: dict[str, Span] = {}
        for arg in call.args:
            value = self.eval(arg.value, env, scope)
            if arg.name is None:
                if kwargs:
                    raise MtscError(arg.span, "a positional argument follows a keyword argument")
                positional.append(value)
            else:
                if arg.name in kwargs:
                    raise MtscError(arg.span, f"argument {arg.name!r} given twice")
                kwargs[arg.name] = value
                kw_spans[arg.name] = arg.span
        name = call.func
        if name in self.blocks:
            return self.call_block(call, positional, kwargs, scope)
        op = OP_ALIASES.get(name) or op_by_name(name)
        if name in BUILTINS and not any(isinstance(v, Tensor) for v in positional):
            op = None  # max() and abs() of numbers are the built-ins; of tensors, ops
        if op is not None and op is not Op.INPUT:
            return self.call_op(op, name, call, positional, kwargs, kw_spans, scope)
        builtin = BUILTINS.get(name)
        if builtin is not None:
            if kwargs:
                raise MtscError(call.span, f"{name}() takes no keyword arguments")
            try:
                return builtin(*positional)
            except _BuiltinError as err:
                raise MtscError(call.span, f"{name}(): {err}") from None
            except (ValueError, OverflowError) as err:  # int(), round(), ... of inf or nan
                raise MtscError(call.span, f"{name}(): {err}") from None
            except TypeError:
                args = ", ".join(_describe(v) for v in positional)
                raise MtscError(call.span, f"{name}() cannot take ({args})") from None
        known = sorted({*self.blocks, *OP_ALIASES, *(o.value for o in Op), *BUILTINS} - {"input"})
        raise MtscError(call.func_span, f"unknown op or block {name!r}" + did_you_mean(name, known))

    def repeat(self, rep: ast.Repeat, piped: Any, env: dict[str, Any], scope: _Scope) -> Any:
        count = self.eval(rep.count, env, scope)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise MtscError(rep.count.span, f"repeat needs a count >= 0, got {_describe(count)}")
        if count > MAX_ITEMS:
            raise MtscError(rep.count.span, f"repeat count {count} is over the limit {MAX_ITEMS}")
        if piped is None:
            if not rep.call.args or rep.call.args[0].name is not None:
                raise MtscError(rep.call.span, "repeat needs the input as the first argument")
            value = self.eval(rep.call.args[0].value, env, scope)
            rest = ast.Call(rep.call.func, rep.call.args[1:], rep.call.span, rep.call.func_span)
        else:
            value, rest = piped, rep.call
        for _ in range(count):
            self._step(rep.span)
            value = self.call(rest, [value], env, scope)
        return value

    def call_block(
        self,
        call: ast.Call,
        positional: list[Any],
        kwargs: dict[str, Any],
        scope: _Scope,
        *,
        note_call: bool = True,
    ) -> Any:
        """Inline a block call. An error inside the block gets a note naming the call (unless
        not `note_call`: a task's head, which `_in_head` notes itself), so that a block called
        many times shows which call failed."""
        block = self.blocks[call.func]
        defn = block.defn
        if call.func in self.call_stack:
            chain = " -> ".join((*self.call_stack[self.call_stack.index(call.func) :], call.func))
            raise _CallChainError(call.span, f"recursion in block {call.func!r}: {chain}")
        if len(self.call_stack) >= MAX_CALL_DEPTH:
            raise _CallChainError(call.span, f"blocks nested deeper than {MAX_CALL_DEPTH} levels")
        params = defn.params
        if len(positional) > len(params):
            raise MtscError(
                call.span,
                f"{defn.name}() takes {_arity(params)} argument(s) ({_signature(params)}), "
                f"got {len(positional)}",
            )
        local: dict[str, Any] = dict(block.globals)
        for param, value in zip(params, positional, strict=False):
            local[param.name] = value
        names = [p.name for p in params]
        for key, value in kwargs.items():
            if key not in names:
                raise MtscError(
                    call.span, f"{defn.name}() has no parameter {key!r}" + did_you_mean(key, names)
                )
            if key in names[: len(positional)]:
                raise MtscError(call.span, f"{defn.name}() got {key!r} twice")
            local[key] = value
        given = {*names[: len(positional)], *kwargs}
        for param in params:
            if param.name not in given:
                if param.default is None:
                    raise MtscError(call.span, f"{defn.name}() is missing argument {param.name!r}")
                local[param.name] = self.eval(param.default, local, scope)
        base = defn.name
        inner = _Scope(
            scope.child_name(base, block=True),
            self._decorator_sharing(defn.decorators) or scope.sharing,
        )
        self.call_stack.append(defn.name)
        try:
            self.exec_body(defn.body, local, inner)
        except _Return as ret:
            return ret.value
        except MtscError as err:
            noted = note_call and not isinstance(err, _CallChainError)
            if noted and err.span is not None and err.span != call.span:
                err.notes = (*err.notes, f"in block {defn.name!r}, called at {call.span}")
            raise
        finally:
            self.call_stack.pop()
        notes = (f"in block {defn.name!r}, called at {call.span}",) if note_call else ()
        raise MtscError(
            defn.end_span or defn.span, f"block {defn.name!r} ends without `return`", notes=notes
        )

    def call_op(
        self,
        op: Op,
        written: str,
        call: ast.Call,
        positional: list[Any],
        kwargs: dict[str, Any],
        kw_spans: dict[str, Span],
        scope: _Scope,
    ) -> Tensor:
        spec = spec_of(op)
        inputs: list[Tensor] = []
        rest: list[Any] = []
        for value in positional:
            if isinstance(value, tuple) and value and all(isinstance(v, Tensor) for v in value):
                value_list = list(value)
            else:
                value_list = [value]
            for v in value_list:
                if isinstance(v, Tensor):
                    if rest:
                        raise MtscError(call.span, f"{written}: inputs must come before attributes")
                    inputs.append(v)
                else:
                    rest.append(v)
        if not inputs:
            raise MtscError(call.span, f"{written}: needs an input tensor")
        if spec.positional and spec.max_inputs is not None and len(inputs) > spec.max_inputs:
            # `conv(x, low)`: low was most likely meant as the channel count
            raise MtscError(
                call.span,
                f"{written}: takes {spec.max_inputs} input tensor(s), got {len(inputs)}; "
                f"{spec.positional[0]} follows the inputs, as a number",
            )
        if len(rest) > len(spec.positional):
            if spec.positional:
                allowed = f"at most {len(spec.positional)} ({', '.join(spec.positional)})"
            elif spec.attrs:
                allowed = f"none; name them ({', '.join(f'{a.name}=...' for a in spec.attrs)})"
            else:
                allowed = f"none; {written} takes no attributes"
            raise MtscError(
                call.span,
                f"{written}: too many positional attributes after the inputs: {allowed}",
            )
        attrs = dict(zip(spec.positional, rest, strict=False))
        for key, value in kwargs.items():
            if isinstance(value, Tensor):
                raise MtscError(kw_spans[key], f"{written}: attribute {key!r} cannot be a tensor")
            try:
                resolved = spec.resolve_attr(key).name
            except OpError as err:
                raise MtscError(kw_spans[key], str(err)) from None
            if resolved in attrs:
                raise MtscError(kw_spans[key], f"{written}: {resolved!r} given twice")
            attrs[resolved] = value
        return self.add_op(op, written, inputs, attrs, call.span, scope)

    def add_op(
        self,
        op: Op,
        written: str,
        inputs: Sequence[Tensor],
        attrs: dict[str, Any],
        span: Span,
        scope: _Scope,
    ) -> Tensor:
        if len(self.created) >= MAX_OPS:
            raise MtscError(
                span,
                f"the model has over {MAX_OPS} ops; is a range() or repeat count far larger "
                "than meant?",
            )
        spec = spec_of(op)
        try:
            check_input_count(op, len(inputs))  # before the attributes: `conv(x, y)` lacks out
            normalized = spec.normalize(attrs)
            shape = infer_shape(op, normalized, [t.shape for t in inputs])
        except OpError as err:
            raise MtscError(span, str(err)) from None
        base = DSL_SPELLING.get(op, op.value)
        name = scope.child_name(base, block=False)
        self._check_name(name, span)
        meta = {"var": self.var_hint} if self.var_hint else {}
        node = Node(op, name, normalized, shape, span, sharing=scope.sharing, meta=meta)
        nid = self.graph.add(node, [t.nid for t in inputs])
        self.created.append(nid)
        return Tensor(nid, shape)

    def _check_name(self, name: str, span: Span) -> None:
        first = self.node_spans.get(name)
        if first is not None:
            raise MtscError(span, f"duplicate name {name!r} (first used at {first})")
        self.node_spans[name] = span


def _arity(params: Sequence[ast.Param]) -> str:
    required = sum(1 for p in params if p.default is None)
    return str(required) if required == len(params) else f"{required} to {len(params)}"


def _signature(params: Sequence[ast.Param]) -> str:
    return ", ".join(p.name if p.default is None else f"{p.name}=..." for p in params)


# ---------------------------------------------------------------------- builtins


class _BuiltinError(Exception):
    pass


def _feature_map(x: Any) -> Shape:
    if not isinstance(x, Tensor):
        raise _BuiltinError(f"needs a tensor, got {_describe(x)}")
    if len(x.shape) != 3:
        raise _BuiltinError("needs a feature map, got a flat vector")
    return x.shape


def _channels(x: Any) -> int:
    if isinstance(x, Tensor) and len(x.shape) == 1:
        return x.shape[0]
    return _feature_map(x)[0]


def _numbers(*values: Any) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _BuiltinError(f"needs numbers, got {_describe(v)}")


def _minmax(fn: Callable) -> Callable:
    def apply(*values: Any) -> Any:
        items = values[0] if len(values) == 1 and isinstance(values[0], tuple) else values
        if not items:
            raise _BuiltinError("needs at least one value")
        _numbers(*items)
        return fn(items)

    return apply


def _range(*args: Any) -> tuple[int, ...]:
    for a in args:
        if isinstance(a, bool) or not isinstance(a, int):
            raise _BuiltinError(f"needs integers, got {_describe(a)}")
    items = range(*args)
    if len(items) > MAX_ITEMS:
        raise _BuiltinError(f"{len(items)} items are over the limit {MAX_ITEMS}")
    return tuple(items)


def _to_int(x: Any) -> int:
    _numbers(x)
    return int(x)


def _length(x: Any) -> int:
    if not isinstance(x, tuple):
        raise _BuiltinError(f"needs a list, got {_describe(x)}")
    return len(x)


def _affine(op: str, number: Any, *, tensor_first: bool) -> dict[str, float] | None:
    """A tensor and a number under `op` as the power op's (shift + scale * x) ** power:
    `x + 3`, `6 - x`, `x / 6`, `x ** 2`. None where that is no such map (`2 / x`)."""
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return None
    c = float(number)
    if op == "+":
        return {"shift": c}
    if op == "-":
        return {"shift": -c} if tensor_first else {"scale": -1.0, "shift": c}
    if op == "*":
        return {"scale": c}
    if op == "/" and tensor_first and c != 0:
        return {"scale": 1.0 / c}
    if op == "**" and tensor_first:
        return {"power": c}
    return None


class _CallChainError(MtscError):
    """Recursion or too deep nesting: the message names the chain of calls, so the calls it
    happened in get no notes."""


def _check_scored_classes(task: TaskSpec, shape: tuple[int, ...]) -> None:
    """A segmentation metric scores the argmax over the head's channels: a `num_classes` it is
    given must be their number, or it fails at the first evaluation, after the warm-up."""
    metric = task.metric
    if metric is None or metric.name not in SEGMENTATION_METRICS:
        return
    classes = metric.kwarg("num_classes")
    if classes is None or classes == shape[0]:
        return
    raise MtscError(
        metric.loc,
        f"task {task.name!r}: {metric.name}(num_classes={classes}) scores {classes} classes, "
        f"but the head gives {shape[0]} channels (leave num_classes out: it defaults to the "
        "head's classes)",
    )


def _check_builtin_head_option(head: Call, key: str, value: Any) -> None:
    """The built-in heads' options, checked where the task names them (deep in heads.mtl, a
    bad one would be an op's attribute there: `out must be at least 1`)."""

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if key in ("classes", "width"):
        ok, wanted = whole(value), "a whole number of at least 1"
    elif key == "rates":
        ok = isinstance(value, tuple) and len(value) > 0 and all(whole(v) for v in value)
        wanted = "a list of whole numbers of at least 1"
    elif key == "drop":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok, wanted = number and 0 <= value < 1, "a number from 0 up to, not including, 1"
    else:
        return
    if not ok:
        shown = f"tensor {value}" if isinstance(value, BackboneRef) else _describe(value)
        raise MtscError(head.loc, f"head {head.name!r}: {key} must be {wanted}, got {shown}")


def _in_head(err: MtscError, task: TaskSpec) -> MtscError:
    """An error inside a task's head, located where the user can act: at the task's line when
    it is in another file (the built-in heads), with where it happened as a note."""
    here = task.head.loc
    if err.span is None or here is None or err.span.file == here.file:
        return err
    inside = f"in head {task.head.name!r}, at {err.span}"
    return MtscError(here, f"task {task.name!r}: {err.message}", notes=(inside, *err.notes))


BUILTINS: dict[str, Callable[..., Any]] = {
    "channels": _channels,
    "height": lambda x: _feature_map(x)[1],
    "width": lambda x: _feature_map(x)[2],
    "min": _minmax(min),
    "max": _minmax(max),
    "range": _range,
    "len": _length,
    "int": _to_int,
    "round": lambda x: (_numbers(x), int(round(x)))[1],
    "ceil": lambda x: (_numbers(x), math.ceil(x))[1],
    "floor": lambda x: (_numbers(x), math.floor(x))[1],
    "abs": lambda x: (_numbers(x), abs(x))[1],
}


def _arith_checked(fn: Callable[[Any, Any], Any], *, numeric: bool = True) -> Callable:
    def apply(a: Any, b: Any) -> Any:
        if numeric:
            for v in (a, b):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError
        return fn(a, b)

    return apply


class _LimitError(Exception):
    pass


def _bounded(symbol: str, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Integer results beyond 64 bits are almost surely mistakes (and can be slow), and a
    float beyond the largest one is infinite, which no attribute or size takes."""

    def apply(a: Any, b: Any) -> Any:
        try:
            result = fn(a, b)
        except OverflowError:
            result = math.inf
        if isinstance(result, int) and abs(result) >= MAX_INT:
            raise _LimitError(
                f"{_describe(a)} {symbol} {_describe(b)} is too large (integers have 64 bits)"
            )
        if isinstance(result, float) and not math.isfinite(result):
            raise _LimitError(f"{_describe(a)} {symbol} {_describe(b)} is too large")
        if isinstance(result, tuple) and len(result) > MAX_ITEMS:
            raise _LimitError(f"a list of {len(result)} items is over the limit {MAX_ITEMS}")
        return result

    return apply


def _power(a: Any, b: Any) -> Any:
    written = f"({a}) ** {b}" if a < 0 else f"{a} ** {b}"
    if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 64:
        raise _LimitError(f"{written} is too large")
    if a < 0 and isinstance(b, float) and not b.is_integer():  # Python would give a complex
        raise _LimitError(f"{written} is not a real number (a negative base, a fractional power)")
    return a**b


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool) or type(a) is not type(b):
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            raise TypeError
    return a + b


def _compare(fn: Callable[[Any, Any], bool]) -> Callable:
    def apply(a: Any, b: Any) -> bool:
        both_num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        if not both_num and type(a) is not type(b):
            raise TypeError
        return fn(a, b)

    return apply


_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": _bounded("+", _add),
    "-": _bounded("-", _arith_checked(lambda a, b: a - b)),
    "*": _bounded("*", _arith_checked(lambda a, b: a * b)),
    "/": _bounded("/", _arith_checked(lambda a, b: a / b)),
    "//": _arith_checked(lambda a, b: a // b),
    "%": _arith_checked(lambda a, b: a % b),
    "**": _bounded("**", _arith_checked(_power)),
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": _compare(lambda a, b: a < b),
    "<=": _compare(lambda a, b: a <= b),
    ">": _compare(lambda a, b: a > b),
    ">=": _compare(lambda a, b: a >= b),
}


def lower_module(module: ast.Module) -> Graph:
    """Lower a parsed file (its imports read from disk) to an IR graph with shapes."""
    return Lowerer().lower(module)


def lower_file(path: str | Path) -> Graph:
    path = Path(path)
    return lower_module(parse(read_model(path), str(path)))
