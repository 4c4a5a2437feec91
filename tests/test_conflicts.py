"""Gradient conflicts: the cosines and norms from a Gramian, their per-epoch recording, and
that measuring them (strategy.diagnostics) leaves training unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mtl_celeba.errors import ConfigError
from mtl_celeba.run.layout import GRADIENT_CONFLICTS, LAST_CHECKPOINT
from mtl_celeba.run.tensorboard import conflict_heatmap_image
from mtl_celeba.scheduling.callbacks import ConflictMonitor
from mtl_celeba.scheduling.conflicts import (
    ConflictSums,
    epoch_record,
    gradient_conflicts,
    off_diagonal,
    summary_scalars,
)


def numpy_cosines(gradients: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(gradients, axis=1)
    return gradients @ gradients.T / np.outer(norms, norms)


@pytest.mark.parametrize("tasks", [2, 3, 8, 40])
def test_cosines_and_norms_match_numpy(tasks):
    rng = np.random.default_rng(tasks)
    gradients = rng.normal(size=(tasks, 50)) * rng.uniform(0.01, 10, size=(tasks, 1))
    gramian = torch.as_tensor(gradients @ gradients.T, dtype=torch.float32)
    cosines, norms = gradient_conflicts(gramian)
    np.testing.assert_allclose(cosines.numpy(), numpy_cosines(gradients), atol=1e-5)
    np.testing.assert_allclose(norms.numpy(), np.linalg.norm(gradients, axis=1), rtol=1e-5)


def test_opposite_gradients_have_cosine_minus_one():
    gradients = np.array([[1.0, 2.0], [-2.0, -4.0], [2.0, -1.0]])
    cosines, _ = gradient_conflicts(torch.as_tensor(gradients @ gradients.T))
    assert cosines[0, 1] == pytest.approx(-1.0) and cosines[0, 2] == pytest.approx(0.0)


def test_absent_and_zero_norm_tasks_are_nan_not_a_crash():
    gradients = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [3.0, -1.0]])
    present = torch.tensor([True, True, True, False])  # task 3 had no label in the step
    cosines, norms = gradient_conflicts(torch.as_tensor(gradients @ gradients.T), present)
    assert torch.isnan(cosines[1]).all() and torch.isnan(cosines[:, 1]).all()  # zero norm
    assert torch.isnan(cosines[3]).all() and torch.isnan(norms[3])  # absent
    assert norms[1] == 0.0  # a measured zero gradient keeps its norm
    assert cosines[0, 2] == pytest.approx(1 / math.sqrt(2))


def test_epoch_means_skip_the_steps_where_a_pair_was_not_measured():
    sums = ConflictSums(2)
    first = np.array([[1.0, 0.0], [1.0, 1.0]])  # cosine 1/sqrt(2)
    second = np.array([[1.0, 0.0], [-1.0, 0.0]])  # cosine -1
    sums.add(*gradient_conflicts(torch.as_tensor(first @ first.T)))
    sums.add(*gradient_conflicts(torch.as_tensor(second @ second.T)))
    sums.add(*gradient_conflicts(torch.as_tensor(first @ first.T), torch.tensor([True, False])))
    flat_sums, counts = sums.flat()
    record = epoch_record(4, sums.steps, flat_sums / counts, 2)
    assert record["steps"] == 3
    assert record["cosine"][0][1] == pytest.approx((1 / math.sqrt(2) - 1) / 2, abs=1e-6)
    assert record["norm"] == [1.0, pytest.approx((math.sqrt(2) + 1) / 2, abs=1e-6)]
    assert summary_scalars(record)["conflicting_pairs"] == 1.0
    assert off_diagonal([[1.0, None], [None, 1.0]]) == []


def test_heatmap_image_is_diverging_and_centred_at_zero():
    image = conflict_heatmap_image(np.array([[1.0, -1.0], [0.0, np.nan]]), cell=3)
    assert image.shape == (6, 6, 3) and image.dtype == np.uint8
    blue, red, white, grey = image[0, 0], image[0, 3], image[3, 0], image[3, 3]
    assert blue[2] > blue[0] and red[0] > red[2]
    assert (white == 255).all() and len(set(grey.tolist())) == 1 and grey[0] < 255


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"strategy\.diagnostics_every"):
        ConflictMonitor(diagnostics=True, every=0)
    with pytest.raises(ConfigError, match=r"strategy\.diagnostics is"):
        ConflictMonitor(diagnostics="yes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_gramian_method_records_every_epoch(compose_train, tmp_path):
    from mtl_celeba.train import train

    overrides = ["strategy=mgda", "test=false", "+trainer.limit_train_batches=3"]
    results = train(compose_train(overrides), tmp_path / "run")
    assert results["status"] == "completed"
    record = json.loads((tmp_path / "run" / GRADIENT_CONFLICTS).read_text())
    tasks = results["attributes"]
    assert record["tasks"] == tasks and record["source"] == "gramian"
    assert record["gradients"] == "features"
    assert [epoch["epoch"] for epoch in record["epochs"]] == [1, 2]
    for epoch in record["epochs"]:
        assert epoch["steps"] == 3
        cosine = np.array(epoch["cosine"], dtype=float)
        assert cosine.shape == (len(tasks), len(tasks))
        np.testing.assert_allclose(np.diag(cosine), 1.0, atol=1e-6)
        np.testing.assert_allclose(cosine, cosine.T, atol=1e-6)
        assert np.all(np.abs(cosine) <= 1) and len(epoch["norm"]) == len(tasks)
        assert all(norm > 0 for norm in epoch["norm"])


@pytest.mark.slow
def test_diagnostics_measure_without_changing_training(compose_train, tmp_path):
    from mtl_celeba.train import train

    def final_weights(name: str, *overrides: str) -> dict[str, torch.Tensor]:
        run = tmp_path / name
        options = ["strategy=dst", "test=false", "+trainer.limit_train_batches=3", *overrides]
        assert train(compose_train(options, run_dir=run), run)["status"] == "completed"
        return torch.load(run / LAST_CHECKPOINT, weights_only=False)["state_dict"]

    off = final_weights("off")
    on = final_weights("on", "strategy.diagnostics=true", "strategy.diagnostics_every=2")
    assert not (tmp_path / "off" / GRADIENT_CONFLICTS).exists()
    assert off.keys() == on.keys()
    for key in off:
        torch.testing.assert_close(on[key], off[key], rtol=0, atol=0, msg=key)
    record = json.loads((tmp_path / "on" / GRADIENT_CONFLICTS).read_text())
    assert record["source"] == "diagnostics" and record["every"] == 2
    # global steps 0, 2 in epoch 1 and 4 in epoch 2 (three steps an epoch)
    assert [epoch["steps"] for epoch in record["epochs"]] == [2, 1]


def write_conflicts(run_dir, tasks, cosines, source="gramian"):
    epochs = [
        {"epoch": e, "steps": 3, "cosine": c, "norm": [1.0] * len(tasks)}
        for e, c in enumerate(cosines, 1)
    ]
    record = {
        "tasks": tasks,
        "source": source,
        "gradients": "features",
        "every": 1,
        "epochs": epochs,
    }
    (run_dir / GRADIENT_CONFLICTS).write_text(json.dumps(record))


def test_report_draws_a_heatmap_per_configuration_with_dst_drops(tmp_path):
    from test_report import TASKS, write_run

    from mtl_celeba.report.__main__ import main
    from mtl_celeba.report.plots import CONFLICTS_PLOT

    sweep = tmp_path / "sweep"
    accuracies = dict.fromkeys(TASKS, 0.8)
    conflicting = [[1.0, -0.4, 0.1], [-0.4, 1.0, None], [0.1, None, 1.0]]
    aligned = [[1.0, 0.2, 0.3], [0.2, 1.0, 0.5], [0.3, 0.5, 1.0]]
    for job, (strategy, seed) in enumerate([("mgda", 0), ("mgda", 1), ("dst", 0), ("mtl", 0)]):
        run = write_run(sweep / str(job), strategy, seed, accuracies)
        if strategy == "dst":
            results = json.loads((run / "metrics.json").read_text())
            drops = dict(zip(TASKS, [0.5, 0.0, 0.25], strict=True))
            results["schedule"] = {"strategy": "dst", "epochs": 2, "realised_drop_rate": drops}
            (run / "metrics.json").write_text(json.dumps(results))
            write_conflicts(run, list(TASKS), [conflicting, aligned], source="diagnostics")
        elif strategy == "mgda":
            write_conflicts(run, list(TASKS), [conflicting if seed == 0 else aligned])
    main([str(sweep)])
    markdown = (sweep / "report.md").read_text(encoding="utf-8")
    assert "## Gradient conflicts" in markdown and f"]({CONFLICTS_PLOT})" in markdown
    assert (sweep / CONFLICTS_PLOT).stat().st_size > 10_000

    from mtl_celeba.report.plots import average_conflicts
    from mtl_celeba.report.runs import collect_runs, find_run_dirs, read_conflicts

    scores, _ = collect_runs(find_run_dirs([sweep]))
    conflicts, skipped = read_conflicts(scores)
    assert skipped == {} and sorted(conflicts["configuration"]) == ["dst (all)", "mgda", "mgda"]
    averaged = average_conflicts(conflicts).set_index("configuration")
    mgda, dst = averaged.loc["mgda"], averaged.loc["dst (all)"]
    assert mgda["seeds"] == 2 and mgda["drop_rate"] is None
    assert mgda["cosine"][0, 1] == pytest.approx(-0.1)  # (-0.4 + 0.2) / 2 over seeds
    assert mgda["cosine"][1, 2] == pytest.approx(0.5)  # measured in one seed only
    assert dst["cosine"][0, 1] == pytest.approx(-0.1)  # and over epochs
    np.testing.assert_allclose(dst["drop_rate"], [0.5, 0.0, 0.25])
    assert dst["mean_conflict"][0] == pytest.approx((-0.1 + 0.2) / 2)


def test_no_conflicts_section_without_a_recording(tmp_path):
    from test_report import TASKS, write_run

    from mtl_celeba.report.__main__ import main

    write_run(tmp_path / "sweep" / "0", "mtl", 0, dict.fromkeys(TASKS, 0.8))
    main([str(tmp_path / "sweep")])
    assert "Gradient conflicts" not in (tmp_path / "sweep" / "report.md").read_text()


@pytest.mark.slow
def test_a_resumed_run_records_what_an_uninterrupted_one_does(compose_train, tmp_path):
    from mtl_celeba.train import train

    overrides = ["strategy=mgda", "test=false", "+trainer.limit_train_batches=3"]
    overrides += ["model.scheduler.T_max=2"]
    train(compose_train(overrides, run_dir=tmp_path / "full"), tmp_path / "full")
    part = [*overrides, "trainer.max_epochs=1"]
    train(compose_train(part, run_dir=tmp_path / "part"), tmp_path / "part")
    resumed = [*overrides, f"ckpt_path={tmp_path / 'part' / LAST_CHECKPOINT}"]
    train(compose_train(resumed, run_dir=tmp_path / "resumed"), tmp_path / "resumed")
    full = json.loads((tmp_path / "full" / GRADIENT_CONFLICTS).read_text())
    again = json.loads((tmp_path / "resumed" / GRADIENT_CONFLICTS).read_text())
    assert [e["epoch"] for e in again["epochs"]] == [1, 2]
    assert again == full


class RecordConflicts(Callback):
    """Writes each rank's conflict epochs when training ends."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        epochs = pl_module.conflict_monitor.epochs
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(epochs))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mtl", "pcgrad"])
def test_ddp_ranks_record_the_same_mean(compose_train, tmp_path, method):
    from mtl_celeba.config import instantiate

    cfg = compose_train([f"strategy={method}"])
    monitor = ConflictMonitor(diagnostics=True, every=2, path=str(tmp_path / "conflicts.json"))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[instantiate(cfg.strategy.callback), monitor, RecordConflicts(str(tmp_path))],
    )
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    assert rank0 == json.loads((tmp_path / "rank1.json").read_text())
    assert rank0[0]["steps"] == (3 if method == "pcgrad" else 2)
    assert json.loads((tmp_path / "conflicts.json").read_text())["epochs"] == rank0
