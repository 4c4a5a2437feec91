"""Task heads: one small MLP per task on the shared backbone features (hard parameter sharing).

``model.head_hidden`` and ``model.head_dropout`` set every head; ``model.head_overrides`` changes
single tasks, e.g. ``{Smiling: {hidden: [256, 128]}, Bald: {dropout: 0.3}}``, so tasks can have
different depths (DST's depth term then tells them apart).

:class:`TaskHeads` computes every head at once: the heads of one shape (hidden widths and
dropout) form a group whose weights are stacked, so a group costs one matmul per layer
whatever its number of tasks (a Python loop over 40 heads costs more than ResNet18's
backward at small image sizes). :class:`TaskHead` is one task's head in the unfused form:
the reference the fused heads are tested against, and the layout of older checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_celeba.errors import ConfigError, did_you_mean

HIDDEN_KEY = "model.head_hidden"
DROPOUT_KEY = "model.head_dropout"
OVERRIDES_KEY = "model.head_overrides"

#: The settings a per-task override may change.
OVERRIDABLE = ("hidden", "dropout")


class TaskHead(nn.Module):
    """``[Linear -> ReLU -> Dropout] * len(hidden) -> Linear(., 1)``: features (B, F) -> logits (B,).

    With no hidden layers and ``dropout > 0`` the dropout acts on the input features, so a
    linear head is regularised too: dropout always precedes the output layer, as in
    torchvision's classifiers. ``dropout=0`` adds no Dropout modules.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        if not hidden and dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)
        self.depth = len(hidden) + 1

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features).squeeze(-1)


def head_settings(
    tasks: Sequence[str],
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, tuple[list[int], float]]:
    """Each task's checked ``(hidden widths, dropout)``: the defaults with ``overrides`` applied.

    ``overrides[task]`` may set ``hidden`` and/or ``dropout`` for that task. Unknown tasks or
    settings and bad sizes raise :class:`ConfigError` naming the ``model.head_*`` key.
    """
    overrides = dict(overrides or {})
    for task, settings in overrides.items():
        if task not in tasks:
            raise ConfigError(
                f"{OVERRIDES_KEY} names {task!r}, which is not one of the tasks "
                f"({', '.join(tasks)}).{did_you_mean(task, tasks, n=3)} "
                "Override only tasks in data.attributes."
            )
        if not isinstance(settings, Mapping):
            raise ConfigError(
                f"{OVERRIDES_KEY}.{task} must be a mapping such as {{hidden: [256], dropout: 0.1}}, "
                f"not {settings!r}."
            )
        unknown = sorted(str(key) for key in settings if key not in OVERRIDABLE)
        if unknown:
            raise ConfigError(
                f"{OVERRIDES_KEY}.{task} has unknown settings {', '.join(unknown)}: "
                f"only {' and '.join(OVERRIDABLE)} can be set per task."
            )
    result = {}
    for task in tasks:
        settings = overrides.get(task, {})
        task_hidden = _check_hidden(
            settings.get("hidden", hidden),
            f"{OVERRIDES_KEY}.{task}.hidden" if "hidden" in settings else HIDDEN_KEY,
        )
        task_dropout = _check_dropout(
            settings.get("dropout", dropout),
            f"{OVERRIDES_KEY}.{task}.dropout" if "dropout" in settings else DROPOUT_KEY,
        )
        result[str(task)] = (task_hidden, task_dropout)
    return result


def build_heads(
    tasks: Sequence[str],
    in_features: int,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> TaskHeads:
    """The fused heads of ``tasks`` (see :func:`head_settings` for the arguments)."""
    settings = head_settings(tasks, hidden, dropout, overrides)
    return TaskHeads.from_task_heads(
        {
            task: TaskHead(in_features, task_hidden, task_dropout)
            for task, (task_hidden, task_dropout) in settings.items()
        },
        settings,
    )


class HeadGroup(nn.Module):
    """The heads of ``G`` tasks sharing one shape, with stacked weights.

    Layer ``l`` holds ``weight_l`` (G, out, in) and ``bias_l`` (G, out); the first layer is one
    ``F.linear`` of the shared features to (B, G * out), later layers one batched matmul
    (``einsum``), each task's slice seeing only its own activations.
    """

    def __init__(self, heads: Sequence[TaskHead], hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.hidden = list(hidden)
        self.dropout = dropout
        self.depth = len(hidden) + 1
        linears = [[m for m in head.layers if isinstance(m, nn.Linear)] for head in heads]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([layers[k].weight.detach() for layers in linears]))
            for k in range(self.depth)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([layers[k].bias.detach() for layers in linears]))
            for k in range(self.depth)
        )

    def forward(self, features: Tensor) -> Tensor:
        """Features (B, F) -> logits (B, G)."""
        batch = features.shape[0]
        groups = self.weights[0].shape[0]
        activations: Tensor | None = None  # (B, G, width) after the first layer
        if not self.hidden and self.dropout > 0:
            # a linear head drops its input features: each task draws its own mask
            activations = F.dropout(
                features.unsqueeze(1).expand(-1, groups, -1), self.dropout, self.training
            )
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if activations is None:
                out = F.linear(features, weight.flatten(0, 1), bias.flatten())
                out = out.view(batch, groups, -1)
            else:
                out = torch.einsum("bgi,goi->bgo", activations, weight) + bias
            if layer < len(self.hidden):
                out = F.relu(out)
                if self.dropout > 0:
                    out = F.dropout(out, self.dropout, self.training)
            activations = out
        assert activations is not None
        return activations.squeeze(-1)


