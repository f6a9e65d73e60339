"""Messages from a CLI review: `mtsc graph` output names, stages and help; `mtsc data --preview`
names; carets after tabs and a stray '@'; `mtsc check` of a folder; `mtsc fmt` of other files
and of several files with bad ones among them. Each runs the command and checks the whole
message, its location and exit status 2."""

from __future__ import annotations

import shutil

import pytest

from mtsc.errors import MtscError, Span
from mtsc.grammar.parser import parse
from mtsc.report import human

TINY = "examples/resnet_tiny.mtl"
NO_TASKS = "tests/fixtures/prototxt/vgg_v1.prototxt"
GRAPH_FILES = ".svg, .png, .pdf or .dot"


def _fails(proc, stderr: str) -> None:
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", stderr)


# ---------------------------------------------------------------- mtsc graph


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("g9", f"g9 has no extension; name a {GRAPH_FILES} file"),
        ("somedir", f"somedir is a folder; name a {GRAPH_FILES} file to draw into"),
        ("g.jpg", f"g.jpg: cannot draw a graph as .jpg; name a {GRAPH_FILES} file"),
    ],
    ids=["no_extension", "folder", "unknown_extension"],
)
def test_graph_says_what_is_wrong_with_the_output_name(repo, tmp_path, run_mtsc, out, message):
    (tmp_path / "somedir").mkdir()
    proc = run_mtsc("graph", repo / TINY, "-o", out, cwd=tmp_path)
    _fails(proc, f"error: {message}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["somedir"]
    assert list((tmp_path / "somedir").iterdir()) == []


def test_graph_takes_the_extension_in_any_case(repo, tmp_path, run_mtsc) -> None:
    proc = run_mtsc("graph", repo / TINY, "--stage", "backbone", "-o", "G.DOT", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "wrote G.DOT\n", "")
    assert (tmp_path / "G.DOT").read_text().startswith("digraph")


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot")
def test_graph_renders_an_upper_case_svg_name(repo, tmp_path, run_mtsc) -> None:
    proc = run_mtsc("graph", repo / TINY, "-o", "G.SVG", cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "wrote G.SVG\n", "")
    assert "<svg" in (tmp_path / "G.SVG").read_text()


def test_graph_policy_on_the_backbone_names_the_stages_it_applies_to(tmp_path, run_mtsc):
    out = tmp_path / "g.dot"
    proc = run_mtsc("graph", TINY, "--stage", "backbone", "--policy", "shared", "-o", out)
    message = "--policy applies to the supermodel stage and the pruned stage, not the backbone"
    _fails(proc, f"error: {message}\n")
    assert not out.exists()
    both = ("--stage", "backbone", "--policy", "shared", "--share-bn")
    proc = run_mtsc("graph", TINY, *both, "-o", out)
    message = "--policy and --share-bn apply to the supermodel stage and the pruned stage, not"
    _fails(proc, f"error: {message} the backbone\n")
    assert not out.exists()


@pytest.mark.parametrize(
    ("stage", "drawing"),
    [([], "supermodel"), (["--stage", "pruned", "--policy", "shared"], "pruned model")],
    ids=["supermodel", "pruned"],
)
def test_graph_of_a_model_without_tasks_points_to_the_backbone_stage(
    tmp_path, run_mtsc, stage, drawing
) -> None:
    out = tmp_path / "g.dot"
    proc = run_mtsc("graph", NO_TASKS, *stage, "-o", out)
    _fails(
        proc,
        f"error: {NO_TASKS}: no tasks section, so no {drawing} to draw\n"
        "note: `--stage backbone` draws the backbone\n"
        f"note: a .prototxt is a backbone alone: `mtsc import {NO_TASKS} -o MODEL.mtl`, then "
        "add a `tasks { ... }` section to MODEL.mtl\n",
    )
    assert not out.exists()
    drawn = run_mtsc("graph", NO_TASKS, "--stage", "backbone", "-o", out)
    assert drawn.returncode == 0 and out.read_text().startswith("digraph")


def test_graph_help_shows_the_default_stage(run_mtsc) -> None:
    proc = run_mtsc("graph", "--help", env={"COLUMNS": "100"})
    assert proc.returncode == 0
    assert "which graph to draw (default: supermodel)" in proc.stdout


# ---------------------------------------------------------------- mtsc data --preview

SMALL_SHAPES = ("--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "16")


def test_data_preview_must_be_a_png_name(tmp_path, run_mtsc) -> None:
    args = ("data", "shapes", "--out", "ds", *SMALL_SHAPES, "--preview", "grid.jpg")
    proc = run_mtsc(*args, cwd=tmp_path)
    _fails(proc, "error: cannot write grid.jpg: the preview is a PNG; name a .png file\n")
    assert list(tmp_path.iterdir()) == []  # refused before the dataset was written


def test_data_preview_takes_png_in_any_case(tmp_path, run_mtsc) -> None:
    args = ("data", "shapes", "--out", "ds", *SMALL_SHAPES, "--preview", "grid.PNG")
    proc = run_mtsc(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "grid.PNG").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# ---------------------------------------------------------------- locations in the source

HEAD = "input image: 3x32x32\nbackbone {\n"


def test_the_caret_after_a_tab_repeats_the_tab(tmp_path, run_mtsc) -> None:
    (tmp_path / "model.mtl").write_text(HEAD + "\tx = relu(nope)\n\treturn x\n}\n")
    proc = run_mtsc("check", "model.mtl", cwd=tmp_path)
    _fails(
        proc,
        "model.mtl:3:11: error: undefined name 'nope'\n    \tx = relu(nope)\n    \t         ^^^^\n",
    )


def test_a_caret_past_the_end_of_its_line_keeps_its_column() -> None:
    err = MtscError(Span("model.mtl", 1, 7, source="\tab\n"), "past the end")
    assert err.render().splitlines()[1:] == ["    \tab", "    \t     ^"]


def test_a_stray_at_sign_at_the_end_of_a_line_is_reported_where_it_is(tmp_path, run_mtsc):
    (tmp_path / "model.mtl").write_text(HEAD + "    x = relu(image) @\n    return x\n}\n")
    proc = run_mtsc("check", "model.mtl", cwd=tmp_path)
    _fails(
        proc,
        "model.mtl:3:21: error: '@' must be followed directly by a decorator name, like @shared\n"
        "        x = relu(image) @\n"
        "                        ^\n",
    )


@pytest.mark.parametrize(
    ("source", "at"),
    [
        (HEAD + "    return image @\n}\n", (3, 18)),
        ("input image: 3x32x32\n@ shared\nbackbone {\n    return image\n}\n", (2, 1)),
    ],
    ids=["before_brace", "space_after_at"],
)
def test_an_at_sign_without_a_name_after_it_is_a_syntax_error_at_the_at(source, at) -> None:
    with pytest.raises(MtscError) as info:
        parse(source, "model.mtl")
    span = info.value.span
    assert (span.line, span.column, span.end_column) == (*at, at[1] + 1)
    assert info.value.message == "'@' must be followed directly by a decorator name, like @shared"


def test_decorators_still_parse() -> None:
    source = "@shared\nbackbone {\n    @specific x = relu(image)\n    return x\n}\n"
    backbone = parse(source, "model.mtl").items[0]
    assert [d.name for d in backbone.decorators] == ["shared"]
    decorator = backbone.body[0].decorators[0]
    assert (decorator.name, decorator.span.column, decorator.span.end_column) == ("specific", 5, 14)


# ---------------------------------------------------------------- mtsc check and mtsc fmt


@pytest.mark.parametrize("command", ["check", "build", "stats", "graph"])
def test_a_folder_given_as_the_model_says_a_model_file_is_needed(run_mtsc, tmp_path, command):
    extra = {"build": ["-o", tmp_path / "o"], "stats": ["--policy", "shared"]}
    extra["graph"] = ["-o", tmp_path / "g.dot"]
    proc = run_mtsc(command, "examples", *extra.get(command, []))
    _fails(proc, "error: examples is a folder; give a model file (.mtl or .prototxt)\n")
    assert not (tmp_path / "o").exists()


def test_fmt_of_a_prototxt_says_it_formats_mtl_files_only(run_mtsc) -> None:
    proc = run_mtsc("fmt", NO_TASKS)
    _fails(
        proc,
        f"error: {NO_TASKS}: mtsc fmt formats .mtl files only\n"
        "note: `mtsc import` translates a .prototxt into .mtl\n",
    )


UGLY = "input image:3x8x8\nbackbone { return relu( image ) }\n"
PRETTY = "input image: 3x8x8\nbackbone {\n    return relu(image)\n}\n"
BAD = "input image: 3x8x8\nbackbone {\n    return relu(image) @\n}\n"
BAD_ERRORS = (
    "bad.mtl:3:24: error: '@' must be followed directly by a decorator name, like @shared\n"
    "        return relu(image) @\n"
    "                           ^\n"
    "error: model.txt: mtsc fmt formats .mtl files only\n"
    "error: cannot read missing.mtl: No such file or directory\n"
)
FILES = ("a.mtl", "bad.mtl", "model.txt", "c.mtl", "missing.mtl")


def _write_files(tmp_path) -> None:
    for name, text in [("a.mtl", UGLY), ("bad.mtl", BAD), ("model.txt", UGLY), ("c.mtl", UGLY)]:
        (tmp_path / name).write_text(text)


def test_fmt_write_formats_every_good_file_and_reports_every_bad_one(tmp_path, run_mtsc):
    _write_files(tmp_path)
    proc = run_mtsc("fmt", "--write", *FILES, cwd=tmp_path)
    _fails(proc, BAD_ERRORS)
    assert (tmp_path / "a.mtl").read_text() == PRETTY
    assert (tmp_path / "c.mtl").read_text() == PRETTY
    assert (tmp_path / "bad.mtl").read_text() == BAD
    assert (tmp_path / "model.txt").read_text() == UGLY


def test_fmt_prints_every_good_file_and_reports_every_bad_one(tmp_path, run_mtsc) -> None:
    _write_files(tmp_path)
    proc = run_mtsc("fmt", *FILES, cwd=tmp_path)
    printed = f"==> a.mtl <==\n{PRETTY}==> c.mtl <==\n{PRETTY}"
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, printed, BAD_ERRORS)
    alone = run_mtsc("fmt", "a.mtl", cwd=tmp_path)
    assert (alone.returncode, alone.stdout, alone.stderr) == (0, PRETTY, "")


def test_fmt_check_with_a_bad_file_exits_2_after_listing_the_unformatted(tmp_path, run_mtsc):
    _write_files(tmp_path)
    proc = run_mtsc("fmt", "--check", *FILES, cwd=tmp_path)
    unformatted = "a.mtl: not formatted\nc.mtl: not formatted\n"
    _fails(proc, unformatted + BAD_ERRORS)
    assert (tmp_path / "a.mtl").read_text() == UGLY


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (999, "999"),
        (1000, "1.00 K"),
        (123_456, "123.46 K"),
        (999_994, "999.99 K"),
        (999_999, "1.00 M"),
        (25_557_096, "25.56 M"),
        (999_999_999, "1.00 G"),
        (2 * 10**15, "2000.00 T"),
    ],
)
def test_counts_are_shown_in_the_unit_they_round_to(n, text):
    assert human(n) == text
