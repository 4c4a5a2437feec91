"""The report's pictures and words against the majority-class baseline, on hand-made run folders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mtl_celeba.report import plots
from mtl_celeba.report.__main__ import main

sys.path.insert(0, str(Path(__file__).parent))
from test_report import MAJORITY, write_run, write_val_curve

TASKS = ("Smiling", "Male", "Young")  # majority rates 52%, 58%, 77%


def sweep_of(root: Path, accuracies: dict[tuple[str, int], tuple[float, ...]]) -> Path:
    """A sweep folder: one run per (strategy, seed) with these test accuracies (TASKS order)."""
    for job, ((strategy, seed), values) in enumerate(accuracies.items()):
        run = write_run(root / str(job), strategy, seed, dict(zip(TASKS, values, strict=True)))
        write_val_curve(run, [0.5, 0.6, 0.55 + 0.01 * job])
    return root


def summary_of(sweep: Path) -> str:
    main([str(sweep)])
    md = (sweep / "report.md").read_text(encoding="utf-8")
    return md[md.index("## Summary") : md.index("\n## ", md.index("## Summary") + 1)]


def test_report_says_which_configuration_does_not_beat_the_majority_rate(tmp_path: Path) -> None:
    # mtl: at or below the rate on Male and Young and on the mean (mean rate 62.33%);
    # dst: above it on the mean and on every task but Young
    summary = summary_of(
        sweep_of(
            tmp_path,
            {
                ("mtl", 0): (0.60, 0.56, 0.60),
                ("mtl", 1): (0.62, 0.58, 0.62),
                ("dst", 0): (0.80, 0.90, 0.70),
                ("dst", 1): (0.82, 0.88, 0.77),
            },
        )
    )
    assert (
        "**mtl** does not beat the majority-class rate on the mean over tasks (59.67% vs 62.33%) "
        "nor on 2 task(s): Young (61.00% vs 77.00%), Male (57.00% vs 58.00%)."
    ) in summary
    assert (
        "**dst (all)** does not beat the majority-class rate on 1 task(s): Young (73.50% vs 77.00%)."
        in summary
    )
    assert "No configuration" not in summary  # dst beats it on the mean


def test_report_says_when_no_configuration_beats_the_majority_rate(tmp_path: Path) -> None:
    summary = summary_of(
        sweep_of(tmp_path, {("mtl", 0): (0.52, 0.58, 0.77), ("dst", 0): (0.50, 0.60, 0.70)})
    )
    assert (
        "No configuration of resnet18 · assignment8 · synthetic CelebA, 32 px, 3 epochs, fp32 "
        "beats the majority-class rate on the mean over tasks."
    ) in summary
    assert (
        "**mtl** does not beat the majority-class rate on the mean over tasks (62.33% vs 62.33%)"
        in summary
    )


def test_report_says_when_every_configuration_beats_the_majority_rate(tmp_path: Path) -> None:
    summary = summary_of(sweep_of(tmp_path, {("mtl", 0): (0.9, 0.9, 0.9)}))
    assert "Every configuration beats the majority-class rate" in summary
    assert "does not beat" not in summary


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The figures the report's plots would save, by file name, instead of saving them."""
    figures: dict[str, Any] = {}
    monkeypatch.setattr(plots, "save_figure", lambda f, path: figures.update({path.name: f}))
    return figures


def test_val_curves_draw_the_mean_majority_rate(tmp_path: Path, drawn: dict[str, Any]) -> None:
    sweep = sweep_of(tmp_path, {("mtl", 0): (0.8, 0.9, 0.7), ("dst", 0): (0.8, 0.9, 0.7)})
    main([str(sweep)])
    (axis,) = drawn[plots.CURVES_PLOT].axes
    (rate,) = [
        line for line in axis.lines if line.get_linestyle() == "--" and len(line.get_ydata())
    ]
    mean_rate = 100 * sum(MAJORITY.values()) / 3
    assert rate.get_ydata()[0] == pytest.approx(mean_rate)
    low, high = axis.get_ylim()
    assert 0 < low <= 50 and high >= mean_rate and f"axis {low:.0f}-{high:.0f}" in axis.get_ylabel()
    assert f"{plots.MAJORITY_LABEL} (test)" in [t.get_text() for t in axis.get_legend().get_texts()]


def forty_tasks(seeds: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    tasks = [f"Attribute_{i:02d}" for i in range(40)]
    per_task = pd.DataFrame(
        [
            dict(configuration=c, backbone="cpu_cnn", attribute_set="all40", task=t,
                 mean=0.6 + i / 200, std=float("nan") if seeds == 1 else 0.01, n=seeds)
            for c in ("mtl", "dst") for i, t in enumerate(tasks)
        ]
    )  # fmt: skip
    overall = pd.DataFrame(
        dict(configuration=["mtl", "dst"], backbone="cpu_cnn", attribute_set="all40",
             mean=[0.7, 0.7], std=float("nan") if seeds == 1 else 0.01, n=seeds)
    )  # fmt: skip
    return per_task, overall, {t: 0.55 + i / 100 for i, t in enumerate(tasks)}


def test_accuracy_plot_at_40_tasks_grows_and_has_no_error_bars_for_one_seed(
    tmp_path: Path, drawn: dict[str, Any]
) -> None:
    per_task, overall, majority = forty_tasks(seeds=1)
    stl = pd.DataFrame(columns=["backbone", "task", "mean", "std", "n"])
    colours = plots.colours_for(["mtl", "dst", "stl"])
    plots.plot_accuracy_by_strategy(
        per_task, overall, stl, "accuracy", colours, tmp_path / "a.png", majority
    )
    figure = drawn["a.png"]
    (axis,) = figure.axes
    assert figure.get_size_inches()[0] >= 15  # 41 groups of bars need the width
    assert not [c for c in axis.containers if type(c).__name__ == "ErrorbarContainer"]
    labels = axis.get_xticklabels()
    assert len(labels) == 41 and {label.get_rotation() for label in labels} == {90.0}
    lines = [c for c in axis.collections if c.get_label() == plots.MAJORITY_LABEL]
    assert len(lines) == 1 and len(lines[0].get_segments()) == 41
    assert axis.get_ylim()[0] <= 55 and "axis from" in axis.get_ylabel()


def test_dst_activation_at_40_tasks_is_a_heatmap(tmp_path: Path, drawn: dict[str, Any]) -> None:
    tasks = [f"Attribute_{i:02d}" for i in range(40)]
    history = pd.DataFrame(
        [
            dict(backbone="cpu_cnn", attribute_set="all40", drop_metrics="all", task=t,
                 epoch=e, activation_probability=(i % 10) / 10, seed=0)
            for e in (1, 2, 3) for i, t in enumerate(tasks)
        ]
    )  # fmt: skip
    plots.plot_dst_activation(history, tmp_path / "d.png")
    axis = drawn["d.png"].axes[0]
    (image,) = axis.images
    assert image.get_array().shape == (40, 3) and image.get_clim() == (0.0, 1.0)
    assert [label.get_text() for label in axis.get_yticklabels()] == tasks
    assert not axis.lines and axis.get_legend() is None
    plots.plot_dst_activation(history[history["task"].isin(tasks[:8])], tmp_path / "d8.png")
    assert len(drawn["d8.png"].axes[0].lines) == 8  # few tasks: one line each
