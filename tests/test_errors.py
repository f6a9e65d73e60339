"""Every class of user error: its message, its `file:line:col`, the quoted source line and the
caret under the right text; then the same through the `mtsc` command (exit status 2, no
traceback, nothing written)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import pytest

from mtsc.cli import main
from mtsc.driver import build, load
from mtsc.errors import MtscError


@dataclass(frozen=True)
class Case:
    id: str
    source: str  # model.mtl, dedented
    message: str  # a substring of the message, usually all of it
    line: int
    column: int
    marked: str  # the source text the carets underline
    files: dict[str, str] = field(default_factory=dict)  # other files next to model.mtl
    where: str = "model.mtl"  # the file the error points into
    calls: tuple[str, ...] = ()  # the block calls it happened in, innermost first: "b@6:12"


def case(id, source, message, at, marked, files=None, where="model.mtl", calls=()) -> Case:
    """`at` is the (line, column) the error points at; `marked`, the text under the carets;
    `calls`, "block@line:column" of each block call the error is inside, innermost first."""
    source = textwrap.dedent(source).lstrip("\n")
    files = {k: textwrap.dedent(v).lstrip("\n") for k, v in (files or {}).items()}
    return Case(id, source, message, *at, marked, files, where, tuple(calls))


HEAD = "input image: 3x32x32\n"

SYNTAX = [
    case(
        "misspelt_section_keyword",
        HEAD + "backbon {\n    return image\n}\n",
        "unknown keyword 'backbon' (did you mean 'backbone'?)",
        (2, 1),
        "backbon",
    ),
    case(
        "keyword_as_a_name",
        HEAD + "backbone {\n    true = false\n    return image\n}\n",
        "unexpected 'true'; expected a name, ",
        (3, 5),
        "true",
    ),
    case(
        "keyword_as_a_loop_name",
        HEAD + "backbone {\n    for in in [1] {\n        x = image\n    }\n    return image\n}\n",
        "unexpected 'in'; expected a name",
        (3, 9),
        "in",
    ),
    case(
        "misspelt_return",
        HEAD + "backbone {\n    x = relu(image)\n    retrun x\n}\n",
        "unknown keyword 'retrun' (did you mean 'return'?)",
        (4, 5),
        "retrun",
    ),
    case(
        "misspelt_tasks_keyword",
        HEAD + "backbone {\n    return image\n}\ntask {\n    seg: fcn(classes=2)\n}\n",
        "unknown keyword 'task' (did you mean 'tasks'?)",
        (5, 1),
        "task",
    ),
    case(
        "missing_comma",
        """
        input image: 3x32x32
        backbone {
            x = conv(image, 8 k=3)
            return x
        }
        """,
        "unexpected 'k'; expected ')', ','",
        (3, 23),
        "k",
    ),
    case(
        "end_of_file",
        """
        input image: 3x32x32
        backbone {
            x = conv(image, 8, k=3)
        """,
        "unexpected end of file; expected a name, '@', 'assert', 'for', 'if', 'return', ...",
        (3, 28),
        "",
    ),
    case(
        "single_equals_in_condition",
        """
        input image: 3x32x32
        backbone {
            if channels(image) = 3 {
                image = relu(image)
            }
            return image
        }
        """,
        "unexpected '='; use '==' to compare",
        (3, 24),
        "=",
    ),
    case(
        "bad_character",
        """
        input image: 3x32x32
        backbone {
            x = image $ 2
            return x
        }
        """,
        "unexpected character '$'; expected",
        (3, 15),
        "$",
    ),
    case(
        "input_without_shape",
        """
        input image: 3
        backbone {
            return image
        }
        """,
        "unexpected '3'; expected a shape like 3x224x224",
        (1, 14),
        "3",
    ),
    case(
        "block_without_name",
        """
        block (x) {
            return x
        }
        """,
        "unexpected '('; expected a name",
        (1, 7),
        "(",
    ),
    case(
        "unterminated_string",
        """
        input image: 3x32x32
        backbone {
            return upsample(image, scale=2, mode="nearest)
        }
        """,
        "unexpected character '\"'",
        (3, 42),
        '"',
    ),
]

NAMES = [
    case(
        "undefined_name_with_suggestion",
        """
        input image: 3x32x32
        backbone {
            x = conv(imag, 8, k=3)
            return x
        }
        """,
        "undefined name 'imag' (did you mean 'image'?)",
        (3, 14),
        "imag",
    ),
    case(
        "block_cannot_see_backbone_variables",
        """
        input image: 3x32x32
        block b(x) {
            return x + image
        }
        backbone {
            return b(image)
        }
        """,
        "undefined name 'image'",
        (3, 16),
        "image",
        calls=["b@6:12"],
    ),
    case(
        "unknown_op_with_suggestion",
        """
        input image: 3x32x32
        backbone {
            return conv(image, 8, k=3) | rellu
        }
        """,
        "unknown op or block 'rellu' (did you mean 'relu'?)",
        (3, 34),
        "rellu",
    ),
    case(
        "python_spelling_of_true",
        """
        input image: 3x32x32
        backbone {
            return conv(image, 8, k=1, bias=True)
        }
        """,
        "undefined name 'True' (did you mean 'true'?)",
        (3, 37),
        "True",
    ),
    case(
        "unknown_attribute_with_suggestion",
        """
        input image: 3x32x32
        backbone {
            return conv(image, 8, kernal=3)
        }
        """,
        "conv has no attribute 'kernal' (did you mean 'kernel'?)",
        (3, 27),
        "kernal=3",
    ),
    case(
        "unknown_decorator",
        """
        input image: 3x32x32
        @sharde
        backbone {
            return image
        }
        """,
        "unknown decorator '@sharde'; use @shared or @specific (did you mean 'shared'?)",
        (2, 1),
        "@sharde",
    ),
    case(
        "conflicting_pins",
        """
        input image: 3x32x32
        backbone {
            @shared @specific
            x = conv(image, 8, k=3)
            return x
        }
        """,
        "@specific after @shared: pin ops with one decorator",
        (3, 13),
        "@specific",
    ),
    case(
        "repeated_pin",
        """
        input image: 3x32x32
        @specific
        @specific
        block b(x) {
            return conv(x, 8, k=1)
        }
        backbone {
            return b(image)
        }
        """,
        "@specific again: pin ops with one decorator",
        (3, 1),
        "@specific",
    ),
    case(
        "pin_on_a_number",
        """
        input image: 3x32x32
        backbone {
            @shared width = 2 * 4
            return conv(image, width, k=1)
        }
        """,
        "@shared pins the ops its statement makes, and this statement makes none (it gives 8); "
        "pin the statement that makes them",
        (3, 5),
        "@shared",
    ),
    case(
        "pin_on_a_return_of_an_earlier_value",
        """
        input image: 3x32x32
        backbone {
            x = conv(image, 8, k=1)
            @specific return x
        }
        """,
        "@specific pins the ops its statement makes, and this statement makes none (it names "
        "a value made earlier); pin the statement that makes them",
        (4, 5),
        "@specific",
    ),
    case(
        "pin_on_an_assert",
        """
        input image: 3x32x32
        backbone {
            @shared assert 1 < 2, "never"
            return conv(image, 8, k=1)
        }
        """,
        "@shared pins the ops its statement makes, and this statement makes none; pin the "
        "statement that makes them",
        (3, 5),
        "@shared",
    ),
]

BLOCK = "block b(x, c, s=1) {\n    return conv(x, c, k=1, s=s)\n}\n"

ARGUMENTS = [
    case(
        "too_many_arguments",
        HEAD + BLOCK + "backbone {\n    return b(image, 8, 1, 2)\n}\n",
        "b() takes 2 to 3 argument(s) (x, c, s=...), got 4",
        (6, 12),
        "b(image, 8, 1, 2)",
    ),
    case(
        "missing_argument",
        HEAD + BLOCK + "backbone {\n    return b(image)\n}\n",
        "b() is missing argument 'c'",
        (6, 12),
        "b(image)",
    ),
    case(
        "unknown_keyword_argument",
        HEAD + BLOCK + "backbone {\n    return b(image, 8, stride=2)\n}\n",
        "b() has no parameter 'stride'",
        (6, 12),
        "b(image, 8, stride=2)",
    ),
    case(
        "keyword_argument_suggestion",
        HEAD + BLOCK + "backbone {\n    return b(image, cc=8)\n}\n",
        "b() has no parameter 'cc' (did you mean 'c'?)",
        (6, 12),
        "b(image, cc=8)",
    ),
    case(
        "argument_by_position_and_name",
        HEAD + BLOCK + "backbone {\n    return b(image, 8, c=8)\n}\n",
        "b() got 'c' twice",
        (6, 12),
        "b(image, 8, c=8)",
    ),
    case(
        "keyword_given_twice",
        HEAD + BLOCK + "backbone {\n    return b(image, c=8, c=9)\n}\n",
        "argument 'c' given twice",
        (6, 26),
        "c=9",
    ),
    case(
        "positional_after_keyword",
        HEAD + BLOCK + "backbone {\n    return b(image, c=8, 2)\n}\n",
        "a positional argument follows a keyword argument",
        (6, 26),
        "2",
    ),
    case(
        "op_without_input",
        HEAD + "backbone {\n    return conv(8, k=3)\n}\n",
        "conv: needs an input tensor",
        (3, 12),
        "conv(8, k=3)",
    ),
    case(
        "op_with_too_many_positional_attributes",
        HEAD + "backbone {\n    return conv(image, 8, 3)\n}\n",
        "conv: too many positional attributes after the inputs: at most 1 (out)",
        (3, 12),
        "conv(image, 8, 3)",
    ),
    case(
        "op_without_positional_attributes",
        HEAD + "backbone {\n    return maxpool(image, 2)\n}\n",
        "maxpool: too many positional attributes after the inputs: none; name them (kernel=..., "
        "stride=..., padding=..., ceil=..., global=...)",
        (3, 12),
        "maxpool(image, 2)",
    ),
    case(
        "op_without_attributes",
        HEAD + "backbone {\n    return relu(image, 2)\n}\n",
        "relu: too many positional attributes after the inputs: none; relu takes no attributes",
        (3, 12),
        "relu(image, 2)",
    ),
    case(
        "op_attribute_given_twice",
        HEAD + "backbone {\n    return conv(image, 8, k=3, kernel=3)\n}\n",
        "conv: 'kernel' given twice",
        (3, 32),
        "kernel=3",
    ),
    case(
        "tensor_as_attribute",
        HEAD + "backbone {\n    return conv(image, 8, k=image)\n}\n",
        "conv: attribute 'k' cannot be a tensor",
        (3, 27),
        "k=image",
    ),
    case(
        "tensor_as_channel_count",
        HEAD + "backbone {\n    low = relu(image)\n    return conv(low, low, k=1)\n}\n",
        "conv: takes 1 input tensor(s), got 2; out follows the inputs, as a number",
        (4, 12),
        "conv(low, low, k=1)",
    ),
    case(
        "inputs_after_attributes",
        HEAD + "backbone {\n    return max(3, image)\n}\n",
        "max: inputs must come before attributes",
        (3, 12),
        "max(3, image)",
    ),
    case(
        "bad_attribute_value",
        HEAD + "backbone {\n    return conv(image, 8, k=3, s=0)\n}\n",
        "stride must be at least 1, got 0",
        (3, 12),
        "conv(image, 8, k=3, s=0)",
    ),
    case(
        "infinite_attribute",
        HEAD + "backbone {\n    return leaky_relu(image, slope=1e400)\n}\n",
        "slope must be a finite number, got inf",
        (3, 12),
        "leaky_relu(image, slope=1e400)",
    ),
]

SHAPES = [
    case(
        "add_channels",
        """
        input image: 3x32x32
        backbone {
            x = conv(image, 64, k=1)
            y = conv(image, 128, k=1)
            return x + y
        }
        """,
        "add: 64 vs 128 channels",
        (5, 12),
        "x + y",
    ),
    case(
        "kernel_larger_than_input",
        """
        input image: 3x4x4
        backbone {
            return conv(image, 8, k=7)
        }
        """,
        "conv2d: kernel 7x7 larger than the padded input 4x4",
        (3, 12),
        "conv(image, 8, k=7)",
    ),
    case(
        "channels_not_divisible_by_groups",
        """
        input image: 3x32x32
        backbone {
            return conv(image, 8, k=3, g=2)
        }
        """,
        "conv2d: 3 input channels not divisible by groups=2",
        (3, 12),
        "conv(image, 8, k=3, g=2)",
    ),
    case(
        "shape_error_inside_imported_block",
        """
        import "blocks.mtl"
        input image: 3x32x32
        backbone {
            return grow(image)
        }
        """,
        "add: 3 vs 6 channels",
        (2, 12),
        "x + conv(x, 6, k=1)",
        files={"blocks.mtl": "block grow(x) {\n    return x + conv(x, 6, k=1)\n}\n"},
        where="blocks.mtl",
        calls=["grow@4:12"],
    ),
    case(
        "error_in_nested_block_calls_names_each_call",
        HEAD
        + "block g(x, c) {\n    return conv(x, c, k=3, p=1, g=2)\n}\n"
        + "block stage(x, c) {\n    return g(x, c) | g(c)\n}\n"
        + "backbone {\n    x = conv(image, 8, k=1) | g(32)\n    return stage(x, 33)\n}\n",
        "conv2d: 33 output channels not divisible by groups=2",
        (3, 12),
        "conv(x, c, k=3, p=1, g=2)",
        calls=["g@6:12", "stage@10:12"],  # the first of stage's two calls of g
    ),
    case(
        "statement_after_return",
        HEAD + "backbone {\n    x = relu(image)\n    return x\n    y = relu(x)\n}\n",
        "this statement comes after `return`: it never runs",
        (5, 5),
        "y = relu(x)",
    ),
    case(
        "channel_shuffle_needs_a_feature_map",
        HEAD + "backbone {\n    v = image | avgpool(global=true) | flatten\n"
        "    return channel_shuffle(v, 3)\n}\n",
        "channel_shuffle: needs a feature map (C x H x W), got a flat vector of 3",
        (4, 12),
        "channel_shuffle(v, 3)",
    ),
    case(
        "linear_needs_flat_input",
        HEAD + "backbone {\n    return linear(image, 10)\n}\n",
        "linear: needs a flat input (use flatten first), got 3x32x32",
        (3, 12),
        "linear(image, 10)",
    ),
    case(
        "upsample_to_nothing",
        HEAD + "backbone {\n    return upsample(image, scale=0.01)\n}\n",
        "upsample: scale=0.01 makes 32x32 empty (0x0)",
        (3, 12),
        "upsample(image, scale=0.01)",
    ),
    case(
        "interp_two_sizes",
        HEAD + "backbone {\n    return interp(image, size=(4, 4), zoom=2)\n}\n",
        "interp: give size or zoom/shrink, not both",
        (3, 12),
        "interp(image, size=(4, 4), zoom=2)",
    ),
    case(
        "interp_reference_and_factor",
        HEAD + "backbone {\n    return interp(image, image, shrink=2)\n}\n",
        "interp: give a reference input or size/zoom/shrink, not both",
        (3, 12),
        "interp(image, image, shrink=2)",
    ),
]

CYCLES = [
    case(
        "import_cycle",
        'import "a.mtl"\n' + HEAD + "backbone {\n    return image\n}\n",
        "import cycle: a.mtl -> b.mtl -> a.mtl",
        (1, 1),
        'import "a.mtl"',
        files={"a.mtl": 'import "b.mtl"\n', "b.mtl": 'import "a.mtl"\n'},
        where="b.mtl",
    ),
    case(
        "self_import",
        'import "model.mtl"\n' + HEAD + "backbone {\n    return image\n}\n",
        "import cycle: model.mtl -> model.mtl",
        (1, 1),
        'import "model.mtl"',
    ),
    case(
        "constant_of_two_imports",
        'import "a.mtl"\nimport "b.mtl"\n'
        + HEAD
        + "backbone {\n    return conv(image, C, k=1)\n}\n",
        "constant 'C' of 'b.mtl' (at ",
        (2, 1),
        'import "b.mtl"',
        files={"a.mtl": "C = 4\n", "b.mtl": "C = 5\n"},
    ),
    case(
        "constant_of_an_import_redefined",
        'import "a.mtl"\nC = 8\n' + HEAD + "backbone {\n    return conv(image, C, k=1)\n}\n",
        "'C' is already defined at ",
        (2, 1),
        "C = 8",
        files={"a.mtl": "C = 4\n"},
    ),
    case(
        "constant_defined_twice",
        "C = 4\nC = 5\n" + HEAD + "backbone {\n    return conv(image, C, k=1)\n}\n",
        "model.mtl:1:1",
        (2, 1),
        "C = 5",
    ),
    case(
        "missing_import",
        'import "nope.mtl"\n' + HEAD + "backbone {\n    return image\n}\n",
        "cannot import 'nope.mtl': No such file or directory",
        (1, 1),
        'import "nope.mtl"',
    ),
    case(
        "imported_file_with_a_backbone",
        'import "other.mtl"\n' + HEAD + "backbone {\n    return image\n}\n",
        "an imported file may hold only blocks, constants and imports",
        (1, 1),
        "b",
        files={"other.mtl": "backbone {\n    return image\n}\n"},
        where="other.mtl",
    ),
    case(
        "recursion",
        HEAD + "block a(x) {\n    return a(x)\n}\nbackbone {\n    return a(image)\n}\n",
        "recursion in block 'a': a -> a",
        (3, 12),
        "a(x)",
    ),
    case(
        "mutual_recursion",
        HEAD
        + "block a(x) {\n    return b(x)\n}\n"
        + "block b(x) {\n    return relu(x) | a\n}\n"
        + "backbone {\n    return a(image)\n}\n",
        "recursion in block 'a': a -> b -> a",
        (6, 22),
        "a",
    ),
    case(
        "nesting_too_deep",
        HEAD
        + "".join(f"block b{i}(x) {{ return b{i + 1}(x) }}\n" for i in range(70))
        + "block b70(x) { return relu(x) }\n"
        + "backbone {\n    return b0(image)\n}\n",
        "blocks nested deeper than 64 levels",
        (65, 23),
        "b64(x)",
    ),
]

DUPLICATES = [
    case(
        "duplicate_block",
        HEAD
        + "block a(x) { return x }\nblock a(x) { return x }\nbackbone {\n    return a(image)\n}\n",
        "block 'a' is already defined at ",
        (3, 7),
        "a",
    ),
    case(
        "duplicate_block_across_import",
        'import "lib.mtl"\n'
        + HEAD
        + "block a(x) { return x }\nbackbone {\n    return a(image)\n}\n",
        "block 'a' is already defined at ",
        (3, 7),
        "a",
        files={"lib.mtl": "block a(x) { return relu(x) }\n"},
    ),
    case(
        "block_named_like_an_op",
        HEAD + "block relu(x) { return x }\nbackbone {\n    return image\n}\n",
        "block name 'relu' is the name of an op",
        (2, 7),
        "relu",
    ),
    case(
        "duplicate_parameter",
        HEAD + "block a(x, x) { return x }\nbackbone {\n    return image\n}\n",
        "duplicate parameter 'x'",
        (2, 12),
        "x",
    ),
    case(
        "duplicate_label",
        HEAD + "backbone {\n    s: x = conv(image, 8, k=1)\n    s: x = conv(x, 8, k=1)\n"
        "    return x\n}\n",
        "duplicate label 's' in this scope",
        (4, 5),
        "s",
    ),
    case(
        "label_of_an_automatic_name",
        HEAD + "backbone {\n    x = conv(image, 8, k=1)\n    conv1: x = relu(x)\n    return x\n}\n",
        "label 'conv1' is already the name of an earlier op or block call without a label (those "
        "are named after the op or block and a count); choose another label",
        (4, 5),
        "conv1",
    ),
    case(
        "duplicate_input",
        HEAD + HEAD + "backbone {\n    return image\n}\n",
        "'image' is already defined",
        (2, 1),
        "input image: 3x32x32",
    ),
    case(
        "duplicate_task",
        HEAD
        + "backbone {\n    return image\n}\n"
        + "tasks {\n    a: fcn(classes=2)\n    a: fcn(classes=3)\n}\n",
        "duplicate task 'a'",
        (7, 5),
        "a: fcn(classes=3)",
    ),
]

TASKS_HEAD = HEAD + "backbone {\n    return conv(image, 8, k=1)\n}\n"

TASKS = [
    *(
        case(
            f"builtin_head_option_{i}",
            TASKS_HEAD + f"tasks {{\n    seg: {head}\n}}\n",
            message,
            (6, 10),
            head,
        )
        for i, (head, message) in enumerate(
            [
                (
                    "fcn(classes=0)",
                    "head 'fcn': classes must be a whole number of at least 1, got 0",
                ),
                (
                    "fcn(classes=3, width=image)",
                    "head 'fcn': width must be a whole number of at least 1, got tensor image",
                ),
                (
                    "aspp(classes=2.5)",
                    "head 'aspp': classes must be a whole number of at least 1, got 2.5",
                ),
                (
                    "aspp(classes=2, rates=[6, 0])",
                    "head 'aspp': rates must be a list of whole numbers of at least 1, got (6, 0)",
                ),
                (
                    "aspp(classes=2, drop=1)",
                    "head 'aspp': drop must be a number from 0 up to, not including, 1, got 1",
                ),
                (
                    "conv1x1(classes=true)",
                    "head 'conv1x1': classes must be a whole number of at least 1, got true",
                ),
            ]
        )
    ),
    case(
        "unknown_head",
        TASKS_HEAD + "tasks {\n    seg: fcnn(classes=2)\n}\n",
        "unknown head 'fcnn' (did you mean 'fcn'?)",
        (6, 10),
        "fcnn(classes=2)",
    ),
    case(
        "unknown_head_option",
        TASKS_HEAD + "tasks {\n    seg: fcn(clases=2)\n}\n",
        "head 'fcn' has no option 'clases' (did you mean 'classes'?)",
        (6, 10),
        "fcn(clases=2)",
    ),
    case(
        "head_block_without_input",
        TASKS_HEAD
        + "block h1(f, classes) {\n    return conv(f, classes, k=1)\n}\n"
        + "tasks {\n    seg: h1(classes=2)\n}\n",
        "head 'h1' takes 'classes' as its input: a head block takes (features, input, "
        "...options), as in `block h1(x, input, classes)`",
        (9, 10),
        "h1(classes=2)",
    ),
    case(
        "head_option_misspells_a_backbone_tensor",
        HEAD
        + "backbone {\n    low = conv(image, 8, k=1)\n    return low\n}\n"
        + "block h2(f, input, low) {\n    return conv(low, 2, k=1)\n}\n"
        + "tasks {\n    seg: h2(low=lw)\n}\n",
        "undefined name 'lw' (did you mean 'low'?)",
        (10, 17),
        "lw",
    ),
    case(
        "head_option_is_an_expression_of_tensors",
        HEAD
        + "backbone {\n    low = conv(image, 8, k=1)\n    return low\n}\n"
        + "block h2(f, input, low) {\n    return conv(low, 2, k=1)\n}\n"
        + "tasks {\n    seg: h2(low=relu(low))\n}\n",
        "a head takes a backbone tensor by its name (low=x), not an expression: compute it in "
        "the backbone",
        (10, 13),
        "low=relu(low)",
    ),
    case(
        "missing_head_option",
        TASKS_HEAD + "tasks {\n    seg: fcn(width=8)\n}\n",
        "head 'fcn' needs classes=",
        (6, 10),
        "fcn(width=8)",
    ),
    case(
        "head_option_by_position",
        TASKS_HEAD + "tasks {\n    seg: fcn(2)\n}\n",
        "head arguments are given by name: key=value",
        (6, 14),
        "2",
    ),
    case(
        "head_not_a_call",
        TASKS_HEAD + "tasks {\n    seg: 3\n}\n",
        "a head is a name or a call like name(key=value)",
        (6, 10),
        "3",
    ),
    case(
        "task_option_twice",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=2) loss=l1 loss=l2\n}\n",
        "loss= given twice",
        (6, 33),
        "loss=l2",
    ),
    case(
        "task_weight_not_a_number",
        TASKS_HEAD + 'tasks {\n    seg: fcn(classes=2) weight="high"\n}\n',
        "weight= must be a number",
        (6, 25),
        'weight="high"',
    ),
    case(
        "task_weight_negative",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=2) weight=-1\n}\n",
        "weight= must be a finite number > 0, got -1",
        (6, 25),
        "weight=-1",
    ),
    case(
        "task_weight_zero",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=2) weight=0.0\n}\n",
        "weight= must be a finite number > 0, got 0.0",
        (6, 25),
        "weight=0.0",
    ),
    case(
        "unknown_loss",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=3) loss=hinge metric=miou\n}\n",
        "unknown loss 'hinge'; known losses: cosine, cross_entropy, l1",
        (6, 30),
        "hinge",
    ),
    case(
        "unknown_loss_option",
        TASKS_HEAD + "tasks {\n    depth: fcn(classes=1) loss=l1(bogus=3)\n}\n",
        "loss 'l1' has no option 'bogus'; its options: none",
        (6, 32),
        "l1(bogus=3)",
    ),
    case(
        "unknown_metric",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=3) loss=cross_entropy metric=accuracy\n}\n",
        "unknown metric 'accuracy'; known metrics: depth, miou, normal, segmentation",
        (6, 51),
        "accuracy",
    ),
    case(
        "unknown_metric_option",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=3) metric=miou(classes=3)\n}\n",
        "metric 'miou' has no option 'classes'; its options: device, ignore, num_classes",
        (6, 32),
        "miou(classes=3)",
    ),
    case(
        "loss_option_value",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=3) loss=cross_entropy(ignore=1e400)\n}\n",
        "loss 'cross_entropy': ignore must be an integer label, got inf",
        (6, 30),
        "cross_entropy(ignore=1e400)",
    ),
    case(
        "metric_device",
        TASKS_HEAD + 'tasks {\n    seg: fcn(classes=3) metric=miou(device="gpu0")\n}\n',
        'metric \'miou\': device must be a device: "cpu", "cuda" or "cuda:N", got "gpu0"',
        (6, 32),
        'miou(device="gpu0")',
    ),
    case(
        "metric_num_classes",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=3) metric=miou(num_classes=0)\n}\n",
        "metric 'miou': num_classes must be an integer in [1, 65536], got 0",
        (6, 32),
        "miou(num_classes=0)",
    ),
    case(
        "metric_classes_other_than_the_heads",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=6) metric=miou(num_classes=5)\n}\n",
        "task 'seg': miou(num_classes=5) scores 5 classes, but the head gives 6 channels (leave "
        "num_classes out: it defaults to the head's classes)",
        (6, 32),
        "miou(num_classes=5)",
    ),
    case(
        "metric_bin_width",
        TASKS_HEAD + "tasks {\n    n: fcn(classes=3) metric=normal(bin_width=7)\n}\n",
        "metric 'normal': bin_width must be a number of degrees that divides 180, at least "
        "0.0001, got 7",
        (6, 30),
        "normal(bin_width=7)",
    ),
    case(
        "unknown_task_option",
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=2) los=l1\n}\n",
        "unknown task option 'los' (did you mean 'loss'?); a task takes loss=, metric= and weight=",
        (6, 25),
        "los=",
    ),
    case(
        "task_written_as_an_assignment",
        TASKS_HEAD + "tasks {\n    seg = fcn(classes=2)\n}\n",
        "unexpected '='; expected ':'",
        (6, 9),
        "=",
    ),
    case(
        "empty_tasks",
        TASKS_HEAD + "tasks {\n}\n",
        "the tasks section is empty",
        (5, 1),
        "t",
    ),
    case(
        "two_tasks_sections",
        TASKS_HEAD + "tasks {\n    a: fcn(classes=2)\n}\ntasks {\n    b: fcn(classes=2)\n}\n",
        "a model has at most one tasks section",
        (8, 1),
        "t",
    ),
    case(
        "head_block_with_one_parameter",
        TASKS_HEAD + "block h(x) { return x }\ntasks {\n    seg: h\n}\n",
        "head block 'h' must take (features, input, ...) parameters",
        (7, 10),
        "h",
    ),
    case(
        "head_computing_nothing",
        TASKS_HEAD + "block h(x, input) { return x }\ntasks {\n    seg: h\n}\n",
        "head 'h' must compute something",
        (7, 10),
        "h",
    ),
    case(
        "head_returning_a_number",
        TASKS_HEAD + "block h(x, input) { return 3 }\ntasks {\n    seg: h\n}\n",
        "head 'h' must return a tensor",
        (7, 10),
        "h",
    ),
]

CONDITIONS = [
    case(
        "assertion_with_message",
        HEAD
        + 'backbone {\n    assert channels(image) == 4, "need 4 channels"\n    return image\n}\n',
        "assertion failed: need 4 channels",
        (3, 5),
        'assert channels(image) == 4, "need 4 channels"',
    ),
    case(
        "assertion_without_message",
        HEAD + "backbone {\n    assert height(image) > 64\n    return image\n}\n",
        "assertion failed: condition is false",
        (3, 5),
        "assert height(image) > 64",
    ),
    case(
        "assertion_not_bool",
        HEAD + "backbone {\n    assert channels(image)\n    return image\n}\n",
        "a condition must be true or false, got 3",
        (3, 12),
        "channels(image)",
    ),
    case(
        "if_not_bool",
        HEAD + "backbone {\n    if 3 {\n        image = relu(image)\n    }\n    return image\n}\n",
        "a condition must be true or false, got 3",
        (3, 8),
        "3",
    ),
    case(
        "elif_not_bool",
        HEAD + 'backbone {\n    if false {\n    } elif "yes" {\n    }\n    return image\n}\n',
        'a condition must be true or false, got "yes"',
        (4, 12),
        '"yes"',
    ),
    case(
        "not_on_number",
        HEAD + "backbone {\n    if not 3 {\n    }\n    return image\n}\n",
        "'not' needs true or false, got 3",
        (3, 8),
        "not 3",
    ),
    case(
        "and_on_number",
        HEAD + "backbone {\n    if true and 1 {\n    }\n    return image\n}\n",
        "'and' needs true or false, got 1",
        (3, 17),
        "1",
    ),
    case(
        "condition_on_tensor",
        HEAD + "backbone {\n    if image {\n    }\n    return image\n}\n",
        "a condition must be true or false, got tensor 3x32x32",
        (3, 8),
        "image",
    ),
]

STRUCTURE = [
    case("no_backbone", HEAD, "the model has no `backbone { ... }` section", (1, 1), "i"),
    case(
        "two_backbones",
        HEAD + "backbone {\n    return image\n}\nbackbone {\n    return image\n}\n",
        "a model has exactly one backbone section",
        (5, 1),
        "b",
    ),
    case(
        "no_input",
        "backbone {\n    return 1\n}\n",
        "the model declares no input (`input image: 3x224x224`)",
        (1, 1),
        "b",
    ),
    case(
        "input_not_three_dimensional",
        "input image: 3x32\nbackbone {\n    return image\n}\n",
        "an input shape is channels x height x width, e.g. 3x224x224",
        (1, 1),
        "input image: 3x32",
    ),
    case(
        "input_with_zero_size",
        "input image: 3x0x32\nbackbone {\n    return image\n}\n",
        "an input shape has no zero sizes",
        (1, 1),
        "input image: 3x0x32",
    ),
    case(
        "backbone_returns_a_number",
        HEAD + "backbone {\n    return channels(image)\n}\n",
        "the backbone must return a tensor, not 3",
        (3, 5),
        "return channels(image)",
    ),
    case(
        "backbone_without_return",
        HEAD + "backbone {\n    x = relu(image)\n}\n",
        "the backbone ends without `return`; return the tensor the heads read",
        (4, 1),
        "}",
    ),
    case(
        "block_without_return",
        HEAD + "block b(x) {\n    y = relu(x)\n}\nbackbone {\n    return b(image)\n}\n",
        "block 'b' ends without `return`",
        (4, 1),
        "}",
        calls=["b@6:12"],
    ),
]

VALUES = [
    case(
        "loop_over_number",
        HEAD + "backbone {\n    for i in 3 {\n    }\n    return image\n}\n",
        "cannot loop over 3; use a list or range()",
        (3, 14),
        "3",
    ),
    case(
        "unpack_mismatch",
        HEAD + "backbone {\n    for a, b, c in [(1, 2)] {\n    }\n    return image\n}\n",
        "cannot unpack (1, 2) into 3 names",
        (3, 20),
        "[(1, 2)]",
    ),
    case(
        "index_a_number",
        HEAD + "backbone {\n    x = 3[0]\n    return image\n}\n",
        "cannot index 3",
        (3, 9),
        "3",
    ),
    case(
        "index_not_an_integer",
        HEAD + "backbone {\n    x = (1, 2)[true]\n    return image\n}\n",
        "an index must be an integer, got true",
        (3, 16),
        "true",
    ),
    case(
        "index_out_of_range",
        HEAD + "backbone {\n    x = (1, 2)[5]\n    return image\n}\n",
        "index 5 out of range for 2 items",
        (3, 16),
        "5",
    ),
    case(
        "division_by_zero",
        HEAD + "C = 0\nbackbone {\n    x = 4 // C\n    return image\n}\n",
        "division by zero",
        (4, 9),
        "4 // C",
    ),
    case(
        "number_plus_string",
        HEAD + 'backbone {\n    x = 1 + "a"\n    return image\n}\n',
        "cannot apply '+' to 1 and \"a\"",
        (3, 9),
        '1 + "a"',
    ),
    case(
        "tensor_over_tensor",
        HEAD + "backbone {\n    return image / image\n}\n",
        "'/' is not defined for two tensors (use +, - or *)",
        (3, 12),
        "image / image",
    ),
    case(
        "tensor_over_zero",
        HEAD + "backbone {\n    return image / 0\n}\n",
        "division by zero",
        (3, 12),
        "image / 0",
    ),
    case(
        "number_over_tensor",
        HEAD + "backbone {\n    return 1 / image\n}\n",
        "cannot apply '/' to 1 and tensor 3x32x32",
        (3, 12),
        "1 / image",
    ),
    case(
        "tensor_plus_string",
        HEAD + 'backbone {\n    return image + "a"\n}\n',
        "cannot apply '+' to tensor 3x32x32 and \"a\"",
        (3, 12),
        'image + "a"',
    ),
    case(
        "negate_a_string",
        HEAD + 'backbone {\n    x = -"a"\n    return image\n}\n',
        'cannot negate "a"',
        (3, 9),
        '-"a"',
    ),
    case(
        "channels_of_a_number",
        HEAD + "backbone {\n    x = channels(3)\n    return image\n}\n",
        "channels(): needs a tensor, got 3",
        (3, 9),
        "channels(3)",
    ),
    case(
        "height_of_a_vector",
        HEAD + "backbone {\n    x = height(flatten(image))\n    return image\n}\n",
        "height(): needs a feature map, got a flat vector",
        (3, 9),
        "height(flatten(image))",
    ),
    case(
        "range_of_a_float",
        HEAD + "backbone {\n    x = range(1.5)\n    return image\n}\n",
        "range(): needs integers, got 1.5",
        (3, 9),
        "range(1.5)",
    ),
    case(
        "min_of_nothing",
        HEAD + "backbone {\n    x = min([])\n    return image\n}\n",
        "min(): needs at least one value",
        (3, 9),
        "min([])",
    ),
    case(
        "len_of_a_number",
        HEAD + "backbone {\n    x = len(3)\n    return image\n}\n",
        "len(): needs a list, got 3",
        (3, 9),
        "len(3)",
    ),
    case(
        "builtin_with_keywords",
        HEAD + "backbone {\n    x = channels(x=image)\n    return image\n}\n",
        "channels() takes no keyword arguments",
        (3, 9),
        "channels(x=image)",
    ),
    case(
        "builtin_with_wrong_arity",
        HEAD + "backbone {\n    x = height(image, 1)\n    return image\n}\n",
        "height() cannot take (tensor 3x32x32, 1)",
        (3, 9),
        "height(image, 1)",
    ),
    case(
        "int_of_infinity",
        HEAD + "backbone {\n    x = int(1e400)\n    return image\n}\n",
        "int(): cannot convert float infinity to integer",
        (3, 9),
        "int(1e400)",
    ),
    case(
        "negative_repeat",
        HEAD + "backbone {\n    return repeat (-1) relu(image)\n}\n",
        "repeat needs a count >= 0, got -1",
        (3, 20),
        "-1",
    ),
    case(
        "repeat_without_input",
        HEAD + "backbone {\n    return repeat 2 relu()\n}\n",
        "repeat needs the input as the first argument",
        (3, 21),
        "relu()",
    ),
]

ALL = (
    SYNTAX
    + NAMES
    + ARGUMENTS
    + SHAPES
    + CYCLES
    + DUPLICATES
    + TASKS
    + CONDITIONS
    + STRUCTURE
    + VALUES
)


@pytest.mark.parametrize("c", ALL, ids=[c.id for c in ALL])
def test_error_message_location_and_caret(c: Case, tmp_path) -> None:
    for name, text in c.files.items():
        (tmp_path / name).write_text(text)
    path = tmp_path / "model.mtl"
    path.write_text(c.source)
    with pytest.raises(MtscError) as info:
        load(path)
    err = info.value
    where = tmp_path / c.where
    lines = err.render().splitlines()
    assert c.message in err.message
    assert err.span is not None
    assert (err.span.line, err.span.column) == (c.line, c.column), lines[0]
    assert lines[0] == f"{where}:{c.line}:{c.column}: error: {err.message}"
    source_line = where.read_text().splitlines()[c.line - 1]
    assert lines[1] == "    " + source_line.rstrip()
    caret = lines[2].removeprefix("    ")
    assert caret.strip(" ") and set(caret.strip(" ")) == {"^"}, lines[2]
    start = len(caret) - len(caret.lstrip(" "))
    assert start == c.column - 1
    marked = source_line[start : len(caret)]
    assert marked == c.marked or (c.marked == "" and marked == "" and start >= len(source_line))
    # message, source, caret, then a note for each block call it happened in: nothing else
    calls = [c.split("@") for c in c.calls]
    assert lines[3:] == [f"note: in block {b!r}, called at {path}:{at}" for b, at in calls]


def test_an_error_in_a_built_in_head_points_at_the_task(tmp_path) -> None:
    path = tmp_path / "model.mtl"
    path.write_text(
        HEAD + "backbone {\n    return flatten(conv(image, 8, k=1))\n}\n"
        "tasks {\n    seg: conv1x1(classes=2)\n}\n"
    )
    with pytest.raises(MtscError) as info:
        load(path)
    lines = info.value.render().splitlines()
    assert lines[0].startswith(f"{path}:6:10: error: task 'seg': conv2d: needs a feature map")
    assert lines[3].startswith("note: in head 'conv1x1', at ")
    assert lines[3].endswith("heads.mtl:29:9")


def test_error_without_a_location_renders_one_line(tmp_path) -> None:
    with pytest.raises(MtscError) as info:
        load(tmp_path / "missing.mtl")
    assert info.value.render() == f"error: {tmp_path / 'missing.mtl'}: no such file"
    (tmp_path / "model.txt").write_text("")
    with pytest.raises(MtscError, match=r"unknown model file type '\.txt' \(expected .*\.mtl"):
        load(tmp_path / "model.txt")


def test_syntax_error_names_what_was_expected_for_a_broken_tasks_line(tmp_path) -> None:
    path = tmp_path / "model.mtl"
    path.write_text(TASKS_HEAD + "tasks {\n    seg: fcn(classes=2) loss=\n}\n")
    with pytest.raises(MtscError) as info:
        load(path)
    assert info.value.message.startswith("unexpected '}'; expected ")
    assert "a name" in info.value.message and "a number" in info.value.message


# ---------------------------------------------------------------- through the command


SHAPE_ERROR = HEAD + "backbone {\n    x = conv(image, 8, k=3)\n    return x + image\n}\n"


@pytest.mark.parametrize(
    ("source", "first_line"),
    [
        (SHAPE_ERROR, "model.mtl:4:12: error: add: 8 vs 3 channels"),
        (
            HEAD + "backbone {\n    return conv(image 8)\n}\n",
            "model.mtl:3:23: error: unexpected '8'",
        ),
    ],
    ids=["shape", "syntax"],
)
def test_cli_reports_errors_in_three_lines_and_writes_nothing(
    source, first_line, tmp_path, run_mtsc
) -> None:
    (tmp_path / "model.mtl").write_text(source)
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    (existing / "backbone.py").write_text("# an earlier build\n")
    for out in (fresh, existing):
        proc = run_mtsc("build", "model.mtl", "-o", out, cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 3, proc.stderr
        assert lines[0].startswith(first_line)
        assert (
            lines[1].startswith("    ") and lines[2].strip(" ") and set(lines[2].strip()) == {"^"}
        )
    assert not fresh.exists()
    assert [p.name for p in existing.iterdir()] == ["backbone.py"]
    assert (existing / "backbone.py").read_text() == "# an earlier build\n"


def test_cli_check_and_fmt_report_errors_with_status_2(tmp_path, run_mtsc) -> None:
    (tmp_path / "model.mtl").write_text(SHAPE_ERROR)
    (tmp_path / "broken.mtl").write_text("backbone {\n")
    check = run_mtsc("check", "model.mtl", cwd=tmp_path)
    fmt = run_mtsc("fmt", "broken.mtl", cwd=tmp_path)
    missing = run_mtsc("build", "missing.mtl", "-o", tmp_path / "out", cwd=tmp_path)
    fmt_missing = run_mtsc("fmt", "missing.mtl", cwd=tmp_path)
    for proc in (check, fmt, missing, fmt_missing):
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert check.stderr.startswith("model.mtl:4:12: error: add: 8 vs 3 channels\n")
    assert fmt.stderr.startswith("broken.mtl:1:11: error: unexpected end of file")
    assert missing.stderr == "error: missing.mtl: no such file\n"
    assert fmt_missing.stderr == "error: cannot read missing.mtl: No such file or directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mtl", "model.mtl"]


def test_cli_check_rejects_an_unknown_loss_with_status_2(tmp_path, run_mtsc) -> None:
    (tmp_path / "model.mtl").write_text(
        TASKS_HEAD + "tasks {\n    seg: fcn(classes=3) loss=hinge\n}\n"
    )
    proc = run_mtsc("check", "model.mtl", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(
        "model.mtl:6:30: error: unknown loss 'hinge'; known losses: cosine, cross_entropy, l1\n"
    )


def test_a_failed_build_leaves_no_partial_files(tmp_path, monkeypatch) -> None:
    """A write that fails halfway leaves neither the file nor its temporary behind, nor the
    folder the build made."""
    import mtsc.fsutil

    real_replace = mtsc.fsutil.os.replace

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    path = tmp_path / "model.mtl"
    path.write_text(HEAD + "backbone {\n    return relu(image)\n}\n")
    monkeypatch.setattr(mtsc.fsutil.os, "replace", failing_replace)
    with pytest.raises(MtscError) as info:
        build(path, tmp_path / "out", render=False)
    assert info.value.render() == (
        f"error: cannot write {tmp_path / 'out' / 'backbone.py'}: No space left on device"
    )
    monkeypatch.setattr(mtsc.fsutil.os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mtl"]


def test_an_output_folder_that_cannot_be_made(tmp_path) -> None:
    path = tmp_path / "model.mtl"
    path.write_text(HEAD + "backbone {\n    return relu(image)\n}\n")
    (tmp_path / "taken").write_text("a file, not a folder\n")
    with pytest.raises(MtscError) as info:
        build(path, tmp_path / "taken" / "out", render=False)
    assert info.value.render() == (
        f"error: cannot write to {tmp_path / 'taken' / 'out'}: {tmp_path / 'taken'} is a file, "
        "not a folder"
    )


BODY = "backbone {\n    return relu(image)\n}\n"


@pytest.mark.parametrize(
    ("command", "name"), [("check", "bin.mtl"), ("fmt", "bin.mtl"), ("check", "bin.prototxt")]
)
def test_a_file_that_is_not_utf8_is_reported(tmp_path, capsys, command, name) -> None:
    path = tmp_path / name
    path.write_bytes(b"\xff\xfe bad")
    assert main([command, str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: not UTF-8 text (byte 0xff at offset 0)\n"


def test_the_offset_of_a_bad_byte_counts_from_the_start_of_the_file(tmp_path, capsys) -> None:
    path = tmp_path / "model.mtl"
    path.write_bytes(b"\xef\xbb\xbf" + HEAD.encode() + b"# caf\xe9\n")
    assert main(["check", str(path)]) == 2
    message = f"error: {path}: not UTF-8 text (byte 0xe9 at offset {3 + len(HEAD) + 5})\n"
    assert capsys.readouterr().err == message


def test_an_imported_file_that_is_not_utf8_is_reported(tmp_path, capsys) -> None:
    (tmp_path / "blocks.mtl").write_bytes(b"# \xc3(\n")
    (tmp_path / "model.mtl").write_text('import "blocks.mtl"\n' + HEAD + BODY)
    assert main(["check", str(tmp_path / "model.mtl")]) == 2
    message = f"error: {tmp_path / 'blocks.mtl'}: not UTF-8 text (byte 0xc3 at offset 2)\n"
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("command", [["check"], ["fmt", "--check"]])
def test_a_byte_order_mark_is_accepted(tmp_path, capsys, command) -> None:
    path = tmp_path / "bom.mtl"
    path.write_bytes(b"\xef\xbb\xbf" + (HEAD + BODY).encode())
    assert main([*command, str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_check_warns_of_a_second_input_search_would_refuse(tmp_path, capsys) -> None:
    path = tmp_path / "model.mtl"
    body = "backbone {\n    return concat(image, extra)\n}\ntasks {\n    depth: fcn(classes=1)\n}\n"
    path.write_text(HEAD + "input extra: 1x32x32\n" + body)
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{path}:2:1: warning: the model declares 2 inputs (image, extra); `mtsc search` and "
        "`mtsc train` feed it one, the data's images"
    )


def test_check_suggests_the_task_a_misspelt_name_was_meant_to_be(tmp_path, capsys) -> None:
    path = tmp_path / "model.mtl"
    path.write_text(HEAD + BODY + "tasks {\n    sgement: fcn(classes=4)\n}\n")
    assert main(["check", str(path)]) == 0
    assert (
        capsys.readouterr()
        .err.splitlines()[0]
        .endswith("have a default) (did you mean 'segment'?)")
    )


# Characters that `str.splitlines` breaks at but the lexers do not: a form feed, a vertical tab,
# a file separator, Unicode's line and paragraph separators.
LINE_BREAKS_ONLY_PYTHON_SEES = ["\f", "\v", "\x1c", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", LINE_BREAKS_ONLY_PYTHON_SEES)
def test_an_error_quotes_its_own_line_after_a_comment_with_an_odd_line_break(
    tmp_path, capsys, char
) -> None:
    path = tmp_path / "model.mtl"
    path.write_text(f"# a{char}b\n" + HEAD + "backbone {\n    return foo\n}\n")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[1:] == ["        return foo", "               ^^^"]


@pytest.mark.parametrize("char", LINE_BREAKS_ONLY_PYTHON_SEES)
def test_a_prototxt_error_quotes_its_own_line_after_a_comment_with_an_odd_line_break(
    tmp_path, capsys, char
) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(f'name: "x"\n# a{char}b\ninput: "data"\n')
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err.split("\n")[1] == '    input: "data"'


def test_an_error_in_a_long_line_quotes_the_part_around_it(tmp_path, capsys) -> None:
    path = tmp_path / "model.mtl"
    sums = " + ".join(["1"] * 50)
    line = f"n = {sums} + foo + {sums}"
    path.write_text(f"input image: 3x8x8\n{line}\n" + BODY)
    assert main(["check", str(path)]) == 2
    head, quoted, caret = capsys.readouterr().err.splitlines()
    at = line.index("foo")
    assert head.endswith(f":2:{at + 1}: error: undefined name 'foo'")
    assert quoted == "    ..." + line[at - 20 : at + 80] + "..."
    assert caret == "    " + " " * 23 + "^^^"


@pytest.mark.parametrize("target", ["a.mtl", "loop/x.mtl"])
def test_an_import_through_a_symlink_loop_is_reported(tmp_path, capsys, target) -> None:
    (tmp_path / "a.mtl").symlink_to("b.mtl")
    (tmp_path / "b.mtl").symlink_to("a.mtl")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "model.mtl").write_text(f'import "{target}"\n' + HEAD + BODY)
    assert main(["check", str(tmp_path / "model.mtl")]) == 2
    head = capsys.readouterr().err.splitlines()[0]
    message = f"cannot import '{target}': Too many levels of symbolic links"
    assert head.endswith(f":1:1: error: {message}")


def test_check_warns_of_a_task_search_would_refuse_for_want_of_a_loss(tmp_path, capsys) -> None:
    path = tmp_path / "model.mtl"
    tasks = "tasks {\n    edges: fcn(classes=1)\n    depth: fcn(classes=1)\n}\n"
    path.write_text(HEAD + BODY + tasks)
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:6:5: warning: task 'edges' has no loss=; `mtsc search` and `mtsc train` need "
        "one (only tasks named segment, depth, normal have a default)",
        "        edges: fcn(classes=1)",
        "        ^^^^^^^^^^^^^^^^^^^^^",
    ]
    path.write_text(HEAD + BODY + tasks.replace("classes=1)\n    d", "classes=1) loss=l1\n    d"))
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_check_warns_of_heads_search_would_refuse(tmp_path, capsys) -> None:
    """At the declared size: a head that gives no map of the input's size, or a depth or
    normal head with other channels than its targets'; a task mtsc does not train is left."""
    path = tmp_path / "model.mtl"
    path.write_text(
        "input image: 3x32x32\n"
        "block half(features, input, classes) {\n"
        "    return conv(features, classes, k=1)\n"
        "}\n"
        "backbone {\n"
        "    return conv(image, 8, k=3, s=2, p=1) | bn | relu\n"
        "}\n"
        "tasks {\n"
        "    segment: half(classes=6)\n"
        "    normal: fcn(classes=1)\n"
        "    depth: fcn(classes=1)\n"
        "    edges: half(classes=1) loss=l1\n"
        "}\n"
    )
    assert main(["check", str(path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
    refused = "; `mtsc search` and `mtsc train` would refuse it"
    assert warnings == [
        f"{path}:9:5: warning: task 'segment': the head gives 6x16x16 for the declared 3x32x32 "
        f"input; segment needs a map of the input's size (end the head with upsample(y, "
        f"input)){refused}",
        f"{path}:10:5: warning: task 'normal': the head gives 1 channel; normal targets have "
        f"3{refused}",
    ]
