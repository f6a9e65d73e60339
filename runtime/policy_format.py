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


def check_policy(policy, model, tasks, has_skip):
    """What is wrong with a policy dict for this model (empty when it fits)."""
    if not isinstance(policy, dict) or not isinstance(policy.get("choices"), dict):
        return ['a policy is {"model": ..., "tasks": [...], "choices": {op: {task: choice}}}']
    problems = []
    if policy.get("model") not in (None, model):
        problems.append(f"it is for model {policy.get('model')!r}, not {model!r}")
    if "tasks" in policy and list(policy["tasks"]) != list(tasks):
        problems.append(f"its tasks are {policy['tasks']}, the model's are {list(tasks)}")
    missing = sorted(set(has_skip) - set(policy["choices"]))
    unknown = sorted(set(policy["choices"]) - set(has_skip))
    if missing:
        problems.append(
            f"no choice for ops {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    if unknown:
        problems.append(
            f"unknown ops {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else "")
        )
    for name, per_task in policy["choices"].items():
        if name not in has_skip:
            continue
        if not isinstance(per_task, dict) or set(per_task) != set(tasks):
            problems.append(f"{name}: needs one choice for each of {list(tasks)}")
            continue
        for task, choice in per_task.items():
            if choice not in CHOICES:
                problems.append(f"{name}/{task}: {choice!r} is not one of {CHOICES}")
            elif choice == "skip" and not has_skip[name]:
                problems.append(f"{name}/{task}: this op cannot be skipped (its shape changes)")
    return problems
