"""A run's learning curves, from the CSV that Lightning's ``CSVLogger`` writes beside TensorBoard.

``RUN/csv/metrics.csv`` has one row per logging call with ``epoch`` and ``step`` columns and
one column per metric name: ``train/loss_epoch``, ``train/loss/<task>``,
``{train,val}/accuracy/mean``, ``val/loss``, ``val/accuracy/<task>``, ... .
:func:`epoch_table` turns it into one row per training epoch; :func:`curves_figure` draws
``curves.png`` from that (a pure function of the table and the majority-class rates): loss and
mean accuracy on top, one small panel per task below (a grid of up to 8 columns, so 40 tasks
stay readable); :func:`write_run_curves` is what ``mtl-train`` calls at the end of a run,
and never fails it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from mtl_celeba.run.layout import CURVES_PNG, METRICS_CSV
from mtl_celeba.run.results import read_results

log = logging.getLogger(__name__)

#: Where the ``csv`` logger (conf/logger/csv.yaml) writes, relative to the run folder.
#: Columns of every split's per-task metrics that are not tasks.
NOT_TASKS = frozenset({"mean"})


def read_metrics_csv(run_dir: str | Path) -> pd.DataFrame:
    """A run's ``csv/metrics.csv`` (an empty frame if the run has none)."""
    path = Path(run_dir) / METRICS_CSV
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path)


def epoch_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per training epoch (index ``epoch``, 0-based), a column per metric.

    Lightning writes step and epoch values on separate rows; per epoch the first value of each
    column is kept. Epochs without any ``train/`` epoch value are left out: after ``fit``,
    mtl-train validates the best checkpoint again, logged as the epoch after the last one, and
    that row repeats an earlier epoch rather than extending the curve.
    """
    if metrics.empty or "epoch" not in metrics:
        return pd.DataFrame()
    rows = metrics.dropna(subset=["epoch"]).astype({"epoch": int})
    per_epoch = rows.groupby("epoch", sort=True).first()
    train = [c for c in per_epoch if c.startswith("train/") and not c.endswith("_step")]
    if not train:
        return pd.DataFrame()
    return per_epoch[per_epoch[train].notna().any(axis=1)].drop(columns=["step"], errors="ignore")


def _tasks(table: pd.DataFrame, split: str, metric: str) -> list[str]:
    prefix = f"{split}/{metric}/"
    return [
        c.removeprefix(prefix)
        for c in table
        if c.startswith(prefix) and c.removeprefix(prefix) not in NOT_TASKS
    ]


def train_loss(table: pd.DataFrame) -> pd.Series | None:
    """The training loss per epoch on the scale of ``val/loss``: the sum of the per-task mean losses.

    ``train/loss_epoch`` is the optimised loss, which DST's gates and loss weights change; the
    per-task losses ``train/loss/<task>`` are measured for every task whatever its gate, as
    ``val/loss`` is. Falls back to ``train/loss_epoch`` when the per-task columns are absent.
    """
    tasks = _tasks(table, "train", "loss")
    if tasks:
        return table[[f"train/loss/{task}" for task in tasks]].sum(axis=1, min_count=1)
    return table.get("train/loss_epoch")


#: The widest grid of per-task panels: 40 tasks are 5 rows of 8.
MAX_COLUMNS = 8


def accuracy_range(values: Sequence[float], step: float = 0.05) -> tuple[float, float]:
    """The y-range of an accuracy axis: from the lowest value (accuracies and majority-class
    rates alike) rounded down to ``step``, to the highest rounded up, within [0, 1], at least
    a hundredth clear of both, so no point sits on the frame.

    The axis does not start at zero (accuracies differ by a few points), but it always holds
    the majority-class rate, so a curve is never shown high above a baseline it does not beat.
    """
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return 0.0, 1.0
    bottom = max(0.0, np.floor((finite.min() - 0.01) / step) * step)
    top = min(1.0, np.ceil((finite.max() + 0.01) / step) * step)
    return float(bottom), float(max(top, bottom + step))


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of the per-task panels: about 1.6 times wider than tall, at most
    MAX_COLUMNS columns (1 task: 1x1; 8 tasks: 2x4; 40 tasks: 5x8)."""
    columns = max(1, min(count, MAX_COLUMNS, int(np.ceil(np.sqrt(1.6 * count)))))
    return -(-count // columns), columns


def _range_words(low: float, high: float) -> str:
    return f"axis {100 * low:.0f}-{100 * high:.0f}%"


def curves_figure(
    table: pd.DataFrame,
    title: str = "",
    majority: Mapping[str, float] | None = None,
    majority_split: str = "val",
) -> Figure:
    """Loss and mean accuracy (train and validation) per epoch on top, then one small panel per
    task with its validation accuracy.

    ``majority`` (task -> accuracy on ``majority_split`` of always predicting the training
    majority class, from metrics.json) is drawn as a dashed line where accuracies are: in every task panel, and its
    mean over the tasks in the mean-accuracy panel. Accuracy axes start at or below the
    majority rate and say their range; the task panels share one y-range, so their heights
    compare. Every legend sits inside its own panel.
    """
    majority = dict(majority or {})
    tasks = _tasks(table, "val", "accuracy")
    rows, columns = grid_shape(max(len(tasks), 1))
    width = max(11.0, 1.9 * columns)
    figure = Figure(figsize=(width, 3.4 + 1.55 * rows), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[3.4, 1.55 * rows])
    loss_axis, mean_axis = top.subplots(1, 2)
    epochs = table.index.to_numpy() + 1
    for axis, series, label in (
        (loss_axis, train_loss(table), "train"),
        (loss_axis, table.get("val/loss"), "val"),
        (mean_axis, table.get("train/accuracy/mean"), "train"),
        (mean_axis, table.get("val/accuracy/mean"), "val"),
    ):
        if series is not None and series.notna().any():
            axis.plot(epochs, series, marker="o", markersize=3, label=label)
    mean_rates = [majority[task] for task in tasks if task in majority]
    mean_majority = float(np.mean(mean_rates)) if mean_rates else np.nan
    if np.isfinite(mean_majority):
        mean_axis.axhline(
            mean_majority, color="black", linestyle="--", linewidth=1, label="majority class"
        )
    mean_values = [
        *(v for line in mean_axis.lines for v in np.asarray(line.get_ydata(), dtype=float)),
        mean_majority,
    ]
    low, high = accuracy_range(mean_values)
    mean_axis.set_ylim(low, high)
    mean_axis.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    loss_axis.set_title("loss (sum over tasks of the mean BCE)", fontsize=10)
    mean_axis.set_title(
        "accuracy, mean over tasks" + (f" ({_range_words(low, high)})" if low > 0 else ""),
        fontsize=10,
    )
    for axis in (loss_axis, mean_axis):
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small", loc="best")
    if tasks:
        _task_panels(bottom, table, tasks, majority, majority_split, rows, columns)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _task_panels(
    figure: Any,
    table: pd.DataFrame,
    tasks: Sequence[str],
    majority: Mapping[str, float],
    majority_split: str,
    rows: int,
    columns: int,
) -> None:
    """One small panel per task (validation accuracy, majority rate dashed), one shared y-range."""
    epochs = table.index.to_numpy() + 1
    values = [v for task in tasks for v in table[f"val/accuracy/{task}"]]
    values += [majority[task] for task in tasks if task in majority]
    low, high = accuracy_range(values)
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for i, axis in enumerate(axes.flat):
        if i >= len(tasks):
            axis.set_visible(False)
            continue
        task = tasks[i]
        axis.plot(epochs, table[f"val/accuracy/{task}"], marker="o", markersize=2, label="val")
        if task in majority:
            axis.axhline(
                majority[task], color="black", linestyle="--", linewidth=1, label="majority class"
            )
        axis.set_title(task, fontsize=8, pad=2)
        axis.set_ylim(low, high)
        axis.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=7)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.supxlabel("epoch", fontsize=9)
    figure.suptitle(
        f"val accuracy per task (solid), {len(tasks)} task(s); every panel {_range_words(low, high)}"
        + (f"; dashed: the majority-class rate ({majority_split} split)" if majority else ""),
        fontsize=10,
    )


