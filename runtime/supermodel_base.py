"""What every generated supermodel shares: per-task layers, routing modes, the policy.

Activations of the supermodel are task-stacked, batch-major: `[B * T, C, H, W]`, row
`b * T + t` holding task `t`'s copy of sample `b`. That one layout serves every op without a
copy: a shared op runs over all `B * T` rows; a per-task op views the same memory as
`[B, T * C, H, W]` and runs as one grouped call; the routing mixture (`mix3_stacked`) reads
and writes it as `[T, B, C, H, W]` (strided views).

This file is copied into every generated `supermodel.py` below the marker line, so that code
imports only torch (and triton, through `mix3_stacked`). Above the marker: imports, which the
code generator hoists to the top of the generated file (dropping those of mtsc itself).
"""

import math
import typing

import torch
import torch.nn.functional as F
from torch import nn

from mtsc.runtime.policy_format import CHOICES, check_policy
from mtsc.runtime.routing import mix3_stacked
from mtsc.runtime.weight_mixing import mix_in_weights

# --- mtsc: inline below ---

MODES = ("warmup", "search", "hard")
MIXINGS = ("outputs", "weights")


def _parameter_names(ops):
    """op name -> its name in a ParameterDict: "_" for ".", with a suffix where that is taken,
    by an earlier op (`a.b` and `a_b`) or by what a ParameterDict has (`keys`, `training`)."""
    taken = set(dir(nn.ParameterDict()))
    names = {}
    for op in ops:
        base = name = op.replace(".", "_")
        n = 0
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names[op] = name
    return names


def _renew_hard_mode(module, incompatible_keys):
    """After `load_state_dict`: hard mode follows the logits just loaded, not the argmax it
    took when it was set."""
    if module.mode == "hard":
        module.set_mode("hard")


