"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, ICML 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.base import GramianWeighting

#: Each diagonal entry of the Gramian is multiplied by ``1 + REGULARISATION`` (every task
#: gradient gets an orthogonal part 1e-5 its size), so a solution always exists (two exactly
#: opposite gradients have none: no direction improves both) and stays bounded. Relative to
#: each task's own squared norm, so disparate gradient norms are not swamped by it.
REGULARISATION = 1e-10


def nash_weights(gramian: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """The Nash bargaining solution: ``alpha > 0`` with ``G alpha = 1 / alpha`` (elementwise).

    At the authors' scale: the equation is solved for ``G / ||G||_F`` (conditioning) and the
    solution divided by ``sqrt(||G||_F)``, which solves it for G itself, so the update
    ``d = sum_t alpha_t g_t`` has ``||d||^2 = alpha^T G alpha = T`` as in the official code.
    The solution is the minimiser of the strictly convex ``alpha^T G alpha / 2 - sum log alpha``
    (gradient ``G alpha - 1 / alpha``), found over ``log alpha`` by scipy's exact-Hessian trust
    region to a 1e-12 gradient, from ``start`` (the previous step's alpha, as the official code
    warm-starts). The official code approximates the same equation with at most 20 convex
    programs (cvxpy/ECOS, not installed here).
    """
    num_tasks = len(gramian)
    norm = float(np.linalg.norm(gramian))
    if not norm > 0:
        return np.ones(num_tasks)
    normalised = gramian / norm
    normalised = normalised + REGULARISATION * np.diag(np.diag(normalised))
    start = (
        np.ones(num_tasks) if start is None or len(start) != num_tasks else start * np.sqrt(norm)
    )

    def objective(log_alpha: np.ndarray) -> tuple[float, np.ndarray]:
        alpha = np.exp(log_alpha)
        product = normalised @ alpha
        return float(0.5 * alpha @ product - log_alpha.sum()), alpha * product - 1.0

    def hessian(log_alpha: np.ndarray) -> np.ndarray:
        alpha = np.exp(log_alpha)
        return alpha[:, None] * normalised * alpha[None, :] + np.diag(alpha * (normalised @ alpha))

    result = minimize(
        objective, np.log(start), jac=True, hess=hessian, method="trust-exact",
        options={"gtol": 1e-12, "maxiter": 1000},
    )  # fmt: skip
    return np.exp(result.x) / np.sqrt(norm)


class NashMTL(GramianWeighting):
    """Nash-MTL from the Gramian (:func:`nash_weights`), written by hand: TorchJD's ``NashMTL``
    needs the optional cvxpy and ecos packages (``torchjd[nash_mtl]``), not installed here, and
    takes the Jacobian rather than its Gramian.

    ``update_weights_every`` reuses the weights for that many steps, as the official option.
    The official training scripts also clip the shared parameters' gradient norm to 1: with
    this project, use ``trainer.gradient_clip_val=1`` for that.
    """

    name = "nashmtl"

    def __init__(self, update_weights_every: int = 1, gradients: str = "features") -> None:
        super().__init__(gradients)
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
