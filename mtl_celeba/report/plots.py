"""The report's PNG plots, and the per-epoch data they read from run folders.

``accuracy_by_strategy.png`` (per-task test metric by configuration), ``dst_activation.png``
(DST activation probability per task over epochs, from ``dst_history.csv``) and
``val_curves.png`` (validation mean per epoch of every run, from its ``csv/metrics.csv``),
``gradient_conflicts.png`` (the task-by-task gradient cosines per configuration, from
``gradient_conflicts.json``).
Accuracy plots draw the majority-class rate where the accuracies are and say where their
y-axis starts; above MAX_TASK_LINES tasks the DST plot is a heatmap, not a tangle of lines.
Figures are drawn on matplotlib's non-interactive Agg canvas, without pyplot: no display and
no global figure state, so the report runs on headless nodes and inside sweeps.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mtl_celeba.io import save_figure
from mtl_celeba.report.runs import CONFLICT_KEYS, read_conflicts
from mtl_celeba.run.curves import accuracy_range, epoch_table, read_metrics_csv
from mtl_celeba.run.layout import DST_HISTORY
from mtl_celeba.scheduling.names import REFERENCE

ACCURACY_PLOT = "accuracy_by_strategy.png"
DST_PLOT = "dst_activation.png"
CURVES_PLOT = "val_curves.png"
PANEL_KEYS = ["backbone", "attribute_set"]
#: The legend entry of the majority-class rate, in every plot that draws it.
MAJORITY_LABEL = "majority class"
#: Above this many tasks a DST panel is a task x epoch heatmap: 40 lines cannot be told apart.
MAX_TASK_LINES = 10


def colours_for(labels: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One fixed colour per configuration, the same in every panel and plot."""
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _panels(count: int, width: float, height: float, columns: int = 1) -> tuple[Figure, list[Any]]:
    """A figure with ``count`` axes in a grid, unused cells hidden."""
    rows = -(-count // columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flat
    for axis in axes[count:]:
        axis.set_visible(False)
    return figure, list(axes)


# --------------------------------------------------------------------------- accuracy bars


def plot_accuracy_by_strategy(
    per_task: pd.DataFrame,
    overall: pd.DataFrame,
    stl: pd.DataFrame,
    metric: str,
    colours: dict[str, Any],
    path: Path,
    majority: Mapping[str, float] | None = None,
) -> None:
    """Grouped bars: per task (and the mean over tasks) one bar per configuration, the std over
    seeds as an error bar where there are at least two seeds (none for n = 1).

    One panel per (backbone, attribute set); the STL reference of the same backbone is the last
    bar. ``majority`` (task -> majority-class accuracy, 0..1) is drawn as a black line over each
    task's bars when the metric is accuracy; the y-axis starts at or below it, and its lower end
    is stated in the axis label.
    """
    bars = pd.concat([per_task, overall.assign(task="mean")], ignore_index=True)
    panels = list(bars.groupby(PANEL_KEYS, sort=False))
    figure, axes = _panels(
        len(panels), width=max(7.0, 0.22 * len(bars) / max(len(panels), 1) + 3), height=3.8
    )
    majority = dict(majority or {}) if metric == "accuracy" else {}
    for axis, ((backbone, attribute_set), panel) in zip(axes, panels, strict=False):
        reference = stl[stl["backbone"] == backbone].assign(configuration=REFERENCE)
        tasks = list(dict.fromkeys(panel["task"]))
        series = [
            *dict.fromkeys(panel["configuration"]),
            *([REFERENCE] if not reference.empty else []),
        ]
        panel = pd.concat([panel, reference[reference["task"].isin(tasks)]], ignore_index=True)
        width = 0.8 / len(series)
        lowest = 1.0
        for i, label in enumerate(series):
            rows = panel[panel["configuration"] == label].set_index("task").reindex(tasks)
            x = np.arange(len(tasks)) + (i - (len(series) - 1) / 2) * width
            mean = 100 * rows["mean"].to_numpy(float)
            seeds = rows["n"].to_numpy(float) if "n" in rows else np.ones(len(rows))
            std = np.where(seeds > 1, 100 * rows["std"].to_numpy(float), np.nan)
            axis.bar(x, mean, width, label=label, color=colours[label])
            shown = np.isfinite(std) & np.isfinite(mean)
            if shown.any():
                axis.errorbar(
                    x[shown], mean[shown], yerr=std[shown], fmt="none", ecolor="black", capsize=2
                )
            if np.isfinite(mean).any():
                lowest = min(lowest, np.nanmin(mean - np.nan_to_num(std)) / 100)
        rates = [majority.get(task, np.nan) for task in tasks[:-1]]
        rates.append(float(np.nanmean(rates)) if np.isfinite(rates).any() else np.nan)
        rates = np.asarray(rates, dtype=float)
        if np.isfinite(rates).any():
            axis.hlines(
                100 * rates, np.arange(len(tasks)) - 0.45, np.arange(len(tasks)) + 0.45,
                colors="black", linewidths=1.5, label=MAJORITY_LABEL,
            )  # fmt: skip
            lowest = min(lowest, float(np.nanmin(rates)))
        many = len(tasks) > 12  # upright labels would overlap: turn them, smaller
        axis.set_xticks(
            np.arange(len(tasks)),
            tasks,
            rotation=90 if many else 30,
            ha="center" if many else "right",
            fontsize="small" if many else None,
        )
        axis.set_xlim(-0.6, len(tasks) - 0.4)
        # Accuracies differ by a few points: start the axis below the lowest bar and the
        # majority rate, not at zero, and say so.
        bottom = max(0.0, np.floor(100 * lowest / 5) * 5 - 5)
        axis.set_ylim(bottom, 100)
        axis.set_ylabel(f"test {metric} (%)" + (f", axis from {bottom:.0f}" if bottom else ""))
        axis.set_title(f"{backbone} · {attribute_set}")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(figure, path)


# --------------------------------------------------------------------------- DST schedule


def read_dst_history(scores: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every DST run's ``dst_history.csv`` with its configuration; and {run: why not} for the rest."""
    runs = scores.loc[
        scores["strategy"] == "dst", ["run", "backbone", "attribute_set", "drop_metrics", "seed"]
    ]
    frames, skipped = [], {}
    for run in runs.drop_duplicates("run").itertuples(index=False):
        path = Path(run.run) / DST_HISTORY
        try:
            history = pd.read_csv(path, usecols=["epoch", "task", "activation_probability"])
        except FileNotFoundError:
            skipped[run.run] = f"no {DST_HISTORY}"
        except (OSError, ValueError) as error:
            skipped[run.run] = f"{DST_HISTORY} cannot be read ({error})"
        else:
            frames.append(history.assign(**run._asdict()))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), skipped


def plot_dst_activation(history: pd.DataFrame, path: Path) -> None:
    """Activation probability per task over epochs, averaged over seeds; one panel per DST configuration."""
    keys = [*PANEL_KEYS, "drop_metrics"]
    mean = (
        history.groupby([*keys, "task", "epoch"], sort=False)["activation_probability"]
        .mean()
        .reset_index()
    )
    panels = list(mean.groupby(keys, sort=False))
    tasks = mean["task"].nunique()
    heatmap = tasks > MAX_TASK_LINES
    figure, axes = _panels(
        len(panels),
        width=6.5 if heatmap else 5.5,
        height=max(3.5, 0.2 * tasks + 1.2) if heatmap else 3.5,
        columns=min(len(panels), 2),
    )
    for axis, ((backbone, attribute_set, drop_metrics), panel) in zip(axes, panels, strict=False):
        if heatmap:
            _activation_heatmap(figure, axis, panel)
        else:
            for task, curve in panel.groupby("task", sort=False):
                curve = curve.sort_values("epoch")
                axis.plot(curve["epoch"], curve["activation_probability"], marker=".", label=task)
            axis.set_ylim(-0.02, 1.02)
            axis.set_ylabel("activation probability")
            axis.grid(alpha=0.3)
            axis.legend(fontsize="x-small", ncols=2, loc="best")
        axis.set_xlabel("epoch k (P sets the gates of epoch k + 1)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(f"{backbone} · {attribute_set} · DST ({drop_metrics})", fontsize="medium")
    save_figure(figure, path)


def _activation_heatmap(figure: Figure, axis: Any, panel: pd.DataFrame) -> None:
    """Activation probability as a task x epoch heatmap (0..1), one labelled row per task."""
    grid = panel.pivot(index="task", columns="epoch", values="activation_probability")
    grid = grid.reindex(list(dict.fromkeys(panel["task"])))
    epochs = grid.columns.to_numpy()
    image = axis.imshow(
        grid.to_numpy(float),
        aspect="auto",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(grid) - 0.5, -0.5),
    )
    axis.set_yticks(np.arange(len(grid)), grid.index, fontsize=7)
    figure.colorbar(image, ax=axis, label="activation probability")


# --------------------------------------------------------------------------- validation curves


def read_val_curves(scores: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """``val/<metric>/mean`` per training epoch of every completed run (from its
    ``csv/metrics.csv``), with its configuration; and the runs whose CSV lacks it."""
    column = f"val/{metric}/mean"
    runs = scores.drop_duplicates("run")[
        ["run", "configuration", "backbone", "attribute_set", "seed", "epochs_trained"]
    ]
    frames, without = [], []
    for run in runs.itertuples(index=False):
        table = epoch_table(read_metrics_csv(run.run))
        values = table[column].dropna() if column in table else pd.Series(dtype=float)
        if values.empty:
            without.append(run.run)
        else:
            curve = pd.DataFrame({"epoch": values.index.to_numpy(), "value": values.to_numpy()})
            frames.append(curve.assign(**run._asdict()))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), without


def plot_val_curves(
    curves: pd.DataFrame,
    metric: str,
    colours: dict[str, Any],
    path: Path,
    majority: Mapping[tuple[str, str], float] | None = None,
) -> None:
    """Validation mean per epoch, one line per run coloured by configuration; a panel per
    backbone/attribute set.

    ``majority`` ((backbone, attribute set) -> the majority-class rate, mean over tasks) is
    drawn as a dashed black line when the metric is accuracy; the y-axis holds it and states
    its range when it does not start at zero.
    """
    majority = dict(majority or {}) if metric == "accuracy" else {}
    panels = list(curves.groupby(PANEL_KEYS, sort=False))
    figure, axes = _panels(len(panels), width=6.5, height=3.8)
    for axis, ((backbone, attribute_set), panel) in zip(axes, panels, strict=False):
        labelled = set()
        for (_, label), curve in panel.groupby(["run", "configuration"], sort=False):
            axis.plot(
                curve["epoch"] + 1,
                100 * curve["value"],
                color=colours[label],
                alpha=0.8,
                label=None if label in labelled else label,
            )
            labelled.add(label)
        rate = majority.get((backbone, attribute_set), np.nan)
        if np.isfinite(rate):
            axis.axhline(100 * rate, color="black", linestyle="--", linewidth=1.2)
            axis.plot([], [], color="black", linestyle="--", label=f"{MAJORITY_LABEL} (test)")
        low, high = accuracy_range([*panel["value"], rate])
        axis.set_ylim(100 * low, 100 * high)
        axis.set_xlabel("epochs trained")
        axis.set_ylabel(
            f"val {metric}, mean over tasks (%)"
            + (f", axis {100 * low:.0f}-{100 * high:.0f}" if low > 0 else "")
        )
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(f"{backbone} · {attribute_set}")
        axis.grid(alpha=0.3)
        # List the configurations in the order of the report's tables, not the order of the runs.
        handles, labels = axis.get_legend_handles_labels()
        rank = {label: i for i, label in enumerate([*colours, f"{MAJORITY_LABEL} (test)"])}
        order = sorted(range(len(labels)), key=lambda i: rank[labels[i]])
        axis.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
        )
    save_figure(figure, path)


