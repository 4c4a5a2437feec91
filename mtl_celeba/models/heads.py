"""Task heads: one small MLP per task on the shared backbone features (hard parameter sharing).

``model.head_hidden`` and ``model.head_dropout`` set every head; ``model.head_overrides`` changes
single tasks, e.g. ``{Smiling: {hidden: [256, 128]}, Bald: {dropout: 0.3}}``, so tasks can have
different depths (DST's depth term then tells them apart).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from mtl_celeba.errors import ConfigError

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


def build_heads(
    tasks: Sequence[str],
    in_features: int,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> nn.ModuleDict:
    """One :class:`TaskHead` per task, keyed by task name, in the order of ``tasks``.

    ``overrides[task]`` may set ``hidden`` and/or ``dropout`` for that task. Unknown tasks or
    settings and bad sizes raise :class:`ConfigError` naming the ``model.head_*`` key.
    """
    overrides = dict(overrides or {})
    for task, settings in overrides.items():
        if task not in tasks:
            close = difflib.get_close_matches(str(task), [str(t) for t in tasks], n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{OVERRIDES_KEY} names {task!r}, which is not one of the tasks "
                f"({', '.join(tasks)}).{hint} Override only tasks in data.attributes."
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
    heads = {}
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
        heads[task] = TaskHead(in_features, task_hidden, task_dropout)
    return nn.ModuleDict(heads)


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
