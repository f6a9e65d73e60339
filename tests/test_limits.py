"""Compile-time evaluation is bounded: a typo must not hang the compiler."""

import pytest

from mtsc.cli import main
from mtsc.driver import load
from mtsc.errors import MtscError


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("10 ** 10 ** 8", "10 ** 100000000 is too large"),
        ("3 * 2 ** 62", "3 * 4611686018427387904 is too large (integers have 64 bits)"),
        ("(-2) ** 100", "(-2) ** 100 is too large"),
        ("2.0 ** 10000", "2.0 ** 10000 is too large"),
        ("1e308 * 10", "1e+308 * 10 is too large"),
        ("1e308 / 1e-308", "1e+308 / 1e-308 is too large"),
        ("(-8) ** 0.5", "(-8) ** 0.5 is not a real number (a negative base, a fractional power)"),
        ("len(range(10 ** 9))", "range(): 1000000000 items are over the limit 100000"),
        ("len(range(60000) + range(60000))", "a list of 120000 items is over the limit 100000"),
    ],
)
def test_compile_time_values_are_bounded(tmp_path, expr, message):
    path = tmp_path / "m.mtl"
    path.write_text(f"input image: 3x8x8\nn = {expr}\nbackbone {{\n    return image\n}}\n")
    with pytest.raises(MtscError) as err:
        load(path)
    assert err.value.message == message
    assert err.value.span.line == 2


def test_repeat_count_is_bounded(tmp_path):
    path = tmp_path / "m.mtl"
    path.write_text(
        "input image: 3x8x8\nbackbone {\n    x = repeat 1000000 relu(image)\n    return x\n}\n"
    )
    with pytest.raises(MtscError, match="repeat count 1000000 is over the limit 100000"):
        load(path)


def _model(tmp_path, const="1", body="return image"):
    path = tmp_path / "m.mtl"
    path.write_text(f"input image: 3x8x8\nn = {const}\nbackbone {{\n    {body}\n}}\n")
    return path


NESTED = {
    "operators": lambda n: (" + ".join(["1"] * n), "return image"),
    "brackets": lambda n: ("[" * n + "1" + "]" * n, "return image"),
    "pipe stages": lambda n: ("1", "return image" + " | relu" * n),
    "calls": lambda n: ("1", "return " + "relu(" * n + "image" + ")" * n),
}


@pytest.mark.parametrize("kind", NESTED)
def test_deep_nesting_is_a_located_error_not_a_recursion_error(tmp_path, kind):
    const, body = NESTED[kind](1000)
    path = _model(tmp_path, const, body)
    with pytest.raises(MtscError) as err:
        load(path)
    assert err.value.message.startswith("nested too deeply: mtsc takes about 200 chained")
    assert err.value.message.endswith("; split it into several statements")
    assert err.value.span.line in (2, 4)


@pytest.mark.parametrize(("kind", "depth"), [("operators", 190), ("brackets", 95),
                                             ("pipe stages", 190), ("calls", 95)])  # fmt: skip
def test_nesting_below_the_limit_checks_formats_and_builds(tmp_path, kind, depth):
    # Every stage after the parser recurses per level: this is what the limit leaves them.
    const, body = NESTED[kind](depth)
    path = _model(tmp_path, const, body)
    assert main(["fmt", "--write", str(path)]) == 0
    assert main(["build", str(path), "-o", str(tmp_path / "out")]) == 0


def test_nested_loops_share_one_budget(tmp_path):
    body = "for i in range(100000) {\n        for j in range(100000) {\n        }\n    }\n"
    path = _model(tmp_path, body=body + "    return image")
    with pytest.raises(MtscError) as err:
        load(path)
    assert err.value.message == (
        "unrolling the model takes over 1000000 steps (statements, loop iterations and repeats, "
        "all told); is a range() or repeat count far larger than meant?"
    )
    assert (err.value.span.line, err.value.span.column) == (5, 9)


def test_repeats_count_towards_the_budget(tmp_path):
    body = "for i in range(100) {\n        x = repeat 100000 same(image)\n    }\n    return image"
    path = _model(tmp_path, body=body)
    path.write_text(path.read_text() + "block same(x) {\n    return x\n}\n")
    with pytest.raises(MtscError, match="over 1000000 steps") as err:
        load(path)
    assert err.value.span.line == 10  # the block's `return`, with the call that ran it
    assert err.value.notes == (f"in block 'same', called at {path}:5:27",)


def test_the_number_of_ops_is_bounded(tmp_path):
    body = "x = repeat 60000 relu(image)\n    y = repeat 60000 relu(x)\n    return y"
    with pytest.raises(MtscError) as err:
        load(_model(tmp_path, body=body))
    assert err.value.message == (
        "the model has over 100000 ops; is a range() or repeat count far larger than meant?"
    )
    assert err.value.span.line == 5


@pytest.mark.parametrize(
    ("const", "message"),
    [
        (
            "[range(100000)] * 2",
            "cannot apply '*' to ((0, 1, 2, 3, 4, 5, 6, 7, ... (100000 items)),) and 2",
        ),
        (
            '"' + "a" * 5000 + '" * 2.5',
            "cannot apply '*' to \"" + "a" * 40 + '..." (5000 characters) and 2.5',
        ),
    ],
)
def test_a_message_shows_only_the_start_of_a_long_value(tmp_path, const, message):
    with pytest.raises(MtscError) as err:
        load(_model(tmp_path, const))
    assert err.value.message == message
