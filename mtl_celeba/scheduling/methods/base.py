"""The two shared bases of the field's methods: per-step task weights, and weights from the Gramian.

Every method here makes the update ``sum_t w_t g_t`` for weights ``w`` it picks at each step, so
its :meth:`~WeightedTaskStrategy.combine` returns ``sum_t w_t L_t`` with ``w`` detached: one
ordinary backward pass, so AMP, gradient clipping and DDP's all-reduce keep working.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtl_celeba.errors import check_choice
from mtl_celeba.scheduling.strategy import GRADIENTS, TaskStep, TaskStrategy, mean_over_ranks


class WeightedTaskStrategy(TaskStrategy):
    """Base of the methods: the loss is ``sum_t w_t L_t`` with the weights of :meth:`weights`.

    Records each task's mean weight per epoch (over the steps in which the batch held a label
    for it) for ``metrics.json`` and TensorBoard (``weights/<task>``), and keeps the trainer so
    a method can average a quantity over the DDP ranks (:meth:`global_losses`).
    """

    name = "weighted"

    def __init__(self) -> None:
        self.tasks: list[str] = []
        #: Each task's mean weight in each training epoch (None where the task never showed up).
        self.epoch_mean_weights: list[list[float | None]] = []
        self._trainer: L.Trainer | None = None
        self._weight_sums = torch.zeros(0)
        self._present_steps = torch.zeros(0)

    # -- the subclass interface
    def weights(self, step: TaskStep) -> Tensor:
        """(T,) this step's task weights (0 for a task without a label in the batch)."""
        raise NotImplementedError

    # -- the contract
    def combine(self, step: TaskStep) -> Tensor:
        weights = self.weights(step).detach()
        self.record(weights, step.present)
        return (weights * step.losses).sum()

    def record(self, weights: Tensor, present: Tensor) -> None:
        """Adds this step's weights to the epoch's sums (on the device: no host sync per step)."""
        if self._weight_sums.shape != weights.shape:
            self._weight_sums = torch.zeros_like(weights)
            self._present_steps = torch.zeros_like(weights)
        self._weight_sums += torch.where(present, weights, 0.0)
        self._present_steps += present

    def global_losses(self, step: TaskStep) -> Tensor:
        """(T,) each task's mean loss over every DDP rank's labelled samples (NaN where none)."""
        return mean_over_ranks(self._trainer, step.losses.detach() * step.counts, step.counts)

    # -- Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.tasks = list(pl_module.tasks)
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._weight_sums = torch.zeros(0)
        self._present_steps = torch.zeros(0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._weight_sums.numel() == 0:
            return
        means = (self._weight_sums / self._present_steps.clamp_min(1)).cpu().tolist()
        seen = (self._present_steps > 0).cpu().tolist()
        epoch_means = [round(m, 6) if s else None for m, s in zip(means, seen, strict=True)]
        del self.epoch_mean_weights[trainer.current_epoch :]
        self.epoch_mean_weights.append(epoch_means)
        metrics = {
            f"weights/{task}": value
            for task, value in zip(self.tasks, epoch_means, strict=True)
            if value is not None
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.current_epoch + 1)

    # -- results and checkpoints
    def results_summary(self) -> dict[str, Any]:
        """The strategy, the epochs trained and each task's mean weight over them."""
        summary: dict[str, Any] = {"strategy": self.name, "epochs": len(self.epoch_mean_weights)}
        if self.epoch_mean_weights and self.tasks:
            columns = zip(*self.epoch_mean_weights, strict=True)
            means = [[v for v in column if v is not None] for column in columns]
            summary["mean_weight"] = {
                task: round(math.fsum(values) / len(values), 6) if values else None
                for task, values in zip(self.tasks, means, strict=True)
            }
        return summary

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_mean_weights": self.epoch_mean_weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_mean_weights = [list(row) for row in state_dict["epoch_mean_weights"]]


class GramianWeighting(WeightedTaskStrategy):
    """Base of the gradient-aggregation methods: weights from the Gramian of the task gradients.

    Subclasses implement :meth:`gramian_weights`, which sees the Gramian of the tasks present
    in the step only, in float64 on the CPU (one small host transfer per step; the solvers are
    numpy/scipy or tiny loops). A task is present when its row of the Gramian is non-zero: the
    Gramian is summed over the DDP ranks, so every rank agrees, and a task without a label in
    the (global) batch has a constant loss of 0 and a zero row. Absent tasks get weight 0.

    ``gradients`` (``strategy.gradients``) picks the gradients the Gramian is of: ``features``
    (w.r.t. the shared representation) or ``parameters`` (w.r.t. all backbone parameters).
    """

    name = "gramian"
    needs_gramian = True
    #: The dtype the step's Gramian was computed in (before the float64 copy the solvers see):
    #: the precision below which its eigenvalues are rounding noise (Aligned-MTL's rank cut).
    gramian_dtype: torch.dtype = torch.float32

    def __init__(self, gradients: str = "features") -> None:
        super().__init__()
        check_choice(gradients, "strategy.gradients", GRADIENTS)
        self.gradients = gradients

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        """(P,) weights from a (P, P) float64 CPU Gramian of the present tasks' gradients."""
        raise NotImplementedError

    def weights(self, step: TaskStep) -> Tensor:
        if step.gramian is None:
            raise RuntimeError(f"strategy {self.name} needs the Gramian (needs_gramian is set)")
        self.gramian_dtype = step.gramian.dtype
        gramian = step.gramian.detach().to("cpu", torch.float64)
        present = gramian.diagonal() > 0
        weights = torch.zeros(len(present), dtype=torch.float64)
        if present.any():
            weights[present] = self.gramian_weights(gramian[present][:, present]).to(weights)
        return weights.to(step.losses.device, torch.float32)
