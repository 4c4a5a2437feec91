"""A run's learning curves, from the CSV that Lightning's ``CSVLogger`` writes beside TensorBoard.

``RUN/csv/metrics.csv`` has one row per logging call with ``epoch`` and ``step`` columns and
one column per metric name: ``train/loss_epoch``, ``train/loss/<task>``,
``{train,val}/accuracy/mean``, ``val/loss``, ``val/accuracy/<task>``, ... .
:func:`epoch_table` turns it into one row per training epoch; :func:`curves_figure` draws
``curves.png`` from that (a pure function of the table); :func:`write_run_curves` is what
``mtl-train`` calls at the end of a run, and never fails it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mtl_celeba.run.layout import CURVES_PNG, METRICS_CSV

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


def curves_figure(table: pd.DataFrame, title: str = "") -> Figure:
    """Loss, mean accuracy (train and validation) and validation accuracy per task, per epoch."""
    figure = Figure(figsize=(15, 4), layout="constrained")
    loss_axis, mean_axis, task_axis = figure.subplots(1, 3)
    epochs = table.index.to_numpy() + 1
    loss = train_loss(table)
    for axis, series, label in (
        (loss_axis, loss, "train"),
        (loss_axis, table.get("val/loss"), "val"),
        (mean_axis, table.get("train/accuracy/mean"), "train"),
        (mean_axis, table.get("val/accuracy/mean"), "val"),
    ):
        if series is not None and series.notna().any():
            axis.plot(epochs, series, marker="o", markersize=3, label=label)
    for task in _tasks(table, "val", "accuracy"):
        task_axis.plot(epochs, table[f"val/accuracy/{task}"], marker="o", markersize=3, label=task)
    titles = (
        "loss (sum over tasks of the mean BCE)",
        "accuracy, mean over tasks",
        "val accuracy per task",
    )
    for axis, name in zip((loss_axis, mean_axis, task_axis), titles, strict=True):
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


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
        path = run_dir / CURVES_PNG
        save_figure(curves_figure(table, title=f"run {run_dir.name}"), path)
        return path
    except Exception as error:  # a plot must never fail a run that trained
        log.warning("curves.png not drawn for %s: %s: %s", run_dir, type(error).__name__, error)
        return None
