"""The syntax tree of an `.mtl` file: plain frozen dataclasses, each carrying its source span."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtsc.ir.errors import Span

# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Num:
    value: int | float
    span: Span
    text: str  # as written, so the formatter keeps `1e-5` and `0.10` readable


@dataclass(frozen=True, slots=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True, slots=True)
class TupleLit:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # + - * / // % ** and or == != < <= > >=
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class UnaryOp:
    op: str  # - not
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Arg:
    name: str | None  # None for positional
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Arg, ...]
    span: Span
    func_span: Span


@dataclass(frozen=True, slots=True)
class Repeat:
    count: Expr
    call: Call
    span: Span


@dataclass(frozen=True, slots=True)
class Index:
    value: Expr
    index: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Pipe:
    """`value | stage`: the stage (a name, call or repeat) gets `value` as its first argument."""

    value: Expr
    stage: Name | Call | Repeat
    span: Span


Expr = Num | Str | Bool | Name | TupleLit | ListLit | BinOp | UnaryOp | Call | Repeat | Index | Pipe

# ---------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True, kw_only=True)
class StmtBase:
    span: Span
    label: str | None = None
    label_span: Span | None = None
    decorators: tuple[Decorator, ...] = ()


@dataclass(frozen=True, slots=True)
class Decorator:
    name: str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Assign(StmtBase):
    target: str
    value: Expr


@dataclass(frozen=True, slots=True, kw_only=True)
class Return(StmtBase):
    value: Expr


@dataclass(frozen=True, slots=True, kw_only=True)
class If(StmtBase):
    branches: tuple[tuple[Expr, tuple[Stmt, ...]], ...]  # if / elif conditions and bodies
    orelse: tuple[Stmt, ...] | None
    else_span: Span | None = None
    branch_spans: tuple[Span, ...] = ()
    end_span: Span | None = None  # the closing brace, for comments inside


@dataclass(frozen=True, slots=True, kw_only=True)
class For(StmtBase):
    targets: tuple[str, ...]
    iterable: Expr
    body: tuple[Stmt, ...]
    end_span: Span | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Assert(StmtBase):
    test: Expr
    message: str | None


Stmt = Assign | Return | If | For | Assert

# ---------------------------------------------------------------- top level


@dataclass(frozen=True, slots=True)
class Import:
    path: str
    span: Span


@dataclass(frozen=True, slots=True)
class InputDecl:
    name: str
    shape: tuple[int, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Const:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class BlockDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    decorators: tuple[Decorator, ...]
    span: Span
    name_span: Span
    end_span: Span | None = None


@dataclass(frozen=True, slots=True)
class Backbone:
    body: tuple[Stmt, ...]
    decorators: tuple[Decorator, ...]
    span: Span
    end_span: Span | None = None


@dataclass(frozen=True, slots=True)
class TaskOption:
    key: str
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    head: Expr
    options: tuple[TaskOption, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Tasks:
    tasks: tuple[Task, ...]
    span: Span
    end_span: Span | None = None


Item = Import | InputDecl | Const | BlockDef | Backbone | Tasks


@dataclass(frozen=True, slots=True)
class Comment:
    text: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Module:
    file: str
    source: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = field(default=())
