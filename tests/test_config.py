"""Search and training configuration: defaults, `--quick`, TOML files and `--set` overrides in
that order of precedence, and a message (never a traceback) for every bad key, type or value."""

from __future__ import annotations

import dataclasses
import re

import pytest

import mtsc.runtime.data.options as options_module
from mtsc.cli import main
from mtsc.commands.search import parse_sets
from mtsc.errors import MtscError
from mtsc.runtime.config import SearchConfig, TrainConfig, make_config
from mtsc.runtime.config import _key_span as _config_key_span
from mtsc.runtime.data.options import COMMON_OPTIONS


def test_defaults_without_file_or_overrides():
    assert make_config(SearchConfig, None, {}) == SearchConfig()
    assert make_config(TrainConfig, None, {}) == TrainConfig()


# --quick is a smoke run of a minute or less on a laptop CPU: these values, nothing longer
QUICK_VALUES = {
    SearchConfig: {
        "warmup_steps": 30,
        "search_steps": 30,
        "eval_every": 30,
        "eval_batches": 4,
        "checkpoint_every": 20,
        "batch_size": 8,
    },
    TrainConfig: {
        "steps": 40,
        "eval_every": 40,
        "eval_batches": 4,
        "checkpoint_every": 20,
        "batch_size": 8,
    },
}


@pytest.mark.parametrize("cls", [SearchConfig, TrainConfig])
def test_quick_sets_its_values_and_keeps_the_other_defaults(cls):
    config = make_config(cls, None, {}, quick=True)
    for field in dataclasses.fields(cls):
        expected = QUICK_VALUES[cls].get(field.name, getattr(cls(), field.name))
        assert getattr(config, field.name) == expected, field.name


def test_precedence_is_defaults_quick_toml_then_overrides(tmp_path):
    toml = tmp_path / "search.toml"
    toml.write_text(
        "batch_size = 4\nsearch_steps = 7\nweight_lr = 1\n[data]\nsize = 16\nn_train = 64\n"
    )
    config = make_config(
        SearchConfig, toml, {"search_steps": 9, "seed": None, "budget": 0.25}, quick=True
    )
    assert config.warmup_steps == 30  # from --quick
    assert config.batch_size == 4  # the file beats --quick
    assert config.search_steps == 9  # an override beats the file
    assert config.seed == SearchConfig().seed  # None means "not given"
    assert config.budget == 0.25
    assert config.weight_lr == 1.0 and isinstance(config.weight_lr, float)  # TOML's 1 is a float
    assert config.data == {"size": 16, "n_train": 64}


def test_config_round_trips_through_to_dict():
    config = make_config(SearchConfig, None, {"budget": 0.5, "data": {"size": 16}})
    assert SearchConfig(**config.to_dict()) == config


def _message(cls, overrides, toml=None) -> str:
    with pytest.raises(MtscError) as err:
        make_config(cls, toml, overrides)
    return err.value.message


def test_unknown_keys_are_named_with_the_known_ones():
    message = _message(SearchConfig, {"warmup": 3, "lr": 0.1})
    assert message.startswith("unknown config keys: lr, warmup; known: ")
    assert "warmup_steps" in message and "weight_lr" in message
    # `lr` is a TrainConfig key, not a SearchConfig one
    assert make_config(TrainConfig, None, {"lr": 0.1}).lr == 0.1
    assert "unknown config keys: policy_lr" in _message(TrainConfig, {"policy_lr": 0.1})


