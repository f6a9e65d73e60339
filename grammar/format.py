"""The canonical `.mtl` formatter (`mtsc fmt`): prints the syntax tree back with fixed spacing,
four-space indentation, minimal parentheses, comments kept, and at most one blank line.
Formatting is idempotent and never changes what a file means (the tests check both)."""

from __future__ import annotations

from collections.abc import Sequence

from mtsc.grammar import ast
from mtsc.grammar.parser import parse
from mtsc.ir.errors import source_lines

INDENT = "    "
MAX_WIDTH = 100  # columns; longer list literals are written one item per line

_PREC = {
    "or": 1,
    "and": 2,
    "not": 3,
    "==": 4,
    "!=": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "|": 5,
    "+": 6,
    "-": 6,
    "*": 7,
    "/": 7,
    "//": 7,
    "%": 7,
    "neg": 8,
    "**": 9,
}
_ATOM = 10


def precedence(expr: ast.Expr) -> int:
    if isinstance(expr, ast.BinOp):
        return _PREC[expr.op]
    if isinstance(expr, ast.UnaryOp):
        return _PREC["not"] if expr.op == "not" else _PREC["neg"]
    if isinstance(expr, ast.Pipe):
        return _PREC["|"]
    return _ATOM


def format_expr(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Num):
        return expr.text
    if isinstance(expr, ast.Str):
        return f'"{expr.value}"'
    if isinstance(expr, ast.Bool):
        return "true" if expr.value else "false"
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.TupleLit):
        items = ", ".join(format_expr(e) for e in expr.items)
        return f"({items},)" if len(expr.items) == 1 else f"({items})"
    if isinstance(expr, ast.ListLit):
        return "[" + ", ".join(format_expr(e) for e in expr.items) + "]"
    if isinstance(expr, ast.BinOp):
        p = _PREC[expr.op]
        right_assoc = expr.op == "**"
        comparison = p == _PREC["=="]
        left = _wrap(expr.left, p + (1 if right_assoc or comparison else 0))
        right = _wrap(expr.right, p + (0 if right_assoc else 1))
        return f"{left} {expr.op} {right}"
    if isinstance(expr, ast.UnaryOp):
        if expr.op == "not":
            return f"not {_wrap(expr.operand, _PREC['not'])}"
        return f"-{_wrap(expr.operand, _PREC['neg'])}"
    if isinstance(expr, ast.Call):
        return format_call(expr)
    if isinstance(expr, ast.Repeat):
        count = expr.count
        simple = isinstance(count, ast.Name) or (
            isinstance(count, ast.Num) and isinstance(count.value, int)
        )
        text = format_expr(count) if simple else f"({format_expr(count)})"
        return f"repeat {text} {format_call(expr.call)}"
    if isinstance(expr, ast.Index):
        return f"{_wrap(expr.value, _ATOM)}[{format_expr(expr.index)}]"
    if isinstance(expr, ast.Pipe):
        return f"{_wrap(expr.value, _PREC['|'])} | {format_expr(expr.stage)}"
    raise AssertionError(expr)


def _wrap(expr: ast.Expr, minimum: int) -> str:
    text = format_expr(expr)
    return f"({text})" if precedence(expr) < minimum else text


def format_call(call: ast.Call) -> str:
    return f"{call.func}({', '.join(_format_item(a) for a in call.args)})"


