"""Aligned-MTL (Senushkin, Patakin, Kuznetsov, Konushin, CVPR 2023)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.base import GramianWeighting

SCALE_MODES = ("min", "median", "rmse")


def aligned_mtl_weights(gramian: np.ndarray, scale_mode: str, eps: float) -> np.ndarray:
    """(T,) weights of Aligned-MTL's update from the Gramian, ranks cut at precision ``eps``.

    With ``G = V diag(lambda) V^T``, the balance ``B = sqrt(s) V diag(lambda)^{-1/2} V^T`` over
    the eigenvalues above ``T eps max(lambda)`` (the rest are rounding noise) makes the aligned
    gradients ``B J`` orthogonal with equal norms ``sqrt(s)``, ``s`` the smallest kept
    eigenvalue (``min``), their median or mean; the update is their average, ``B 1 / T``.
    Hand-written (TorchJD's ``AlignedMTLWeighting`` is the same maths) because TorchJD cuts at
    the epsilon of the dtype it is handed, and the Gramian is float32 maths sent as float64:
    cut at float64's epsilon, noise-level eigenvalues survive and ``min`` shrinks the update.
    """
    num_tasks = len(gramian)
    eigenvalues, vectors = np.linalg.eigh((gramian + gramian.T) / 2)
    keep = eigenvalues > eigenvalues.max() * num_tasks * eps
    if not keep.any():
        return np.full(num_tasks, 1.0 / num_tasks)
    eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
    scale = {"min": eigenvalues.min, "median": lambda: np.median(eigenvalues)}.get(
        scale_mode, eigenvalues.mean
    )()
    balance = np.sqrt(scale) * (vectors / np.sqrt(eigenvalues)) @ vectors.T
    return balance @ np.full(num_tasks, 1.0 / num_tasks)


class AlignedMTL(GramianWeighting):
    """Aligns the principal components of the task gradients (condition number 1), rescaled by
    the smallest singular value (``scale_mode=min``, the paper's choice), then averages
    (:func:`aligned_mtl_weights`). Ranks are cut at the epsilon of the dtype the Gramian was
    computed in (float32, as the authors'), or at ``rank_eps`` when given. LibMTL sums instead
    of averaging: a factor T, which Adam does not see."""

    name = "alignedmtl"

    def __init__(
        self, scale_mode: str = "min", rank_eps: float | None = None, gradients: str = "features"
    ) -> None:
        super().__init__(gradients)
        if scale_mode not in SCALE_MODES:
            raise ConfigError(f"strategy.scale_mode is {scale_mode!r}: use min, median or rmse.")
        if rank_eps is not None and not rank_eps >= 0:
            raise ConfigError(f"strategy.rank_eps is {rank_eps}: use a value >= 0 or null.")
        self.scale_mode = scale_mode
        self.rank_eps = rank_eps

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        eps = self.rank_eps if self.rank_eps is not None else torch.finfo(self.gramian_dtype).eps
        return torch.from_numpy(aligned_mtl_weights(gramian.numpy(), self.scale_mode, eps))