def run_title(run_dir: Path, results: Mapping[str, Any]) -> str:
    """The figure's title: the run folder's name (never its path) and what ran."""
    config = results.get("config") or {}
    words = [config.get(key) for key in ("strategy", "backbone", "attribute_set")]
    tasks = results.get("attributes") or []
    described = " · ".join(str(w) for w in words if w)
    if tasks:
        described += f" ({len(tasks)} tasks)"
    return f"run {run_dir.name}" + (f": {described}" if described else "")


def write_run_curves(run_dir: str | Path) -> Path | None:
    """Draw ``RUN/curves.png`` from ``RUN/csv/metrics.csv``; the path, or None if not drawn.

    Called at the end of every training run: a missing CSV (``logger=tensorboard`` alone,
    ``debug=fast``) or any plotting error is logged, never raised, so a finished run stays
    finished.
    """
    # imported here: report_plots reads these curves too, so a top-level import would be circular
    from mtl_celeba.io import save_figure

    run_dir = Path(run_dir)
    try:
        table = epoch_table(read_metrics_csv(run_dir))
        if table.empty:
            log.info("No per-epoch metrics in %s: curves.png not drawn.", run_dir / METRICS_CSV)
            return None
        try:
            results = read_results(run_dir)
        except (OSError, ValueError):
            results = {}  # no metrics.json: the curves without the majority-class rate
        path = run_dir / CURVES_PNG
        # the baseline of the split the curves show; runs from before it was recorded: test's
        split, majority = "val", results.get("val_majority_accuracy")
        if not majority:
            split, majority = "test", results.get("majority_accuracy")
        figure = curves_figure(
            table, title=run_title(run_dir, results), majority=majority, majority_split=split
        )
        save_figure(figure, path)
        return path
    except Exception as error:  # a plot must never fail a run that trained
        log.warning("curves.png not drawn for %s: %s: %s", run_dir, type(error).__name__, error)
        return None
