"""UW, uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018)."""

from __future__ import annotations

import lightning as L
from torch import Tensor, nn
from torchjd.scalarization import UW

from mtl_celeba.scheduling.methods.base import WeightedTaskStrategy
from mtl_celeba.scheduling.strategy import TaskStep


class UncertaintyWeighting(WeightedTaskStrategy):
    """``sum_t (exp(-s_t) L_t + s_t) / 2`` with learnt log-variances ``s_t`` (init 0).

    The log-variances are the parameters of :class:`torchjd.scalarization.UW`, returned by
    :meth:`trainable_module`, so the model's optimizer trains them with the network, DDP
    all-reduces their gradients and checkpoints hold them (``strategy_state.log_var``). The
    formula is TorchJD's, written out here to skip the tasks without a label in the batch
    (their ``s_t / 2`` term would otherwise push ``s_t`` down at every such step).
    """

    name = "uw"

    def __init__(self) -> None:
        super().__init__()
        self.scalarizer: UW | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.scalarizer is None:
            self.scalarizer = UW(len(self.tasks))

    def trainable_module(self) -> nn.Module | None:
        return self.scalarizer

    def combine(self, step: TaskStep) -> Tensor:
        assert self.scalarizer is not None, "UncertaintyWeighting.setup was not called"
        log_var = self.scalarizer.log_var
        precision = 0.5 * (-log_var).exp()
        self.record(precision.detach() * step.present, step.present)
        terms = precision * step.losses + 0.5 * log_var
        return (terms * step.present).sum()
