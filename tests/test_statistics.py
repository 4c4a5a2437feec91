"""The report's statistics on hand-made run folders: against scipy, Holm and ranks by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mtl_celeba.errors import UserError
from mtl_celeba.report.__main__ import main
from mtl_celeba.report.compare import GROUP_KEYS, read_stl_reference
from mtl_celeba.report.runs import collect_runs, find_run_dirs
from mtl_celeba.report.statistics import (
    analyse,
    delta_m_over_seeds,
    holm,
    mean_ranks,
    paired_differences,
    t_interval,
)

TASKS = ("Smiling", "Male", "Young")
#: MTL accuracy per seed, in TASKS order.
MTL = {0: (0.80, 0.90, 0.70), 1: (0.82, 0.88, 0.74), 2: (0.81, 0.91, 0.72), 3: (0.79, 0.89, 0.73)}
#: DST minus MTL per seed: a clear gain on Smiling, a clear loss on Male, noise on Young.
DST_DIFF = {
    0: (0.010, -0.020, 0.010),
    1: (0.012, -0.021, -0.020),
    2: (0.011, -0.019, 0.005),
    3: (0.013, -0.022, -0.001),
}


def write_metrics(
    run_dir: Path,
    strategy: str,
    seed: int | None,
    values: dict[str, float],
    backbone: str = "resnet18",
    attribute_set: str = "assignment8",
) -> None:
    """A completed run's metrics.json as mtl-train writes it (accuracy = the value, f1 = value - 0.1)."""
    run_dir.mkdir(parents=True)
    results = {
        "status": "completed",
        "config": {
            "strategy": strategy,
            "drop_metrics": None,
            "backbone": backbone,
            "attribute_set": attribute_set,
            "seed": seed,
            "data_source": "synthetic",
        },
        "test": {
            "per_task": {t: {"accuracy": v, "f1": v - 0.1} for t, v in values.items()},
            "mean": {},
        },
    }
    (run_dir / "metrics.json").write_text(json.dumps(results))


def write_sweep(root: Path, extra_dst_seed: bool = True) -> Path:
    """MTL and DST on resnet18 (seeds 0-3; DST also seed 9, without an MTL partner) and an MTL
    vgg16 run with seed 0 that must not be paired with resnet18's DST."""
    job = 0
    for seed, values in MTL.items():
        write_metrics(root / str(job), "mtl", seed, dict(zip(TASKS, values, strict=True)))
        dst = [v + d for v, d in zip(values, DST_DIFF[seed], strict=True)]
        write_metrics(root / str(job + 1), "dst", seed, dict(zip(TASKS, dst, strict=True)))
        job += 2
    if extra_dst_seed:
        write_metrics(root / "90", "dst", 9, dict.fromkeys(TASKS, 0.99))
    write_metrics(root / "91", "mtl", 0, dict.fromkeys(TASKS, 0.5), backbone="vgg16")
    return root


def scores_of(root: Path) -> pd.DataFrame:
    return collect_runs(find_run_dirs([root]))[0]


