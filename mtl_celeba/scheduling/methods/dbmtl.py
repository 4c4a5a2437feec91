"""DB-MTL, dual-balancing multi-task learning (Lin, Ye, Xu, Shi, Kwok, "Dual-Balancing for
Multi-Task Learning", arXiv:2308.12029, 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_celeba.scheduling.methods.base import GramianWeighting
from mtl_celeba.scheduling.strategy import TaskStep

#: The epsilon inside the logarithm and in the norm ratio (the authors' LibMTL code's 1e-8).
EPSILON = 1e-8


def dbmtl_weights(gramian: Tensor, losses: Tensor) -> Tensor:
    """(T,) the weights w with ``sum_t w_t g_t`` equal to DB-MTL's update for this step.

    Loss-scale balancing trains on ``log(L_t + eps)``, whose gradient is
    ``h_t = g_t / (L_t + eps)``; gradient-magnitude balancing rescales every ``h_t`` to the
    largest norm, ``alpha_t = max_s ||h_s|| / (||h_t|| + eps)``, and sums them. So
    ``w_t = alpha_t / (L_t + eps)``, with ``||h_t|| = sqrt(G_tt) / (L_t + eps)``.
    """
    gramian = gramian.to(torch.float64)
    scale = 1.0 / (losses.to(torch.float64) + EPSILON)
    norms = gramian.diagonal().clamp_min(0.0).sqrt() * scale
    alpha = norms.max() / (norms + EPSILON)
    return alpha * scale


class DBMTL(GramianWeighting):
    """Every task's log-loss gradient rescaled to the largest one's norm, then summed.

    The authors' code (LibMTL's ``DB_MTL``) rescales an exponential moving average of each
    task's gradient over the steps (``DB_beta = 0.9``); that average is not applied here, the
    balancing uses this step's gradients (the EMA's ``beta = 0``): the shared-feature gradients
    the Gramian is made of belong to this batch's samples and cannot be averaged over batches,
    and the contract's update is a combination of this step's gradients.
    """

    name = "dbmtl"

    def __init__(self, gradients: str = "features") -> None:
        super().__init__(gradients)
        self._present_losses: Tensor | None = None

    def weights(self, step: TaskStep) -> Tensor:
        if step.gramian is not None:
            present = step.gramian.detach().diagonal() > 0
            self._present_losses = step.losses.detach()[present].to("cpu", torch.float64)
        return super().weights(step)

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        assert self._present_losses is not None, "DBMTL.weights sets the losses first"
        return dbmtl_weights(gramian, self._present_losses)
