"""ConFIG, conflict-free gradients (Liu, Chen, Thuerey, "ConFIG: Towards Conflict-free Training
of Physics Informed Neural Networks", ICLR 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_celeba.scheduling.methods.base import GramianWeighting
from mtl_celeba.scheduling.strategy import TaskStep


def config_weights(
    gramian: Tensor, epsilon: float = float(torch.finfo(torch.float32).eps)
) -> Tensor:
    """(T,) the weights w with ``sum_t w_t g_t`` equal to ConFIG's update (the paper's Eq. 2).

    ConFIG's direction is ``pinv(U) 1`` for the unit gradients ``U[t] = g_t / ||g_t||``: the
    least-norm x with an equal projection ``<u_t, x> = 1`` on every unit gradient. With
    ``U^+ = U^T (U U^T)^+`` that is ``sum_t a_t g_t`` with ``a = D^(-1/2) (D^(-1/2) G D^(-1/2))^+ 1``
    (``D = diag(G)``), so the Gramian is enough. Its length is the sum of the projections of the
    gradients on the unit direction (the authors' default ``ProjectionLength``):
    ``w = a (1^T G a) / (a^T G a)``. The pseudo-inverse drops eigenvalues below ``epsilon``
    times the largest: the machine epsilon of the precision the Gramian was computed in
    (float32 in training), below which its eigenvalues are rounding noise. (The authors'
    ``torch.linalg.lstsq`` on float32 gradients cuts singular values below ``n * eps`` of the
    largest, n the gradient's length, which a Gramian does not know.)
    """
    gramian = gramian.to(torch.float64)
    inverse_norms = gramian.diagonal().clamp_min(1e-300).rsqrt()
    unit_gramian = inverse_norms[:, None] * gramian * inverse_norms[None, :]
    values, vectors = torch.linalg.eigh(unit_gramian)
    keep = values > values.max() * epsilon
    ones = torch.ones(len(values), dtype=torch.float64)
    coefficients = vectors[:, keep] @ ((vectors[:, keep].T @ ones) / values[keep])
    a = inverse_norms * coefficients
    squared_norm = a @ gramian @ a
    if squared_norm <= 0:
        return torch.zeros_like(a)
    return a * (ones @ gramian @ a) / squared_norm


class ConFIG(GramianWeighting):
    """The update whose direction has the same cosine with every task gradient (positive, so no
    task's loss rises to first order) and whose length is the sum of the gradients' projections
    on it: TorchJD 0.18's :class:`~torchjd.aggregation.ConFIG` with equal preferences, from the
    Gramian (TorchJD's aggregator needs the Jacobian itself; the tests check they agree)."""

    name = "config"

    def __init__(self, gradients: str = "features") -> None:
        super().__init__(gradients)
        self._epsilon = float(torch.finfo(torch.float32).eps)

    def weights(self, step: TaskStep) -> Tensor:
        if step.gramian is not None:  # the rank cut-off follows the Gramian's precision
            self._epsilon = float(torch.finfo(step.gramian.dtype).eps)
        return super().weights(step)

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return config_weights(gramian, self._epsilon)
