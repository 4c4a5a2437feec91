"""Negative transfer, measured: the cosine between every pair of task gradients, and their norms.

From the Gramian ``G`` of the per-task gradients (``G[i, j] = <g_i, g_j>``, the matrix every
gradient method already computes): ``cos_ij = G_ij / sqrt(G_ii G_jj)`` and ``|g_i| = sqrt(G_ii)``.
A negative cosine is a conflict: to first order, a step along ``g_j`` raises task i's loss.
Pure torch, no Lightning: :class:`~mtl_celeba.scheduling.callbacks.ConflictMonitor` feeds it
each measured step's Gramian and writes the per-epoch means to the run folder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def gradient_conflicts(gramian: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(cosines (T, T), norms (T,)) of the task gradients whose Gramian is ``gramian``.

    ``present`` (T,) bool marks the tasks with a labelled sample in the step (default: all):
    an absent task has no gradient, so its norm and every cosine with it are NaN (not
    measured), as is every cosine with a zero-norm gradient (the angle is undefined). The
    diagonal is 1 for every measured task. Computed in float64 from the float32 Gramian.
    """
    gramian = gramian.detach().double()
    norms = gramian.diagonal().clamp_min(0.0).sqrt()
    if present is not None:
        norms = torch.where(present.to(norms.device), norms, torch.nan)
    outer = norms[:, None] * norms[None, :]
    measured = outer > 0  # False for NaN and for a zero norm
    cosines = torch.where(measured, gramian / torch.where(measured, outer, 1.0), torch.nan)
    return cosines.clamp(-1.0, 1.0), norms


class ConflictSums:
    """Per-epoch sums of the measured cosines and norms, and how many steps each one had.

    Kept on the tensors' device (no host sync per step); NaN entries (not measured) count for
    nothing, so each pair's mean is over the steps in which both tasks had a gradient.
    """

    def __init__(self, num_tasks: int, device: torch.device | str = "cpu") -> None:
        self.cosine_sum = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=device)
        self.cosine_count = torch.zeros_like(self.cosine_sum)
        self.norm_sum = torch.zeros(num_tasks, dtype=torch.float64, device=device)
        self.norm_count = torch.zeros_like(self.norm_sum)
        self.steps = 0

    def add(self, cosines: Tensor, norms: Tensor) -> None:
        """Adds one step's :func:`gradient_conflicts`."""
        for total, count, values in (
            (self.cosine_sum, self.cosine_count, cosines),
            (self.norm_sum, self.norm_count, norms),
        ):
            measured = ~values.isnan()
            total += torch.where(measured, values, 0.0).to(total)
            count += measured.to(count)
        self.steps += 1

    def flat(self) -> tuple[Tensor, Tensor]:
        """(sums, counts) of cosines then norms, one vector each, for one all-reduce."""
        sums = torch.cat([self.cosine_sum.flatten(), self.norm_sum])
        counts = torch.cat([self.cosine_count.flatten(), self.norm_count])
        return sums, counts


def epoch_record(epoch: int, steps: int, means: Tensor, num_tasks: int) -> dict[str, Any]:
    """One epoch of the conflicts file from the flat means of :meth:`ConflictSums.flat`
    (NaN, not measured, written as ``None``: JSON has no NaN)."""
    values = [None if math.isnan(v) else round(v, 6) for v in means.double().cpu().tolist()]
    pairs = num_tasks * num_tasks
    cosine = [values[row * num_tasks : (row + 1) * num_tasks] for row in range(num_tasks)]
    return {"epoch": epoch, "steps": steps, "cosine": cosine, "norm": values[pairs:]}


def off_diagonal(cosines: Sequence[Sequence[float | None]]) -> list[float]:
    """The measured cosines between distinct tasks (each pair once: the upper triangle)."""
    return [
        float(value)
        for row, values in enumerate(cosines)
        for column, value in enumerate(values)
        if column > row and value is not None and not math.isnan(value)
    ]


def summary_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The epoch's few numbers worth a curve: the mean pairwise cosine and the share of pairs
    in conflict (mean cosine < 0); empty when no pair was measured."""
    pairs = off_diagonal(record["cosine"])
    if not pairs:
        return {}
    return {
        "mean_cosine": math.fsum(pairs) / len(pairs),
        "conflicting_pairs": sum(value < 0 for value in pairs) / len(pairs),
    }
