"""Paired runs: every strategy with the same seed trains on the same batches and augmentation.

The report compares strategies by seed-matched differences; that is only a measurement of the
method if nothing else differs between the runs. These tests train real (tiny) runs on the CPU.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mtl_celeba.train import train

pytestmark = pytest.mark.slow

#: Augmentation and dropout on, so every random stream a strategy could disturb is in use.
RANDOM_STREAMS = ("data.max_shift=2", "data.flip=true", "model.head_dropout=0.2")


class RecordBatches(Callback):
    """Keeps the first ``per_epoch`` training batches of every epoch, as the model sees them."""

    def __init__(self, per_epoch: int = 2) -> None:
        self.per_epoch = per_epoch
        self.batches: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx < self.per_epoch:
            images, targets, mask = (t.detach().cpu().clone() for t in batch)
            self.batches.append((trainer.current_epoch, batch_idx, images, targets, mask))


def _train_recording(compose_train, tmp_path, name: str, overrides: list[str]) -> RecordBatches:
    import mtl_celeba.train as train_module

    recorder = RecordBatches()
    original = train_module.instantiate_callbacks
    train_module.instantiate_callbacks = lambda cfg: [*original(cfg), recorder]
    try:
        cfg = compose_train(
            [*RANDOM_STREAMS, *overrides, "test=false", "+trainer.limit_val_batches=1"],
            run_dir=tmp_path / name,
        )
        assert train(cfg, tmp_path / name)["status"] == "completed"
    finally:
        train_module.instantiate_callbacks = original
    return recorder


def test_every_strategy_sees_the_same_batches(compose_train, tmp_path):
    """Batch order, pixels (after the device-side flip and shift) and labels agree across
    strategies, in the first epoch and after DST's first gate draw."""
    strategies = ["mtl", "dst", "dst_shuffled", "dst_uniform", "dst_norm_only", "random_drop"]
    recorded = {
        strategy: _train_recording(
            compose_train,
            tmp_path,
            strategy,
            [f"strategy={strategy}", "+trainer.limit_train_batches=3", "seed=7"],
        ).batches
        for strategy in strategies
    }
    reference = recorded["mtl"]
    assert [(epoch, index) for epoch, index, *_ in reference] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first, second = reference[0][2], reference[2][2]
    assert not torch.equal(first, second), "epochs see different batches"
    for strategy in strategies[1:]:
        for ours, theirs in zip(recorded[strategy], reference, strict=True):
            assert ours[:2] == theirs[:2]
            for a, b in zip(ours[2:], theirs[2:], strict=True):
                assert torch.equal(a, b), f"{strategy} saw another batch at {ours[:2]}"


def test_a_strategy_that_changes_nothing_ends_exactly_like_mtl(compose_train, tmp_path):
    """DST with only the regularisation term (P = 1) and no loss normalisation gates nothing
    and weighs nothing: after its full measurement pass and its per-epoch draws it must end
    with bit-identical weights and test metrics to plain MTL with the same seed."""
    common = ["seed=3", "trainer.max_epochs=2"]
    mtl = train(
        compose_train(["strategy=mtl", *RANDOM_STREAMS, *common], run_dir=tmp_path / "mtl"),
        tmp_path / "mtl",
    )
    noop = train(
        compose_train(
            [
                "strategy=dst",
                "strategy.metrics=[regularization]",
                "strategy.normalize_initial_losses=false",
                *RANDOM_STREAMS,
                *common,
            ],
            run_dir=tmp_path / "dst",
        ),
        tmp_path / "dst",
    )
    assert noop["schedule"]["mean_drop_rate"] == dict.fromkeys(noop["attributes"], 0.0)
    assert noop["test"] == mtl["test"]
    assert noop["val"] == mtl["val"]
    weights = {
        name: torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)[
            "state_dict"
        ]
        for name in ("mtl", "dst")
    }
    assert weights["mtl"].keys() == weights["dst"].keys()
    for key, value in weights["mtl"].items():
        assert torch.equal(value, weights["dst"][key]), f"{key} differs"


def test_dst_norm_only_drops_nothing(compose_train, tmp_path):
    """dst_norm_only computes DST's full schedule but applies none of its gates: without its
    loss normalisation it must end bit-identical to MTL, and record a drop rate of 0."""
    common = ["seed=3", "trainer.max_epochs=2", *RANDOM_STREAMS]
    mtl = train(
        compose_train(["strategy=mtl", *common], run_dir=tmp_path / "mtl"), tmp_path / "mtl"
    )
    run = tmp_path / "norm_only"
    norm_only = train(
        compose_train(
            ["strategy=dst_norm_only", "strategy.normalize_initial_losses=false", *common],
            run_dir=run,
        ),
        run,
    )
    schedule = norm_only["schedule"]
    assert schedule["strategy"] == "dst_norm_only"
    assert schedule["realised_drop_rate"] == dict.fromkeys(norm_only["attributes"], 0.0)
    assert norm_only["test"] == mtl["test"]