HELD_OUT_RANGE = (
    "held_out must be a fraction in (0, 1): the policy steps train on that part of the "
    "training split, the weight steps on the rest"
)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"checkpoint_every": 0}, "checkpoint_every must be at least 1"),
        ({"log_every": -1}, "log_every must be at least 1"),
        ({"policy_every": 0}, "policy_every must be at least 1"),
        ({"budget": 0.0}, "budget must be a fraction in (0, 1]"),
        ({"budget": 1.5}, "budget must be a fraction in (0, 1]"),
        ({"derive": "best"}, "derive must be 'argmax' or 'sample'"),
        ({"amp": "fp8"}, "amp must be bf16 or fp16"),
        ({"held_out": 1.0}, HELD_OUT_RANGE),
        ({"held_out": 0}, HELD_OUT_RANGE),  # the policy steps need held-out samples
        ({"held_out": float("nan")}, HELD_OUT_RANGE),
        ({"seed": -1}, "seed must be in [0, 4294967295]"),
        ({"seed": 2**32}, "seed must be in [0, 4294967295]"),
        ({"seed": 2**64}, "seed must be in [0, 4294967295]"),  # beyond what torch takes
        ({"derive_seed": -5}, "derive_seed must be in [0, 4294967295]"),
        ({"warmup_steps": -5}, "warmup_steps must be at least 0"),
        ({"search_steps": -3}, "search_steps must be at least 0"),
        ({"num_workers": -1}, "num_workers must be in [0, 256]"),
        ({"num_workers": 100000}, "num_workers must be in [0, 256]"),
        ({"eval_every": -1}, "eval_every must be at least 0 (0: never)"),
        ({"eval_batches": -1}, "eval_batches must be at least 0 (0: the whole split)"),
        ({"weight_lr": 0}, "weight_lr must be positive"),
        ({"policy_lr": -0.01}, "policy_lr must be positive"),
        ({"tau_init": 0}, "tau_init must be positive"),
        ({"tau_min": 0}, "tau_min must be positive"),
        ({"tau_min": 10}, "tau_min (10.0) must not be above tau_init (5.0)"),
        ({"tau_init": 1.0, "tau_min": 2.0}, "tau_min (2.0) must not be above tau_init (1.0)"),
        ({"tau_decay": -1}, "tau_decay must be in (0, 1]"),
        ({"tau_decay": 1.5}, "tau_decay must be in (0, 1]"),
        ({"momentum": -0.1}, "momentum must be in [0, 1)"),
        ({"momentum": 1}, "momentum must be in [0, 1)"),
        ({"weight_decay": -1e-4}, "weight_decay must be at least 0"),
        ({"reg_weight": -1}, "reg_weight must be at least 0"),
        ({"budget_weight": -1}, "budget_weight must be at least 0"),
        ({"weight_lr": float("nan")}, "weight_lr must be positive"),
        ({"batch_size": "abc"}, "batch_size must be int, got 'abc'"),
        ({"eval_every": True}, "eval_every must be int, got True"),
        ({"weight_lr": "fast"}, "weight_lr must be float, got 'fast'"),
        ({"budget": "half"}, "budget must be float or none, got 'half'"),
        ({"derive": 3}, "derive must be str, got 3"),
        ({"data": 5}, "data must be dict, got 5"),
    ],
)
def test_bad_values_are_reported(overrides, problem):
    assert _message(SearchConfig, overrides) == f"bad config: {problem}"


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"steps": -1}, "steps must be at least 0"),
        ({"lr": 0}, "lr must be positive"),
        ({"lr": -0.05}, "lr must be positive"),
        ({"momentum": -0.5}, "momentum must be in [0, 1)"),
        ({"weight_decay": -1}, "weight_decay must be at least 0"),
        ({"eval_every": -1}, "eval_every must be at least 0 (0: never)"),
        ({"eval_batches": -2}, "eval_batches must be at least 0 (0: the whole split)"),
        ({"num_workers": -1}, "num_workers must be in [0, 256]"),
        ({"seed": 2**32}, "seed must be in [0, 4294967295]"),
    ],
)
def test_bad_train_values_are_reported(overrides, problem):
    assert _message(TrainConfig, overrides) == f"bad config: {problem}"


@pytest.mark.parametrize(
    ("cls", "overrides"),
    [
        (SearchConfig, {"warmup_steps": 0, "search_steps": 0, "eval_every": 0, "eval_batches": 0}),
        (SearchConfig, {"tau_decay": 1, "momentum": 0, "weight_decay": 0, "reg_weight": 0}),
        (SearchConfig, {"budget_weight": 0, "weight_lr": 1e30, "num_workers": 2}),
        (TrainConfig, {"steps": 0, "eval_every": 0, "eval_batches": 0, "momentum": 0}),
        (SearchConfig, {"seed": 0, "derive_seed": 2**32 - 1, "held_out": 0.01}),
        (TrainConfig, {"seed": 2**32 - 1}),
    ],
)
def test_edge_values_that_mean_something_are_kept(cls, overrides):
    config = make_config(cls, None, overrides)
    assert {k: getattr(config, k) for k in overrides} == overrides


def test_every_problem_is_reported_at_once():
    message = _message(TrainConfig, {"batch_size": 0, "amp": "fp8"})
    assert message == "bad config: batch_size must be at least 1; amp must be bf16 or fp16"


def _error(cls, overrides, toml) -> MtscError:
    with pytest.raises(MtscError) as err:
        make_config(cls, toml, overrides)
    return err.value


