"""RLW, random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtl_celeba.scheduling.methods.base import WeightedTaskStrategy
from mtl_celeba.scheduling.strategy import TaskStep


class RandomLossWeighting(WeightedTaskStrategy):
    """Each step, weights ``softmax(z)`` with ``z ~ N(0, I)`` (Algorithm 2 of the paper).

    Same draws as :class:`torchjd.scalarization.Random`, but from the strategy's own seeded
    generator (checkpointed, identical on every DDP rank, and the global random streams that
    shuffle and augment the data are left alone). Every step draws T numbers; the softmax runs
    over the tasks labelled in the batch only.
    """

    name = "rlw"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def weights(self, step: TaskStep) -> Tensor:
        logits = torch.randn(len(step.losses), generator=self.generator).to(step.losses.device)
        logits = logits.masked_fill(~step.present, -torch.inf)
        return torch.softmax(logits, dim=0).nan_to_num(0.0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.generator.set_state(state_dict["generator"])
