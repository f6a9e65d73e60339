"""Fuzz and property tests.

1. Mutated example files (characters and tokens deleted, duplicated, swapped, replaced; numbers
   changed) go through the whole frontend: the only acceptable outcomes are success or an
   `MtscError`. A mutant that compiles must verify, and must mean the same after formatting.
2. Random valid programs: `format(parse(x))` parses to the same tree (spans aside), keeps every
   comment, and formatting it again changes nothing.

The tests are derandomized so CI runs are repeatable; set MTSC_FUZZ_EXAMPLES=2000 (say) to
explore new inputs locally.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mtsc.driver import load
from mtsc.errors import MtscError, Span
from mtsc.grammar.format import format_module
from mtsc.grammar.parser import parse
from mtsc.ir.verify import verify

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SOURCES = {p.name: p.read_text() for p in sorted(EXAMPLES.glob("*.mtl"))}
LIBRARIES = {"resnet_blocks.mtl": "resnet18.mtl"}  # an imported file, and a model importing it

_explore = int(os.environ.get("MTSC_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_explore or 150,
    derandomize=not _explore,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- mutations

TOKEN = re.compile(r"\d+\.\d*|\d+|[A-Za-z_]\w*|==|!=|<=|>=|//|\*\*|\S")
NUMBER = re.compile(r"\d+")
VOCABULARY = [
    *"(){}[],:=|+-*/%@<>",
    *"repeat if elif else for in return assert block backbone tasks import input".split(),
    *"not and or true false loss metric weight".split(),
    *"x image c stride channels(x) range(3) len(x) x[0] (1, 2) [] 1.5 1e400 0 -1".split(),
    *"concat(x, x) max(x, x) flatten linear(10) upsample(scale=2) avgpool(global=true)".split(),
    '"s"',
    "# comment\n",
    "\n",
]


@st.composite
def mutation(draw, text: str) -> str:
    if not text:
        return draw(st.sampled_from(VOCABULARY))
    kind = draw(st.sampled_from(["delete", "duplicate", "swap", "token", "insert", "number"]))
    i = draw(st.integers(0, len(text) - 1))
    if kind == "delete":
        return text[:i] + text[i + 1 :]
    if kind == "duplicate":
        return text[:i] + text[i] + text[i:]
    if kind == "swap":
        j = draw(st.integers(0, len(text) - 1))
        a, b = sorted((i, j))
        return text[:a] + text[b] + text[a + 1 : b] + text[a] + text[b + 1 :] if a < b else text
    tokens = list(TOKEN.finditer(text))
    if kind == "token" and tokens:
        old = draw(st.sampled_from(tokens))
        new = draw(st.sampled_from(["", *{t.group() for t in tokens}]))
        return text[: old.start()] + new + text[old.end() :]
    if kind == "number":
        numbers = list(NUMBER.finditer(text))
        if numbers:
            old = draw(st.sampled_from(numbers))
            new = draw(st.sampled_from([0, 1, 2, 3, 5, 7, 64, 300, 2 * int(old.group())]))
            return text[: old.start()] + str(new) + text[old.end() :]
    word = draw(st.sampled_from(VOCABULARY))
    return text[:i] + f" {word} " + text[i:]


@st.composite
def mutants(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(SOURCES)))
    text = SOURCES[name]
    for _ in range(draw(st.integers(1, 3))):
        text = draw(mutation(text))
    return name, text


def _load_quietly(path: Path):
    """Compile; a user error is a fine outcome (its rendering must not fail either)."""
    try:
        return load(path)
    except MtscError as err:
        assert err.render().startswith(f"{err.span}: error: " if err.span else "error: ")
        return None


def test_mutated_examples_compile_or_fail_cleanly(graph_signature) -> None:
    outcomes = collections.Counter()

    @FUZZ
    @given(mutant=mutants())
    def compile_mutant(mutant) -> None:
        name, text = mutant
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for other in SOURCES:
                shutil.copy(EXAMPLES / other, folder / other)
            (folder / name).write_text(text)
            model = folder / LIBRARIES.get(name, name)
            g = _load_quietly(model)  # anything but MtscError fails the test
            outcome = "compiled" if g is not None else "rejected"
            event(outcome)
            outcomes[outcome] += 1
            if g is None:
                return
            verify(g, after="lowering a mutant")
            # It compiled, so it parses: its formatted text must mean the same.
            (folder / name).write_text(format_module(parse(text, str(folder / name))))
            assert graph_signature(load(model)) == graph_signature(g)

    compile_mutant()
    # Both outcomes, each often: a frontend that rejected (or accepted) everything would pass
    # the property above.
    assert min(outcomes["compiled"], outcomes["rejected"]) >= 10, outcomes


# ---------------------------------------------------------------- random programs

# No keywords among the names (`in`, `loss`, ...): every generated program must parse.
names = st.sampled_from(["a", "b", "x", "y", "c", "conv", "relu", "f", "basic", "n", "k_2", "_t"])
ints = st.integers(0, 999).map(str)
floats = st.sampled_from(["1.5", "0.25", "2.", ".5", "1e3", "2.5e-3", "0.10", "1E+2"])
strings = st.sampled_from(['"bilinear"', '"a b"', '""', '"x#y"', '"{"'])
atoms = st.one_of(ints, floats, strings, names, st.sampled_from(["true", "false"]))
BINARY = ["+", "-", "*", "/", "//", "%", "**", "and", "or", "==", "!=", "<", "<=", ">", ">="]


def _call(name: str, positional: list[str], keywords: list[tuple[str, str]]) -> str:
    return f"{name}({', '.join([*positional, *(f'{k}={v}' for k, v in keywords)])})"


def _compound(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One more level of expression; compound parts are bracketed, which fixes the tree."""
    args = st.tuples(
        names, st.lists(children, max_size=3), st.lists(st.tuples(names, children), max_size=2)
    )
    calls = args.map(lambda t: _call(*t))
    count = st.one_of(ints, names, children.map(lambda e: f"({e})"))
    repeats = st.tuples(count, calls).map(lambda t: f"repeat {t[0]} {t[1]}")
    stages = st.one_of(names, calls, repeats)
    return st.one_of(
        st.tuples(children, st.sampled_from(BINARY), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        children.map(lambda e: f"(-{e})"),
        children.map(lambda e: f"(not {e})"),
        calls,
        repeats.map(lambda r: f"({r})"),
        st.tuples(children, children).map(lambda t: f"({t[0]})[{t[1]}]"),
        st.lists(children, min_size=1, max_size=3).map(
            lambda items: f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
        ),
        st.lists(children, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        st.tuples(children, stages).map(lambda t: f"({t[0]} | {t[1]})"),
    )


expressions = st.recursive(atoms, _compound, max_leaves=12)
spaces = st.sampled_from([" ", "  ", "\n", " \n    "])
comments = st.sampled_from(["", "", "  # note", "  # a # b", "#"])


@st.composite
def statements(draw, depth: int = 0) -> str:
    kinds = ["assign", "return", "assert"] + (["if", "for"] if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    prefix = "".join(
        f"@{d}\n" for d in draw(st.lists(st.sampled_from(["shared", "specific"]), max_size=1))
    )
    if draw(st.booleans()):
        prefix += draw(names) + ": "
    if kind == "assign":
        body = f"{draw(names)} = {draw(expressions)}"
    elif kind == "return":
        body = f"return {draw(expressions)}"
    elif kind == "assert":
        message = draw(st.sampled_from(["", ', "must hold"']))
        body = f"assert {draw(expressions)}{message}"
    elif kind == "for":
        targets = ", ".join(draw(st.lists(names, min_size=1, max_size=3)))
        body = f"for {targets} in {draw(expressions)} {draw(bodies(depth + 1))}"
    else:
        body = f"if {draw(expressions)} {draw(bodies(depth + 1))}"
        for _ in range(draw(st.integers(0, 2))):
            body += f" elif {draw(expressions)} {draw(bodies(depth + 1))}"
        if draw(st.booleans()):
            body += f" else {draw(bodies(depth + 1))}"
    comment = draw(comments)
    return prefix + body + (comment + "\n" if comment else draw(spaces))


@st.composite
def bodies(draw, depth: int = 0) -> str:
    stmts = draw(st.lists(statements(depth), max_size=3))
    inner = "".join(stmts)
    if draw(st.booleans()):
        inner = "# inside\n" + inner
    return "{" + draw(spaces) + inner + draw(st.sampled_from(["", "# end of body\n"])) + "}"


@st.composite
def items(draw) -> str:
    kind = draw(st.sampled_from(["import", "input", "const", "block", "backbone", "tasks"]))
    decorators = "".join(
        f"@{d}\n" for d in draw(st.lists(st.sampled_from(["shared", "specific"]), max_size=2))
    )
    if kind == "import":
        return f'import "{draw(st.sampled_from(["a.mtl", "lib/b.mtl"]))}"'
    if kind == "input":
        dims = draw(st.lists(st.integers(1, 64), min_size=2, max_size=4))
        return f"input {draw(names)}: {'x'.join(map(str, dims))}"
    if kind == "const":
        return f"{draw(names)} = {draw(expressions)}"
    if kind == "block":
        params = []
        for param in draw(st.lists(names, max_size=3, unique=True)):
            default = draw(st.one_of(st.none(), expressions))
            params.append(param if default is None else f"{param}={default}")
        return f"{decorators}block {draw(names)}({', '.join(params)}) {draw(bodies())}"
    if kind == "backbone":
        return f"{decorators}backbone {draw(bodies())}"
    tasks = []
    for name in draw(st.lists(names, max_size=3)):
        options = draw(st.lists(st.sampled_from(["loss", "metric", "weight"]), max_size=3))
        parts = [f"{name}: {draw(expressions)}", *(f"{o}={draw(expressions)}" for o in options)]
        tasks.append(" ".join(parts) + draw(comments) + "\n")
    return "tasks {\n" + "".join(tasks) + "}"


@st.composite
def programs(draw) -> str:
    parts = []
    for item in draw(st.lists(items(), min_size=1, max_size=5)):
        parts.append(draw(st.sampled_from(["", "# about the next item\n", "\n\n"])) + item)
        parts.append(draw(comments) + "\n")
    return "".join(parts)


_SPAN_FIELDS = {"span", "func_span", "name_span", "end_span", "label_span", "else_span"}


def without_spans(value):
    """The syntax tree with every span removed, for comparisons."""
    if isinstance(value, Span):
        return None
    if dataclasses.is_dataclass(value):
        return (type(value).__name__,) + tuple(
            without_spans(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in _SPAN_FIELDS and f.name != "branch_spans"
        )
    if isinstance(value, tuple):
        return tuple(without_spans(v) for v in value)
    return value


def check_round_trip(text: str) -> None:
    module = parse(text, "p.mtl")
    formatted = format_module(module)
    again = parse(formatted, "p.mtl")
    assert without_spans(again.items) == without_spans(module.items), formatted
    assert [c.text for c in again.comments] == [c.text for c in module.comments], formatted
    assert format_module(again) == formatted


@FUZZ
@given(programs())
def test_formatting_random_programs_round_trips(text: str) -> None:
    check_round_trip(text)


@settings(FUZZ, max_examples=_explore or 300)
@given(expressions)
def test_formatting_random_expressions_round_trips(expr: str) -> None:
    check_round_trip(f"v = {expr}\n")


@st.composite
def commented_expressions(draw) -> str:
    """An expression with comments (each ending its line) after some of its brackets and
    commas, nested as deep as they come: the generated strings hold neither."""
    parts = re.split(r"(?<=[(,\[])", draw(expressions))
    text = parts[0]
    for i, part in enumerate(parts[1:]):
        text += (f"  # c{i}\n" if draw(st.booleans()) else "") + part
    return text


def code_before_comments(text: str) -> list[str]:
    """For each comment, the code before it, without the spaces, brackets and commas that
    formatting may add or take away."""
    comments = parse(text, "p.mtl").comments
    code = text.split("\n")
    for c in comments:  # one comment a line, to its end
        code[c.line - 1] = code[c.line - 1][: c.column - 1]
    return [
        re.sub(r"[\s(),]", "", "".join(code[: c.line - 1]) + code[c.line - 1]) for c in comments
    ]


# Where an expression can stand: a statement, a constant, a task head, a parameter's default.
PLACES = [
    "backbone {{\n    v = {}\n    return v\n}}\n",
    "c = {}\n",
    "tasks {{\n    t: {} loss=l1\n}}\n",
    "block b(x, p={}) {{\n    return x\n}}\n",
]


@settings(FUZZ, max_examples=_explore or 150)
@given(commented_expressions(), st.sampled_from(PLACES))
def test_comments_inside_expressions_stay_beside_their_code(expr: str, place: str) -> None:
    text = place.format(expr)
    check_round_trip(text)
    event(f"{text.count('#')} comments")
    formatted = format_module(parse(text, "p.mtl"))
    assert code_before_comments(formatted) == code_before_comments(text), formatted


@settings(FUZZ, max_examples=_explore or 60)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["relu", "bn", "conv(8, k=1)", "sigmoid", "repeat 2 conv(8, k=1)"]),
            st.none() | st.from_regex(r"# [a-z]{1,8}", fullmatch=True),
            st.booleans(),  # whether the stage starts a new line
        ),
        min_size=1,
        max_size=5,
    )
)
def test_commented_chains_keep_their_comments_beside_their_stages(stages) -> None:
    lines, current = [], "    x = image"
    for text, comment, newline in stages:
        if newline and current:
            lines.append(current)
            current = "        "
        current += f" | {text}" if current.strip() else f"| {text}"
        if comment:
            lines.append(f"{current}  {comment}")
            current = ""
    if current:
        lines.append(current)
    source = "input image: 3x8x8\nbackbone {\n" + "\n".join(lines) + "\n    return x\n}\n"
    check_round_trip(source)
    formatted = format_module(parse(source, "p.mtl"))
    comments = [c for _, c, _ in stages]
    if any(comments[:-1]):  # one stage a line, each comment beside its stage
        chain = ["    x = image"] + [f"        | {t}" for t, _, _ in stages]
        for i, c in enumerate(comments):
            if c:
                chain[i + 1] += f"  {c}"
    else:
        chain = ["    x = image | " + " | ".join(t for t, _, _ in stages)]
        chain[0] += f"  {comments[-1]}" if comments[-1] else ""
    assert formatted.splitlines()[2:-2] == chain
