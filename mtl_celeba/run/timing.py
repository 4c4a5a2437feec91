"""Where a job's wall time goes: set-up before the first epoch, each epoch, and after training.

A sweep's cost is jobs x (fixed cost + epochs x epoch time); the fixed part (data and model
set-up, the checkpoint test, writing results) is what packing and caching can cut, so every
run records the split in ``metrics.json`` under ``timing``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from lightning.pytorch.callbacks import Callback


class JobTimer(Callback):
    """Records, on the training process's clock, the start of each epoch and the end of fit.

    ``started`` is the job's own start (``time.perf_counter()`` when ``train`` began).
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.epoch_starts: list[float] = []
        self.fit_ended: float | None = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.epoch_starts.append(time.perf_counter())

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.fit_ended = time.perf_counter()

    def summary(self, finished: float) -> dict[str, Any]:
        """Seconds: ``setup_s`` (job start to the first epoch), ``epoch_s`` (each epoch with its
        validation, schedule update and checkpoints), ``after_fit_s`` (best-checkpoint
        validation and test, results) and ``fixed_s`` = set-up + after fit."""
        if not self.epoch_starts:
            return {"setup_s": round(finished - self.started, 2), "epoch_s": []}
        fit_end = self.fit_ended if self.fit_ended is not None else finished
        bounds = [*self.epoch_starts, fit_end]
        setup = self.epoch_starts[0] - self.started
        after = finished - fit_end
        return {
            "setup_s": round(setup, 2),
            "epoch_s": [round(b - a, 2) for a, b in itertools.pairwise(bounds)],
            "after_fit_s": round(after, 2),
            "fixed_s": round(setup + after, 2),
        }