# --------------------------------------------------------------------------- all plots


def write_plots(
    scores: pd.DataFrame,
    per_task: pd.DataFrame,
    overall: pd.DataFrame,
    stl: pd.DataFrame,
    metric: str,
    out_dir: Path,
) -> tuple[list[str], list[str]]:
    """Write the plots that have data into ``out_dir``; returns (file names, notes on what was skipped).

    ``scores`` is the run x task table; ``per_task``, ``overall`` and ``stl`` the report's
    mean/std tables (:class:`mtl_celeba.report.compare.Comparison`).
    """
    written, notes = [], []
    colours = colours_for(list(dict.fromkeys([*per_task["configuration"], REFERENCE])))
    if per_task.empty:
        notes.append(f"No multi-task run completed: {ACCURACY_PLOT} is not drawn.")
    else:
        majority = (
            scores.groupby("task")["majority_accuracy"].mean().to_dict()
            if "majority_accuracy" in scores
            else {}
        )
        plot_accuracy_by_strategy(
            per_task, overall, stl, metric, colours, out_dir / ACCURACY_PLOT, majority
        )
        written.append(ACCURACY_PLOT)

    history, skipped = read_dst_history(scores)
    notes += [
        f"DST run {_relative(run, out_dir)}: {why}; it is left out of {DST_PLOT}."
        for run, why in skipped.items()
    ]
    if history.empty:
        notes.append(f"No DST run with a {DST_HISTORY}: {DST_PLOT} is not drawn.")
    else:
        plot_dst_activation(history, out_dir / DST_PLOT)
        written.append(DST_PLOT)

    curves, without = read_val_curves(scores, metric)
    if without:
        names = ", ".join(_relative(run, out_dir) for run in without)
        notes.append(f"No val/{metric}/mean in csv/metrics.csv of run(s) {names}.")
    if curves.empty:
        notes.append(
            f"No validation curves in the runs' csv/metrics.csv: {CURVES_PLOT} is not drawn."
        )
    else:
        rates = (
            scores.groupby([*PANEL_KEYS, "task"])["majority_accuracy"].mean()
            .groupby(level=PANEL_KEYS).mean().to_dict()
            if "majority_accuracy" in scores
            else {}
        )  # fmt: skip
        plot_val_curves(curves, metric, colours, out_dir / CURVES_PLOT, rates)
        written.append(CURVES_PLOT)
    return written, notes