class TaskHeads(nn.Module):
    """Every task's head at once: features (B, F) -> logits (B, T) in the order of the tasks.

    Tasks whose heads share hidden widths and dropout are one :class:`HeadGroup` (one group
    when no ``model.head_overrides`` are set). Outputs and gradients equal those of separate
    :class:`TaskHead` modules with the same weights; dropout draws different masks.
    State dicts of the unfused ``ModuleDict`` of :class:`TaskHead` (``<task>.layers.<i>.*``)
    still load: they are stacked on the way in.
    """

    def __init__(self, tasks: Sequence[str], groups: Sequence[tuple[list[str], HeadGroup]]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.group_tasks = [list(names) for names, _ in groups]
        self.groups = nn.ModuleList(group for _, group in groups)
        self.depths = {task: group.depth for names, group in groups for task in names}
        order = [self.tasks.index(task) for names in self.group_tasks for task in names]
        #: column of each task in the concatenated group outputs (identity with one group)
        columns = torch.argsort(torch.tensor(order))
        self.register_buffer("columns", columns, persistent=False)
        self.reorder = order != list(range(len(order)))
        self._register_load_state_dict_pre_hook(self._stack_unfused_state)

    @classmethod
    def from_task_heads(
        cls,
        heads: Mapping[str, TaskHead],
        settings: Mapping[str, tuple[Sequence[int], float]],
    ) -> TaskHeads:
        """Stack per-task heads (same weights) into groups of one shape, in first-seen order."""
        shapes: dict[tuple[tuple[int, ...], float, int], list[str]] = {}
        for task, head in heads.items():
            hidden, dropout = settings[task]
            in_features = next(m for m in head.layers if isinstance(m, nn.Linear)).in_features
            shapes.setdefault((tuple(hidden), float(dropout), in_features), []).append(task)
        groups = [
            (names, HeadGroup([heads[task] for task in names], list(hidden), dropout))
            for (hidden, dropout, _), names in shapes.items()
        ]
        return cls(list(heads), groups)

    def forward(self, features: Tensor) -> Tensor:
        outputs = [group(features) for group in self.groups]
        logits = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return logits.index_select(1, self.columns) if self.reorder else logits

    def task_parameters(self, task: str, grad: bool = False) -> list[Tensor | None]:
        """``task``'s own slices of the stacked parameters, or of their gradients (None where
        a parameter has no gradient yet): what a separate head's parameters would be."""
        for names, group in zip(self.group_tasks, self.groups, strict=True):
            if task in names:
                row = names.index(task)
                params = [p for pair in zip(group.weights, group.biases, strict=True) for p in pair]
                if not grad:
                    return [p[row] for p in params]
                return [None if p.grad is None else p.grad[row] for p in params]
        raise KeyError(task)

    def _stack_unfused_state(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Turn ``<prefix><task>.layers.<i>.weight|bias`` (old per-task heads) into stacked keys."""
        if not any(key.startswith(f"{prefix}{self.tasks[0]}.layers.") for key in state_dict):
            return
        for index, (names, group) in enumerate(zip(self.group_tasks, self.groups, strict=True)):
            for kind, stacked_name in (("weight", "weights"), ("bias", "biases")):
                per_task = []
                for task in names:
                    keys = sorted(
                        (
                            k
                            for k in state_dict
                            if k.startswith(f"{prefix}{task}.layers.") and k.endswith(f".{kind}")
                        ),
                        key=lambda k: int(k[len(f"{prefix}{task}.layers.") :].split(".")[0]),
                    )
                    per_task.append([state_dict.pop(k) for k in keys])
                for layer in range(group.depth):
                    stacked = torch.stack([tensors[layer] for tensors in per_task])
                    state_dict[f"{prefix}groups.{index}.{stacked_name}.{layer}"] = stacked


def _check_hidden(hidden: Any, key: str) -> list[int]:
    hidden = [] if hidden is None else hidden
    if (
        isinstance(hidden, str | bytes)
        or not isinstance(hidden, Sequence)
        or not all(
            isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in hidden
        )
    ):
        raise ConfigError(
            f"{key}={hidden!r} must be a list of positive layer widths, e.g. [128] or [] for a "
            "linear head."
        )
    return list(hidden)


def _check_dropout(dropout: Any, key: str) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ConfigError(f"{key}={dropout!r} must be a probability in [0, 1), e.g. 0.1.")
    return float(dropout)
