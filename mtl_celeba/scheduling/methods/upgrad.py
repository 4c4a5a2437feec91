"""UPGrad (Quinton, Rey, 2024: "Jacobian Descent for Multi-Objective Optimization")."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import lsq_linear
from torch import Tensor
from torchjd.aggregation import UPGradWeighting
from torchjd.linalg import DualConeProjector

from mtl_celeba.scheduling.methods.base import GramianWeighting


class BoundedLeastSquaresProjector(DualConeProjector):
    """TorchJD's dual-cone projection solved with scipy instead of quadprog.

    TorchJD's default projector needs the optional ``qpsolvers`` and ``quadprog`` packages
    (``torchjd[quadprog-projector]``), which this project does not install; scipy is already a
    dependency. The problem ``min_v v^T G v`` subject to ``v >= u`` is a bounded least-squares
    problem ``min ||A v||^2`` with ``G = A^T A`` (Cholesky), which scipy's BVLS solves exactly.
    As in TorchJD's projector, the Gramian is first divided by its trace (the squared Frobenius
    norm of the Jacobian; zeroed below ``norm_eps``) and ``reg_eps`` is added to its diagonal.
    """

    def __init__(self, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:
        gramian = G.detach().cpu().double().numpy()
        trace = float(np.trace(gramian))
        gramian = gramian / trace if trace >= self.norm_eps else np.zeros_like(gramian)
        gramian = gramian + self.reg_eps * np.eye(len(gramian))
        factor = np.linalg.cholesky(gramian).T  # gramian = factor.T @ factor
        rows = U.detach().cpu().double().numpy().reshape(-1, len(gramian))
        zeros = np.zeros(len(gramian))
        projected = [lsq_linear(factor, zeros, bounds=(u, np.inf), method="bvls").x for u in rows]
        return torch.as_tensor(np.array(projected).reshape(U.shape), dtype=G.dtype, device=G.device)


class UPGrad(GramianWeighting):
    """Every task gradient is projected onto the dual cone of all of them (so it conflicts with
    none), and the projections are averaged (:class:`torchjd.aggregation.UPGradWeighting`)."""

    name = "upgrad"

    def __init__(self, gradients: str = "features") -> None:
        super().__init__(gradients)
        self.weighting = UPGradWeighting(projector=BoundedLeastSquaresProjector())

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)
