"""GradVac, gradient vaccine (Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and
Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchjd.aggregation import GradVacWeighting

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.base import GramianWeighting
from mtl_celeba.scheduling.strategy import TaskStep


class GradVac(GramianWeighting):
    """Each task gradient, in turn and against the others in a random order, gets a multiple of
    the other's gradient added whenever their cosine is below a moving-average target, so the
    cosine reaches the target; the modified gradients are summed
    (:class:`torchjd.aggregation.GradVacWeighting`, on the Gramian).

    The targets ``phi_hat[i, j]`` (an EMA of the observed cosines with rate ``beta``, starting
    at 0) are kept here for all T tasks: TorchJD's weighting keeps them for the tasks it is
    given and would start afresh whenever a task is missing from a batch, so the present
    tasks' targets are handed to it for the call and read back after. The orders come from the
    strategy's own seeded generator, as in :class:`~mtl_celeba.scheduling.methods.pcgrad.PCGrad`.
    The gradients are taken as one group ("whole model", the authors' LibMTL default).
    """

    name = "gradvac"

    def __init__(self, beta: float = 0.5, seed: int = 0, gradients: str = "features") -> None:
        super().__init__(gradients)
        if not (isinstance(beta, int | float) and 0.0 <= beta <= 1.0):
            raise ConfigError(f"strategy.beta is {beta!r}: use a value in [0, 1] (the paper: 0.5).")
        self.weighting = GradVacWeighting(beta=float(beta), eps=1e-8)
        self.rng_state = torch.Generator().manual_seed(seed).get_state()
        #: (T, T) float64 EMA targets of the cosines; built at the first step.
        self.targets: Tensor | None = None
        self._present: Tensor | None = None

    def weights(self, step: TaskStep) -> Tensor:
        if step.gramian is not None:
            self._present = (step.gramian.detach().diagonal() > 0).cpu()
            if self.targets is None:
                size = len(self._present)
                self.targets = torch.zeros(size, size, dtype=torch.float64)
        return super().weights(step)

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        assert self.targets is not None and self._present is not None
        index = self._present.nonzero().flatten()
        block = self.targets[index][:, index].clone()
        # TorchJD 0.18 keeps the targets in the buffer _phi_t, keyed by (tasks, dtype)
        self.weighting._phi_t = block
        self.weighting._state_key = (len(index), gramian.dtype)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            weights = self.weighting(gramian)
            self.rng_state = torch.get_rng_state()
        self.targets[index[:, None], index[None, :]] = self.weighting._phi_t
        return weights

    def state_dict(self) -> dict[str, Any]:
        targets = None if self.targets is None else self.targets.clone()
        return {**super().state_dict(), "rng_state": self.rng_state.clone(), "targets": targets}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.rng_state = state_dict["rng_state"].clone()
        targets = state_dict["targets"]
        self.targets = None if targets is None else targets.clone()
