"""The `.mtl` parser: the syntax tree of every construct, operator precedence, spans, comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtsc.errors import MtscError
from mtsc.grammar import ast
from mtsc.grammar.parser import parse

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.mtl"))


def sexpr(e: ast.Expr) -> str:
    """A compact, fully bracketed rendering of an expression, to compare trees in one string."""
    if isinstance(e, ast.Num):
        return e.text
    if isinstance(e, ast.Str):
        return f'"{e.value}"'
    if isinstance(e, ast.Bool):
        return str(e.value).lower()
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.TupleLit):
        return "(tuple" + "".join(" " + sexpr(i) for i in e.items) + ")"
    if isinstance(e, ast.ListLit):
        return "(list" + "".join(" " + sexpr(i) for i in e.items) + ")"
    if isinstance(e, ast.BinOp):
        return f"({e.op} {sexpr(e.left)} {sexpr(e.right)})"
    if isinstance(e, ast.UnaryOp):
        return f"({e.op} {sexpr(e.operand)})"
    if isinstance(e, ast.Call):
        args = "".join(
            f" {sexpr(a.value)}" if a.name is None else f" {a.name}={sexpr(a.value)}"
            for a in e.args
        )
        return f"(call {e.func}{args})"
    if isinstance(e, ast.Repeat):
        return f"(repeat {sexpr(e.count)} {sexpr(e.call)})"
    if isinstance(e, ast.Index):
        return f"(index {sexpr(e.value)} {sexpr(e.index)})"
    if isinstance(e, ast.Pipe):
        return f"(| {sexpr(e.value)} {sexpr(e.stage)})"
    raise AssertionError(e)


def parse_expr(text: str) -> ast.Expr:
    (const,) = parse(f"v = {text}\n", "t.mtl").items
    assert isinstance(const, ast.Const)
    return const.value


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("1 + 2 * 3", "(+ 1 (* 2 3))"),
        ("(1 + 2) * 3", "(* (+ 1 2) 3)"),
        ("1 - 2 - 3", "(- (- 1 2) 3)"),
        ("1 - (2 - 3)", "(- 1 (- 2 3))"),
        ("8 // 3 % 2 / 1", "(/ (% (// 8 3) 2) 1)"),
        ("2 ** 3 ** 2", "(** 2 (** 3 2))"),
        ("-2 ** 2", "(- (** 2 2))"),
        ("(-2) ** 2", "(** (- 2) 2)"),
        ("2 ** -1", "(** 2 (- 1))"),
        ("--a", "(- (- a))"),
        ("a or b and c", "(or a (and b c))"),
        ("not a and b", "(and (not a) b)"),
        ("not a == b", "(not (== a b))"),
        ("a + 1 >= b * 2", "(>= (+ a 1) (* b 2))"),
        ("a != b or c < d", "(or (!= a b) (< c d))"),
        ("x | relu | conv(8, k=3)", "(| (| x relu) (call conv 8 k=3))"),
        ("x + y | relu", "(| (+ x y) relu)"),
        ("x | repeat 2 basic(64)", "(| x (repeat 2 (call basic 64)))"),
        ("repeat n f(x, c=1)", "(repeat n (call f x c=1))"),
        ("repeat (n - 1) f(x)", "(repeat (- n 1) (call f x))"),
        ("channels(x) == 3", "(== (call channels x) 3)"),
        ("f()", "(call f)"),
        ("f(a, b=1,)", "(call f a b=1)"),
        ("rates[0][1]", "(index (index rates 0) 1)"),
        ("f(x)[2]", "(index (call f x) 2)"),
        ("(1,)", "(tuple 1)"),
        ("(1, 2, 3,)", "(tuple 1 2 3)"),
        ("((1))", "1"),
        ("[]", "(list)"),
        ("[1, (2, 3), [4]]", "(list 1 (tuple 2 3) (list 4))"),
        ('"bilinear"', '"bilinear"'),
        ("true and false", "(and true false)"),
        ("1.5e-3 + .5 + 2. + 1e4", "(+ (+ (+ 1.5e-3 .5) 2.) 1e4)"),
    ],
)
def test_expression_trees(text: str, tree: str) -> None:
    assert sexpr(parse_expr(text)) == tree


def test_numbers_keep_their_value_and_spelling() -> None:
    ints = parse_expr("007")
    floats = parse_expr("0.10")
    assert (ints.value, ints.text) == (7, "007") and isinstance(ints.value, int)
    assert (floats.value, floats.text) == (0.1, "0.10") and isinstance(floats.value, float)
    assert parse_expr("1e3").value == 1000.0


def test_top_level_items() -> None:
    text = (
        'import "lib/blocks.mtl"\n'
        "input image: 3x224x320\n"
        "WIDTH = 64\n"
        "@specific\n"
        "block b(x, c, s=1, rates=(6, 12),) {\n"
        "    return x\n"
        "}\n"
        "@shared\n"
        "backbone {\n"
        "    return b(image, WIDTH)\n"
        "}\n"
        "tasks {\n"
        "    seg: fcn(classes=13) loss=cross_entropy(ignore=255) metric=miou weight=0.5\n"
        "    depth: conv1x1\n"
        "}\n"
    )
    imp, inp, const, block, backbone, tasks = parse(text, "m.mtl").items
    assert imp == ast.Import("lib/blocks.mtl", imp.span)
    assert (inp.name, inp.shape) == ("image", (3, 224, 320))
    assert (const.name, sexpr(const.value)) == ("WIDTH", "64")
    assert block.name == "b" and [d.name for d in block.decorators] == ["specific"]
    assert [(p.name, p.default and sexpr(p.default)) for p in block.params] == [
        ("x", None),
        ("c", None),
        ("s", "1"),
        ("rates", "(tuple 6 12)"),
    ]
    assert [d.name for d in backbone.decorators] == ["shared"]
    (ret,) = backbone.body
    assert isinstance(ret, ast.Return) and sexpr(ret.value) == "(call b image WIDTH)"
    seg, depth = tasks.tasks
    assert (seg.name, sexpr(seg.head)) == ("seg", "(call fcn classes=13)")
    assert [(o.key, sexpr(o.value)) for o in seg.options] == [
        ("loss", "(call cross_entropy ignore=255)"),
        ("metric", "miou"),
        ("weight", "0.5"),
    ]
    assert (depth.name, sexpr(depth.head), depth.options) == ("depth", "conv1x1", ())


def test_statements() -> None:
    text = (
        "backbone {\n"
        "    @shared\n"
        "    stem: x = conv(image, 8, k=3)\n"
        "    if a { y = 1 } elif b { y = 2 } elif c { } else { y = 3 }\n"
        "    for c, n in [(1, 2)] { x = f(x, c) }\n"
        '    assert n > 0, "positive"\n'
        "    assert true\n"
        "    out: return x\n"
        "}\n"
    )
    (backbone,) = parse(text, "m.mtl").items
    assign, cond, loop, check, bare, ret = backbone.body
    assert isinstance(assign, ast.Assign)
    assert (assign.label, assign.target, [d.name for d in assign.decorators]) == (
        "stem",
        "x",
        ["shared"],
    )
    assert [sexpr(c) for c, _ in cond.branches] == ["a", "b", "c"]
    assert [len(body) for _, body in cond.branches] == [1, 1, 0]
    assert len(cond.orelse) == 1 and cond.label is None
    assert loop.targets == ("c", "n") and sexpr(loop.iterable) == "(list (tuple 1 2))"
    assert sexpr(loop.body[0].value) == "(call f x c)"
    assert (sexpr(check.test), check.message) == ("(> n 0)", "positive")
    assert (sexpr(bare.test), bare.message) == ("true", None)
    assert isinstance(ret, ast.Return) and ret.label == "out"


def test_statements_need_no_separators() -> None:
    (block,) = parse("block b(x) { y = relu(x) z = y + x return z }", "m.mtl").items
    assert [type(s).__name__ for s in block.body] == ["Assign", "Assign", "Return"]
    # A call may span lines, as newlines are whitespace.
    (const,) = parse("v = f(1,\n      2)\n", "m.mtl").items
    assert sexpr(const.value) == "(call f 1 2)"


def test_spans_are_one_based_with_exclusive_ends() -> None:
    text = (
        "input image: 3x8x8\nbackbone {\n    x = conv(image, 8,\n             k=3)\n"
        "    return x\n}\n"
    )
    _, backbone = parse(text, "dir/m.mtl").items
    assign = backbone.body[0]
    call = assign.value
    assert str(call.span) == "dir/m.mtl:3:9"
    assert (call.span.end_line, call.span.end_column) == (4, 18)
    assert (call.func_span.line, call.func_span.column, call.func_span.end_column) == (3, 9, 13)
    kwarg = call.args[2]
    assert (kwarg.name, kwarg.span.line, kwarg.span.column) == ("k", 4, 14)
    assert assign.span.line == 3 and assign.span.source_line() == "    x = conv(image, 8,"
    assert (backbone.span.line, backbone.end_span.line) == (2, 6)


def test_comments_are_collected_with_their_positions() -> None:
    text = (
        "# head\ninput image: 3x8x8  # the input\nbackbone {\n    # inside\n    return image\n}\n"
    )
    module = parse(text, "m.mtl")
    assert [(c.text, c.line, c.column) for c in module.comments] == [
        ("# head", 1, 1),
        ("# the input", 2, 21),
        ("# inside", 4, 5),
    ]
    # A later parse starts afresh.
    assert parse("v = 1\n", "n.mtl").comments == ()


def test_a_string_may_hold_a_hash() -> None:
    module = parse('v = "a # b"\n', "m.mtl")
    assert module.comments == () and module.items[0].value.value == "a # b"


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("v = 1 +\n", "unexpected end of file; expected", 8),
        ("v = (1, 2\n", "unexpected end of file; expected ')', ','", 10),
        ("v = f(x=)\n", "unexpected ')'; expected", 9),
        ("v = x | 3\n", "unexpected '3'; expected a name, 'repeat'", 9),
        ("v = 1 < 2 < 3\n", "unexpected '<'", 11),
        ("input image 3x8x8\n", "unexpected '3x8x8'; expected ':'", 13),
        ("v = 1 = 2\n", "unexpected '='", 7),
    ],
)
def test_syntax_errors_say_what_was_expected(text: str, message: str, column: int) -> None:
    with pytest.raises(MtscError) as info:
        parse(text, "m.mtl")
    assert info.value.message.startswith(message)
    assert (info.value.span.line, info.value.span.column) == (1, column)


@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_examples_parse(name: str, examples_dir) -> None:
    path = examples_dir / f"{name}.mtl"
    module = parse(path.read_text(), str(path))
    kinds = {type(item).__name__ for item in module.items}
    if name == "resnet_blocks":
        assert kinds == {"BlockDef"}
    else:
        assert {"InputDecl", "Backbone", "Tasks"} <= kinds
    assert module.comments and all(c.text.startswith("#") for c in module.comments)
