"""The subcommands, one module each (mtsc/cli.py lists them), and the check that keeps the ones
that write a folder of outputs out of each other's folders."""

from __future__ import annotations

from pathlib import Path

# Names a user gives their own files too (a hand-written model or policy): alone, they do not
# make a folder another command's.
USERS_OWN_NAMES = frozenset({"model.py", "policy.json"})


def refuse_another_commands_folder(folder: Path, command: str) -> None:
    """Refuse, before anything is written, a `folder` that holds the outputs of another of
    `mtsc build`, `prune`, `train` and `search`: a file that command writes and `command` does
    not. Writing there would replace some of its files (a build's supermodel.py is a search
    run's too, which its checkpoint must match) and leave the others describing something
    else. Files of no command (a user's), and an earlier run of `command` itself, are no
    reason to refuse."""
    from mtsc.commands.prune import PRUNE_FILES
    from mtsc.commands.search import SEARCH_FILES
    from mtsc.commands.train import TRAIN_FILES
    from mtsc.driver import BUILD_OUTPUTS
    from mtsc.errors import MtscError

    outputs = {
        "build": BUILD_OUTPUTS,
        "prune": PRUNE_FILES,
        "train": TRAIN_FILES,
        "search": SEARCH_FILES,
    }
    folder = Path(folder)
    present = {name for names in outputs.values() for name in names if (folder / name).exists()}
    if not present - set(outputs[command]) - USERS_OWN_NAMES:
        return
    # whose: the command that writes the most of them (train and search both write last.pt)
    owner = max((c for c in outputs if c != command), key=lambda c: len(present & {*outputs[c]}))
    held = ", ".join(name for name in outputs[owner] if name in present)
    raise MtscError(
        None,
        f"{folder} holds the outputs of `mtsc {owner}` ({held}); "
        f"give `mtsc {command}` another folder",
    )