def test_bad_toml_names_the_file_and_the_place(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("warmup_steps = 10\nbatch_size = ;\n")
    assert _error(SearchConfig, {}, toml).render() == (
        f"{toml}:2:14: error: invalid TOML: Invalid value\n    batch_size = ;\n                 ^"
    )
    toml.write_text('seed = """\nabc')
    assert str(_error(SearchConfig, {}, toml).span) == f"{toml}:2:4"  # at the end


def test_unknown_keys_in_a_toml_file_are_shown_where_the_file_sets_them(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 1\n "warmup" = 3\n\n[data]\nsize = 16\n[extra.x]\n')
    err = _error(SearchConfig, {"lr": 0.1}, toml)
    assert err.render().splitlines()[:3] == [
        f"{toml}:2:2: error: unknown config keys: extra, lr, warmup; known: "
        + ", ".join(sorted(f.name for f in dataclasses.fields(SearchConfig))),
        '     "warmup" = 3',
        "     ^^^^^^^^",
    ]
    toml.write_text("seed = 1\n")
    assert _error(SearchConfig, {"lr": 0.1}, toml).span is None  # from --set: no place


def test_bad_values_in_a_toml_file_are_shown_where_the_file_sets_them(tmp_path):
    """A wrong type or a value out of range, located at the first line that sets one; a
    value the command line gave (and overrode the file with) has no place in the file."""
    toml = tmp_path / "c.toml"
    toml.write_text("seed = 1\namp = 'fp8'\nbatch_size = 0\n")
    err = _error(SearchConfig, {}, toml)
    assert err.render().splitlines()[:2] == [
        f"{toml}:2:1: error: bad config: batch_size must be at least 1; amp must be bf16 or fp16",
        "    amp = 'fp8'",
    ]
    toml.write_text("seed = 1\nwarmup_steps = 'many'\n")
    assert str(_error(SearchConfig, {}, toml).span) == f"{toml}:2:1"
    assert _error(SearchConfig, {"warmup_steps": "x"}, toml).span is None  # --set's value


def test_a_misspelt_data_option_is_shown_in_its_table(tmp_path):
    """The [data] table's own keys: `seed` at the top is the run's, `sizee` the table's."""
    toml = tmp_path / "c.toml"
    toml.write_text("seed = 1\n[data]\nseed = 2\n  sizee = 3\n")
    err = _error(TrainConfig, {}, toml)
    assert err.render().splitlines() == [
        f"{toml}:4:3: error: bad config: unknown [data] option 'sizee' (did you mean 'size'?); "
        "the datasets take augment, cache_dir, classes, flip, n_test, n_train, n_val, objects, "
        "scales, seed, size, tasks",
        "      sizee = 3",
        "      ^^^^^",
    ]
    toml.write_text("sizee = 1\n[data]\n'sizee' = 3\n")
    with pytest.raises(MtscError, match="unknown config keys: sizee"):
        make_config(TrainConfig, toml, {})
    toml.write_text("[data]\n'sizee' = 3\n")
    assert str(_error(TrainConfig, {}, toml).span) == f"{toml}:2:1"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("scales = [1.0, 'x']", "[data] scales must be a list of numbers >= 1 (zoom-in factors), "
         "got [1.0, 'x']"),
        ("scales = 2", "[data] scales must be a list of numbers >= 1 (zoom-in factors), got 2"),
        ("cache_dir = 5", "[data] cache_dir must be a folder's path (a string), got 5"),
        ("flip = 'yes'", "[data] flip must be true or false, got 'yes'"),
        ("tasks = ['segment', 'segment']", "[data] tasks must be a task name or a list of "
         "different ones, got ['segment', 'segment']"),
        ("size = [0, 4]", "[data] size must be a positive integer or a [height, width] pair of "
         "them, got [0, 4]"),
        ("objects = 20", "[data] objects must be an integer in [1, 16], got 20"),
        ("seed = -1", "[data] seed must be an integer in [0, 9223372036854775807], got -1"),
        ("n_train = -5", "[data] n_train must be an integer in [1, 10000000], got -5"),
        ("n_train = 0", "[data] n_train must be an integer in [1, 10000000], got 0"),
        ("classes = 5", "[data] classes must be one of 2, 7, 19, got 5"),
    ],
)  # fmt: skip
def test_an_ill_formed_data_option_is_shown_where_it_is_set(line, message, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(f"seed = 1\n[data]\nn_val = 4\n{line}\n")
    err = _error(SearchConfig, {}, toml)
    assert (err.message, str(err.span)) == (f"bad config: {message}", f"{toml}:4:1")


@pytest.mark.parametrize(
    ("spec", "line", "message"),
    [
        ("shapes", "classes = 7", "shapes: unknown option 'classes' (accepted: augment, "
         "cache_dir, flip, n_test, n_train, n_val, objects, scales, seed, size, tasks)"),
        ("shapes:runs/data", "size = 32", "shapes:DIR: unknown option 'size' (accepted: "
         "augment, flip, scales, tasks)"),
        ("nyuv2:/data/nyu", "objects = 3", "nyuv2: unknown option 'objects' (accepted: "
         "augment, flip, scales, size, tasks)"),
        ("shapes", "size = [16, 2048]", "shapes: size must be in [8, 1024] on each side, got "
         "[16, 2048]"),
        ("nyuv2:/data/nyu", "size = 100000", "nyuv2: size must be in [1, 4096] on each side, "
         "got 100000"),
        ("shapes", "tasks = ['foo']", "shapes has no task 'foo' (its tasks: segment, depth, "
         "normal)"),
        ("shapes:runs/data", "tasks = []", "shapes: no tasks chosen (its tasks: segment, depth, "
         "normal)"),
        ("cityscapes:/data/cs", "tasks = 'normal'", "cityscapes has no task 'normal' (its "
         "tasks: segment, depth)"),
    ],
)  # fmt: skip
def test_a_data_option_the_kind_of_data_does_not_take_is_shown_where_it_is_set(
    spec, line, message, tmp_path
):
    toml = tmp_path / "c.toml"
    toml.write_text(f"seed = 1\n[data]\nflip = false\n{line}\n")
    with pytest.raises(MtscError) as err:
        make_config(SearchConfig, toml, {}, data_spec=spec)
    assert (err.value.message, str(err.value.span)) == (f"bad config: {message}", f"{toml}:4:1")


@pytest.mark.parametrize(
    ("spec", "options"),
    [
        ("cityscapes:/data/cs", {"classes": 19, "size": [128, 256]}),
        ("nyuv2:/data/nyu", {"size": 4}),  # a resize: any size up to 4096
        ("shapes", {"size": [8, 1024], "objects": 16, "n_val": 1}),
        ("no_such_kind", {"size": 4}),  # open_dataset names the spec's problem
    ],
)
def test_data_options_the_kind_of_data_takes_pass(spec, options):
    config = make_config(SearchConfig, None, {"data": options}, data_spec=spec)
    assert config.data == options


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("data = { size = 16, sizee = 3 }\n", (1, 21)),
        ("seed = 1\ndata.sizee = 3\n", (2, 6)),
        ("[data]\nsize = 16\n[data.sizee]\nx = 1\n", (3, 7)),
        ("[data]\n[other]\nsizee = 1\n[data.x]\nsizee = 2\n[data]\n", None),
    ],
)
def test_a_data_option_is_found_in_every_form_toml_has(text, where, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    span = _config_key_span(toml.read_text(), str(toml), "data", "sizee")
    assert (span.line, span.column) == where if where else span is None


def test_every_data_option_has_a_kind():
    assert set(options_module._KINDS) == set(options_module.ANY_KIND_OPTIONS)


def test_missing_toml_file(tmp_path):
    missing = tmp_path / "none.toml"
    assert _message(SearchConfig, {}, missing) == (
        f"cannot read config {missing}: No such file or directory"
    )


def test_set_data_dot_option_changes_one_option_of_the_files_data_table(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[data]\nsize = 16\nn_train = 64\n")
    overrides = parse_sets(["data.n_train=8", "data.flip=false"])
    config = make_config(SearchConfig, toml, overrides)
    assert config.data == {"size": 16, "n_train": 8, "flip": False}
    assert make_config(SearchConfig, None, overrides).data == {"n_train": 8, "flip": False}
    with pytest.raises(MtscError) as err:
        make_config(SearchConfig, toml, parse_sets(["data.n_train=-1"]))
    assert (err.value.span, err.value.message) == (
        None,  # set on the command line: no place in the file to show
        "bad config: [data] n_train must be an integer in [1, 10000000], got -1",
    )


@pytest.mark.parametrize(
    ("cls", "key", "note"),
    [
        (SearchConfig, "warmup", "warmup (did you mean 'warmup_steps'?)"),
        (SearchConfig, "lr", "lr is a key of `mtsc train`'s config"),
        (TrainConfig, "policy_lr", "policy_lr is a key of `mtsc search`'s config"),
    ],
)
def test_an_unknown_key_gets_a_hint(cls, key, note):
    with pytest.raises(MtscError) as err:
        make_config(cls, None, {key: 1})
    assert err.value.notes == (note,)


def test_the_other_commands_config_gets_one_note(tmp_path):
    """Handing train a search's config: one note for all the search's keys, and no near miss
    for a key that is the search's (policy_every is not a misspelt log_every)."""
    toml = tmp_path / "search.toml"
    toml.write_text("warmup_steps = 4\npolicy_every = 2\n")
    with pytest.raises(MtscError) as err:
        make_config(TrainConfig, toml, {"stepz": 3})
    assert err.value.notes == (
        "stepz (did you mean 'steps'?)",
        "policy_every, warmup_steps are keys of `mtsc search`'s config",
    )
    with pytest.raises(MtscError) as err:
        make_config(TrainConfig, toml, {})
    assert err.value.notes == ("they are keys of `mtsc search`'s config",)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "shapes",
            "bad config: unknown [data] option 'object' (did you mean 'objects'?); shapes takes "
            "augment, cache_dir, flip, n_test, n_train, n_val, objects, scales, seed, size, tasks",
        ),
        (
            "cityscapes:/data",
            "bad config: unknown [data] option 'object'; cityscapes takes augment, classes, flip, "
            "scales, size, tasks",
        ),
    ],
)
def test_an_unknown_data_option_lists_what_the_data_takes(spec, message):
    with pytest.raises(MtscError) as err:
        make_config(SearchConfig, None, parse_sets(["data.object=1"]), data_spec=spec)
    assert err.value.message == message


