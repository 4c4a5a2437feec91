"""MGDA-UB (Sener, Koltun, NeurIPS 2018): the min-norm point of the task gradients' hull."""

from __future__ import annotations

from torch import Tensor
from torchjd.aggregation import MGDAWeighting

from mtl_celeba.scheduling.methods.base import GramianWeighting


class MGDA(GramianWeighting):
    """Weights on the simplex giving the minimum-norm convex combination of the task gradients
    (Frank-Wolfe, :class:`torchjd.aggregation.MGDAWeighting`). With the gradients taken w.r.t.
    the shared representation, as here, this is the paper's MGDA-UB."""

    name = "mgda"

    def __init__(self, epsilon: float = 0.001, max_iters: int = 100) -> None:
        super().__init__()
        self.weighting = MGDAWeighting(epsilon=epsilon, max_iters=max_iters)

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)
