"""The canonical formatter (`mtsc fmt`): its layout, comments, idempotence, and that formatting
never changes what a model means (the IR of a file equals the IR of its formatted text)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtsc.grammar.format import format_expr, format_source
from mtsc.grammar.lower import lower_file
from mtsc.grammar.parser import parse

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.mtl"))

MESSY = """\
# A model written carelessly.
import   "lib.mtl"
input image :3x32x32


W=((8))   # width
@specific block b( x,c , s = 1 ,) {   y=conv(x,c,k=3,s=s,p=1)|bn|relu
  if s!=1 or channels( x )!=c { x = conv(x, c, k=1, s=s) } elif s == 1 { x = x } else {
    # nothing
  }
    return relu(x+y)   # sum
}
backbone {
  @shared stem: x = conv(image, W * (2 + 1), k = 3) | repeat (2) b(W*3)
  for i,j in [(1,2), (3,4,),] { assert i<j, "ordered" }
  return (-x[0] ** 2)    if 1 == 1 {}
}
tasks { seg: fcn( classes = 2 ) loss=l1
  depth:conv1x1(classes=1)   metric = depth weight=0.5
  # last
}
# end
"""

CANONICAL = """\
# A model written carelessly.
import "lib.mtl"
input image: 3x32x32

W = 8  # width
@specific
block b(x, c, s=1) {
    y = conv(x, c, k=3, s=s, p=1) | bn | relu
    if s != 1 or channels(x) != c {
        x = conv(x, c, k=1, s=s)
    } elif s == 1 {
        x = x
    } else {
        # nothing
    }
    return relu(x + y)  # sum
}
backbone {
    @shared
    stem: x = conv(image, W * (2 + 1), k=3) | repeat 2 b(W * 3)
    for i, j in [(1, 2), (3, 4)] {
        assert i < j, "ordered"
    }
    return -x[0] ** 2
    if 1 == 1 {
    }
}
tasks {
    seg:   fcn(classes=2) loss=l1
    depth: conv1x1(classes=1) metric=depth weight=0.5
    # last
}
# end
"""


def test_formatting_a_messy_file() -> None:
    assert format_source(MESSY, "messy.mtl") == CANONICAL
    assert format_source(CANONICAL, "messy.mtl") == CANONICAL


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("((a + b)) * (c)", "(a + b) * c"),
        ("a - (b - c)", "a - (b - c)"),
        ("(a - b) - c", "a - b - c"),
        ("(2 ** 3) ** 2", "(2 ** 3) ** 2"),
        ("2 ** (3 ** 2)", "2 ** 3 ** 2"),
        ("(-2) ** 2", "(-2) ** 2"),
        ("-(2 ** 2)", "-2 ** 2"),
        ("2 ** (-1)", "2 ** (-1)"),
        ("(not a) == b", "(not a) == b"),
        ("not (a == b)", "not a == b"),
        ("(a or b) and c", "(a or b) and c"),
        ("a or (b and c)", "a or b and c"),
        ("(1 < 2) == true", "(1 < 2) == true"),
        ("(x + y) | relu", "x + y | relu"),
        ("(x == y) | relu", "(x == y) | relu"),
        ("(x | f) | g", "x | f | g"),
        ("(a + b)[0]", "(a + b)[0]"),
        ("repeat (n) f(x)", "repeat n f(x)"),
        ("repeat (n - 1) f(x)", "repeat (n - 1) f(x)"),
        ("repeat (2.5) f(x)", "repeat (2.5) f(x)"),
        ("(1,)", "(1,)"),
        ("[ ]", "[]"),
        ("f(a,b=1,)", "f(a, b=1)"),
        ("1.50e-3", "1.50e-3"),
        ('"a b"', '"a b"'),
    ],
)
def test_expressions_get_minimal_parentheses(text: str, canonical: str) -> None:
    (const,) = parse(f"v = {text}\n", "t.mtl").items
    assert format_expr(const.value) == canonical


def test_comments_and_blank_lines() -> None:
    text = (
        "# one\n\n\n\n# two\nblock b(x) {  # opens\n    # first\n\n\n    y = x  # trailing\n"
        "    # before the brace\n}   # closes\n\n\n# last\n"
    )
    assert format_source(text, "c.mtl") == (
        "# one\n\n# two\nblock b(x) {  # opens\n    # first\n\n    y = x  # trailing\n"
        "    # before the brace\n}  # closes\n\n# last\n"
    )


def test_a_comment_inside_a_long_call_is_kept() -> None:
    text = "backbone {\n    x = conv(image,  # the input\n             8, k=3)\n    return x\n}\n"
    formatted = format_source(text, "c.mtl")
    assert "# the input" in formatted
    assert format_source(formatted, "c.mtl") == formatted
    assert [c.text for c in parse(formatted, "c.mtl").comments] == ["# the input"]


def _model_files(examples_dir: Path, repo: Path) -> list[Path]:
    return [
        *sorted(examples_dir.glob("*.mtl")),
        repo / "grammar" / "heads.mtl",
        *sorted((repo / "tests" / "models").rglob("*.mtl")),
    ]


def test_formatting_is_idempotent_on_every_shipped_file(examples_dir, repo) -> None:
    for path in _model_files(examples_dir, repo):
        once = format_source(path.read_text(), str(path))
        assert format_source(once, str(path)) == once, path
        original, formatted = parse(path.read_text(), "a"), parse(once, "a")
        assert [c.text for c in original.comments] == [c.text for c in formatted.comments]


@pytest.mark.parametrize(
    "name",
    [
        "examples/resnet18.mtl",
        "examples/resnet34.mtl",
        "examples/resnet_blocks.mtl",
        "examples/resnet_tiny.mtl",
        "grammar/heads.mtl",
        "tests/models/tiny.mtl",
        "tests/models/parts/mixers.mtl",
    ],
)
def test_files_already_in_canonical_form(name: str, repo) -> None:
    path = repo / name
    assert format_source(path.read_text(), str(path)) == path.read_text()


@pytest.mark.parametrize("name", [p.name for p in EXAMPLES if p.stem != "resnet_blocks"])
def test_lowering_is_invariant_under_formatting(
    name: str, examples_dir, tmp_path, graph_signature
) -> None:
    for path in examples_dir.glob("*.mtl"):
        # Every file formatted, imports included, next to each other.
        shutil.copy(path, tmp_path / path.name)
        (tmp_path / path.name).write_text(format_source(path.read_text(), str(path)))
    original = lower_file(examples_dir / name)
    formatted = lower_file(tmp_path / name)
    assert graph_signature(formatted) == graph_signature(original)
    assert len(graph_signature(original)) > 50


@pytest.mark.parametrize("char", ["\f", "\v", "\x1c", "\x85", "\u2028", "\u2029"])
def test_a_comment_holding_a_character_python_calls_a_line_break_keeps_the_blank_lines(
    char,
) -> None:
    # The lexer counts lines at "\n" only; so must the check for a blank line before a statement.
    text = (
        f"# a{char}b\ninput image: 3x8x8\n\n# c\nbackbone {{\n    x = relu(image)\n\n"
        "    return x\n}\n"
    )
    assert format_source(text, "c.mtl") == text


COMMENTED_CALLS = """\
input image: 3x8x8
backbone {
    x = conv(  # the stem
        image, 16,
        k=3,  # kernel
        # padding next
        p=1
        # done
    )  # after
    y = [[1,  # a
          2], 3]
    return relu(
        x  # only x
    )
}
tasks {
    segment: conv1x1(
        classes=6,  # six
    ) loss=cross_entropy
}
"""

COMMENTED_CALLS_FORMATTED = """\
input image: 3x8x8
backbone {
    x = conv(  # the stem
        image,
        16,
        k=3,  # kernel
        # padding next
        p=1,
        # done
    )  # after
    y = [
        [
            1,  # a
            2,
        ],
        3,
    ]
    return relu(
        x,  # only x
    )
}
tasks {
    segment: conv1x1(
        classes=6,  # six
    ) loss=cross_entropy
}
"""


def test_comments_inside_a_call_or_list_stay_beside_their_items() -> None:
    # A value holding comments is written one item per line, each comment where it was.
    formatted = format_source(COMMENTED_CALLS, "c.mtl")
    assert formatted == COMMENTED_CALLS_FORMATTED
    assert format_source(formatted, "c.mtl") == formatted


COMMENTED_CHAINS = """\
input image: 3x8x8
@shared  # pinned
# why
block stem(x,  # the input
           c=8) {  # its width
    return x
}
backbone {
    @specific
    # per task
    x = conv(image, 8, k=3, p=1)  # the stem
        | bn  # per task
        # then
        | relu
    y = x | conv(8, k=3,  # odd
                 p=1)
    @shared z = stem(y)  # one line
    return z
}
"""

COMMENTED_CHAINS_FORMATTED = """\
input image: 3x8x8
@shared  # pinned
# why
block stem(
    x,  # the input
    c=8,
) {  # its width
    return x
}
backbone {
    @specific
    # per task
    x = conv(image, 8, k=3, p=1)  # the stem
        | bn  # per task
        # then
        | relu
    y = x
        | conv(
            8,
            k=3,  # odd
            p=1,
        )
    @shared
    z = stem(y)  # one line
    return z
}
"""


def test_comments_in_chains_parameters_and_after_decorators_stay_where_they_were() -> None:
    # A chain holding comments is written one stage a line, a parameter list one parameter a
    # line; comments after a decorator stay before the statement.
    formatted = format_source(COMMENTED_CHAINS, "c.mtl")
    assert formatted == COMMENTED_CHAINS_FORMATTED
    assert format_source(formatted, "c.mtl") == formatted


def test_a_call_without_comments_inside_is_joined_onto_one_line() -> None:
    body = "    x = conv(\n        image,\n        16,\n    )\n    return x\n"
    text = f"input image: 3x8x8\nbackbone {{\n{body}}}\n"
    assert format_source(text, "c.mtl").splitlines()[2] == "    x = conv(image, 16)"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["image", "16", "k=3", "p=1", "[1, 2]", "s=(2, 2)"]),
            st.none() | st.from_regex(r"# [a-z]{1,8}", fullmatch=True),
            st.booleans(),  # whether the next argument starts a new line
        ),
        min_size=1,
        max_size=6,
    )
)
def test_commented_arguments_keep_their_comments_in_order(args) -> None:
    lines, current = ["    x = conv("], ""
    for text, comment, newline in args:
        current += f"{text}, "
        if comment or newline:
            lines.append("        " + current.rstrip() + (f"  {comment}" if comment else ""))
            current = ""
    if current:
        lines.append("        " + current.rstrip())
    source = "input image: 3x8x8\nbackbone {\n" + "\n".join(lines) + "\n    )\n    return x\n}\n"
    formatted = format_source(source, "c.mtl")
    assert format_source(formatted, "c.mtl") == formatted
    if any(comment for _, comment, _ in args):  # one argument a line, each comment beside its
        call = ["    x = conv("]
        call += [f"        {text}," + (f"  {c}" if c else "") for text, c, _ in args]
        call += ["    )"]
    else:
        call = [f"    x = conv({', '.join(text for text, _, _ in args)})"]
    assert formatted.splitlines()[2:-2] == call


def test_a_comment_inside_a_bracketed_sub_expression_stays_where_it_was() -> None:
    # No layout of the formatter's own keeps these comments in place: the value is written
    # as it was, re-indented with its statement.
    text = (
        "input image: 3x8x8\nbackbone {\n  x = conv(image, 4, k=1)\n"
        "  y = x + (x  # first\n      | conv(4, k=1)  # second\n      | relu)\n  return y\n}\n"
    )
    formatted = format_source(text, "c.mtl")
    assert formatted.splitlines()[3:6] == [
        "    y = x + (x  # first",
        "        | conv(4, k=1)  # second",
        "        | relu)",
    ]
    assert format_source(formatted, "c.mtl") == formatted


def test_a_comment_after_the_backbone_decorator_stays_there_whatever_it_says() -> None:
    text = "input image: 3x8x8\n@shared  # a backbone pinned\nbackbone {\n    return image\n}\n"
    assert format_source(text, "c.mtl") == text


def test_a_crlf_file_formats_to_plain_lines_with_comments_stripped_on_the_right() -> None:
    source = (
        "input image: 3x8x8\r\nbackbone {\r\n\tx = conv(image, 4, k=1)  # c   \r\n"
        "\ty = x + (x  # first\r\n\t| relu)\r\n\treturn y\r\n}\r\n"
    )
    assert format_source(source, "m.mtl") == (
        "input image: 3x8x8\nbackbone {\n    x = conv(image, 4, k=1)  # c\n"
        "    y = x + (x  # first\n    | relu)\n    return y\n}\n"
    )


def test_a_repeated_stage_without_arguments_is_written_bare() -> None:
    source = (
        "input image: 3x8x8\nbackbone {\n    return image | repeat 3 relu() | repeat 2 relu\n}\n"
    )
    assert format_source(source, "m.mtl") == source.replace("relu()", "relu")
