"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone, Liu, NeurIPS 2021)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.base import GramianWeighting


def cagrad_weights(gramian: np.ndarray, c: float) -> np.ndarray:
    """The official CAGrad step (github.com/Cranial-XIX/CAGrad, ``rescale=1``) from the Gramian.

    The update ``d`` maximises the worst task's improvement ``min_t <g_t, d>`` within the ball
    ``||d - g_0|| <= c ||g_0||`` around the average gradient ``g_0``. Its dual is solved over the
    simplex with scipy's SLSQP, as the authors do: ``d = g_0 + c ||g_0|| g_w / ||g_w||``, then
    divided by ``1 + c^2``. Returned as weights on the task gradients. The Gramian is first
    divided by its mean diagonal: the weights do not change, but SLSQP's absolute tolerances
    then fit whatever the gradients' scale.
    """
    num_tasks = len(gramian)
    gramian = gramian / max(float(np.trace(gramian)) / num_tasks, 1e-30)
    mean = np.full(num_tasks, 1.0 / num_tasks)
    radius = c * np.sqrt(gramian.mean() + 1e-8) + 1e-8  # c ||g_0||

    def objective(x: np.ndarray) -> float:
        return float(x @ gramian @ mean + radius * np.sqrt(x @ gramian @ x + 1e-8))

    result = minimize(
        objective,
        mean,
        bounds=[(0.0, 1.0)] * num_tasks,
        constraints={"type": "eq", "fun": lambda x: 1.0 - x.sum()},
    )
    w = result.x
    scale = radius / (np.sqrt(max(w @ gramian @ w, 0.0)) + 1e-8)
    return (mean + scale * w) / (1.0 + c**2)


class CAGrad(GramianWeighting):
    """CAGrad from the Gramian, written by hand: TorchJD's ``CAGradWeighting`` needs the
    optional cvxpy and clarabel packages (``torchjd[cagrad]``), which this project does not
    install, while the authors' own solver (scipy's SLSQP) needs nothing new. LibMTL's CAGrad
    is the same code."""

    name = "cagrad"

    def __init__(self, c: float = 0.4) -> None:
        super().__init__()
        if c < 0:
            raise ConfigError(f"strategy.c is {c}: use a value >= 0 (the paper: 0.4).")
        self.c = c

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return torch.from_numpy(cagrad_weights(gramian.numpy(), self.c))