class _Printer:
    def __init__(self, module: ast.Module) -> None:
        self.lines: list[str] = []
        self.comments = sorted(module.comments, key=lambda c: (c.line, c.column))
        self.next_comment = 0
        self.source_lines = source_lines(module.source)

    # -- comments and blank lines ----------------------------------------------------------

    def _pending(self, before_line: int) -> list[ast.Comment]:
        out = []
        while (
            self.next_comment < len(self.comments)
            and self.comments[self.next_comment].line < before_line
        ):
            out.append(self.comments[self.next_comment])
            self.next_comment += 1
        return out

    def _blank_before(self, line: int) -> bool:
        return 2 <= line <= len(self.source_lines) + 1 and not self.source_lines[line - 2].strip()

    def lead(self, line: int, depth: int, *, first: bool) -> None:
        """Comments before `line`, and one blank line where the source had any."""
        pending = self._pending(line)
        start = pending[0].line if pending else line
        if not first and self._blank_before(start) and self.lines and self.lines[-1]:
            self.lines.append("")
        prev = start
        for c in pending:
            if c.line > prev + 1 and self._blank_before(c.line) and self.lines and self.lines[-1]:
                self.lines.append("")
            self.lines.append(INDENT * depth + c.text)
            prev = c.line
        if pending and line > prev + 1 and self._blank_before(line):
            self.lines.append("")

    def emit(self, text: str, depth: int, line: int) -> None:
        """One output line; a comment trailing source line `line` is kept at its end."""
        trailing = ""
        if self.next_comment < len(self.comments) and self.comments[self.next_comment].line == line:
            trailing = "  " + self.comments[self.next_comment].text
            self.next_comment += 1
        self.lines.append(INDENT * depth + text + trailing)

    def emit_value(self, prefix: str, value: ast.Expr, suffix: str, depth: int, line: int) -> None:
        """`prefix value suffix` on one line; or one item per line between the brackets of a
        list or tuple literal that would pass MAX_WIDTH, or of a call or literal that holds
        comments (which stay beside the items they were written after)."""
        if isinstance(value, ast.Pipe) and self._comment_within(value.span):
            stages = _stages(value)
            if precedence(stages[0]) >= _PREC["|"]:  # else it needs brackets: one line
                self._emit_chain(prefix, stages, suffix, depth)
                return
        text = f"{prefix}{format_expr(value)}{suffix}"
        items = _items(value)
        inside = items is not None and self._comment_within(value.span)
        too_wide = len(INDENT * depth + text) > MAX_WIDTH and not isinstance(value, ast.Call)
        if items is None or not items or not (inside or (too_wide and len(items) > 1)):
            self.emit(text, depth, line)
            return
        opening, closing = _brackets(value)
        texts = [(_format_item(item), item.span) for item in items]
        self._emit_exploded(f"{prefix}{opening}", texts, f"{closing}{suffix}", depth, value.span)

    def _emit_exploded(
        self,
        opening: str,
        items: Sequence[tuple[str, ast.Span]],
        closing: str,
        depth: int,
        span: ast.Span,
    ) -> None:
        """`opening`, then each item and its comments on a line of its own, then `closing`
        (the items and the brackets' `span` say where each comment goes)."""
        if items[0][1].line == span.line:  # a comment on this line is the item's
            self.lines.append(INDENT * depth + opening)
        else:
            self.emit(opening, depth, span.line)
        for i, (text, item_span) in enumerate(items):
            self.lead(item_span.line, depth + 1, first=True)
            upto = item_span.end_line or item_span.line
            if i + 1 < len(items):
                upto = min(upto, items[i + 1][1].line - 1)
            self._item_line(text + ",", depth + 1, upto)
        for c in self._pending(span.end_line or span.line):
            self.lines.append(INDENT * (depth + 1) + c.text)
        self.emit(closing, depth, span.end_line or span.line)

    def _emit_chain(self, prefix: str, stages: list[ast.Expr], suffix: str, depth: int) -> None:
        """A pipe chain that holds comments, one stage a line (`| stage`, indented once), each
        with the comments written beside or above it."""
        for i, stage in enumerate(stages):
            if i:
                self.lead(stage.span.line, depth + 1, first=True)
            end = stage.span.end_line or stage.span.line
            last = i == len(stages) - 1
            if not last and stages[i + 1].span.line == end:
                end = 0  # a comment on the line the next stage starts on is the next stage's
            self.emit_value(
                prefix if i == 0 else "| ",
                stage,
                suffix if last else "",
                depth if i == 0 else depth + 1,
                end,
            )

    def _keyword_line(self, item: ast.Backbone) -> int:
        """The line of the `backbone` keyword: that of the last decorator (`@shared backbone
        {`), or the first after it that starts with it (comments may come between)."""
        last = item.decorators[-1].span
        if "backbone" in self.source_lines[last.line - 1][last.end_column or last.column :]:
            return last.line
        line = last.line + 1
        while not self.source_lines[line - 1].lstrip().startswith("backbone"):
            line += 1
        return line

    def _comment_within(self, span: ast.Span) -> bool:
        """Whether the next comment is inside `span`, before its last line."""
        if self.next_comment >= len(self.comments):
            return False
        return span.line <= self.comments[self.next_comment].line < (span.end_line or span.line)

    def _item_line(self, text: str, depth: int, upto: int) -> None:
        """An item of an exploded value, the first comment up to line `upto` at its end and
        any others (from inside a nested value) on lines of their own after it."""
        comments = self._pending(upto + 1)
        trailing = f"  {comments[0].text}" if comments else ""
        self.lines.append(INDENT * depth + text + trailing)
        self.lines.extend(INDENT * depth + c.text for c in comments[1:])

    def close(self, end: ast.Span | None, depth: int) -> None:
        """Comments left inside a braced body, then its closing brace.

        A comment on the brace's own line comes after the brace, so it stays there.
        """
        if end is None:
            self.lines.append(INDENT * depth + "}")
            return
        for c in self._pending(end.line):
            self.lines.append(INDENT * (depth + 1) + c.text)
        self.emit("}", depth, end.line)

    # -- items -----------------------------------------------------------------------------

    def module(self, module: ast.Module) -> str:
        for i, item in enumerate(module.items):
            self.item(item, first=i == 0)
        for c in self.comments[self.next_comment :]:
            if self._blank_before(c.line) and self.lines and self.lines[-1]:
                self.lines.append("")
            self.lines.append(c.text)
        return "\n".join(self.lines).rstrip("\n") + "\n"

    def item(self, item: ast.Item, *, first: bool) -> None:
        line = _first_line(item)
        self.lead(line, 0, first=first)
        if isinstance(item, ast.Import):
            self.emit(f'import "{item.path}"', 0, item.span.end_line or item.span.line)
        elif isinstance(item, ast.InputDecl):
            dims = "x".join(map(str, item.shape))
            self.emit(f"input {item.name}: {dims}", 0, item.span.line)
        elif isinstance(item, ast.Const):
            self.emit_value(f"{item.name} = ", item.value, "", 0, item.span.end_line)
        elif isinstance(item, ast.BlockDef):
            self.decorators(item.decorators, 0, item.name_span.line)
            params = [
                (p.name if p.default is None else f"{p.name}={format_expr(p.default)}", p.span)
                for p in item.params
            ]
            opening = f"block {item.name}("
            # from the name to the last parameter: a comment there belongs to a parameter
            last = (params[-1][1].end_line or params[-1][1].line) if params else 0
            span = ast.Span(item.span.file, item.name_span.line, 1, end_line=last)
            if params and self._comment_within(span):
                self._emit_exploded(opening, params, ") {", 0, span)
            else:
                text = ", ".join(t for t, _ in params)
                self.emit(f"{opening}{text}) {{", 0, item.name_span.line)
            self.body(item.body, 1)
            self.close(item.end_span, 0)
        elif isinstance(item, ast.Backbone):
            line = item.span.line if not item.decorators else self._keyword_line(item)
            self.decorators(item.decorators, 0, line)
            self.emit("backbone {", 0, line)
            self.body(item.body, 1)
            self.close(item.end_span, 0)
        elif isinstance(item, ast.Tasks):
            self.emit("tasks {", 0, item.span.line)
            width = max((len(t.name) for t in item.tasks), default=0)
            for i, task in enumerate(item.tasks):
                self.lead(task.span.line, 1, first=i == 0)
                options = "".join(f" {o.key}={format_expr(o.value)}" for o in task.options)
                name = f"{task.name}:".ljust(width + 1)
                self.emit_value(f"{name} ", task.head, options, 1, task.span.end_line)
            self.close(item.end_span, 0)

    def decorators(self, decorators: Sequence[ast.Decorator], depth: int, before: int) -> None:
        """The decorators, and the comments between them and the line `before`."""
        for dec in decorators:
            if dec.span.line == before:  # `@shared x = ...`: a comment there is the line's
                self.lines.append(INDENT * depth + f"@{dec.name}")
            else:
                self.emit(f"@{dec.name}", depth, dec.span.line)
        if decorators:
            self.lead(before, depth, first=True)

    # -- statements ------------------------------------------------------------------------

    def body(self, stmts: Sequence[ast.Stmt], depth: int) -> None:
        for i, stmt in enumerate(stmts):
            self.stmt(stmt, depth, first=i == 0)

    def stmt(self, stmt: ast.Stmt, depth: int, *, first: bool) -> None:
        self.lead(stmt.span.line, depth, first=first)
        label = f"{stmt.label}: " if stmt.label else ""
        head_line = stmt.label_span.line if stmt.label_span else _stmt_head_line(stmt)
        self.decorators(stmt.decorators, depth, head_line)
        if isinstance(stmt, ast.Assign):
            self.emit_value(f"{label}{stmt.target} = ", stmt.value, "", depth, stmt.span.end_line)
        elif isinstance(stmt, ast.Return):
            self.emit_value(f"{label}return ", stmt.value, "", depth, stmt.span.end_line)
        elif isinstance(stmt, ast.Assert):
            msg = f', "{stmt.message}"' if stmt.message is not None else ""
            self.emit(f"{label}assert {format_expr(stmt.test)}{msg}", depth, stmt.span.end_line)
        elif isinstance(stmt, ast.For):
            targets = ", ".join(stmt.targets)
            self.emit_value(f"{label}for {targets} in ", stmt.iterable, " {", depth, head_line)
            self.body(stmt.body, depth + 1)
            self.close(stmt.end_span, depth)
        elif isinstance(stmt, ast.If):
            self._if(stmt, label, depth, head_line)
        else:
            raise AssertionError(stmt)

    def _if(self, stmt: ast.If, label: str, depth: int, head_line: int) -> None:
        for i, (cond, body) in enumerate(stmt.branches):
            if i == 0:
                self.emit(f"{label}if {format_expr(cond)} {{", depth, head_line)
            else:
                span = stmt.branch_spans[i]
                self._close_inner(span, depth)
                self.lines[-1] += f" elif {format_expr(cond)} {{"
            self.body(body, depth + 1)
        if stmt.orelse is not None:
            self._close_inner(stmt.else_span, depth)
            self.lines[-1] += " else {"
            self.body(stmt.orelse, depth + 1)
        self.close(stmt.end_span, depth)

    def _close_inner(self, next_clause: ast.Span | None, depth: int) -> None:
        if next_clause is not None:
            for c in self._pending(next_clause.line):
                self.lines.append(INDENT * (depth + 1) + c.text)
        self.lines.append(INDENT * depth + "}")


