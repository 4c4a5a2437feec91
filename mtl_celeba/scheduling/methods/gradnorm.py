"""GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018), on the shared representation."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mtl_celeba.errors import ConfigError, check_choice
from mtl_celeba.scheduling.methods.base import WeightedTaskStrategy
from mtl_celeba.scheduling.strategy import GRADIENTS, TaskStep


class TaskWeights(nn.Module):
    """GradNorm's learnt loss weights w_t (one parameter vector, initialised to 1)."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_tasks))


def gradnorm_loss(
    weights: Tensor, grad_norms: Tensor, loss_ratios: Tensor, alpha: float, present: Tensor
) -> Tensor:
    """``L_grad = sum_t |w_t n_t - mean(w n) r_t^alpha|`` over the present tasks (the target
    term is a constant).

    ``n_t``: the norm of task t's gradient (w.r.t. the shared representation); ``r_t``: its
    inverse training rate ``L_t / L_t(0)`` divided by the mean of those over the present tasks.
    Masks rather than indexing keep it free of host syncs.
    """
    scaled = weights * grad_norms
    mean = (scaled * present).sum() / present.sum().clamp_min(1)
    target = (mean * loss_ratios.pow(alpha)).detach()
    return ((scaled - target).abs() * present).sum()


class GradNorm(WeightedTaskStrategy):
    """Weights w_t that the optimizer tunes so every task's gradient norm tracks its training rate.

    The gradient norm of ``w_t L_t`` w.r.t. the shared features is ``w_t sqrt(G_tt)``, from the
    Gramian (``needs_gramian``). The returned loss is ``sum_t w_t L_t`` (w detached) plus
    ``L_grad`` (which depends on w only), so one backward pass gives the network its update and
    w its GradNorm gradient; the model's optimizer steps both (w is :meth:`trainable_module`).
    Before each use w is renormalised to sum to T, as in the paper. Two choices of this
    implementation: the norms are divided by their mean before ``L_grad`` (the minimiser is
    unchanged, but w's step no longer depends on the scale of the feature gradients), and the
    losses (for ``L_t(0)``, the first step's, and ``r_t``) are averaged over the DDP ranks, so
    every rank holds the same w. Tasks without a label in the batch are left out of ``L_grad``.
    With ``strategy.gradients=parameters`` the norms are of the gradients w.r.t. all backbone
    parameters (the paper takes the last shared layer's weights).
    """

    name = "gradnorm"
    needs_gramian = True

    def __init__(self, alpha: float = 1.5, gradients: str = "features") -> None:
        super().__init__()
        check_choice(gradients, "strategy.gradients", GRADIENTS)
        self.gradients = gradients
        if alpha < 0:
            raise ConfigError(f"strategy.alpha is {alpha}: use a value >= 0 (the paper: 1.5).")
        self.alpha = alpha
        self.task_weights: TaskWeights | None = None
        #: L_t(0): each task's (global) loss at the first step it had labels in.
        self.initial_losses: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.task_weights is None:
            self.task_weights = TaskWeights(len(self.tasks))

    def trainable_module(self) -> nn.Module | None:
        return self.task_weights

    def combine(self, step: TaskStep) -> Tensor:
        assert self.task_weights is not None and step.gramian is not None
        weight = self.task_weights.weight
        with torch.no_grad():  # the paper's renormalisation, after every optimizer step
            weight.clamp_(min=1e-6)  # stays a weight: a large step cannot flip its sign
            weight.mul_(len(weight) / weight.sum())
        losses = self.global_losses(step)
        present = ~losses.isnan()
        count = present.sum().clamp_min(1)
        initial = (
            torch.full_like(losses, torch.nan)
            if self.initial_losses is None
            else self.initial_losses.to(losses.device)
        )
        self.initial_losses = torch.where(initial.isnan() & present, losses, initial)
        norms = step.gramian.diagonal().clamp_min(0).sqrt().to(weight)
        norms = norms / ((norms * present).sum() / count).clamp_min(1e-12)
        rates = torch.where(present, losses / self.initial_losses, 0.0)
        ratios = (rates / (rates.sum() / count).clamp_min(1e-12)).to(weight)
        extra = gradnorm_loss(weight, norms, ratios, self.alpha, present)
        weights = weight.detach() * step.present
        self.record(weights, step.present)
        return (weights * step.losses).sum() + extra

    def state_dict(self) -> dict[str, Any]:
        initial = None if self.initial_losses is None else self.initial_losses.cpu().tolist()
        return {**super().state_dict(), "initial_losses": initial}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        initial = state_dict["initial_losses"]
        self.initial_losses = None if initial is None else torch.tensor(initial)
