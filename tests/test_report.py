"""mtl-report on small fake sweep folders: numbers by hand, failed runs, missing STL, files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mtl_celeba.errors import UserError
from mtl_celeba.report.__main__ import main
from mtl_celeba.report.compare import compare
from mtl_celeba.report.markdown import data_description
from mtl_celeba.report.plots import read_val_curves
from mtl_celeba.report.runs import collect_runs, drop_metrics_label, find_run_dirs
from mtl_celeba.report.statistics import delta_m
from mtl_celeba.scheduling.dst import HISTORY_COLUMNS

TASKS = ("Smiling", "Male", "Young")
ALL_METRICS = ["regularization", "depth", "count", "incompleteness", "stagnancy"]

#: Test accuracy per (strategy, seed), in TASKS order.
MULTI_TASK = {
    ("mtl", 0): (0.80, 0.90, 0.70),
    ("mtl", 1): (0.82, 0.88, 0.74),
    ("dst", 0): (0.84, 0.91, 0.72),
    ("dst", 1): (0.86, 0.93, 0.70),
    ("random_drop", 0): (0.79, 0.89, 0.71),
    ("random_drop", 1): (0.81, 0.87, 0.73),
}
#: Single-task accuracy per (task, seed): none for Young.
SINGLE_TASK = {("Smiling", 0): 0.85, ("Smiling", 1): 0.87, ("Male", 0): 0.92}
MAJORITY = {"Smiling": 0.52, "Male": 0.58, "Young": 0.77}


def write_run(
    run_dir: Path,
    strategy: str = "mtl",
    seed: int = 0,
    accuracies: dict[str, float] | None = None,
    status: str = "completed",
    error: str | None = None,
    backbone: str = "resnet18",
    attribute_set: str = "assignment8",
    data_source: str = "synthetic",
) -> Path:
    """A run folder as mtl-train leaves it: metrics.json and Hydra's overrides.yaml."""
    config = {
        "backbone": backbone,
        "weights": None,
        "freeze": None,
        "strategy": strategy,
        "drop_metrics": ALL_METRICS if strategy == "dst" else None,
        "attribute_set": attribute_set,
        "experiment": "dst_vs_baselines",
        "data_source": data_source,
        "data_root": f"/data/{data_source}",
        "image_size": 32,
        "seed": seed,
        "precision": "32-true",
        "max_epochs": 3,
    }
    results: dict[str, Any] = {
        "schema_version": 1,
        "status": status,
        "run_dir": str(run_dir),
        "config": config,
    }
    if error is not None:
        results["error"] = error
    if status == "completed":
        accuracies = accuracies or {}
        per_task = {
            task: {
                "accuracy": acc,
                "balanced_accuracy": acc - 0.1,
                "f1": acc - 0.2,
                "auroc": acc + 0.05,
            }
            for task, acc in accuracies.items()
        }
        results |= {
            "epochs_trained": 3,
            "attributes": list(accuracies),
            "majority_accuracy": {task: MAJORITY[task] for task in accuracies},
            "test": {"per_task": per_task, "mean": {}},
        }
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- strategy={strategy}\n- seed={seed}\n")
    (run_dir / "metrics.json").write_text(json.dumps(results))
    return run_dir


def write_dst_history(run_dir: Path, probabilities: dict[str, list[float]]) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    for task, values in probabilities.items():
        for epoch, p in enumerate(values, start=1):
            lines.append(f"{epoch},{task},2,100,0.69,0.5,1,1,1,0.9,0.8,0.1,{p},1")
    (run_dir / "dst_history.csv").write_text("\n".join(lines) + "\n")


def write_val_curve(run_dir: Path, values: list[float]) -> None:
    """csv/metrics.csv as mtl-train's CSV logger leaves it: per epoch a step row, a validation
    row and a training-epoch row; then the validation of the best checkpoint after fit, logged
    at epoch == epochs trained."""
    rows = []
    for epoch, value in enumerate(values):
        step = 10 * (epoch + 1)
        rows += [
            {"epoch": epoch, "step": step - 5, "train/loss_step": 0.5},
            {"epoch": epoch, "step": step, "val/accuracy/mean": value},
            {"epoch": epoch, "step": step, "train/loss_epoch": 0.4, "train/accuracy/mean": 0.9},
        ]
    rows.append({"epoch": len(values), "step": step, "val/accuracy/mean": max(values)})
    (run_dir / "csv").mkdir()
    pd.DataFrame(rows).to_csv(run_dir / "csv" / "metrics.csv", index=False)


