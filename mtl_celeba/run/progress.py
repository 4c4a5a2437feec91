"""Lightning's progress bar with epochs counted from 1, as everything else a person reads."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


class EpochProgressBar(TQDMProgressBar):
    """Lightning's progress bar with epochs counted from 1, as everywhere else: ``Epoch 2/2``.

    Lightning's own hook, repeated except for the description: calling it and relabelling
    afterwards would still draw one frame labelled with the 0-based number.
    """

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        total = f"/{trainer.max_epochs}" if (trainer.max_epochs or 0) > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")