@pytest.mark.parametrize(
    "text", ["seed = " + "9" * 5000, "seed = " + "[" * 2000 + "]" * 2000], ids=["long", "deep"]
)
def test_toml_python_cannot_read_is_invalid_toml(text, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(text + "\n")
    assert _message(SearchConfig, {}, toml).startswith(f"{toml}: invalid TOML: ")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("seed=" + "9" * 5000, "--set seed: cannot read the value: Exceeds the limit"),
        ("seed=1\nbatch_size=3", "--set seed: the value must be on one line"),
    ],
    ids=["long", "two-lines"],
)
def test_set_values_python_cannot_read_are_refused(item, message):
    with pytest.raises(MtscError) as err:
        parse_sets([item])
    assert err.value.message.startswith(message)


def test_set_values_are_parsed_as_toml_values():
    values = parse_sets(
        [
            "warmup_steps=12",
            " weight_lr = 0.5",
            "budget=1e-1",
            "amp=bf16",  # not TOML: kept as the plain string
            'derive="sample"',
            "data={size=16, n_train=64, tasks=['segment', 'depth']}",
            "eval_every=0",
            "held_out=",
        ]
    )
    assert values == {
        "warmup_steps": 12,
        "weight_lr": 0.5,
        "budget": 0.1,
        "amp": "bf16",
        "derive": "sample",
        "data": {"size": 16, "n_train": 64, "tasks": ["segment", "depth"]},
        "eval_every": 0,
        "held_out": "",
    }


