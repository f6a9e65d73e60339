"""The `mtsc` command: argument parsing and the one place where errors become exit codes."""

from __future__ import annotations

import argparse
import importlib
import keyword
import os
import sys

from mtsc.errors import MtscError

# Each subcommand is a module in mtsc/commands/ with `register(subparsers)` and `run(args) -> int`.
# Modules are imported lazily by name so that `mtsc build` never pays for torch.
COMMANDS = (
    "build",
    "check",
    "fmt",
    "import",
    "graph",
    "search",
    "prune",
    "train",
    "stats",
    "data",
    "demo",
)

EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE


def _command_module(name: str):
    # A module cannot be called `import` (a keyword): that command lives in `import_`.
    module = f"{name}_" if keyword.iskeyword(name) else name
    return importlib.import_module(f"mtsc.commands.{module}")


def make_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that subcommand's (imports stay minimal)."""
    parser = argparse.ArgumentParser(
        prog="mtsc", description="mtsc: the multi-task supermodel compiler"
    )
    if only is None:  # top-level options come before a command; metadata costs a build 30 ms
        from importlib.metadata import version

        parser.add_argument("--version", action="version", version=f"mtsc {version('mtsc')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if only is None or name == only:
            _command_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    args = make_parser(chosen).parse_args(argv)
    try:
        return _command_module(args.command).run(args)
    except MtscError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mtsc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`mtsc check m.mtl | head -1`): stop quietly, with
        # the status of a process killed by SIGPIPE; point stdout at /dev/null so that
        # Python's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
