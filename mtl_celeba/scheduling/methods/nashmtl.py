"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, ICML 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.base import GramianWeighting

#: Added to the diagonal of the normalised Gramian, so a solution always exists (two exactly
#: opposite gradients have none: no direction improves both) and stays bounded.
REGULARISATION = 1e-4


def nash_weights(gramian: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """The Nash bargaining solution: ``alpha > 0`` with ``G alpha = 1 / alpha`` (elementwise).

    As in the official code, G is first divided by its Frobenius norm. The solution is the
    minimiser of the strictly convex ``alpha^T G alpha / 2 - sum_t log alpha_t`` (its gradient
    is ``G alpha - 1 / alpha``), found by BFGS over ``log alpha`` from ``start`` (the previous
    step's solution, as the official code warm-starts).
    """
    num_tasks = len(gramian)
    norm = np.linalg.norm(gramian)
    gramian = (gramian / norm if norm > 0 else gramian) + REGULARISATION * np.eye(num_tasks)
    start = np.ones(num_tasks) if start is None or len(start) != num_tasks else start

    def objective(log_alpha: np.ndarray) -> tuple[float, np.ndarray]:
        alpha = np.exp(log_alpha)
        product = gramian @ alpha
        value = 0.5 * alpha @ product - log_alpha.sum()
        return float(value), alpha * product - 1.0

    result = minimize(objective, np.log(start), jac=True, method="BFGS", options={"gtol": 1e-10})
    return np.exp(result.x)


class NashMTL(GramianWeighting):
    """Nash-MTL from the Gramian, written by hand: TorchJD's ``NashMTL`` needs the optional
    cvxpy and ecos packages (``torchjd[nash_mtl]``), not installed here, and takes the Jacobian
    rather than its Gramian. The official code approximates the same equation with a sequence
    of convex programs (at most 20); here it is solved directly as a smooth convex problem.

    ``update_weights_every`` reuses the weights for that many steps, as the official option.
    The official training scripts also clip the shared parameters' gradient norm to 1: with
    this project, use ``trainer.gradient_clip_val=1`` for that.
    """

    name = "nashmtl"

    def __init__(self, update_weights_every: int = 1) -> None:
        super().__init__()
        if update_weights_every < 1:
            raise ConfigError(
                f"strategy.update_weights_every is {update_weights_every}: use an integer >= 1."
            )
        self.update_weights_every = update_weights_every
        self.previous: np.ndarray | None = None
        self.steps = 0

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        stale = self.previous is None or len(self.previous) != len(gramian)
        if stale or self.steps % self.update_weights_every == 0:
            self.previous = nash_weights(gramian.numpy(), None if stale else self.previous)
        self.steps += 1
        return torch.from_numpy(self.previous)

    def state_dict(self) -> dict[str, Any]:
        previous = None if self.previous is None else self.previous.tolist()
        return {**super().state_dict(), "previous": previous, "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        previous = state_dict["previous"]
        self.previous = None if previous is None else np.asarray(previous)
        self.steps = int(state_dict["steps"])
