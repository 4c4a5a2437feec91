"""The DST callback (and the random-drop baseline) inside real, short training runs."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from mtl_celeba.config import instantiate
from mtl_celeba.scheduling.dst import HISTORY_COLUMNS
from mtl_celeba.train import train

pytestmark = pytest.mark.slow


def read_history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "dst_history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_dst_run_writes_history_and_summary(compose_train, tmp_path):
    cfg = compose_train(["strategy=dst", "trainer.max_epochs=3", "attributes=heatmap8"])
    results = train(cfg, tmp_path / "run")
    rows = read_history(tmp_path / "run")
    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert len(rows) == 3 * 8
    for row in rows:
        assert 0.0 <= float(row["activation_probability"]) <= 1.0
        assert row["gate_next"] in ("0", "1")
    for epoch in ("1", "2", "3"):
        assert any(r["gate_next"] == "1" for r in rows if r["epoch"] == epoch), (
            "a task trains every epoch"
        )
    # row k's gate is what the task trained with in epoch k: all on in epoch 1, then the gate
    # drawn after the epoch before
    for task in results["attributes"]:
        history = sorted((r for r in rows if r["task"] == task), key=lambda r: int(r["epoch"]))
        assert history[0]["gate"] == "1.0"
        for before, after in itertools.pairwise(history):
            assert float(after["gate"]) == float(before["gate_next"])
    schedule = results["schedule"]
    assert schedule["strategy"] == "dst" and schedule["epochs"] == 3
    assert set(schedule["mean_drop_rate"]) == set(results["attributes"])
    # epoch 1 trains every task; later epochs follow gate_next of the epoch before
    for task in results["attributes"]:
        drawn = [
            int(r["gate_next"]) for r in rows if r["task"] == task and r["epoch"] in ("1", "2")
        ]
        assert schedule["active_epochs"][task] == 1 + sum(drawn)
    assert results["config"]["drop_metrics"] == [
        "regularization",
        "depth",
        "count",
        "incompleteness",
        "stagnancy",
    ]


def test_single_metric_leaves_other_columns_empty(compose_train, tmp_path):
    cfg = compose_train(["strategy=dst", "strategy.metrics=[stagnancy]", "trainer.max_epochs=2"])
    train(cfg, tmp_path / "run")
    rows = read_history(tmp_path / "run")
    assert all(row["p_depth"] == "" and row["p_incompleteness"] == "" for row in rows)
    assert all(row["p_stagnancy"] != "" for row in rows)
    # a single metric is the activation probability itself
    assert all(
        float(row["activation_probability"]) == pytest.approx(float(row["p_stagnancy"]))
        for row in rows
    )


def test_seeded_runs_repeat_their_gates(compose_train, tmp_path):
    for name in ("a", "b"):
        train(
            compose_train(
                ["strategy=dst", "seed=5", "trainer.max_epochs=3"], run_dir=tmp_path / name
            ),
            tmp_path / name,
        )
    assert (tmp_path / "a" / "dst_history.csv").read_text() == (
        tmp_path / "b" / "dst_history.csv"
    ).read_text()


def test_hidden_labels_give_unequal_label_counts(compose_train, tmp_path):
    cfg = compose_train(
        [
            "strategy=dst",
            "trainer.max_epochs=2",
            "+data.hide_labels={Smiling: 0.5, Young: 0.8}",
            "data.hide_labels_seed=1",
        ]
    )
    results = train(cfg, tmp_path / "run")
    counts = results["label_counts"]
    full = counts["Male"]
    assert counts["Smiling"] < full and counts["Young"] < counts["Smiling"]
    rows = read_history(tmp_path / "run")
    p_count = {r["task"]: float(r["p_count"]) for r in rows if r["epoch"] == "1"}
    assert p_count["Male"] == 1.0 and p_count["Young"] == pytest.approx(counts["Young"] / full)


@pytest.mark.parametrize("strategy", ["random_drop", "mtl"])
def test_baselines_write_results(compose_train, tmp_path, strategy):
    results = train(compose_train([f"strategy={strategy}"]), tmp_path / "run")
    assert results["status"] == "completed"
    assert results["config"]["strategy"] == strategy
    assert results["schedule"]["strategy"] == strategy
    assert ("mean_drop_rate" in results["schedule"]) == (strategy == "random_drop")
    assert not (tmp_path / "run" / "dst_history.csv").exists()


def test_single_task_run(compose_train, tmp_path):
    results = train(compose_train(["strategy=stl", "strategy.task=Smiling"]), tmp_path / "run")
    assert results["attributes"] == ["Smiling"]
    assert results["config"]["strategy"] == "stl"


class RecordGates(Callback):
    """Writes each rank's gates, probabilities and local losses per epoch to a JSON file."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.records: list[dict] = []

    def on_train_epoch_end(self, trainer, pl_module):
        dst = next(c for c in trainer.callbacks if c.__class__.__name__ == "DroppedScheduledTask")
        self.records.append(
            {
                "gates": dst.gates.tolist(),
                "probabilities": dst.schedule.probabilities.tolist(),
                "local_loss": pl_module.epoch_task_losses().tolist(),
            }
        )
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(self.records))


def test_ddp_ranks_share_losses_and_gates(compose_train, tmp_path):
    cfg = compose_train(["strategy=dst", "strategy.measurement_batches=2"])
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[instantiate(cfg.strategy.callback), RecordGates(str(tmp_path))],
    )
    trainer.fit(model, datamodule=datamodule)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert len(rank0) == len(rank1) == 3
    assert [r["local_loss"] for r in rank0] != [r["local_loss"] for r in rank1], (
        "ranks see different data"
    )
    assert [r["probabilities"] for r in rank0] == [r["probabilities"] for r in rank1]
    assert [r["gates"] for r in rank0] == [r["gates"] for r in rank1]


def test_per_step_gating_records_the_gates_it_applied(compose_train, tmp_path):
    """With gate_every=step the recorded shares are the per-step ones, not one draw per epoch."""
    cfg = compose_train(["strategy=random_drop", "strategy.gate_every=step", "data.batch_size=16"])
    results = train(cfg, tmp_path / "run")
    schedule = results["schedule"]
    assert schedule["gate_every"] == "step"
    rates = list(schedule["realised_drop_rate"].values())
    assert all(0.0 <= rate < 1.0 for rate in rates)
    assert any(rate > 0.0 for rate in rates), "some task was dropped in some step"
    # epoch 1 trains everything; epoch 2 redraws every step, so shares lie strictly between
    active = schedule["active_epochs"]
    assert any(1.0 < value < 2.0 for value in active.values())
