"""FAMO, fast adaptive multitask optimization (Liu, Liu, Jin, Stone, Liu, NeurIPS 2023)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mtl_celeba.scheduling.methods.base import WeightedTaskStrategy
from mtl_celeba.scheduling.strategy import TaskStep

#: FAMO's epsilon inside the logarithms (the official code's and TorchJD's 1e-8).
EPSILON = 1e-8


def famo_weights(logits: Tensor, losses: Tensor, present: Tensor) -> Tensor:
    """The gradient weights of FAMO's loss ``c sum_t z_t log(L_t + eps)`` over the present tasks.

    ``z = softmax(logits)`` and ``c = 1 / sum_t (z_t / (L_t + eps))`` (a constant), so the
    update is ``sum_t w_t g_t`` with ``w_t = c z_t / (L_t + eps)``: a convex combination of the
    task gradients, each divided by its loss. Absent tasks get weight 0.
    """
    z = torch.softmax(logits.masked_fill(~present, -torch.inf), dim=0).nan_to_num(0.0)
    shifted = losses + EPSILON
    scaled = z / shifted
    return scaled / scaled.sum().clamp_min(1e-30)


def famo_logit_gradient(logits: Tensor, before: Tensor, after: Tensor, present: Tensor) -> Tensor:
    """The gradient FAMO's Adam follows for the logits: ``J_softmax^T delta`` with
    ``delta_t = log(before_t + eps) - log(after_t + eps)``, over the present tasks (0 elsewhere)."""
    delta = torch.where(present, (before + EPSILON).log() - (after + EPSILON).log(), 0.0)
    with torch.enable_grad():
        logits = logits.detach().requires_grad_(True)
        z = torch.softmax(logits.masked_fill(~present, -torch.inf), dim=0).nan_to_num(0.0)
        (gradient,) = torch.autograd.grad(z, logits, grad_outputs=delta)
    return gradient


class FAMO(WeightedTaskStrategy):
    """Weights every task by ``z_t / L_t``, and tunes the logits of z so every loss falls at the
    same relative rate, from the losses alone (no per-task gradients).

    The maths of :class:`torchjd.scalarization.FAMO` (and the official code), written out so a
    task without a label in the batch is skipped (its loss 0 would otherwise dominate
    ``c`` through ``z_t / eps``). After the optimizer step, :meth:`on_train_batch_end` runs the
    same batch again without gradients (BatchNorm's running statistics restored afterwards) and
    moves the logits with their own Adam (``lr``, ``weight_decay``). The losses before and after
    are averaged over the DDP ranks first, so every rank keeps identical logits. With
    ``trainer.accumulate_grad_batches`` above 1, the batches before the optimizer step measure
    no change and move the logits by their Adam momentum only (not a use FAMO's paper covers).
    """

    name = "famo"

    def __init__(self, lr: float = 0.025, weight_decay: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.weight_decay = weight_decay
        self.logits: nn.Parameter | None = None
        self.optimizer: torch.optim.Adam | None = None
        self._before: tuple[Tensor, Tensor] | None = None
        self._pending_state: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.logits is None:
            self.build(len(self.tasks), pl_module.device)

    def build(self, num_tasks: int, device: torch.device | str = "cpu") -> None:
        """Creates the logits (all 0: equal weights) and their optimizer."""
        self.logits = nn.Parameter(torch.zeros(num_tasks, device=device))
        self.optimizer = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.weight_decay)
        if self._pending_state is not None:
            self._load_logits(self._pending_state)
            self._pending_state = None

    def weights(self, step: TaskStep) -> Tensor:
        assert self.logits is not None, "FAMO.setup was not called"
        return famo_weights(self.logits.detach(), step.losses.detach(), step.present)

    def combine(self, step: TaskStep) -> Tensor:
        self._before = (step.losses.detach() * step.counts, step.counts.detach().float())
        return super().combine(step)

    def update(self, before: Tensor, after: Tensor, present: Tensor) -> None:
        """One Adam step on the logits from the losses before and after the model's update."""
        assert self.logits is not None and self.optimizer is not None
        self.logits.grad = famo_logit_gradient(self.logits, before, after, present)
        self.optimizer.step()
        self.logits.grad = None

    @torch.no_grad()
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._before is None:
            return
        buffers = {name: buffer.clone() for name, buffer in pl_module.named_buffers()}
        try:
            with trainer.precision_plugin.forward_context():
                after_sums, after_counts = pl_module.task_losses(batch)
        finally:
            for name, buffer in pl_module.named_buffers():
                buffer.copy_(buffers[name])
        before_sums, before_counts = self._before
        self._before = None
        totals = torch.stack([before_sums, before_counts, after_sums.float(), after_counts.float()])
        if trainer.world_size > 1:
            totals = trainer.strategy.reduce(totals, reduce_op="sum")
        present = totals[1] > 0
        before = totals[0] / totals[1].clamp_min(1)
        after = totals[2] / totals[3].clamp_min(1)
        self.update(before, after, present)

    # -- checkpoints
    def _load_logits(self, state: dict[str, Any]) -> None:
        assert self.logits is not None and self.optimizer is not None
        with torch.no_grad():
            self.logits.copy_(torch.as_tensor(state["logits"]))
        self.optimizer.load_state_dict(state["optimizer"])

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.logits is not None and self.optimizer is not None:
            state["famo"] = {
                "logits": self.logits.detach().cpu(),
                "optimizer": self.optimizer.state_dict(),
            }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "famo" not in state_dict:
            return
        if self.logits is None:
            self._pending_state = state_dict["famo"]
        else:
            self._load_logits(state_dict["famo"])
