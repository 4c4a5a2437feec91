"""Per-run curves: the CSV logger beside TensorBoard, the per-epoch table, curves.png."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from mtl_celeba.run.curves import (
    accuracy_range,
    curves_figure,
    epoch_table,
    grid_shape,
    read_metrics_csv,
    run_title,
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
    loss, mean, *tasks = figure.axes
    assert len(loss.lines) == 2 and len(mean.lines) == 2
    assert [axis.get_title() for axis in tasks] == ["A", "B"]
    assert tasks[1].lines[0].get_ydata().tolist() == pytest.approx([0.7, 0.8])


def task_rows(tasks: int, epochs: int = 3) -> pd.DataFrame:
    """A per-epoch table of ``tasks`` tasks: task i's validation accuracy rises from 0.55 + i/200."""
    names = [f"T{i:02d}" for i in range(tasks)]
    rows = []
    for epoch in range(epochs):
        row = {"epoch": epoch, "step": epoch, "train/loss_epoch": 1.0 - 0.1 * epoch}
        row |= {f"val/accuracy/{n}": 0.55 + i / 200 + 0.05 * epoch for i, n in enumerate(names)}
        row["val/accuracy/mean"] = sum(row[f"val/accuracy/{n}"] for n in names) / tasks
        row["train/accuracy/mean"] = row["val/accuracy/mean"] + 0.02
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("tasks", "grid"), [(1, (1, 1)), (8, (2, 4)), (40, (5, 8))])
def test_curves_panels_majority_line_and_honest_axes(tasks: int, grid: tuple[int, int]) -> None:
    assert grid_shape(tasks) == grid
    table = epoch_table(task_rows(tasks))
    majority = {f"T{i:02d}": 0.5 + 0.012 * i for i in range(tasks)}  # some above the curves
    figure = curves_figure(table, title="run 3", majority=majority)
    _loss, mean, *panels = figure.axes
    shown = [axis for axis in panels if axis.get_visible()]
    assert len(panels) == grid[0] * grid[1] and len(shown) == tasks
    assert [axis.get_title() for axis in shown] == list(majority)
    accuracies = table[[f"val/accuracy/{t}" for t in majority]].to_numpy()
    low, high = shown[0].get_ylim()
    for axis, (task, rate) in zip(shown, majority.items(), strict=True):
        dashed = [line for line in axis.lines if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(rate), task
        assert axis.get_ylim() == (low, high)  # one shared y-range: heights compare
    # the axis holds every accuracy and every majority rate, starts below them, and says so
    assert low <= min(accuracies.min(), min(majority.values())) - 0.01 and low > 0
    assert high >= accuracies.max() and high <= 1.0
    assert f"axis {100 * low:.0f}-{100 * high:.0f}%" in figure.subfigs[1]._suptitle.get_text()
    (mean_rate,) = [line for line in mean.lines if line.get_label() == "majority class"]
    assert mean_rate.get_ydata()[0] == pytest.approx(sum(majority.values()) / tasks)
    assert mean.get_ylim()[0] <= mean_rate.get_ydata()[0]
    assert "axis" in mean.get_title()
    assert all(axis.get_legend() is None for axis in panels)  # no legend over the next panel
    assert figure.get_size_inches()[0] >= (15 if tasks == 40 else 11)


def test_accuracy_range() -> None:
    assert accuracy_range([0.62, 0.71, 0.58]) == pytest.approx((0.55, 0.75))
    assert accuracy_range([0.999, 0.2]) == pytest.approx((0.15, 1.0))
    assert accuracy_range([float("nan")]) == (0.0, 1.0)


def test_write_run_curves_reads_the_majority_rate_and_titles_without_paths(
    tmp_path: Path,
) -> None:
    run = tmp_path / "deep" / "7"
    (run / METRICS_CSV).parent.mkdir(parents=True)
    task_rows(2).to_csv(run / METRICS_CSV, index=False)
    results = {
        "config": {"strategy": "dst", "backbone": "cpu_cnn", "attribute_set": "custom"},
        "attributes": ["T00", "T01"],
        "majority_accuracy": {"T00": 0.6, "T01": 0.7},  # test
        "val_majority_accuracy": {"T00": 0.62, "T01": 0.66},
    }
    (run / "metrics.json").write_text(json.dumps(results))
    assert run_title(run, results) == "run 7: dst · cpu_cnn · custom (2 tasks)"
    drawn = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mtl_celeba.io.save_figure", lambda figure, path: drawn.update(f=figure))
        write_run_curves(run)
    title = drawn["f"]._suptitle.get_text()
    assert str(tmp_path) not in title and "/" not in title
    # the curves are validation accuracies: the val split's majority rate is drawn beside them
    dashed = [line.get_ydata()[0] for a in drawn["f"].axes[2:] for line in a.lines[1:]]
    assert dashed == pytest.approx([0.62, 0.66])
    assert "(val split)" in drawn["f"].subfigs[1]._suptitle.get_text()
    del results["val_majority_accuracy"]  # a run from before it was recorded: test's, said so
    (run / "metrics.json").write_text(json.dumps(results))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mtl_celeba.io.save_figure", lambda figure, path: drawn.update(f=figure))
        write_run_curves(run)
    dashed = [line.get_ydata()[0] for a in drawn["f"].axes[2:] for line in a.lines[1:]]
    assert dashed == pytest.approx([0.6, 0.7])
    assert "(test split)" in drawn["f"].subfigs[1]._suptitle.get_text()


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
    # the baseline of the split the curves show, recorded for every task
    assert set(results["val_majority_accuracy"]) == set(results["attributes"])
    assert all(0.0 <= v <= 1.0 for v in results["val_majority_accuracy"].values())


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
