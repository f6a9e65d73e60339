"""The policy file format (`policy.json`), shared by the compiler and generated code:

    {"model": "<name>", "tasks": [...], "choices": {"<op name>": {"<task>": "shared" |
     "specific" | "skip"}}}

Plain Python with no imports: it is also copied into every generated `supermodel.py`.
"""

# --- mtsc: inline below ---

CHOICES = ("shared", "specific", "skip")


def uniform_policy(model, tasks, ops, choice):
    """Every task takes `choice` at every routed op (`--policy shared` / `specific`)."""
    return {
        "model": model,
        "tasks": list(tasks),
        "choices": {op: {t: choice for t in tasks} for op in ops},
    }


def check_policy(policy, model, tasks, has_skip, pinned=()):
    """What is wrong with a policy dict for this model (empty when it fits). `has_skip` maps
    the routed ops; `pinned` names the ops the model pins, so that a choice for one is told
    apart from a choice for an op that does not exist."""
    if not isinstance(policy, dict) or not isinstance(policy.get("choices"), dict):
        return ['a policy is {"model": ..., "tasks": [...], "choices": {op: {task: choice}}}']
    problems = []
    if "model" not in policy:
        problems.append(f'it has no "model" key (this model is {model!r})')
    elif policy["model"] != model:
        problems.append(
            f"it is for model {policy['model']!r}, not {model!r} (a model takes its file's name)"
        )
    if "tasks" not in policy:
        problems.append(f'it has no "tasks" key (the model\'s tasks are {list(tasks)})')
    elif not _same_tasks(policy["tasks"], tasks):
        problems.append(f"its tasks are {policy['tasks']!r}, the model's are {list(tasks)}")
    given = set(policy["choices"])
    missing = sorted(set(has_skip) - given)
    unknown = sorted(given - set(has_skip) - set(pinned))
    pinned_given = sorted(given & set(pinned))
    if missing:
        problems.append(f"no choice for ops {_first_names(missing)}")
    if unknown:
        problems.append(f"unknown ops {_first_names(unknown)}")
    if pinned_given:
        problems.append(
            "pinned by the model (@shared or @specific), so they take no choice: "
            + _first_names(pinned_given)
        )
    # ops whose tasks are wrong the same way (a misspelled task: all of them) make one problem
    wrong_tasks = {}  # what is wrong -> the ops it is wrong in
    choice_problems = []
    for name, per_task in policy["choices"].items():
        if name not in has_skip:
            continue
        if not isinstance(per_task, dict) or set(per_task) != set(tasks):
            wrong_tasks.setdefault(_task_mismatch(per_task, tasks), []).append(name)
            continue
        for task, choice in per_task.items():
            if choice not in CHOICES:
                choice_problems.append(f"{name}/{task}: {choice!r} is not one of {CHOICES}")
            elif choice == "skip" and not has_skip[name]:
                choice_problems.append(
                    f"{name}/{task}: this op has no skip (no projection gives its output at "
                    "every input size)"
                )
    for mismatch, names in wrong_tasks.items():
        problems.append(_wrong_tasks_problem(names, mismatch, tasks, len(has_skip)))
    return problems + choice_problems


def _task_mismatch(per_task, tasks):
    """How an op's {task: choice} misses the model's tasks; None when it is no dict at all."""
    if not isinstance(per_task, dict):
        return None
    extra = [t for t in per_task if t not in tasks]
    lacking = [t for t in tasks if t not in per_task]
    parts = []
    if extra:
        parts.append(f"a choice for unknown {_tasks_named(extra)}")
    if lacking:
        parts.append(f"no choice for {_tasks_named(lacking)}")
    return " and ".join(parts)


def _tasks_named(names):
    return ("tasks " if len(names) > 1 else "task ") + ", ".join(map(repr, names))


def _wrong_tasks_problem(names, mismatch, tasks, routed):
    if len(names) == 1:
        head = f"{names[0]}: needs one choice for each of {list(tasks)}"
        has = "it has"
    else:
        who = (
            f"all {routed} routed ops"
            if len(names) == routed
            else f"{len(names)} ops ({_first_names(names)})"
        )
        head = f"{who} need one choice for each of {list(tasks)}"
        has = "they have"
    if mismatch is None:
        return head + ", as {task: choice}"
    return f"{head}; {has} {mismatch}"


def _same_tasks(listed, tasks):
    """The same tasks, each once, in any order: choices are keyed by task name, so whatever
    reads a policy looks tasks up by name, never by position."""
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        return False
    return sorted(listed) == sorted(tasks)


def _first_names(names):
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
