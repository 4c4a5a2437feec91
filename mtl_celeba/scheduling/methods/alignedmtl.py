"""Aligned-MTL (Senushkin, Patakin, Kuznetsov, Konushin, CVPR 2023)."""

from __future__ import annotations

from torch import Tensor
from torchjd.aggregation import AlignedMTLWeighting

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.base import GramianWeighting

SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(GramianWeighting):
    """Aligns the principal components of the task gradients (condition number 1), rescaled by
    the smallest singular value (``scale_mode=min``, the paper's choice), then averages
    (:class:`torchjd.aggregation.AlignedMTLWeighting`). LibMTL sums instead of averaging: a
    factor T, which Adam does not see."""

    name = "alignedmtl"

    def __init__(self, scale_mode: str = "min") -> None:
        super().__init__()
        if scale_mode not in SCALE_MODES:
            raise ConfigError(f"strategy.scale_mode is {scale_mode!r}: use min, median or rmse.")
        self.weighting = AlignedMTLWeighting(scale_mode=scale_mode)

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)
