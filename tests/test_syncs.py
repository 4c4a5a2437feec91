"""CUDA only: the training step makes no host-device synchronisation (skipped without a GPU).

A sync in the hot loop makes the host wait for the GPU every step, so the next batch cannot be
prepared while the GPU works. The bench's SyncCounter turns PyTorch's sync debug mode on for
steps 2..N and records where each synchronising call happened.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from mtl_celeba.bench.throughput import SyncCounter
from mtl_celeba.data.datamodule import CelebADataModule
from mtl_celeba.models.module import MultiTaskModule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ATTRIBUTES = [
    "Smiling",
    "Male",
    "Young",
    "Eyeglasses",
    "Bald",
    "Wearing_Hat",
    "Mustache",
    "Blond_Hair",
]


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_training_steps_make_no_host_device_syncs(
    synthetic_root: Path, tmp_path: Path, precision: str
) -> None:
    L.seed_everything(0, verbose=False)
    datamodule = CelebADataModule(
        root=str(synthetic_root),
        attributes=ATTRIBUTES,
        source="synthetic",
        num_images=400,
        image_size=32,
        batch_size=16,  # 15+ steps inside the first epoch
        cache_dir=str(tmp_path / "cache"),
        cache_workers=1,
        hide_labels=0.2,
        device_cache=True,
    )
    model = MultiTaskModule(ATTRIBUTES, backbone="resnet18", head_hidden=[16])
    counter = SyncCounter(warmup_steps=12)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_steps=14,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=True,  # its per-step metrics readout must not sync either
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[counter],
    )
    trainer.fit(model, datamodule=datamodule)
    assert counter.counted_steps == 11
    assert counter.per_step == 0, f"syncs per step at: {counter.sites}"
