"""Checkpoint files that are complete or absent, never truncated under a valid name.

Lightning's own "atomic" save goes through fsspec, whose local transaction writes the
temporary file into the system temp folder and then *copies* it across filesystems when
that folder is on another disk: a full run disk then leaves a truncated ``epoch...ckpt``
that a later resume or ``mtl-eval`` picks up. Here the bytes go to a temporary file in the
checkpoint's own folder, are fsynced, and renamed onto the name (``os.replace``); a failed
write removes the temporary file and ends the run with one line
(:class:`~mtl_celeba.errors.DiskFullError` when the disk is full).

Used as a Trainer plugin: ``plugins: [{_target_: mtl_celeba.run.checkpoint_writer.AtomicCheckpointIO}]``
in ``conf/trainer/default.yaml``. :class:`ModelCheckpoint` (``conf/callbacks/default.yaml``)
numbers the epochs in checkpoint names from 1.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning.pytorch.callbacks
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mtl_celeba.errors import disk_full_error
from mtl_celeba.io import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose saves are atomic on the local filesystem."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options.")
        # serialise in memory first (as Lightning does), so that a full disk surfaces as an
        # OSError with its errno rather than torch's "PytorchStreamWriter failed" RuntimeError
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            with atomic_open(Path(path), "wb") as handle:
                handle.write(buffer.getbuffer())
        except OSError as error:
            disk_full = disk_full_error(error, Path(path).parent.parent, target=path)
            if disk_full is not None:
                raise disk_full from None
            raise


class ModelCheckpoint(lightning.pytorch.callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``{epoch}`` in file names counted from 1, as on the
    console, in ``metrics.json`` and in ``dst_history.csv``: the best of a 2-epoch run that
    peaked last is ``epoch002-...ckpt``, not ``epoch001``.

    It keeps Lightning's class name, which is part of the callback's state key in
    checkpoints: runs saved before this class existed resume with their best score intact.
    """

    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)