def _items(value: ast.Expr) -> tuple | None:
    """The items an exploded value puts one per line: a call's arguments, a literal's items."""
    if isinstance(value, ast.Call):
        return value.args
    if isinstance(value, ast.ListLit | ast.TupleLit):
        return value.items
    return None


def _stages(chain: ast.Pipe) -> list[ast.Expr]:
    """`a | f | g` as [a, f, g]."""
    stages: list[ast.Expr] = []
    value: ast.Expr = chain
    while isinstance(value, ast.Pipe):
        stages.append(value.stage)
        value = value.value
    return [value, *reversed(stages)]


def _brackets(value: ast.Expr) -> tuple[str, str]:
    if isinstance(value, ast.Call):
        return f"{value.func}(", ")"
    return ("[", "]") if isinstance(value, ast.ListLit) else ("(", ")")


def _format_item(item: ast.Expr | ast.Arg) -> str:
    if isinstance(item, ast.Arg):
        value = format_expr(item.value)
        return value if item.name is None else f"{item.name}={value}"
    return format_expr(item)


def _first_line(item: ast.Item) -> int:
    decorators = getattr(item, "decorators", ())
    return decorators[0].span.line if decorators else item.span.line


def _stmt_head_line(stmt: ast.Stmt) -> int:
    """The line a statement starts on, after its decorators (and comments between): that of
    its first expression."""
    if not stmt.decorators:
        return stmt.span.line
    if isinstance(stmt, ast.Assign | ast.Return):
        return stmt.value.span.line
    if isinstance(stmt, ast.If):
        return stmt.branches[0][0].span.line
    if isinstance(stmt, ast.For):
        return stmt.iterable.span.line
    return stmt.test.span.line


def format_module(module: ast.Module) -> str:
    return _Printer(module).module(module)


def format_source(text: str, file: str) -> str:
    return format_module(parse(text, file))