class _TaskGroups:
    """A conv layer per task, run as one grouped call over the task-stacked batch viewed as
    `[B, T * C, H, W]`: task t's groups are its input channels t*C_in... and output channels
    t*C_out... (a transposed conv's weight rows are its input channels)."""

    def __init__(
        self,
        tasks,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
    ):
        super().__init__(
            tasks * in_channels,
            tasks * out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=tasks * groups,
            bias=bias,
        )
        self.tasks = tasks

    def forward(self, x):
        y = super().forward(x.reshape(-1, self.in_channels, *x.shape[2:]))
        # reshape: a channels_last `y` has no view with the tasks in the batch
        return y.reshape(-1, self.out_channels // self.tasks, *y.shape[2:])

    def extra_repr(self):
        each = f"{self.in_channels // self.tasks} -> {self.out_channels // self.tasks}"
        return f"{self.tasks} tasks, {each} channels each; stacked: {super().extra_repr()}"


class TaskConv2d(_TaskGroups, nn.Conv2d):
    """One conv per task, run as a single grouped conv over the task-stacked batch."""


class TaskConvTranspose2d(_TaskGroups, nn.ConvTranspose2d):
    """One transposed conv per task, run as a single grouped call."""


class TaskBatchNorm2d(nn.BatchNorm2d):
    """One batchnorm per task: statistics and affine parameters of task t are rows t*C..."""

    def __init__(self, tasks, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__(tasks * num_features, eps=eps, momentum=momentum, affine=affine)
        self.tasks = tasks

    def forward(self, x):
        y = super().forward(x.reshape(-1, self.num_features, *x.shape[2:]))
        return y.view(x.shape)

    def extra_repr(self):
        each = self.num_features // self.tasks
        return f"{self.tasks} tasks, {each} features each; stacked: {super().extra_repr()}"


class TaskPReLU(nn.PReLU):
    """One PReLU per task: task t's slopes are rows t*n... (n: 1, or one per channel)."""

    def __init__(self, tasks, num_parameters=1, init=0.25):
        super().__init__(tasks * num_parameters, init)
        self.tasks = tasks

    def forward(self, x):
        # [B * T, C, ...] as [B, T * n, rest]: dim 1 walks the tasks' slopes in order
        y = super().forward(x.reshape(x.shape[0] // self.tasks, self.num_parameters, -1))
        return y.view(x.shape)

    def extra_repr(self):
        each = self.num_parameters // self.tasks
        return f"{self.tasks} tasks, {each} slopes each; stacked: {super().extra_repr()}"


class TaskLinear(nn.Module):
    """One linear layer per task, as one batched matrix product."""

    def __init__(self, tasks, in_features, out_features, bias=True):
        super().__init__()
        self.tasks = tasks
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(
            torch.empty(tasks, out_features, in_features).uniform_(-bound, bound)
        )
        self.bias = (
            nn.Parameter(torch.empty(tasks, out_features).uniform_(-bound, bound)) if bias else None
        )

    def forward(self, x):
        y = torch.einsum("btf,tof->bto", x.reshape(-1, self.tasks, x.shape[-1]), self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(-1, y.shape[-1])

    def extra_repr(self):
        tasks, out_features, in_features = self.weight.shape
        return (
            f"{tasks} tasks, in_features={in_features}, out_features={out_features}, "
            f"bias={self.bias is not None}"
        )


class SupermodelBase(nn.Module):
    """Routing modes, policy logits, the regulariser and policy files.

    A subclass sets MODEL, TASKS, PINNED (the ops no policy chooses for) and ROUTED (one
    `(op name, has skip, depth)` per routed op, in order) and writes `forward` with `begin`,
    `stack`, `route`, `task_slice` and `outputs`.
    """

    MODEL = ""
    TASKS = ()
    PINNED = ()
    ROUTED = ()
    CHOICE_PARAMS: typing.ClassVar[dict[str, tuple[int, int, int]]] = {}
    TASK_SPECS: typing.ClassVar[dict[str, dict]] = {}

    def __init__(self):
        super().__init__()
        self.mode = "warmup"
        self.mixing = "outputs"
        self.tau = 5.0
        self.gumbel_noise = None  # {op name: [T, 3] tensor}: fixed noise instead of sampling
        self._hard = {}
        self._constant_weights = {}  # (op name, device) -> [T, 3]: hard and warm-up weights
        # {op name: [T, 3]}: search mode's weights, drawn for all routed ops at once, kept for
        # one forward (begin() opens it, outputs() closes it); None outside a forward
        self._search_weights = None
        self._input_stacked = False  # whether this forward's input came as a dict (begin())
        self._has_skip = {name: skip for name, skip, _ in self.ROUTED}
        self._route_index = {name: i for i, (name, _, _) in enumerate(self.ROUTED)}
        self._policy_keys = _parameter_names([name for name, _, _ in self.ROUTED])
        self.register_load_state_dict_post_hook(_renew_hard_mode)
        self.policy = nn.ParameterDict(
            {
                self.policy_key(name): nn.Parameter(torch.zeros(len(self.TASKS), 3))
                for name, _, _ in self.ROUTED
            }
        )
        # [ops, 1, 3]: -inf on the skip of ops that have none; moves with the model, not saved
        impossible = [[0.0, 0.0, 0.0 if skip else -math.inf] for _, skip, _ in self.ROUTED]
        self.register_buffer("skip_mask", torch.tensor(impossible).view(-1, 1, 3), persistent=False)

    def policy_key(self, name):
        """The name of op `name`'s logits in `self.policy` (and the state dict)."""
        return self._policy_keys[name]

    # -- modes and parameters -----------------------------------------------------------------

    def set_mode(self, mode, policy=None):
        """ "warmup": equal mixture weights; "search": Gumbel-softmax at temperature `tau`
        (in `eval()`, the softmax at `tau` without noise, so that validation is repeatable);
        "hard": the argmax policy, computing only the candidates some task chose. `policy`
        (hard mode only; the policy.json format) runs that policy instead, leaving the
        logits as they are; `load_state_dict` returns hard mode to the argmax."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if policy is not None and mode != "hard":
            raise ValueError(f"a policy is for hard mode, not {mode!r}")
        if policy is not None:
            self._check_policy(policy)
        self.mode = mode
        self._constant_weights = {}
        if mode == "hard" and policy is not None:
            self._hard = {
                name: [CHOICES.index(policy["choices"][name][t]) for t in self.TASKS]
                for name, _, _ in self.ROUTED
            }
        elif mode == "hard":
            self._hard = {
                name: self.policy_logits(name).argmax(1).tolist() for name, _, _ in self.ROUTED
            }
        return self

    def set_mixing(self, mixing):
        """How warm-up and search mix a routed op's candidates. "outputs" (the default): run
        the shared op and the task copies, and mix their outputs with `mix3_stacked` (a Triton
        kernel on GPU). "weights": mix the candidates' weights per task and run one grouped
        call (`mix_in_weights`): the same values and gradients, to rounding, for half the
        convolution work and less memory. Hard mode computes only the chosen candidates
        either way. Mixing weights reads the routed modules' parameters without calling
        them: their forward hooks do not run (hook-based pruning or `weight_norm` do not
        apply; `torch.nn.utils.parametrize` does), and a caller's own saved-tensor hooks
        (checkpointing, `save_on_cpu`) do not reach the routed calls' tensors."""
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        self.mixing = mixing
        return self

    def policy_parameters(self):
        return list(self.policy.parameters())

    def weight_parameters(self):
        policy = {id(p) for p in self.policy.parameters()}
        return [p for p in self.parameters() if id(p) not in policy]

    def policy_logits(self, name):
        """The logits [T, 3] of a routed op, with an impossible skip masked out."""
        logits = self.policy[self.policy_key(name)]
        return logits + self.skip_mask[self._route_index[name]].to(logits)

    def constant_weights(self, name):
        """The fixed mixture weights [T, 3] of the hard and warm-up modes, on the CPU."""
        if self.mode == "hard":
            return torch.eye(3)[self._hard[name]]
        n = 3 if self._has_skip[name] else 2
        return torch.tensor([1.0 / n, 1.0 / n, 1.0 / n if n == 3 else 0.0]).repeat(
            len(self.TASKS), 1
        )

    def routing_weights(self, name, like):
        """The mixture weights [T, 3] of a routed op in the current mode."""
        if self.mode != "search":
            # Copied to the device once per mode: a copy per step would stall the GPU's queue.
            key = (name, like.device)
            if key not in self._constant_weights:
                self._constant_weights[key] = self.constant_weights(name).to(like.device)
            return self._constant_weights[key]
        if self._search_weights is None:  # outside a forward: a fresh draw, not kept
            return self.draw_search_weights()[name]
        if not self._search_weights:
            self._search_weights.update(self.draw_search_weights())
        return self._search_weights[name]

    def draw_search_weights(self):
        """Gumbel-softmax weights of every routed op, `{op name: [T, 3]}` (without noise in
        `eval()`), in one set of calls over the stacked logits `[ops, T, 3]`: a dozen small
        calls per op would cost more host time than the op's convolutions on a GPU."""
        if not self.tau > 0:  # a zero or negative temperature gives NaNs or a flipped argmax
            raise ValueError(f"tau must be a positive temperature, got {self.tau!r}")
        names = [name for name, _, _ in self.ROUTED]
        logits = torch.stack([self.policy[self.policy_key(n)] for n in names])
        logits = logits + self.skip_mask.to(logits)
        if self.gumbel_noise is not None:
            logits = logits + torch.stack([self.gumbel_noise[n] for n in names]).to(logits)
        elif self.training:
            uniform = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
            logits = logits - torch.log(-torch.log(uniform))
        weights = F.softmax(logits / self.tau, dim=2)
        return dict(zip(names, weights.unbind(0), strict=True))

    # -- the forward pass's building blocks ------------------------------------------------

    def begin(self, x, sample):
        """A forward starts here, with its input: one batch for all tasks, returned as it is
        (the shared prefix runs on it once; `stack` repeats it per task after), or a dict
        task -> batch, returned task-stacked as `[B * T, ...]`. Search mode draws fresh
        Gumbel noise for the forward, once. `sample` is the declared shape of one sample: a
        batch must have its rank and channels (any size)."""
        self._search_weights = {}
        self._input_stacked = isinstance(x, dict)
        for batch in x.values() if isinstance(x, dict) else [x]:
            if batch.dim() != len(sample) + 1 or batch.shape[1] != sample[0]:
                expected = ", ".join(["N", str(sample[0]), *"HWD"[: len(sample) - 1]])
                raise ValueError(
                    f"expected a batch [{expected}] of {'x'.join(map(str, sample))} samples "
                    f"(any size), got a tensor of shape {tuple(batch.shape)}"
                )
        if isinstance(x, dict):
            missing = [t for t in self.TASKS if t not in x]
            if missing:
                raise ValueError(f"input dict lacks tasks {missing}; expected {list(self.TASKS)}")
            extra = [t for t in x if t not in self.TASKS]
            if extra:  # a misspelt task's batch would otherwise go unused
                raise ValueError(
                    f"input dict has unknown tasks {extra}; expected {list(self.TASKS)}"
                )
            if len({x[t].shape[0] for t in self.TASKS}) > 1:
                got = ", ".join(f"{t} {x[t].shape[0]}" for t in self.TASKS)
                raise ValueError(f"input batches must have one size; got {got}")
            if len({x[t].shape for t in self.TASKS}) > 1:
                got = ", ".join(f"{t} {tuple(x[t].shape)}" for t in self.TASKS)
                raise ValueError(f"input batches must have one shape; got {got}")
            return torch.stack([x[t] for t in self.TASKS], dim=1).flatten(0, 1)
        return x

    def stack(self, x):
        """A value of the shared prefix as `[B * T, ...]`, each sample once per task (what a
        dict input gives is task-stacked already)."""
        return x if self._input_stacked else x.repeat_interleave(len(self.TASKS), dim=0)

    def outputs(self, out):
        """The forward's `{task: output}`; it ends here, and its search weights are dropped
        (they hold the step's graph, and a later call must not reuse them)."""
        self._search_weights = None
        return out

    def task_slice(self, x, t):
        """Task `t`'s part of a task-stacked value (a strided view, no copy)."""
        return x.view(-1, len(self.TASKS), *x.shape[1:])[:, t]

    def route(self, name, x, shared, specific, skip):
        """Mix the candidates of routed op `name` per task; `skip` None means identity."""
        w = self.routing_weights(name, x)
        hard = self.mode == "hard"
        if self.mixing == "weights" and not hard:
            identity = skip is None and self._has_skip[name]
            y = mix_in_weights(x, w, shared, specific, skip, identity)
            if y is not None:
                return y
        used = [True, True, self._has_skip[name]]
        if hard:
            used = [any(c == j for c in self._hard[name]) for j in range(3)]
        outs = [
            shared(x) if used[0] else None,
            specific(x) if used[1] else None,
            (x if skip is None else skip(x)) if used[2] else None,
        ]
        if not hard and outs[2] is None:
            outs[2] = outs[0]  # an impossible skip has weight 0; soft mixing needs a tensor
        ref = next(o for o in outs if o is not None)
        # Under autocast an identity skip keeps its input's dtype while convs give autocast's.
        outs = [None if o is None else o.to(ref.dtype) for o in outs]
        return mix3_stacked(*outs, w.to(ref.dtype), hard=hard)

    # -- policies ------------------------------------------------------------------------------

    def policy_probabilities(self):
        """{op: {task: {choice: probability}}} of the current logits (softmax, no noise)."""
        table = {}
        for name, _, _ in self.ROUTED:
            probs = F.softmax(self.policy_logits(name).detach().float(), dim=1).tolist()
            rows = zip(self.TASKS, probs, strict=True)
            table[name] = {t: dict(zip(CHOICES, row, strict=True)) for t, row in rows}
        return table

    def export_policy(self):
        choices = {}
        for name, _, _ in self.ROUTED:
            picks = self.policy_logits(name).detach().argmax(1).tolist()
            choices[name] = {t: CHOICES[c] for t, c in zip(self.TASKS, picks, strict=True)}
        return {"model": self.MODEL, "tasks": list(self.TASKS), "choices": choices}

    def load_policy(self, policy):
        """Set the logits so that the argmax policy is `policy` (the policy.json format)."""
        self._check_policy(policy)
        with torch.no_grad():
            for name, per_task in policy["choices"].items():
                logits = self.policy[self.policy_key(name)]
                logits.fill_(-3.0)
                for t, task in enumerate(self.TASKS):
                    logits[t, CHOICES.index(per_task[task])] = 3.0
        if self.mode == "hard":
            self.set_mode("hard")
        return self

    def _check_policy(self, policy):
        problems = check_policy(policy, self.MODEL, self.TASKS, self._has_skip, self.PINNED)
        if problems:
            raise ValueError("policy does not match the model: " + "; ".join(problems))

    def expected_params(self):
        """Expected parameters of the routed ops under the current policy distribution: a
        shared op counts once if any task uses it; copies and skips count per task."""
        total = None
        for name, _, _ in self.ROUTED:
            shared, specific, skip = self.CHOICE_PARAMS[name]
            p = F.softmax(self.policy_logits(name), dim=1)
            nobody_shares = torch.prod(1 - p[:, 0])
            term = shared * (1 - nobody_shares) + specific * p[:, 1].sum() + skip * p[:, 2].sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def all_specific_params(self):
        return sum(len(self.TASKS) * specific for _, specific, _ in self.CHOICE_PARAMS.values())

    def budget_regularizer(self, budget):
        """Drive the expected size of the routed ops to `budget` (a fraction of the
        all-specific model's): the squared relative excess or shortfall."""
        fraction = self.expected_params() / max(1, self.all_specific_params())
        return (fraction - budget) ** 2

    def policy_regularizer(self):
        """Push shallow ops towards sharing (AutoMTL): for op n at depth d of D routed ops,
        (D - d) / D * [softplus(w_spec - w_shared) + softplus(w_skip - w_shared)], summed over
        ops and tasks, with w the softmax of the policy logits."""
        total = None
        depth_total = len(self.ROUTED)
        for name, has_skip, depth in self.ROUTED:
            w = F.softmax(self.policy_logits(name), dim=1)
            term = F.softplus(w[:, 1] - w[:, 0])
            if has_skip:
                term = term + F.softplus(w[:, 2] - w[:, 0])
            term = (depth_total - depth) / depth_total * term.sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())