def make_sweep(root: Path) -> Path:
    """2 seeds x {mtl, dst, random_drop}, a failed job, a job without metrics.json, one still running."""
    sweep = root / "multi"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    hydra:\n    - hydra.mode=MULTIRUN\n"
        "    task:\n    - experiment=dst_vs_baselines\n  job:\n    name: train\n"
    )
    for job, ((strategy, seed), accuracies) in enumerate(MULTI_TASK.items()):
        run = write_run(sweep / str(job), strategy, seed, dict(zip(TASKS, accuracies, strict=True)))
        if strategy == "dst":
            write_dst_history(run, {task: [1.0, 0.8 - 0.1 * seed, 0.6] for task in TASKS})
        if seed == 0:
            write_val_curve(run, [0.6, 0.7 + 0.01 * job, 0.75 + 0.01 * job])
    write_run(
        sweep / "6", "dst", 2, status="failed", error="RuntimeError: CUDA out of memory | on GPU 0"
    )
    (sweep / "7" / ".hydra").mkdir(parents=True)
    write_run(sweep / "8", "mtl", 2, status="running")
    return sweep


def make_stl_sweep(root: Path, single_task: dict[tuple[str, int], float]) -> Path:
    sweep = root / "stl"
    for job, ((task, seed), accuracy) in enumerate(single_task.items()):
        write_run(sweep / str(job), "stl", seed, {task: accuracy}, attribute_set="custom")
    return sweep


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report of one multi-task sweep plus an STL sweep lacking Young, written once."""
    root = tmp_path_factory.mktemp("sweeps")
    sweep, stl = make_sweep(root), make_stl_sweep(root, SINGLE_TASK)
    main([str(sweep), str(stl)])
    return {
        "sweep": sweep,
        "stl": stl,
        "md": (sweep / "report.md").read_text(encoding="utf-8"),
        "csv": pd.read_csv(sweep / "report.csv"),
    }


def row(table: pd.DataFrame, strategy: str, task: str | None = None) -> pd.Series:
    selected = table[table["strategy"] == strategy]
    if task is not None:
        selected = selected[selected["task"] == task]
    assert len(selected) == 1
    return selected.iloc[0]


# --------------------------------------------------------------------------- reading runs


def test_finds_runs_at_any_depth_in_several_dirs(tmp_path: Path) -> None:
    sweep, stl = make_sweep(tmp_path), make_stl_sweep(tmp_path, SINGLE_TASK)
    run_dirs = find_run_dirs([sweep, stl])
    # Job folders in numeric order, the sweep's nine, then the STL sweep's three.
    assert [p.name for p in run_dirs] == [str(i) for i in range(9)] + ["0", "1", "2"]

    scores, failed = collect_runs(run_dirs)
    assert scores["run"].nunique() == len(MULTI_TASK) + len(SINGLE_TASK)
    assert len(scores) == len(MULTI_TASK) * len(TASKS) + len(SINGLE_TASK)
    assert set(scores["configuration"]) == {"mtl", "dst (all)", "random_drop", "stl"}
    reasons = dict(zip((Path(r).name for r in failed["run"]), failed["reason"], strict=True))
    assert reasons["6"] == "RuntimeError: CUDA out of memory | on GPU 0"
    assert "no metrics.json" in reasons["7"]
    assert "running" in reasons["8"]
    assert (
        failed.set_index(failed["run"].map(lambda r: Path(r).name)).loc["6", "overrides"]
        == "strategy=dst seed=2"
    )


def test_drop_metrics_labels() -> None:
    assert drop_metrics_label(None) == "-"
    assert drop_metrics_label(ALL_METRICS) == "all"
    assert drop_metrics_label(ALL_METRICS[:4]) == "all but stagnancy"
    assert drop_metrics_label(["count", "depth"]) == "depth+count"


def test_data_description_names_real_celeba(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "mtl", 0, {"Smiling": 0.9}, data_source="celeba")
    scores, _ = collect_runs(find_run_dirs([tmp_path]))
    assert "real CelebA (`/data/celeba`)" in data_description(scores)
    assert "full-scale" not in data_description(scores)


# --------------------------------------------------------------------------- the numbers


def test_mean_std_over_seeds_and_gains_by_hand(tmp_path: Path) -> None:
    make_sweep(tmp_path), make_stl_sweep(tmp_path, SINGLE_TASK)
    scores, _ = collect_runs(find_run_dirs([tmp_path]))
    result = compare(scores, "accuracy")

    dst_smiling = row(result.per_task, "dst", "Smiling")
    assert dst_smiling["mean"] == pytest.approx((0.84 + 0.86) / 2)
    assert dst_smiling["std"] == pytest.approx(statistics.stdev([0.84, 0.86]))
    assert dst_smiling["n"] == 2
    assert dst_smiling["gain_mtl"] == pytest.approx(0.85 - 0.81)
    assert dst_smiling["gain_stl"] == pytest.approx(0.85 - 0.86)
    assert row(result.per_task, "random_drop", "Male")["gain_stl"] == pytest.approx(0.88 - 0.92)
    assert pd.isna(row(result.per_task, "dst", "Young")["gain_stl"])
    assert row(result.per_task, "mtl", "Young")["gain_mtl"] == 0

    # The mean over tasks is taken per run, then over seeds.
    run_means = [(0.84 + 0.91 + 0.72) / 3, (0.86 + 0.93 + 0.70) / 3]
    mtl_mean = ((0.80 + 0.90 + 0.70) / 3 + (0.82 + 0.88 + 0.74) / 3) / 2
    dst = row(result.overall, "dst")
    assert dst["mean"] == pytest.approx(statistics.mean(run_means))
    assert dst["std"] == pytest.approx(statistics.stdev(run_means))
    assert dst["gain_mtl"] == pytest.approx(statistics.mean(run_means) - mtl_mean)
    assert pd.isna(dst["delta_m"])  # no STL run for Young
    assert result.missing_stl.to_dict("records") == [{"backbone": "resnet18", "task": "Young"}]
    stl = result.stl.set_index("task")
    assert stl.loc["Smiling", "mean"] == pytest.approx(0.86)
    assert stl.loc["Male", "n"] == 1


def test_delta_m_by_hand() -> None:
    values = pd.Series({"a": 0.9, "b": 0.6})
    reference = pd.Series({"a": 0.8, "b": 0.75})
    # The literature's sign: (-1)^1 for higher-is-better metrics, so lower is better.
    expected = -100 / 2 * ((0.9 - 0.8) / 0.8 + (0.6 - 0.75) / 0.75)
    assert delta_m(values, reference) == pytest.approx(expected)
    assert delta_m(values, reference, lower_is_better=True) == pytest.approx(-expected)
    assert pd.isna(delta_m(values, reference.drop("b")))
    assert pd.isna(delta_m(values, reference.replace(0.75, 0.0)))  # a zero reference
    assert pd.isna(delta_m(values.replace(0.6, float("nan")), reference))


def test_delta_m_when_every_task_has_stl(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    make_stl_sweep(tmp_path, {**SINGLE_TASK, ("Young", 0): 0.75})
    scores, _ = collect_runs(find_run_dirs([tmp_path]))
    overall = compare(scores).overall
    dst = (0.85, 0.92, 0.71)
    stl = (0.86, 0.92, 0.75)
    expected = -100 / 3 * sum((m - s) / s for m, s in zip(dst, stl, strict=True))
    assert row(overall, "dst")["delta_m"] == pytest.approx(expected)


# --------------------------------------------------------------------------- the report


def test_writes_every_file(report: dict[str, Any]) -> None:
    for name in (
        "report.md",
        "report.csv",
        "accuracy_by_strategy.png",
        "dst_activation.png",
        "val_curves.png",
    ):
        path = report["sweep"] / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in ("accuracy_by_strategy.png", "dst_activation.png", "val_curves.png"):
        assert (report["sweep"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report["md"]
    assert not list(report["sweep"].glob(".*.tmp"))


def test_csv_has_one_row_per_configuration(report: dict[str, Any]) -> None:
    csv = report["csv"]
    assert list(csv["strategy"]) == ["mtl", "random_drop", "dst"]
    dst = row(csv, "dst")
    assert dst["drop_metrics"] == "all"
    assert dst["runs"] == 2
    assert dst["Smiling_mean"] == pytest.approx(0.85)
    assert dst["Smiling_std"] == pytest.approx(statistics.stdev([0.84, 0.86]))
    assert dst["Smiling_gain_mtl"] == pytest.approx(0.04)
    assert dst["Smiling_gain_stl"] == pytest.approx(-0.01)
    assert pd.isna(dst["Young_gain_stl"]) and pd.isna(dst["delta_m_pct"])


def test_markdown_header_tables_and_notes(report: dict[str, Any]) -> None:
    md = report["md"]
    assert "synthetic CelebA" in md
    assert "12 run folders, 9 completed, 3 failed or unfinished" in md
    assert "`mtl-train -m experiment=dst_vs_baselines`" in md
    assert "| dst (all)" in md and "85.00 ± 1.41" in md  # DST Smiling, in %
    assert "+4.00" in md  # DST Smiling over MTL, in points
    assert "## Single-task reference (STL)" in md
    assert "86.00 ± 1.41 (n=2)" in md
    assert "No STL run for resnet18 on Young" in md
    assert "n/a" in md
    assert "| majority class" in md and "52.00" in md


def test_failed_runs_listed_with_errors(report: dict[str, Any]) -> None:
    failed = report["md"].split("## Failed runs", 1)[1].split("##", 1)[0]
    assert "RuntimeError: CUDA out of memory \\| on GPU 0" in failed
    assert "| 7 " in failed and "no metrics.json" in failed
    assert "| 8 " in failed and "never finished" in failed


def test_console_prints_summary_and_report_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path / "sweep" / "0", "mtl", 0, {"Smiling": 0.9, "Male": 0.8})
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "mtl" in printed and "85.00" in printed
    assert f"Report: {tmp_path / 'out' / 'report.md'}" in printed
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "No DST run" in md  # the activation plot is skipped with a note
    assert "No configuration besides MTL here: nothing to compare with MTL." in md
    assert not (tmp_path / "out" / "dst_activation.png").exists()


def test_report_of_failed_runs_only(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "dst", 0, status="failed", error="ValueError: bad")
    main([str(tmp_path)])
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "1 run folders, 0 completed, 1 failed or unfinished" in md
    assert "ValueError: bad" in md
    assert "## Summary" not in md and not list(tmp_path.glob("*.png"))


def test_validation_curves_are_the_training_epochs(tmp_path: Path) -> None:
    run = write_run(tmp_path / "0", "mtl", 0, {"Smiling": 0.9})
    write_val_curve(run, [0.6, 0.75, 0.7])
    curves, without = read_val_curves(collect_runs([run])[0], "accuracy")
    assert without == []
    assert curves["epoch"].tolist() == [0, 1, 2]  # not the check of the best checkpoint after fit
    assert curves["value"].tolist() == pytest.approx([0.6, 0.75, 0.7])
    assert curves["configuration"].unique().tolist() == ["mtl"]


# --------------------------------------------------------------------------- bad input


def test_missing_or_empty_folder_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UserError, match="does not exist"):
        find_run_dirs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run folders"):
        find_run_dirs([tmp_path / "empty"])
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_unknown_metric_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path / "0", "mtl", 0, {"Smiling": 0.9})
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--metric", "precision"])
    error = capsys.readouterr().err
    assert "--metric is 'precision'" in error and "accuracy, balanced_accuracy, f1, auroc" in error
    assert not (tmp_path / "report.md").exists()


# --------------------------------------------------------------------------- does it help?


def test_does_it_help_section_and_header(report: dict[str, Any]) -> None:
    md = report["md"]
    assert md.index("## Does it help?") < md.index("## Summary")
    assert "runs are paired by seed" in md and "same augmentation" in md
    assert "selection on validation only" in md and "best epoch on the test set" in md
    section = md.split("## Does it help?", 1)[1].split("## Summary", 1)[0]
    # DST Smiling: +4 points on both seeds: no spread, so no test and no mark.
    assert "- dst (all) vs MTL: better on none, worse on none; not testable (every seed " in section
    assert (
        "+4.00, not testable (every seed differs by the same amount) (sign-flip p=0.500)" in section
    )
    assert "▲" not in section.split("Holm's correction", 1)[1]
    assert "- random_drop vs MTL:" in section
    assert "Δm% n/a (no single-task reference for Young)" in section
    assert "| mtl " in section and "baseline" in section and "of 3" in section
    assert "Δm% (lower is better)" in section


def test_csv_has_the_statistics(report: dict[str, Any]) -> None:
    dst = row(report["csv"], "dst")
    assert dst["Smiling_diff_vs_mtl"] == pytest.approx(0.04)
    assert dst["Smiling_pairs_vs_mtl"] == 2
    assert dst["Smiling_testable_vs_mtl"] == False  # noqa: E712 (read back from CSV)
    assert pd.isna(dst["Smiling_significant_vs_mtl"]) and pd.isna(dst["Smiling_p_vs_mtl"])
    assert dst["Smiling_p_exact_vs_mtl"] == pytest.approx(2 / 2**2)
    assert dst["seeds"] == 2
    # Mean ranks by hand (higher is better): Smiling dst 1, mtl 2, random_drop 3; Male dst 1,
    # mtl 2, random_drop 3; Young mtl/random_drop tie at 1.5, dst 3.
    assert dst["mean_rank"] == pytest.approx(5 / 3)
    assert row(report["csv"], "random_drop")["mean_rank"] == pytest.approx(7.5 / 3)
    assert pd.isna(row(report["csv"], "mtl")["Smiling_diff_vs_mtl"])


def test_f1_end_to_end(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    make_stl_sweep(tmp_path, {**SINGLE_TASK, ("Young", 0): 0.75})
    main([str(sweep), str(tmp_path / "stl"), "--metric", "f1", "--out", str(tmp_path / "out")])
    csv = pd.read_csv(tmp_path / "out" / "report.csv")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "test f1 in %" in md and "| majority class" not in md
    dst = row(csv, "dst")
    assert dst["Smiling_mean"] == pytest.approx(0.85 - 0.2)  # write_run's f1 is accuracy - 0.2
    dst_f1 = [0.85 - 0.2, 0.92 - 0.2, 0.71 - 0.2]
    stl_f1 = [0.86 - 0.2, 0.92 - 0.2, 0.75 - 0.2]
    expected = -100 / 3 * sum((m - s) / s for m, s in zip(dst_f1, stl_f1, strict=True))
    assert dst["delta_m_pct"] == pytest.approx(expected)
    assert dst["Smiling_diff_vs_mtl"] == pytest.approx(0.04)


def test_every_method_is_reported_in_order(tmp_path: Path) -> None:
    methods = ["upgrad", "stl", "zz_custom", "famo", "dst_uniform", "mtl", "pcgrad", "dst_shuffled"]
    for job, strategy in enumerate(methods):
        for seed in (0, 1):
            accuracies = {"Smiling": 0.8 + 0.01 * job + 0.003 * seed, "Male": 0.9 - 0.01 * seed}
            write_run(tmp_path / f"{job}_{seed}", strategy, seed, accuracies)
    main([str(tmp_path)])
    csv = pd.read_csv(tmp_path / "report.csv")
    expected = ["mtl", "dst_shuffled", "dst_uniform", "famo", "pcgrad", "upgrad", "zz_custom"]
    assert list(csv["strategy"]) == expected  # STL is the reference, not a configuration
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    for strategy in expected[1:]:
        assert f"- {strategy} vs MTL: " in md
