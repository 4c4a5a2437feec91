"""Per-task classification metrics that skip missing labels, built on torchmetrics."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.classification import MultilabelAUROC, MultilabelStatScores

METRIC_NAMES = ("accuracy", "balanced_accuracy", "f1", "auroc")
_IGNORE = -1


class TaskMetrics(nn.Module):
    """Accuracy, balanced accuracy, F1 and AUROC for each of ``num_tasks`` binary tasks.

    One :class:`MultilabelStatScores` (tp, fp, tn, fn per task) gives the first three; AUROC is
    exact when ``auroc_thresholds`` is None (the default: an update only stores the batch), or
    binned on that many thresholds (constant memory, but torchmetrics' binned update
    synchronises with the GPU). Missing labels (``mask`` false) are ignored.
    Argument validation is off so updates never synchronise the host with the device.
    """

    def __init__(self, num_tasks: int, auroc_thresholds: int | None = None) -> None:
        super().__init__()
        self.stat_scores = MultilabelStatScores(
            num_labels=num_tasks, average="none", ignore_index=_IGNORE, validate_args=False
        )
        self.auroc = MultilabelAUROC(
            num_labels=num_tasks,
            average="none",
            thresholds=auroc_thresholds,
            ignore_index=_IGNORE,
            validate_args=False,
        )

    def update(self, logits: Tensor, targets: Tensor, mask: Tensor) -> None:
        """Add a batch: ``logits``, ``targets`` and ``mask`` all shaped (B, T)."""
        probabilities = torch.sigmoid(logits.detach().float())
        labels = torch.where(mask, targets.long(), _IGNORE)
        self.stat_scores.update(probabilities, labels)
        self.auroc.update(probabilities, labels)

    def compute(self) -> dict[str, Tensor]:
        """Each metric as a (T,) tensor."""
        # reshape: with a single task torchmetrics returns squeezed results
        tp, fp, tn, fn, _ = self.stat_scores.compute().float().reshape(-1, 5).unbind(-1)
        positives, negatives = tp + fn, tn + fp
        true_positive_rate = tp / positives.clamp_min(1)
        true_negative_rate = tn / negatives.clamp_min(1)
        both_present = (positives > 0) & (negatives > 0)
        balanced = torch.where(
            both_present,
            (true_positive_rate + true_negative_rate) / 2,
            torch.where(positives > 0, true_positive_rate, true_negative_rate),
        )
        return {
            "accuracy": (tp + tn) / (positives + negatives).clamp_min(1),
            "balanced_accuracy": balanced,
            "f1": 2 * tp / (2 * tp + fp + fn).clamp_min(1),
            "auroc": self.auroc.compute().float().reshape(-1),
        }

    def reset(self) -> None:
        self.stat_scores.reset()
        self.auroc.reset()
