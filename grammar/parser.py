"""Parse `.mtl` text into the syntax tree of `mtsc.grammar.ast`, with spans and comments."""

from __future__ import annotations

import functools
import re
from importlib import resources

import lark
from lark import Token, Transformer, v_args

from mtsc.grammar import ast
from mtsc.ir.errors import MtscError, Span, source_lines
from mtsc.ir.ops import did_you_mean

# Readable names for the grammar's terminals in "expected ..." messages.
_TERMINAL_NAMES = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "SHAPE": "a shape like 3x224x224",
    "COMP_OP": "a comparison",
    "TASK_OPTION": "loss=, metric= or weight=",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "VBAR": "'|'",
    "_AT": "'@'",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "$END": "the end of the file",
}


class _CommentSink:
    """Collects the comments the lexer skips, for `mtsc fmt`; reset before each parse."""

    def __init__(self) -> None:
        self.comments: list[ast.Comment] = []

    def __call__(self, tok: Token) -> Token:
        # a CRLF file's `\r` and trailing spaces are not part of what the comment says
        self.comments.append(ast.Comment(str(tok).rstrip(), tok.line, tok.column))
        return tok


_COMMENTS = _CommentSink()


@functools.cache
def _parser() -> lark.Lark:
    grammar = resources.files("mtsc.grammar").joinpath("mtl.lark").read_text()
    # cache=True stores the built LALR tables in the temp dir, keyed by the grammar's hash.
    return lark.Lark(
        grammar,
        parser="lalr",
        propagate_positions=True,
        cache=True,
        lexer_callbacks={"COMMENT": _COMMENTS},
    )


def parse(text: str, file: str) -> ast.Module:
    """Parse one file; syntax errors become `MtscError`s pointing at the offending token."""
    parser = _parser()
    _COMMENTS.comments = []
    try:
        tree = parser.parse(text)
    except lark.UnexpectedInput as err:
        raise _syntax_error(err, text, file) from None
    _check_nesting(tree, text, file)
    comments = tuple(_COMMENTS.comments)
    items = _ToAst(file, text).transform(tree)
    return ast.Module(file, text, tuple(items), comments)


# The deepest parse tree accepted. Every later stage (the transformer, lowering, `mtsc fmt`)
# recurses once or more per level, and Python's stack holds about 1000 frames; real models
# stay under 20 levels.
MAX_NESTING = 200


