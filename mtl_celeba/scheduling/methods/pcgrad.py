"""PCGrad, gradient surgery (Yu, Kumar, Gupta, Levine, Hausman, Finn, NeurIPS 2020)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchjd.aggregation import PCGradWeighting

from mtl_celeba.scheduling.methods.base import GramianWeighting


class PCGrad(GramianWeighting):
    """Each task gradient is projected off the normal planes of the gradients it conflicts with
    (in random order), and the projections are summed (:class:`torchjd.aggregation.PCGradWeighting`).

    TorchJD draws the orders from torch's global generator; here they come from the strategy's
    own seeded generator (swapped in for the call), so every DDP rank draws the same orders,
    a resumed run draws what an uninterrupted one would, and the data's random streams are
    left alone.
    """

    name = "pcgrad"

    def __init__(self, seed: int = 0, gradients: str = "features") -> None:
        super().__init__(gradients)
        self.weighting = PCGradWeighting()
        self.rng_state = torch.Generator().manual_seed(seed).get_state()

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            weights = self.weighting(gramian)
            self.rng_state = torch.get_rng_state()
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng_state": self.rng_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.rng_state = state_dict["rng_state"]