def _relative(run: str, out_dir: Path) -> str:
    """A run folder as seen from the report, so notes stay short and valid when the sweep moves."""
    return os.path.relpath(run, out_dir)


# --------------------------------------------------------------------------- gradient conflicts

CONFLICTS_PLOT = "gradient_conflicts.png"
#: Above this many tasks the heatmaps drop their printed values and take two per row.
ANNOTATE_UP_TO = 12


def average_conflicts(conflicts: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (:data:`~mtl_celeba.report.runs.CONFLICT_KEYS`), the runs' cosine
    matrices averaged over seeds, each task's mean cosine with the other tasks
    (``mean_conflict``) and its drop rate averaged over seeds (None when nothing drops)."""
    rows = []
    for keys, runs in conflicts.groupby(list(CONFLICT_KEYS), sort=False):
        tasks = runs["tasks"].iloc[0]
        runs = runs[[list(t) == list(tasks) for t in runs["tasks"]]]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # never-measured pairs stay NaN
            cosine = np.nanmean(np.stack(runs["cosine"].tolist()), axis=0)
            others = np.where(np.eye(len(tasks), dtype=bool), np.nan, cosine)
            mean_conflict = np.nanmean(others, axis=1)
        drops = [d for d in runs["drop_rate"] if d is not None]
        rows.append(
            {
                **dict(zip(CONFLICT_KEYS, keys, strict=True)),
                "seeds": len(runs),
                "tasks": list(tasks),
                "cosine": cosine,
                "mean_conflict": mean_conflict,
                "drop_rate": np.mean(np.array(drops, dtype=float), axis=0) if drops else None,
                "gradients": ", ".join(sorted(set(map(str, runs["gradients"])))),
                "source": ", ".join(sorted(set(map(str, runs["source"])))),
            }
        )
    return pd.DataFrame(rows)


def _colour_limit(matrices: Sequence[np.ndarray]) -> float:
    """The symmetric colour limit: the largest off-diagonal |cosine|, up to a multiple of 0.05."""
    values = [np.abs(m[~np.eye(len(m), dtype=bool)]) for m in matrices if len(m) > 1]
    largest = np.nanmax(np.concatenate(values)) if values else np.nan
    return (
        1.0
        if not np.isfinite(largest)
        else float(min(1.0, max(0.05, np.ceil(largest / 0.05) * 0.05)))
    )


def plot_conflict_heatmaps(panel: pd.DataFrame, title: str, path: Path) -> None:
    """One task-by-task heatmap of the mean gradient cosine per configuration of ``panel``
    (rows of :func:`average_conflicts` sharing their tasks), with two strips beside it: each
    task's mean cosine with the others and, for the strategies that drop tasks, its drop rate.

    Diverging colours centred at 0 (red: conflicting gradients, blue: aligned), one scale for
    the whole figure so the configurations compare; the diagonal (always 1) is left grey.
    """
    tasks = panel["tasks"].iloc[0]
    count = len(tasks)
    annotate = count <= ANNOTATE_UP_TO
    columns = min(len(panel), 3 if annotate else 2)
    rows = -(-len(panel) // columns)
    side = max(2.8, 0.17 * count)
    figure = Figure(
        figsize=(columns * (side + 2.4), rows * (side + 2.2) + 1.6), layout="constrained"
    )
    grid = figure.add_gridspec(rows, columns)
    limit = _colour_limit(panel["cosine"].tolist())
    diverging = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    drops = matplotlib.colormaps["Purples"].with_extremes(bad="0.85")
    heatmaps, cosine_image, drop_image = [], None, None
    font = 7 if annotate else 5.5
    for cell, row in zip(grid, panel.itertuples(index=False), strict=False):
        heat = figure.add_subplot(cell)
        # the strips sit in the heatmap's own coordinates, one cell wide, so the rows line up
        mean_axis = heat.inset_axes((1 + 0.5 / count, 0, 1.2 / count, 1))
        drop_axis = heat.inset_axes((1 + 2.0 / count, 0, 1.2 / count, 1))
        matrix = np.where(np.eye(count, dtype=bool), np.nan, row.cosine)
        cosine_image = heat.imshow(matrix, cmap=diverging, vmin=-limit, vmax=limit)
        mean_axis.imshow(
            row.mean_conflict[:, None], cmap=diverging, vmin=-limit, vmax=limit, aspect="auto"
        )
        heat.set_xticks(range(count), tasks, rotation=90, fontsize=font)
        heat.set_yticks(range(count), tasks, fontsize=font)
        sampled = "" if row.source == "gramian" else ", sampled"
        heat.set_title(
            f"{row.configuration} (n={row.seeds})\ngradients w.r.t. {row.gradients}{sampled}",
            fontsize="small",
            loc="left",
        )
        strips = [(mean_axis, row.mean_conflict, "mean cos\nwith others")]
        if row.drop_rate is not None:
            drop_image = drop_axis.imshow(
                np.asarray(row.drop_rate, dtype=float)[:, None],
                cmap=drops,
                vmin=0,
                vmax=1,
                aspect="auto",
            )
            strips.append((drop_axis, row.drop_rate, "drop\nrate"))
        else:
            drop_axis.set_visible(False)
        for axis, _, label in strips:
            axis.set_xticks([0], [label], rotation=90, fontsize=font)
            axis.set_yticks([])
        if annotate:
            for (i, j), value in np.ndenumerate(matrix):
                if np.isfinite(value):
                    heat.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5.5)
            for axis, values, _ in strips:
                for i, value in enumerate(values):
                    if np.isfinite(value):
                        axis.text(0, i, f"{value:.2f}", ha="center", va="center", fontsize=5)
        heatmaps.append(heat)
    # the colour bars' share of the figure shrinks with its rows: matplotlib's default
    # fraction (0.15 of the height) leaves a gap of rows under a tall figure's panels
    bar = {
        "ax": heatmaps,
        "location": "bottom",
        "shrink": 0.5,
        "aspect": 35,
        "fraction": 0.15 / rows,
        "pad": 0.05 / rows,
    }
    figure.colorbar(cosine_image, **bar, label="mean cosine of the two tasks' gradients")
    if drop_image is not None:
        figure.colorbar(drop_image, **bar, label="drop rate (share of training steps dropped)")
    figure.suptitle(title, fontsize="medium")
    save_figure(figure, path)


def write_conflict_plots(
    scores: pd.DataFrame, out_dir: Path
) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw :func:`plot_conflict_heatmaps` for every (scale, backbone, attribute set) whose runs
    recorded gradient conflicts; returns ([(file name, what it shows)], notes on what was skipped)."""
    conflicts, skipped = read_conflicts(scores)
    notes = [
        f"Run {_relative(run, out_dir)}: {why}; it is left out of the conflict heatmaps."
        for run, why in skipped.items()
    ]
    if conflicts.empty:
        return [], notes
    averaged = average_conflicts(conflicts)
    panels = list(averaged.groupby(["scale", "backbone", "attribute_set"], sort=False))
    written = []
    for index, ((scale, backbone, attribute_set), panel) in enumerate(panels, start=1):
        name = (
            CONFLICTS_PLOT if len(panels) == 1 else CONFLICTS_PLOT.replace(".png", f"_{index}.png")
        )
        title = f"{backbone} · {attribute_set} · {scale}"
        plot_conflict_heatmaps(panel, f"Gradient conflicts: {title}", out_dir / name)
        written.append((name, title))
    return written, notes
