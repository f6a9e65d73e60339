"""`mtsc fmt` writes list literals past 100 columns one item per line."""

from mtsc.grammar.format import format_source

LONG = (
    "input image: 3x8x8\n"
    "backbone {\n"
    "    x = image\n"
    "    for c, s in [(16, 1), (24, 2), (32, 2), (64, 2), (96, 1), (160, 2), (320, 1), "
    "(480, 1), (640, 1)] {\n"
    "        x = conv(x, c, k=1, s=s)\n"
    "    }\n"
    "    return x\n"
    "}\n"
)


def test_long_list_is_wrapped_and_stays_canonical():
    out = format_source(LONG, "m.mtl")
    assert "    for c, s in [\n        (16, 1),\n" in out
    assert "        (640, 1),\n    ] {\n        x = conv(x, c, k=1, s=s)\n" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert format_source(out, "m.mtl") == out


def test_short_list_stays_on_one_line():
    text = "input image: 3x8x8\nsizes = [1, 2, 3]\nbackbone {\n    return image\n}\n"
    assert format_source(text, "m.mtl") == text
