"""DWA, dynamic weight average (Liu, Johns, Davison, CVPR 2019)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.base import WeightedTaskStrategy
from mtl_celeba.scheduling.strategy import TaskStep


def dwa_weights(older: Tensor, newer: Tensor, temperature: float) -> Tensor:
    """``T softmax(r / temperature)`` with ``r_t = newer_t / older_t`` (epoch mean losses).

    A task without a loss in one of the two epochs (NaN) gets the neutral ratio 1.
    """
    ratio = (newer / older).nan_to_num(1.0, posinf=1.0, neginf=1.0)
    return len(ratio) * torch.softmax(ratio / temperature, dim=0)


class DynamicWeightAverage(WeightedTaskStrategy):
    """Per-epoch weights from how fast each task's loss fell over the last two epochs.

    Epochs 1 and 2 use weight 1; epoch k >= 3 uses ``dwa_weights(L(k-2), L(k-1))``. The epoch
    losses are the module's per-task means over every DDP rank's labelled samples
    (``global_epoch_task_losses``), so every rank computes the same weights. Same formula as
    :class:`torchjd.scalarization.DWA` and LibMTL's ``DWA``, which average batch means instead.
    """

    name = "dwa"

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"strategy.temperature is {temperature}: use a value > 0.")
        self.temperature = temperature
        #: Each finished epoch's mean loss per task (raw, before weights).
        self.epoch_losses: list[list[float]] = []
        self._weights: Tensor | None = None

    def current_weights(self) -> Tensor | None:
        """The weights for the coming epoch, ``None`` while fewer than two epochs are done."""
        if len(self.epoch_losses) < 2:
            return None
        older, newer = (torch.tensor(row, dtype=torch.float64) for row in self.epoch_losses[-2:])
        return dwa_weights(older, newer, self.temperature).float()

    def weights(self, step: TaskStep) -> Tensor:
        if self._weights is None or self._weights.device != step.losses.device:
            weights = self.current_weights()
            self._weights = (
                torch.ones_like(step.losses) if weights is None else weights.to(step.losses.device)
            )
        return self._weights * step.present

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        losses = pl_module.global_epoch_task_losses().double().cpu().tolist()
        del self.epoch_losses[trainer.current_epoch :]
        self.epoch_losses.append(losses)
        self._weights = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch_losses": self.epoch_losses}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.epoch_losses = [list(row) for row in state_dict["epoch_losses"]]
        self._weights = None
