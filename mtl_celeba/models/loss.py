"""The multi-task loss: per-task BCE over the samples labelled for each task."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def masked_task_losses(
    logits: Tensor, targets: Tensor, mask: Tensor, pos_weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-task BCE-with-logits summed over the samples labelled for each task.

    Returns ``(loss_sums, label_counts)``, both (T,): the mean loss of task t is
    ``loss_sums[t] / label_counts[t]``. Computed in float32 even under mixed precision.
    """
    per_sample = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), pos_weight=pos_weight, reduction="none"
    )
    weights = mask.to(per_sample.dtype)
    return (per_sample * weights).sum(dim=0), weights.sum(dim=0)
