"""GradDrop, gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov,
"Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mtl_celeba.errors import ConfigError, check_choice
from mtl_celeba.scheduling.methods.base import WeightedTaskStrategy
from mtl_celeba.scheduling.strategy import GRADIENTS, TaskStep

#: The epsilon in the sign purity's denominator (the authors' 1e-7, as in LibMTL).
EPSILON = 1e-7


def graddrop_gradient(
    jacobian: Tensor, inputs: Tensor, uniform: Tensor, leak: float = 0.0
) -> tuple[Tensor, Tensor]:
    """GradDrop's gradient for the shared features, and the keep masks.

    ``jacobian`` (T, B, F) holds each task's gradient with respect to the features ``inputs``
    (B, F), ``uniform`` (F,) one U(0, 1) draw per feature. The batch-separated gradients are
    summed over the batch after multiplying by the sign of the input (the paper's Sec. 3.3):
    ``S_t = sum_b sign(x_b) * grad_t,b``; the sign purity is
    ``P = (1 + sum_t S_t / sum_t |S_t|) / 2`` per feature; task t keeps feature f where
    ``P > U and S_t > 0`` or ``P < U and S_t < 0``, and passes ``leak + (1 - leak) * mask`` of
    its gradient there. Returns (B, F) ``sum_t`` of the masked gradients, and the (T, F) masks.
    """
    work = jacobian.float()
    signed = (work * inputs.float().sign()).sum(dim=1)
    purity = 0.5 * (1.0 + signed.sum(dim=0) / (signed.abs().sum(dim=0) + EPSILON))
    masks = ((purity > uniform) & (signed > 0)) | ((purity < uniform) & (signed < 0))
    keep = leak + (1.0 - leak) * masks.float()
    return (work * keep[:, None, :]).sum(dim=0), masks


class GradDrop(WeightedTaskStrategy):
    """Each feature's gradient keeps, at random, only the tasks whose gradients share one sign,
    the positive sign chosen with probability P, the sign purity.

    GradDrop acts on the gradient of the shared representation (the features every head reads,
    where the paper places its GradDrop layer and LibMTL's ``rep_grad`` takes it): the backbone
    is trained with GradDrop's masked sum, every head with its own task's gradient (weight 1,
    which ``weights/<task>`` records). The loss returned is ``sum_t L_t`` plus a term of value 0
    (``<x - x.detach(), c>``) that turns the features' gradient into GradDrop's, so AMP's loss
    scaling and gradient clipping keep working. The per-task feature gradients come from one
    vectorised backward through the heads, as for the Gramian methods. The draws U come from the
    strategy's own seeded generator. Under DDP each rank applies GradDrop to its own part of the
    batch before the usual all-reduce (on one device: the whole batch, as the authors).

    With ``strategy.gradients=parameters`` the rule acts on every shared (backbone) parameter
    instead, as FAMO's CelebA code (from Nash-MTL's ``GradDrop``) does: per parameter entry,
    ``S_t`` is task t's gradient there (no input sign, nothing batch-separated), one draw U per
    entry, and the masked sum replaces the backbone's gradient (term ``<p - p.detach(), c>``).
    """

    name = "graddrop"

    def __init__(self, leak: float = 0.0, seed: int = 0, gradients: str = "features") -> None:
        super().__init__()
        check_choice(gradients, "strategy.gradients", GRADIENTS)
        self.gradients = gradients
        if not (isinstance(leak, int | float) and 0.0 <= leak <= 1.0):
            raise ConfigError(f"strategy.leak is {leak!r}: use a value in [0, 1] (the paper: 0).")
        self.leak = float(leak)
        self.generator = torch.Generator().manual_seed(seed)
        self._features: Tensor | None = None
        self._hook: Any = None
        self._shared: list[Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.gradients == "parameters":
            backbone: nn.Module = pl_module.backbone
            self._shared = [p for p in backbone.parameters() if p.requires_grad]
        elif self._hook is None:
            heads: nn.Module = pl_module.heads
            self._hook = heads.register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        """Keeps the features a training forward pass gave the heads."""
        if module.training and torch.is_grad_enabled():
            self._features = args[0]

    def weights(self, step: TaskStep) -> Tensor:
        return step.present.to(step.losses.dtype)

    def combine(self, step: TaskStep) -> Tensor:
        if self.gradients == "parameters":
            return self._combine_on_parameters(step)
        features = self._features
        self._features = None
        if features is None:
            raise RuntimeError("graddrop: no training features were recorded for this step")
        num_tasks = step.losses.shape[0]
        identity = torch.eye(num_tasks, device=step.losses.device, dtype=step.losses.dtype)
        (jacobian,) = torch.autograd.grad(
            step.losses, features, grad_outputs=identity, retain_graph=True, is_grads_batched=True
        )
        uniform = torch.rand(features.shape[1:], generator=self.generator).to(features.device)
        dropped, _ = graddrop_gradient(jacobian, features.detach(), uniform, self.leak)
        correction = (dropped - jacobian.float().sum(dim=0)).to(features.dtype).detach()
        loss = super().combine(step)
        return loss + ((features - features.detach()) * correction).sum()

    def _combine_on_parameters(self, step: TaskStep) -> Tensor:
        """``sum_t L_t`` plus the 0-valued term that gives the backbone GradDrop's gradient."""
        num_tasks = step.losses.shape[0]
        identity = torch.eye(num_tasks, device=step.losses.device, dtype=step.losses.dtype)
        grads = torch.autograd.grad(
            step.losses,
            self._shared,
            grad_outputs=identity,
            retain_graph=True,
            is_grads_batched=True,
            allow_unused=True,
        )
        used = [(p, g) for p, g in zip(self._shared, grads, strict=True) if g is not None]
        flat = torch.cat([g.reshape(num_tasks, -1).float() for _, g in used], dim=1)
        uniform = torch.rand(flat.shape[1], generator=self.generator).to(flat.device)
        ones = torch.ones(1, flat.shape[1], device=flat.device)
        dropped, _ = graddrop_gradient(flat[:, None, :], ones, uniform, self.leak)
        correction = (dropped[0] - flat.sum(dim=0)).detach()
        loss = super().combine(step)
        offset = 0
        for parameter, _ in used:
            size = parameter.numel()
            part = correction[offset : offset + size].view_as(parameter).to(parameter.dtype)
            loss = loss + ((parameter - parameter.detach()) * part).sum()
            offset += size
        return loss

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng_state": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.generator.set_state(state_dict["rng_state"])