def dst_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(DST, MTL) per seed x task, seeds 0-3."""
    mtl = np.array([MTL[s] for s in sorted(MTL)])
    return mtl + np.array([DST_DIFF[s] for s in sorted(MTL)]), mtl


# --------------------------------------------------------------------------- Holm


def test_holm_against_a_hand_worked_example() -> None:
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (adjusted p-values never decrease along the sorted order).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN (a test that could not be run) is not in the family: m = 2 here.
    adjusted = holm([0.01, float("nan"), 0.04])
    assert adjusted[[0, 2]] == pytest.approx([0.02, 0.04]) and np.isnan(adjusted[1])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]).size == 0


# --------------------------------------------------------------------------- paired differences


def test_paired_differences_against_scipy(tmp_path: Path) -> None:
    table = paired_differences(scores_of(write_sweep(tmp_path)), "accuracy", GROUP_KEYS)
    assert set(table["configuration"]) == {"dst"}  # MTL is the baseline, not a row
    assert list(table["task"]) == list(TASKS)
    dst, mtl = dst_arrays()
    for column, row in enumerate(table.itertuples(index=False)):
        expected = stats.ttest_rel(dst[:, column], mtl[:, column])
        interval = expected.confidence_interval(0.95)
        assert row.pairs == 4  # seed 9 has no MTL partner; vgg16's MTL is another backbone
        assert row.diff == pytest.approx(np.mean(dst[:, column] - mtl[:, column]))
        assert row.ci_low == pytest.approx(interval.low)
        assert row.ci_high == pytest.approx(interval.high)
        assert row.p == pytest.approx(expected.pvalue)
    assert table["p_holm"].to_numpy() == pytest.approx(holm(table["p"].to_numpy()))
    assert list(table["significant"]) == ["gain", "loss", ""]
    assert (table["p_holm"].iloc[:2] < 0.05).all() and table["p_holm"].iloc[2] > 0.05


def test_lower_is_better_swaps_gains_and_losses(tmp_path: Path) -> None:
    scores = scores_of(write_sweep(tmp_path))
    table = paired_differences(scores, "accuracy", GROUP_KEYS, lower_is_better=True)
    assert list(table["significant"]) == ["loss", "gain", ""]


def test_t_interval_edge_cases() -> None:
    one = t_interval([0.3])
    assert one.n == 1 and one.mean == pytest.approx(0.3)
    assert np.isnan(one.low) and np.isnan(one.pvalue)
    identical = t_interval([0.0, 0.0, 0.0])  # scipy gives NaN (0/0): no evidence of a difference
    assert (identical.low, identical.high, identical.pvalue) == (0.0, 0.0, 1.0)
    assert t_interval([0.1, float("nan"), 0.3]).n == 2


# --------------------------------------------------------------------------- Delta_m and ranks


def test_delta_m_per_seed_with_a_t_interval(tmp_path: Path) -> None:
    scores = scores_of(write_sweep(tmp_path, extra_dst_seed=False))
    reference = pd.DataFrame(
        {"backbone": "resnet18", "task": list(TASKS), "mean": [0.85, 0.90, 0.75]}
    )
    table = delta_m_over_seeds(scores, "accuracy", GROUP_KEYS, reference)
    dst = table[(table["strategy"] == "dst")].iloc[0]
    values, _ = dst_arrays()
    ref = np.array([0.85, 0.90, 0.75])
    per_seed = -100 * ((values - ref) / ref).mean(axis=1)
    low, high = stats.t.interval(
        0.95, len(per_seed) - 1, loc=per_seed.mean(), scale=stats.sem(per_seed)
    )
    assert dst["seeds"] == 4 and dst["missing_reference"] == ""
    assert dst["reference_mode"] == "conditional"
    assert dst["delta_m"] == pytest.approx(per_seed.mean())
    assert (dst["delta_m_low"], dst["delta_m_high"]) == pytest.approx((low, high))

    vgg = table[table["backbone"] == "vgg16"].iloc[0]  # no reference for vgg16
    assert np.isnan(vgg["delta_m"]) and vgg["missing_reference"] == "Smiling, Male, Young"


def test_mean_ranks_by_hand(tmp_path: Path) -> None:
    # Per task, three configurations (one seed each); higher is better, ties share a rank.
    values = {
        "mtl": {"a": 0.9, "b": 0.5, "c": 0.7},  # ranks 1, 3, 1.5  -> 5.5 / 3
        "dst": {"a": 0.8, "b": 0.6, "c": 0.7},  # ranks 2, 2, 1.5  -> 5.5 / 3
        "pcgrad": {"a": 0.7, "b": 0.8, "c": 0.6},  # ranks 3, 1, 3 -> 7 / 3
    }
    for job, (strategy, by_task) in enumerate(values.items()):
        write_metrics(tmp_path / str(job), strategy, 0, by_task)
    write_metrics(tmp_path / "9", "stl", 0, {"a": 1.0})  # the reference is not ranked
    ranks = mean_ranks(scores_of(tmp_path), "accuracy", GROUP_KEYS).set_index("strategy")
    assert ranks["mean_rank"].to_dict() == pytest.approx(
        {"mtl": 5.5 / 3, "dst": 5.5 / 3, "pcgrad": 7 / 3}
    )
    assert set(ranks["ranked_among"]) == {3}
    lower = mean_ranks(scores_of(tmp_path), "accuracy", GROUP_KEYS, lower_is_better=True)
    assert lower.set_index("strategy")["mean_rank"]["pcgrad"] == pytest.approx(5 / 3)


# --------------------------------------------------------------------------- sentences


def test_sentence_names_significant_tasks_and_delta_m(tmp_path: Path) -> None:
    scores = scores_of(write_sweep(tmp_path, extra_dst_seed=False))
    reference = pd.DataFrame(
        {"backbone": "resnet18", "task": list(TASKS), "mean": [0.85, 0.90, 0.75]}
    )
    result = analyse(scores, "accuracy", GROUP_KEYS, reference)
    (text,) = result.sentences["sentence"]
    paired = result.paired.set_index("task")
    delta = result.overall.set_index("strategy").loc["dst"]
    half = (delta["delta_m_high"] - delta["delta_m_low"]) / 2

    def task(name: str) -> str:
        row = paired.loc[name]
        return (
            f"{name} {100 * row['diff']:+.2f} pp "
            f"[{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}]"
        )

    assert text == (
        f"dst vs MTL: better on 1 of 3 tasks ({task('Smiling')}), "
        f"worse on 1 of 3 tasks ({task('Male')}); Δm% {delta['delta_m']:+.2f} ± {half:.2f}, "
        "conditional on one STL run."
    )


def test_fewer_than_two_paired_seeds_are_said_not_computed(tmp_path: Path) -> None:
    write_metrics(tmp_path / "0", "mtl", 0, {"a": 0.8, "b": 0.7})
    write_metrics(tmp_path / "1", "dst", 0, {"a": 0.9, "b": 0.6})
    write_metrics(tmp_path / "2", "dst", 1, {"a": 0.7, "b": 0.8})  # no MTL with seed 1
    write_metrics(tmp_path / "3", "pcgrad", 5, {"a": 0.7, "b": 0.8})  # no MTL with seed 5
    reference = pd.DataFrame({"backbone": "resnet18", "task": ["a", "b"], "mean": [0.8, 0.8]})
    result = analyse(scores_of(tmp_path), "accuracy", GROUP_KEYS, reference)
    sentences = result.sentences.set_index("strategy")["sentence"]
    assert sentences["dst"].startswith(
        "dst vs MTL: only 1 paired seed, fewer than 2: no confidence interval or test; Δm% "
    )
    assert sentences["pcgrad"].startswith("pcgrad vs MTL: no MTL run with the same seed")
    assert sentences["pcgrad"].endswith("Δm% +6.25 (1 seed: no interval).")  # -(0.7/0.8 - 1) / 2
    dst = result.paired[result.paired["strategy"] == "dst"]
    assert dst["pairs"].tolist() == [1, 1]
    assert dst["ci_low"].isna().all() and dst["p"].isna().all()
    assert (dst["significant"] == "").all()

    main([str(tmp_path), "--out", str(tmp_path / "report")])
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "- dst vs MTL: only 1 paired seed, fewer than 2" in md
    assert "n/a (1 paired seed)" in md and "n/a (0 paired seeds)" in md


# --------------------------------------------------------------------------- external reference


def test_external_stl_reference_is_read_and_checked(tmp_path: Path) -> None:
    shared = tmp_path / "shared.csv"
    shared.write_text("task,f1\nSmiling,0.9\nMale,0.8\n")
    reference = read_stl_reference(shared, "f1", ["resnet18", "vgg16"])
    assert reference[["backbone", "task", "mean"]].values.tolist() == [
        ["resnet18", "Male", 0.8],
        ["resnet18", "Smiling", 0.9],
        ["vgg16", "Male", 0.8],
        ["vgg16", "Smiling", 0.9],
    ]
    per_backbone = tmp_path / "per_backbone.csv"
    per_backbone.write_text("backbone,task,f1\nvgg16,Smiling,0.7\n")
    assert read_stl_reference(per_backbone, "f1", ["resnet18"])["backbone"].tolist() == ["vgg16"]

    bad = {
        "missing.csv": (None, "is not a file"),
        "no_metric.csv": ("task,accuracy\nSmiling,0.9\n", "has no column f1"),
        "percent.csv": ("task,f1\nSmiling,91\n", "give fractions"),
        "text.csv": ("task,f1\nSmiling,0.9\nMale,high\n", "line 3: f1 is not a number"),
        "twice.csv": ("task,f1\nSmiling,0.9\nSmiling,0.8\n", "more than one row for task Smiling"),
    }
    for name, (text, message) in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=message):
            read_stl_reference(tmp_path / name, "f1", ["resnet18"])


def test_report_uses_the_external_reference(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "sweep", extra_dst_seed=False)
    write_metrics(sweep / "stl0", "stl", 0, {"Smiling": 0.5})  # replaced by the file
    reference = tmp_path / "famo_stl.csv"
    reference.write_text("backbone,task,accuracy\nresnet18,Smiling,0.85\nresnet18,Male,0.9\n")
    main([str(sweep), "--stl-reference", str(reference)])
    md = (sweep / "report.md").read_text(encoding="utf-8")
    assert f"the external reference `{reference}` (--stl-reference)" in md
    assert "--stl-reference replaces them" in md
    assert "85.00" in md.split("## Single-task reference (STL)", 1)[1]
    assert "(n=" not in md.split("## Single-task reference (STL)", 1)[1]

    csv = pd.read_csv(sweep / "report.csv").set_index(["strategy", "backbone"])
    # Young has no reference: Delta_m is n/a rather than a partial average.
    assert csv["delta_m_pct"].isna().all()
    assert "no single-task reference for Young" in md

    reference.write_text("task,accuracy\nSmiling,0.85\nMale,0.9\nYoung,0.75\n")
    main([str(sweep), "--stl-reference", str(reference)])
    csv = pd.read_csv(sweep / "report.csv").set_index(["strategy", "backbone"])
    values, _ = dst_arrays()
    per_seed = -100 * ((values - [0.85, 0.9, 0.75]) / [0.85, 0.9, 0.75]).mean(axis=1)
    assert csv.loc[("dst", "resnet18"), "delta_m_pct"] == pytest.approx(per_seed.mean())
    low = csv.loc[("dst", "resnet18"), "delta_m_pct_ci_low"]
    assert low == pytest.approx(
        stats.t.interval(0.95, 3, loc=per_seed.mean(), scale=stats.sem(per_seed))[0]
    )


def test_bad_external_reference_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_metrics(tmp_path / "0", "mtl", 0, {"Smiling": 0.9})
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--stl-reference", str(tmp_path / "nope.csv")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--stl-reference" in error and "nope.csv" in error
    assert not (tmp_path / "report.md").exists()