def test_set_without_equals_sign():
    with pytest.raises(MtscError) as err:
        parse_sets(["warmup_steps"])
    assert err.value.message == "--set needs KEY=VALUE, got 'warmup_steps'"


def test_set_values_are_checked_like_the_others():
    message = _message(SearchConfig, parse_sets(["held_out="]))
    assert message == "bad config: held_out must be float, got ''"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "warmup_steps"], "error: --set needs KEY=VALUE, got 'warmup_steps'"),
        (["--set", "nonsense=1"], "error: unknown config keys: nonsense; known: "),
        (["--set", "batch_size=abc"], "error: bad config: batch_size must be int, got 'abc'"),
        (["--budget", "2"], "error: bad config: budget must be a fraction in (0, 1]"),
        (["--set", "tau_decay=-1"], "error: bad config: tau_decay must be in (0, 1]\n"),
        (["--set", "num_workers=-1"], "error: bad config: num_workers must be in [0, 256]\n"),
        (["--set", "held_out=0"], f"error: bad config: {HELD_OUT_RANGE}\n"),
    ],
)
def test_command_line_config_errors_exit_with_status_2(
    examples_dir, tmp_path, capsys, args, message
):
    out = tmp_path / "run"
    code = main(["search", str(examples_dir / "resnet_tiny.mtl"), "--out", str(out), *args])
    assert code == 2
    assert capsys.readouterr().err.startswith(message)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("command", ["search", "train", "demo"])
