"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone, Liu, NeurIPS 2021)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.base import GramianWeighting
from mtl_celeba.scheduling.methods.mgda import min_norm_weights

#: Keeps ``sqrt(w^T G w)`` differentiable where the hull reaches 0 (the trace-normalised
#: Gramian has diagonal 1); the authors add 1e-8 to the raw Gramian.
SMOOTHING = 1e-16


def cagrad_weights(gramian: np.ndarray, c: float) -> np.ndarray:
    """The official CAGrad step (github.com/Cranial-XIX/CAGrad, ``rescale=1``) from the Gramian.

    The update ``d`` maximises the worst task's improvement ``min_t <g_t, d>`` within the ball
    ``||d - g_0|| <= c ||g_0||`` around the average gradient ``g_0``. Its dual
    ``min_{w in simplex} w^T G 1/T + c ||g_0|| sqrt(w^T G w)`` is solved with scipy's SLSQP,
    as the authors do, but with its gradient and to a 1e-14 tolerance (SLSQP's default 1e-6
    stops early: 17% off the update with disparate gradient norms); then
    ``d = g_0 + c ||g_0|| g_w / ||g_w||``, divided by ``1 + c^2``, returned as weights on the
    task gradients. The Gramian is first divided by its mean diagonal: the weights do not
    change, but SLSQP's absolute tolerances then fit whatever the gradients' scale.
    """
    num_tasks = len(gramian)
    gramian = gramian / max(float(np.trace(gramian)) / num_tasks, 1e-30)
    mean = np.full(num_tasks, 1.0 / num_tasks)
    linear = gramian @ mean
    radius = c * np.sqrt(max(float(mean @ linear), 0.0))  # c ||g_0||
    if radius == 0.0:
        return mean / (1.0 + c**2)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        product = gramian @ x
        norm = np.sqrt(max(float(x @ product), 0.0) + SMOOTHING)
        return float(x @ linear + radius * norm), linear + radius * product / norm

    best = None
    for start in (mean, min_norm_weights(gramian)):  # the centre and the min-norm vertex
        result = minimize(
            objective, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * num_tasks,
            constraints={"type": "eq", "fun": lambda x: 1.0 - x.sum(), "jac": lambda x: -np.ones_like(x)},
            options={"ftol": 1e-14, "maxiter": 2000},
        )  # fmt: skip
        if best is None or result.fun < best.fun:
            best = result
    w = np.clip(best.x, 0.0, None)
    w = w / w.sum()
    scale = radius / np.sqrt(max(float(w @ gramian @ w), 0.0) + SMOOTHING)
    return (mean + scale * w) / (1.0 + c**2)


class CAGrad(GramianWeighting):
    """CAGrad from the Gramian, written by hand: TorchJD's ``CAGradWeighting`` needs the
    optional cvxpy and clarabel packages (``torchjd[cagrad]``), which this project does not
    install, while the authors' own solver (scipy's SLSQP) needs nothing new. LibMTL's CAGrad
    is the same code."""

    name = "cagrad"

    def __init__(self, c: float = 0.4, gradients: str = "features") -> None:
        super().__init__(gradients)
        if c < 0:
            raise ConfigError(f"strategy.c is {c}: use a value >= 0 (the paper: 0.4).")
        self.c = c

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return torch.from_numpy(cagrad_weights(gramian.numpy(), self.c))
