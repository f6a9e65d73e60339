"""Compile-time evaluation is bounded: a typo must not hang the compiler."""

import pytest

from mtsc.driver import load
from mtsc.errors import MtscError


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("10 ** 10 ** 8", "10 ** 100000000 is too large"),
        ("3 * 2 ** 62", "3 * 4611686018427387904 is too large (integers have 64 bits)"),
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