@pytest.mark.parametrize(
    ("seed", "problem"),
    [
        (2**64, "must be in [0, 4294967295], got 18446744073709551616"),
        (-1, "must be in [0, 4294967295], got -1"),
        ("1.5", "a seed is a whole number, got '1.5'"),
    ],
)
def test_a_seed_out_of_range_is_refused_from_the_shell(
    command, seed, problem, examples_dir, tmp_path, run_mtsc
):
    """`--seed` sets derive_seed too in a search: the error names the flag, once."""
    out = tmp_path / "run"
    model = [] if command == "demo" else [examples_dir / "resnet_tiny.mtl"]
    policy = ["--policy", "shared"] if command == "train" else []
    proc = run_mtsc(command, *model, *policy, "--out", out, "--seed", seed)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"mtsc {command}: error: argument --seed: {problem}"
    assert not out.exists()


def test_command_line_bad_toml(examples_dir, tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text("[data\n")
    model = str(examples_dir / "resnet_tiny.mtl")
    out = str(tmp_path / "run")
    code = main(["train", model, "--policy", "shared", "--config", str(toml), "--out", out])
    assert code == 2
    assert capsys.readouterr().err == (
        f"{toml}:1:6: error: invalid TOML: Expected ']' at the end of a table declaration\n"
        "    [data\n         ^\n"
    )


def test_command_line_unknown_key_in_the_config_file(examples_dir, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("seed = 1\nwarmup = 3\n")
    model = str(examples_dir / "resnet_tiny.mtl")
    out = tmp_path / "r"
    assert main(["search", model, "--quick", "--out", str(out), "--config", str(toml)]) == 2
    assert capsys.readouterr().err.startswith(
        f"{toml}:2:1: error: unknown config keys: warmup; known: amp, batch_size, "
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "example"), [("search", "--set warmup_steps=100"), ("train", "--set steps=100")]
)
def test_the_set_example_in_the_help_is_a_key_of_the_command(monkeypatch, capsys, command, example):
    monkeypatch.setenv("COLUMNS", "200")  # the example on one line
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"any config value, e.g. {example} (repeatable)\n" in capsys.readouterr().out
    cls = SearchConfig if command == "search" else TrainConfig
    make_config(cls, None, parse_sets([example.removeprefix("--set ")]))  # a known key


EXAMPLE_CONFIGS = {SearchConfig: "search.toml", TrainConfig: "train.toml"}


@pytest.mark.parametrize("cls", [SearchConfig, TrainConfig])
def test_the_example_config_lists_every_key_at_its_default(cls, examples_dir, tmp_path):
    """examples/configs/*.toml are the reference a user copies: every key, each value (or,
    where the default is none, a commented-out example) as the code has it."""
    path = examples_dir / "configs" / EXAMPLE_CONFIGS[cls]
    assert make_config(cls, path, {}) == cls()
    text = path.read_text()
    top_level, data_table = text.split("\n[data]\n")
    fields = {f.name for f in dataclasses.fields(cls)}
    none_by_default = {f for f in fields if getattr(cls(), f) is None}
    assert {*re.findall(r"^(\w+) = ", top_level, re.M), "data"} == fields - none_by_default
    assert none_by_default <= set(re.findall(r"^# (\w+) = ", top_level, re.M))
    # the commented-out examples are valid too
    uncommented = tmp_path / path.name
    uncommented.write_text(re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M))
    config = make_config(cls, uncommented, {})
    assert all(getattr(config, f) is not None for f in none_by_default)
    assert config.data and set(config.data) <= set(COMMON_OPTIONS)


def test_train_without_validation_prints_no_empty_validation_line(examples_dir, tmp_path, capsys):
    out = tmp_path / "run"
    data = f"data={{size=32, n_train=8, n_val=4, cache_dir='{tmp_path / 'cache'}'}}"
    args = ["--set", "eval_every=0", "--set", "steps=2", "--set", "batch_size=2", "--set", data]
    model = str(examples_dir / "resnet_tiny.mtl")
    code = main(["train", model, "--policy", "shared", "--out", str(out), "--no-progress", *args])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()  # no "validation: " line before the last
    assert [line.split(":")[0] for line in lines[:-1]] == ["train data", "val data"]
    assert lines[-1].startswith(f"wrote {out / 'model.py'}, ")
