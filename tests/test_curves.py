"""Per-run curves: the CSV logger beside TensorBoard, the per-epoch table, curves.png."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from mtl_celeba.run.curves import (
    curves_figure,
    epoch_table,
    read_metrics_csv,
    train_loss,
    write_run_curves,
)
from mtl_celeba.run.layout import METRICS_CSV

PNG = b"\x89PNG\r\n\x1a\n"


def lightning_rows(epochs: int = 3) -> pd.DataFrame:
    """Rows as Lightning's CSVLogger writes them for a two-task run, then the best checkpoint's
    validation after fit (epoch == epochs trained) and the test."""
    rows = []
    for epoch in range(epochs):
        step = 4 * (epoch + 1)
        rows += [
            {"epoch": epoch, "step": step - 2, "train/loss_step": 1.5},
            {
                "epoch": epoch,
                "step": step,
                "val/loss": 1.2 - 0.1 * epoch,
                "val/accuracy/mean": 0.6 + 0.1 * epoch,
                "val/accuracy/A": 0.5 + 0.1 * epoch,
                "val/accuracy/B": 0.7 + 0.1 * epoch,
            },
            {
                "epoch": epoch,
                "step": step,
                "train/loss_epoch": 9.0,  # the gated loss: not what the curve shows
                "train/loss/A": 0.7 - 0.1 * epoch,
                "train/loss/B": 0.6 - 0.1 * epoch,
                "train/accuracy/mean": 0.65 + 0.1 * epoch,
            },
        ]
    rows += [
        {"epoch": epochs, "step": 4 * epochs, "val/accuracy/mean": 0.8, "val/accuracy/A": 0.7},
        {"epoch": epochs, "step": 4 * epochs, "test/accuracy/mean": 0.75},
    ]
    return pd.DataFrame(rows)


def test_epoch_table_keeps_training_epochs_only() -> None:
    table = epoch_table(lightning_rows(3))
    assert table.index.tolist() == [0, 1, 2]
    assert table["val/accuracy/mean"].tolist() == pytest.approx([0.6, 0.7, 0.8])
    assert table["train/accuracy/mean"].tolist() == pytest.approx([0.65, 0.75, 0.85])
    # train loss on val/loss's scale: the sum of the per-task losses, not the gated loss
    assert train_loss(table).tolist() == pytest.approx([1.3, 1.1, 0.9])
    assert epoch_table(pd.DataFrame()).empty


def test_curves_figure_has_loss_accuracy_and_task_panels() -> None:
    figure = curves_figure(epoch_table(lightning_rows(2)), title="run")
    loss, mean, tasks = figure.axes[:3]
    assert len(loss.lines) == 2 and len(mean.lines) == 2
    assert [line.get_label() for line in tasks.lines] == ["A", "B"]
    assert tasks.lines[1].get_ydata().tolist() == pytest.approx([0.7, 0.8])


def test_write_run_curves_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert write_run_curves(tmp_path) is None  # no CSV: nothing drawn, no error
    (tmp_path / METRICS_CSV).parent.mkdir()
    (tmp_path / METRICS_CSV).write_bytes(b"\x00\xff not a csv")
    with caplog.at_level(logging.WARNING):
        assert write_run_curves(tmp_path) is None
    assert "curves.png not drawn" in caplog.text
    lightning_rows(2).to_csv(tmp_path / METRICS_CSV, index=False)
    assert write_run_curves(tmp_path).read_bytes()[:8] == PNG


@pytest.mark.slow
def test_training_run_writes_csv_and_curves(compose_train, tmp_path: Path) -> None:
    from mtl_celeba.train import train

    run_dir = tmp_path / "run"
    results = train(compose_train(["strategy=dst", "attributes=assignment8"]), run_dir)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")), "TensorBoard kept"
    table = epoch_table(read_metrics_csv(run_dir))
    assert table.index.tolist() == [0, 1] == list(range(results["epochs_trained"]))
    for task in results["attributes"]:
        assert table[f"val/accuracy/{task}"].between(0, 1).all()
        assert table[f"train/loss/{task}"].gt(0).all()
    assert table["val/loss"].notna().all() and table["train/accuracy/mean"].notna().all()
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG


def test_logger_groups(compose_train) -> None:
    assert set(compose_train().logger) == {"tensorboard", "csv"}  # the default: both
    assert set(compose_train(["logger=tensorboard"]).logger) == {"tensorboard"}
    assert set(compose_train(["logger=csv"]).logger) == {"csv"}


def test_accuracy_by_strategy_draws_the_majority_rate_and_no_error_bars_for_one_seed(
    tmp_path, monkeypatch
):
    import pandas as pd
    from matplotlib.collections import LineCollection

    from mtl_celeba.report import plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.update(figure=figure))
    tasks = ["Male", "Bald"]
    per_task = pd.DataFrame(
        [
            dict(
                configuration=c, backbone="resnet18", attribute_set="a", task=t, mean=m, std=s, n=n
            )
            for c, n, s in (("dst", 1, float("nan")), ("mtl", 3, 0.02))
            for t, m in zip(tasks, (0.8, 0.9), strict=True)
        ]
    )
    overall = pd.DataFrame(
        dict(configuration=["dst", "mtl"], backbone="resnet18", attribute_set="a",
             mean=[0.85, 0.85], std=[float("nan"), 0.01], n=[1, 3])
    )  # fmt: skip
    stl = pd.DataFrame(columns=["backbone", "task", "mean", "std", "n"])
    colours = plots.colours_for(["dst", "mtl", "stl"])
    majority = {"Male": 0.6, "Bald": 0.97}
    plots.plot_accuracy_by_strategy(
        per_task, overall, stl, "accuracy", colours, tmp_path / "a.png", majority
    )
    (axis,) = drawn["figure"].axes
    error_bars = [c for c in axis.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(error_bars) == 1 and len(error_bars[0].lines[2][0].get_segments()) == 3
    lines = [c for c in axis.collections if isinstance(c, LineCollection)]
    majority_lines = [c for c in lines if c.get_label() == "majority class"]
    assert majority_lines and [s[0][1] for s in majority_lines[0].get_segments()] == pytest.approx(
        [60.0, 97.0, 78.5]
    )
    assert axis.get_ylim()[0] == 55.0 and "axis from 55" in axis.get_ylabel()