def _check_nesting(tree: lark.Tree, text: str, file: str) -> None:
    """Refuse a tree deeper than MAX_NESTING, at the leftmost node past the limit: where the
    expression starts, for a long chain of `+` or `|`. Walked with a stack, since recursing is
    what a deep tree cannot afford."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            span = Span(file, node.meta.line, node.meta.column, source=text)
            raise MtscError(
                span,
                f"nested too deeply: mtsc takes about {MAX_NESTING} chained operators or pipe "
                f"stages, or {MAX_NESTING // 2} nested brackets; split it into several statements",
            )
        subtrees = [c for c in node.children if isinstance(c, lark.Tree)]
        stack.extend((c, depth + 1) for c in reversed(subtrees))


def _describe_expected(expected: set[str]) -> str:
    names = {_TERMINAL_NAMES.get(t, f"'{t.lower()}'") for t in expected}
    # Kinds of token ("a name") first, then the literal ones ("'('", "'repeat'").
    names = sorted(names, key=lambda n: (n.startswith("'"), n))
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names)


def _syntax_error(err: lark.UnexpectedInput, text: str, file: str) -> MtscError:
    line, column = err.line, err.column
    if isinstance(err, lark.UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        message = f"unexpected character {char!r}"
        if char == "@":
            message = "'@' must be followed directly by a decorator name, like @shared"
        elif err.allowed:
            message += f"; expected {_describe_expected(set(err.allowed))}"
        return MtscError(Span(file, line, column, line, column + 1, text), message)
    if isinstance(err, lark.UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            lines = source_lines(text.rstrip("\n"))
            line, column = len(lines), len(lines[-1]) + 1
            what = "unexpected end of file"
        else:
            what = f"unexpected {tok.value!r}"
        # `accepts` (what the parser would take here) is exact; `expected` can miss terminals.
        expected = set(err.accepts or err.expected)
        message = f"{what}; expected {_describe_expected(expected)}"
        end = column + max(1, len(str(tok.value))) if tok.type != "$END" else column + 1
        misspelt = _misspelt_keyword(text, line, column) if tok.type != "$END" else None
        if misspelt is not None:
            column, end, message = misspelt
        elif tok.type == "EQUAL" and "COMP_OP" in expected:
            message = "unexpected '='; use '==' to compare"
        elif tok.type == "EQUAL" and expected == {"COLON"}:
            # `name=` after a task's head (`seg: fcn(classes=2) name=...`): the parser read
            # `name` as the next task's name.
            ahead = source_lines(text)[line - 1][: column - 1]
            before = re.search(r"(\w+)\s*$", ahead)
            if before and ":" in ahead[: before.start()]:
                column -= len(before.group(0))
                word = before.group(1)
                message = (
                    f"unknown task option {word!r}"
                    + did_you_mean(word, ["loss", "metric", "weight"])
                    + "; a task takes loss=, metric= and weight="
                )
        return MtscError(Span(file, line, column, line, end, text), message)
    return MtscError(Span(file, line or 1, column or 1, source=text), "syntax error")


# The keywords that start a section or a statement: a near miss of one, alone before the token
# the parser refused, is the likely mistake (`backbon {`, `retrun x`).
_STATEMENT_KEYWORDS = (
    "assert", "backbone", "block", "elif", "else", "for", "if", "import", "input", "repeat",
    "return", "tasks",
)  # fmt: skip


def _misspelt_keyword(text: str, line: int, column: int) -> tuple[int, int, str] | None:
    """(column, end, message) for a misspelt keyword that is all the line holds before the
    refused token at (line, column); None if there is none."""
    ahead = source_lines(text)[line - 1][: column - 1]
    word = re.fullmatch(r"(\s*)(\w+)\s+", ahead)
    if word is None or word.group(2) in _STATEMENT_KEYWORDS:
        return None
    hint = did_you_mean(word.group(2), _STATEMENT_KEYWORDS)
    if not hint:
        return None
    start = len(word.group(1)) + 1
    return start, start + len(word.group(2)), f"unknown keyword {word.group(2)!r}{hint}"


_BINOPS = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "div": "/",
    "floordiv": "//",
    "mod": "%",
    "pow": "**",
    "or_": "or",
    "and_": "and",
}


class _ToAst(Transformer):
    def __init__(self, file: str, source: str) -> None:
        super().__init__()
        self.file = file
        self.source = source

    def _span(self, meta) -> Span:
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column, self.source)

    def _tok_span(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column, self.source)

    def _end_span(self, meta) -> Span:
        # The closing brace of a braced construct: comments before it belong inside.
        return Span(self.file, meta.end_line, max(1, meta.end_column - 1), source=self.source)

    # -- atoms -----------------------------------------------------------------------------

    @v_args(meta=True, inline=True)
    def int_(self, meta, tok):
        return ast.Num(int(tok), self._tok_span(tok), str(tok))

    @v_args(meta=True, inline=True)
    def float_(self, meta, tok):
        return ast.Num(float(tok), self._tok_span(tok), str(tok))

    @v_args(meta=True, inline=True)
    def string(self, meta, tok):
        return ast.Str(str(tok)[1:-1], self._tok_span(tok))

    @v_args(meta=True, inline=True)
    def true(self, meta):
        return ast.Bool(True, self._span(meta))

    @v_args(meta=True, inline=True)
    def false(self, meta):
        return ast.Bool(False, self._span(meta))

    @v_args(meta=True, inline=True)
    def name(self, meta, tok):
        return ast.Name(str(tok), self._tok_span(tok))

    @v_args(meta=True, inline=True)
    def stage_name(self, meta, tok):
        return ast.Name(str(tok), self._tok_span(tok))

    def exprs(self, children):
        return tuple(children)

    @v_args(meta=True, inline=True)
    def tuple_(self, meta, first, rest):
        return ast.TupleLit((first, *(rest or ())), self._span(meta))

    @v_args(meta=True, inline=True)
    def list_(self, meta, items):
        return ast.ListLit(tuple(items or ()), self._span(meta))

    # -- operators -------------------------------------------------------------------------

    def __default__(self, data, children, meta):
        if data in _BINOPS:
            left, right = children
            return ast.BinOp(_BINOPS[data], left, right, self._span(meta))
        return super().__default__(data, children, meta)

    @v_args(meta=True, inline=True)
    def compare(self, meta, left, op, right):
        return ast.BinOp(str(op), left, right, self._span(meta))

    @v_args(meta=True, inline=True)
    def not_(self, meta, operand):
        return ast.UnaryOp("not", operand, self._span(meta))

    @v_args(meta=True, inline=True)
    def neg(self, meta, operand):
        return ast.UnaryOp("-", operand, self._span(meta))

    @v_args(meta=True, inline=True)
    def index(self, meta, value, idx):
        return ast.Index(value, idx, self._span(meta))

    @v_args(meta=True, inline=True)
    def pipe(self, meta, value, stage):
        return ast.Pipe(value, stage, self._span(meta))

    # -- calls -----------------------------------------------------------------------------

    @v_args(meta=True, inline=True)
    def kwarg(self, meta, name, value):
        return ast.Arg(str(name), value, self._span(meta))

    def args(self, children):
        return tuple(
            c if isinstance(c, ast.Arg) else ast.Arg(None, c, _expr_span(c)) for c in children
        )

    @v_args(meta=True, inline=True)
    def call(self, meta, name, args):
        return ast.Call(str(name), tuple(args or ()), self._span(meta), self._tok_span(name))

    @v_args(meta=True, inline=True)
    def repeat(self, meta, count, name, args):
        call_span = Span(
            self.file, name.line, name.column, meta.end_line, meta.end_column, self.source
        )
        call = ast.Call(str(name), tuple(args or ()), call_span, self._tok_span(name))
        return ast.Repeat(count, call, self._span(meta))

    # -- statements ------------------------------------------------------------------------

    @v_args(meta=True, inline=True)
    def decorator(self, meta, name):
        return ast.Decorator(str(name), self._span(meta))

    @v_args(meta=True, inline=True)
    def label(self, meta, name):
        return (str(name), self._tok_span(name))

    @v_args(meta=True)
    def stmt(self, meta, children):
        *decorators, label, statement = children
        fields = {"decorators": tuple(decorators), "span": self._span(meta)}
        if label is not None:
            fields["label"], fields["label_span"] = label
        return statement(**fields)

    # Statement rules return builders; `stmt` adds the label, decorators and span.
    @v_args(inline=True)
    def assign(self, name, value):
        return functools.partial(ast.Assign, target=str(name), value=value)

    @v_args(inline=True)
    def return_stmt(self, value):
        return functools.partial(ast.Return, value=value)

    @v_args(meta=True)
    def if_stmt(self, meta, children):
        cond, body, *rest = children
        orelse = None
        else_span = None
        branches = [(cond, body[0])]
        spans = [self._span(meta)]
        for clause in rest:
            if clause is None:
                continue
            kind, c_cond, c_body, c_span = clause
            if kind == "elif":
                branches.append((c_cond, c_body[0]))
                spans.append(c_span)
            else:
                orelse, else_span = c_body[0], c_span
        return functools.partial(
            ast.If,
            branches=tuple(branches),
            orelse=orelse,
            else_span=else_span,
            branch_spans=tuple(spans),
            end_span=self._end_span(meta),
        )

    @v_args(meta=True, inline=True)
    def elif_clause(self, meta, cond, body):
        return ("elif", cond, body, self._span(meta))

    @v_args(meta=True, inline=True)
    def else_clause(self, meta, body):
        return ("else", None, body, self._span(meta))

    def names(self, children):
        return tuple(str(c) for c in children)

    @v_args(meta=True, inline=True)
    def for_stmt(self, meta, targets, iterable, body):
        return functools.partial(
            ast.For,
            targets=targets,
            iterable=iterable,
            body=body[0],
            end_span=self._end_span(meta),
        )

    @v_args(inline=True)
    def assert_stmt(self, test, message):
        return functools.partial(
            ast.Assert, test=test, message=None if message is None else str(message)[1:-1]
        )

    @v_args(meta=True)
    def body(self, meta, children):
        # The end span travels with the body so braced items can place trailing comments.
        return (tuple(children), self._end_span(meta))

    # -- top level -------------------------------------------------------------------------

    @v_args(meta=True, inline=True)
    def import_decl(self, meta, path):
        return ast.Import(str(path)[1:-1], self._span(meta))

    @v_args(meta=True, inline=True)
    def input_decl(self, meta, name, shape):
        dims = tuple(int(d) for d in str(shape).split("x"))
        return ast.InputDecl(str(name), dims, self._span(meta))

    @v_args(meta=True, inline=True)
    def const_decl(self, meta, name, value):
        return ast.Const(str(name), value, self._span(meta))

    @v_args(meta=True, inline=True)
    def param(self, meta, name, default):
        return ast.Param(str(name), default, self._span(meta))

    def params(self, children):
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def block_def(self, meta, children):
        *decorators, name, params, body = children
        stmts, end = body
        return ast.BlockDef(
            str(name),
            tuple(params or ()),
            stmts,
            tuple(decorators),
            self._span(meta),
            self._tok_span(name),
            end,
        )

    @v_args(meta=True)
    def backbone_def(self, meta, children):
        *decorators, body = children
        stmts, end = body
        return ast.Backbone(stmts, tuple(decorators), self._span(meta), end)

    @v_args(meta=True, inline=True)
    def task_option(self, meta, key, value):
        return ast.TaskOption(str(key), value, self._span(meta))

    @v_args(meta=True)
    def task(self, meta, children):
        name, head, *options = children
        return ast.Task(str(name), head, tuple(options), self._span(meta))

    @v_args(meta=True)
    def tasks_def(self, meta, children):
        return ast.Tasks(tuple(children), self._span(meta), self._end_span(meta))

    def start(self, children):
        return children


def _expr_span(expr: ast.Expr) -> Span:
    return expr.span
