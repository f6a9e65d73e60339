"""The canonical `.mtl` formatter (`mtsc fmt`): prints the syntax tree back with fixed spacing,
four-space indentation, minimal parentheses, comments kept, and at most one blank line.
Formatting is idempotent and never changes what a file means (the tests check both)."""

from __future__ import annotations

import bisect
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
        call = format_call(expr.call) if expr.call.args else expr.call.func
        return f"repeat {text} {call}"
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
        # the source with its comments blanked out, for scanning the code around a span
        code_lines = list(self.source_lines)
        for c in self.comments:
            code_lines[c.line - 1] = code_lines[c.line - 1][: c.column - 1] + " " * len(c.text)
        self.code = "\n".join(code_lines)
        self.line_starts = [0]
        for text in code_lines:
            self.line_starts.append(self.line_starts[-1] + len(text) + 1)

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

    def emit_value(
        self,
        prefix: str,
        value: ast.Expr,
        suffix: str,
        depth: int,
        line: int,
        name: ast.Span | None = None,
    ) -> None:
        """`prefix value suffix` on one line; or one item per line between the brackets of a
        list or tuple literal that would pass MAX_WIDTH, or of a call or literal that holds
        comments (which stay beside the items they were written after). `name`: that of the
        call or block whose item `value` is, before its bracket."""
        if isinstance(value, ast.Pipe) and self._comment_within(value.span):
            stages = _stages(value)
            # a chain needing brackets, or with a comment inside them before its first stage,
            # is written as it was
            first = self.comments[self.next_comment].line >= stages[0].span.line
            if precedence(stages[0]) >= _PREC["|"] and first:
                self._emit_chain(prefix, stages, suffix, depth)
                return
        text = f"{prefix}{format_expr(value)}{suffix}"
        items = _items(value)
        inside = items is not None and self._comment_within(value.span)
        too_wide = len(INDENT * depth + text) > MAX_WIDTH and not isinstance(value, ast.Call)
        if items is None or not items or not (inside or (too_wide and len(items) > 1)):
            written = self._with_brackets(value.span, name)
            if self._comment_within(written):
                self._emit_as_written(prefix, written, suffix, depth, line)
            else:
                self.emit(text, depth, line)
            return
        opening, closing = _brackets(value)
        parts = [_item_parts(item) for item in items]
        call = value.func_span if isinstance(value, ast.Call) else None
        self._emit_exploded(
            f"{prefix}{opening}", parts, f"{closing}{suffix}", depth, value.span, line, call
        )

    def _emit_exploded(
        self,
        opening: str,
        items: Sequence[tuple[str, ast.Expr | None, ast.Span]],
        closing: str,
        depth: int,
        span: ast.Span,
        line: int,
        name: ast.Span | None = None,
    ) -> None:
        """`opening`, then each item and its comments on a line of its own, then `closing`
        (the items and the brackets' `span` say where each comment goes; a comment on line
        `line` ends the closing line). Each item is (its `name=`, its value, its span); one
        whose value holds comments is laid out as a value of its own. `name`: the call's or
        block's, before its bracket."""
        written = [self._with_brackets(item_span, name) for _, _, item_span in items]
        if written[0].line == span.line:  # a comment on this line is the item's
            self.lines.append(INDENT * depth + opening)
        else:
            self.emit(opening, depth, span.line)
        for i, ((prefix, value, _), item_span) in enumerate(zip(items, written, strict=True)):
            self.lead(item_span.line, depth + 1, first=True)
            # a comment on the line the next item starts on, or the closing bracket is on,
            # is not this item's
            upto = min(item_span.end_line or item_span.line, (span.end_line or span.line) - 1)
            if i + 1 < len(items):
                upto = min(upto, written[i + 1].line - 1)
            if value is not None and self._comment_within(self._with_brackets(value.span, name)):
                self.emit_value(prefix, value, ",", depth + 1, upto, name)
            else:
                self._item_line(_parts_text((prefix, value, item_span)) + ",", depth + 1, upto)
        for c in self._pending(span.end_line or span.line):
            self.lines.append(INDENT * (depth + 1) + c.text)
        self.emit(closing, depth, line)

    def _emit_as_written(
        self, prefix: str, span: ast.Span, suffix: str, depth: int, line: int
    ) -> None:
        """A value whose comments no layout here keeps in place (they are inside a bracketed
        sub-expression): its source text as written, each line's indentation kept relative to
        the line it starts on, so the comments stay beside what they were written after."""
        first, *rest = self.source_lines[span.line - 1 : span.end_line]
        rest[-1] = rest[-1][: span.end_column - 1]
        base = len(first) - len(first.lstrip())
        written = [prefix + first[span.column - 1 :].rstrip()]
        for text in rest:
            extra = " " * max(0, len(text) - len(text.lstrip()) - base)
            written.append(extra + text.strip() if text.strip() else "")
        self._pending(span.end_line)  # the comments inside are in the text
        self.lines.extend(INDENT * depth + text if text else "" for text in written[:-1])
        self.emit(written[-1] + suffix, depth, line)

    def _with_brackets(self, span: ast.Span, opening: ast.Span | None = None) -> ast.Span:
        """`span` grown over the brackets around it (a bracketed expression's span leaves out
        its own), up to, not over, the first `(` from `opening`'s end: the bracket of the call
        or block whose item `span` is."""
        code = self.code
        start = self._offset(span.line, span.column)
        end = self._offset(span.end_line or span.line, span.end_column or span.column)
        limit = -1
        if opening is not None:
            limit = code.index("(", self._offset(opening.end_line, opening.end_column))
        while True:
            before, after = start - 1, end
            while before > limit and code[before].isspace():
                before -= 1
            while after < len(code) and code[after].isspace():
                after += 1
            if before <= limit or after >= len(code) or code[before] + code[after] != "()":
                break
            start, end = before, after + 1
        line = bisect.bisect_right(self.line_starts, start)
        end_line = bisect.bisect_right(self.line_starts, end - 1)
        return ast.Span(
            span.file,
            line,
            start - self.line_starts[line - 1] + 1,
            end_line=end_line,
            end_column=end - self.line_starts[end_line - 1] + 1,
        )

    def _offset(self, line: int, column: int) -> int:
        return self.line_starts[line - 1] + column - 1

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

    def _line_of_next(self, token: str, after: ast.Span) -> int:
        """The line of the first `token` in the code after `after` (comments may come between,
        and are not searched)."""
        end = self._offset(after.end_line or after.line, after.end_column or after.column)
        return bisect.bisect_right(self.line_starts, self.code.index(token, end))

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
            params = [_param_parts(p) for p in item.params]
            opening = f"block {item.name}("
            # from the name to the body's brace: a comment before that line is a parameter's
            last = self._line_of_next("{", params[-1][2]) if params else 0
            span = ast.Span(item.span.file, item.name_span.line, 1, end_line=last)
            if params and self._comment_within(span):
                self._emit_exploded(opening, params, ") {", 0, span, last, item.name_span)
            else:
                text = ", ".join(map(_parts_text, params))
                self.emit(f"{opening}{text}) {{", 0, item.name_span.line)
            self.body(item.body, 1)
            self.close(item.end_span, 0)
        elif isinstance(item, ast.Backbone):
            line = item.span.line
            if item.decorators:
                line = self._line_of_next("backbone", item.decorators[-1].span)
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
    return _parts_text(_item_parts(item))


def _parts_text(parts: tuple[str, ast.Expr | None, ast.Span]) -> str:
    prefix, value, _ = parts
    return prefix if value is None else prefix + format_expr(value)


def _param_parts(param: ast.Param) -> tuple[str, ast.Expr | None, ast.Span]:
    """A block parameter as (its name, or `name=` and its default; its span)."""
    if param.default is None:
        return param.name, None, param.span
    return f"{param.name}=", param.default, param.span


def _item_parts(item: ast.Expr | ast.Arg) -> tuple[str, ast.Expr, ast.Span]:
    """An argument or literal item as (`name=` or nothing, its value, its span)."""
    if isinstance(item, ast.Arg):
        return ("" if item.name is None else f"{item.name}=", item.value, item.span)
    return "", item, item.span


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
