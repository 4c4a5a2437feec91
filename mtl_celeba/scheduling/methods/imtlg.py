"""IMTL-G, impartial multi-task learning, gradient part (Liu et al., ICLR 2021)."""

from __future__ import annotations

from torch import Tensor
from torchjd.aggregation import IMTLGWeighting

from mtl_celeba.scheduling.methods.base import GramianWeighting


class IMTLG(GramianWeighting):
    """Weights (summing to 1) whose combination has an equal projection on every task's unit
    gradient (:class:`torchjd.aggregation.IMTLGWeighting`, TorchJD's generalisation to linearly
    dependent gradients)."""

    name = "imtlg"

    def __init__(self, gradients: str = "features") -> None:
        super().__init__(gradients)
        self.weighting = IMTLGWeighting()

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)
