"""SI, scale-invariant loss: the sum of the log task losses."""

from __future__ import annotations

from torch import Tensor

from mtl_celeba.scheduling.methods.base import WeightedTaskStrategy
from mtl_celeba.scheduling.strategy import TaskStep


class ScaleInvariant(WeightedTaskStrategy):
    """``sum_t log L_t`` over the tasks labelled in the batch (LibMTL's ``SI``).

    Its gradient is ``sum_t g_t / L_t``: every task weighted by its inverse loss, so rescaling
    one task's loss does not change the update. A task without a label in the batch (loss 0)
    is skipped; the recorded weight is ``1 / L_t``.
    """

    name = "si"

    def weights(self, step: TaskStep) -> Tensor:
        losses = step.losses.detach()
        return (1.0 / losses.clamp_min(1e-12)) * step.present

    def combine(self, step: TaskStep) -> Tensor:
        self.record(self.weights(step), step.present)
        # absent tasks read log(1) = 0 (masked_fill passes them no gradient, unlike log(0))
        return step.losses.masked_fill(~step.present, 1.0).log().sum()
