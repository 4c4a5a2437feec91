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
    conditional_delta_m_interval,
    delta_m_array,
    delta_m_over_seeds,
    holm,
    mean_ranks,
    paired_delta_m_interval,
    paired_differences,
    sign_flip_p,
    t_interval,
    unpaired_delta_m_interval,
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


# --------------------------------------------------------------------------- the edges


def write_job(
    run_dir: Path,
    strategy: str,
    seed: int,
    values: dict[str, float],
    status: str = "completed",
    samples: dict[str, int] | None = None,
    schedule: dict | None = None,
    **config: object,
) -> None:
    """A run folder with metrics.json (``config`` adds or replaces config keys)."""
    run_dir.mkdir(parents=True)
    results: dict = {
        "status": status,
        "config": {
            "strategy": strategy,
            "drop_metrics": None,
            "backbone": "resnet18",
            "attribute_set": "assignment8",
            "seed": seed,
            "data_source": "synthetic",
            "image_size": 32,
            "max_epochs": 3,
            "precision": "32-true",
            **config,
        },
        "samples": samples or {"train": 643, "val": 78, "test": 79},
    }
    if status == "completed":
        results["test"] = {
            "per_task": {t: {"accuracy": v, "f1": v} for t, v in values.items()},
            "mean": {},
        }
    if schedule is not None:
        results["schedule"] = schedule
    (run_dir / "metrics.json").write_text(json.dumps(results))


def report_of(root: Path, *extra: str) -> tuple[str, pd.DataFrame]:
    main([str(root), "--out", str(root / "report"), *extra])
    md = (root / "report" / "report.md").read_text(encoding="utf-8")
    return md, pd.read_csv(root / "report" / "report.csv")


def csv_row(csv: pd.DataFrame, strategy: str, **where: object) -> pd.Series:
    rows = csv[csv["strategy"] == strategy]
    for key, value in where.items():
        rows = rows[rows[key] == value]
    (index,) = rows.index
    return rows.loc[index]


def test_sign_flip_p_against_scipy() -> None:
    rng = np.random.default_rng(5)
    for n in (2, 3, 5, 7):
        for _ in range(10):
            d = rng.normal(0.01, 0.01, n).round(4)
            expected = stats.permutation_test(
                (d, np.zeros(n)),
                lambda x, y, axis: np.mean(x - y, axis=axis),
                permutation_type="samples",
                n_resamples=np.inf,
                vectorized=True,
            ).pvalue
            assert sign_flip_p(d) == pytest.approx(expected)
    # the smallest value: every seed on the same side
    assert sign_flip_p([0.01, 0.02, 0.03]) == pytest.approx(2 / 2**3)


def test_zero_and_float_noise_spread_is_not_tested() -> None:
    same = t_interval([1 / 80] * 3, resolution=1 / 80)  # +1 of 80 test images in every seed
    assert not same.testable and np.isnan(same.pvalue) and np.isnan(same.low)
    assert same.mean == pytest.approx(1 / 80) and same.p_exact == pytest.approx(2 / 2**3)
    noise = t_interval([0.0125, 0.0125 + 1e-17, 0.0125 - 2e-17])
    assert not noise.testable
    real = t_interval([0.0125, 0.025, 0.0125])  # one test image of spread is a real spread
    assert real.testable and real.pvalue == pytest.approx(
        stats.ttest_1samp([0.0125, 0.025, 0.0125], 0).pvalue
    )


def test_zero_spread_cell_is_said_not_testable(tmp_path: Path) -> None:
    for seed in range(3):
        write_job(tmp_path / f"m{seed}", "mtl", seed, {"a": 0.5 + 0.01 * seed, "b": 0.6})
        write_job(tmp_path / f"d{seed}", "dst", seed, {"a": 0.5 + 0.01 * seed + 1 / 79, "b": 0.6})
    md, csv = report_of(tmp_path)
    assert "not testable (every seed differs by the same amount) on a" in md
    assert "▲" not in md.split("## Summary", 1)[1] and "p<0.001" not in md
    dst = csv_row(csv, "dst")
    assert dst["a_significant_vs_mtl"] != "gain" and dst["a_p_exact_vs_mtl"] == pytest.approx(0.25)
    assert "Holm's correction is per configuration" in md
    assert "▲ / ▼ mark a Holm-adjusted t-test p" in md


def test_unequal_seeds_use_the_shared_seeds_everywhere(tmp_path: Path) -> None:
    mtl = {0: (0.80, 0.70), 1: (0.82, 0.74), 2: (0.81, 0.72)}
    diff = {0: (0.01, -0.02), 1: (0.03, 0.00), 2: (0.02, -0.01)}
    for seed, values in mtl.items():
        write_job(tmp_path / f"m{seed}", "mtl", seed, dict(zip("ab", values, strict=True)))
        dst = [v + d for v, d in zip(values, diff[seed], strict=True)]
        write_job(tmp_path / f"d{seed}", "dst", seed, dict(zip("ab", dst, strict=True)))
        write_job(tmp_path / f"s{seed}a", "stl", seed, {"a": 0.85 + 0.01 * seed})
        write_job(tmp_path / f"s{seed}b", "stl", seed, {"b": 0.75 - 0.01 * seed})
    for seed in (3, 4):  # far better seeds MTL did not run: they must not count
        write_job(tmp_path / f"d{seed}", "dst", seed, {"a": 0.99, "b": 0.99})
    md, csv = report_of(tmp_path)
    dst = csv_row(csv, "dst")
    d = np.array([diff[s] for s in range(3)])
    assert dst["a_gain_mtl"] == pytest.approx(d[:, 0].mean())
    assert dst["mean_over_tasks_gain_mtl"] == pytest.approx(d.mean())
    assert dst["a_pairs_vs_mtl"] == 3
    # Δm% paired with STL by seed, on the seeds STL ran (0-2), in the literature's sign
    values = np.array([[v + e for v, e in zip(mtl[s], diff[s], strict=True)] for s in range(3)])
    stl = np.array([[0.85 + 0.01 * s, 0.75 - 0.01 * s] for s in range(3)])
    per_seed = -100 * ((values - stl) / stl).mean(axis=1)
    assert dst["delta_m_pct"] == pytest.approx(per_seed.mean())
    assert dst["reference_mode"] == "paired" and dst["seeds"] == 3
    assert dst["a_gain_stl"] == pytest.approx((values - stl)[:, 0].mean())  # seeds 0-2 only
    low, _ = stats.t.interval(0.95, 2, loc=per_seed.mean(), scale=stats.sem(per_seed))
    assert dst["delta_m_pct_ci_low"] == pytest.approx(low)
    assert "dst · resnet18 · assignment8 · " in md and "seeds 3, 4 without an MTL run" in md
    assert "Δm% (lower is better)" in md.split("## Summary", 1)[1].split("\n\n", 2)[1]


def test_a_failed_seed_is_left_out_and_named(tmp_path: Path) -> None:
    for seed in range(4):
        write_job(tmp_path / f"m{seed}", "mtl", seed, {"a": 0.8 + 0.01 * seed})
        status = "failed" if seed == 2 else "completed"
        write_job(tmp_path / f"d{seed}", "dst", seed, {"a": 0.82 + 0.02 * seed}, status=status)
    md, csv = report_of(tmp_path)
    expected = np.mean([0.02 + 0.01 * s for s in (0, 1, 3)])
    assert csv_row(csv, "dst")["a_gain_mtl"] == pytest.approx(expected)
    assert "MTL seed 2 without a run of it (not run, failed or unfinished)" in md


def test_a_nan_metric_drops_its_seed_and_says_so(tmp_path: Path) -> None:
    for seed in range(3):
        write_job(tmp_path / f"m{seed}", "mtl", seed, {"a": 0.8, "b": 0.7 + 0.01 * seed})
        a = float("nan") if seed == 1 else 0.81 + 0.01 * seed
        write_job(tmp_path / f"d{seed}", "dst", seed, {"a": a, "b": 0.72 + 0.02 * seed})
        write_job(tmp_path / f"s{seed}a", "stl", seed, {"a": 0.9})
        write_job(tmp_path / f"s{seed}b", "stl", seed, {"b": 0.8})
    md, csv = report_of(tmp_path)
    dst = csv_row(csv, "dst")
    assert dst["a_pairs_vs_mtl"] == 2 and dst["b_pairs_vs_mtl"] == 3
    assert dst["seeds"] == 2  # Δm% over the seeds with every task
    per_seed = [
        -100 * ((0.81 + 0.01 * s - 0.9) / 0.9 + (0.72 + 0.02 * s - 0.8) / 0.8) / 2 for s in (0, 2)
    ]
    assert dst["delta_m_pct"] == pytest.approx(np.mean(per_seed))
    assert "seed 1 (a: no finite accuracy)" in md


def test_a_missing_task_or_a_zero_reference_gives_n_a_with_the_reason(tmp_path: Path) -> None:
    for seed in range(2):
        write_job(tmp_path / f"m{seed}", "mtl", seed, {"a": 0.8, "b": 0.7 + 0.01 * seed})
        write_job(tmp_path / f"d{seed}", "dst", seed, {"a": 0.8, "b": 0.72 + 0.01 * seed})
        write_job(tmp_path / f"s{seed}a", "stl", seed, {"a": 0.9})
    md, csv = report_of(tmp_path)
    assert pd.isna(csv_row(csv, "dst")["delta_m_pct"])
    assert "Δm% n/a (no single-task reference for b)" in md
    for seed in range(2):
        write_job(tmp_path / f"s{seed}b", "stl", seed, {"b": 0.0})  # F1 of a never-predicted task
    md, csv = report_of(tmp_path)
    assert pd.isna(csv_row(csv, "dst")["delta_m_pct"])
    assert "the single-task reference of b is 0 (Δm% divides by it)" in md
    assert "inf" not in md


def test_two_scales_are_never_paired(tmp_path: Path) -> None:
    small = {"train": 643, "val": 78, "test": 79}
    large = {"train": 1607, "val": 196, "test": 197}
    for seed in range(3):
        write_job(tmp_path / f"m{seed}", "mtl", seed, {"a": 0.7 + 0.01 * seed}, samples=small)
        write_job(tmp_path / f"d{seed}", "dst", seed, {"a": 0.8 + 0.02 * seed}, samples=large)
    md, csv = report_of(tmp_path)
    assert set(csv["scale"]) == {
        "synthetic CelebA, 800 images (643 train), 32 px, 3 epochs, fp32",
        "synthetic CelebA, 2,000 images (1,607 train), 32 px, 3 epochs, fp32",
    }
    assert pd.isna(csv_row(csv, "dst")["a_gain_mtl"])
    assert "dst vs MTL: no MTL run with the same seed" in md
    assert "▲" not in md.split("## Summary", 1)[1]
    assert md.count("Setup: synthetic CelebA, ") == 2
    assert "reported in separate sections, never paired" in md


def test_real_celeba_scale_in_words(tmp_path: Path) -> None:
    write_job(
        tmp_path / "0", "mtl", 0, {"a": 0.9}, samples={"train": 162770, "val": 19867, "test": 19962},
        data_source="celeba", image_size=128, max_epochs=15, precision="bf16-mixed",
    )  # fmt: skip
    md, _ = report_of(tmp_path)
    assert "real CelebA, 162,770 train, 128 px, 15 epochs, bf16 mixed" in md


def test_a_repeated_configuration_counts_once(tmp_path: Path) -> None:
    for grid in ("dst_vs_baselines", "drop_metrics"):
        write_job(tmp_path / grid / "0", "dst", 0, {"a": 0.9}, experiment=grid)
    for seed in range(2):
        write_job(tmp_path / "dst_vs_baselines" / f"m{seed}", "mtl", seed, {"a": 0.8})
    write_job(tmp_path / "dst_vs_baselines" / "1", "dst", 1, {"a": 0.85})
    md, csv = report_of(tmp_path)
    assert csv_row(csv, "dst")["runs"] == 2
    assert "dst seed 0 was run twice (`../dst_vs_baselines/0` repeats `../drop_metrics/0`" in md
    assert "counted once" in md
    # the repeat completed: it is not among the failed or unfinished runs
    assert (
        "5 run folders, 5 completed (1 repeating another's configuration and seed, counted "
        "once), 0 failed or unfinished"
    ) in md


def test_dst_rows_show_what_dst_dropped(tmp_path: Path) -> None:
    tasks = {"a": 0.8, "b": 0.7}
    nothing = {"realised_drop_rate": {"a": 0.0, "b": 0.0}, "epochs": 3, "gate_every": "epoch"}
    some = {"realised_drop_rate": {"a": 1 / 3, "b": 0.0}, "epochs": 3, "gate_every": "epoch"}
    for seed in range(2):
        write_job(tmp_path / f"m{seed}", "mtl", seed, tasks)
        write_job(tmp_path / f"d{seed}", "dst", seed, tasks, schedule=nothing)
        write_job(tmp_path / f"r{seed}", "random_drop", seed, tasks, schedule=some)
    md, _ = report_of(tmp_path)
    assert "dst dropped nothing (all 6 gates drawn on)" in md
    assert "random_drop dropped nothing" not in md
    assert "16.7% of 6 gates" in md  # (1/3 + 0) / 2 of the task-epochs


def test_coverage_of_the_delta_m_interval() -> None:
    """Simulated sweeps of the grid's design (8 tasks, STL on the same seeds): the nominal 95%
    interval covers the true Delta_m% at least 93% of the time with 3 and 5 seeds; so does the
    delta method with STL on other seeds; holding one STL run fixed does not."""
    rng = np.random.default_rng(0)
    sweeps, tasks = 4000, 8
    mu = rng.uniform(0.6, 0.95, tasks)  # multi-task accuracy per task
    rho = mu + rng.normal(0, 0.02, tasks)  # single-task accuracy per task
    truth = delta_m_array(mu, rho)
    sd = 0.01  # run-to-run spread of one task's accuracy

    def draw(mean: np.ndarray, seeds: int, shared: np.ndarray | None = None) -> np.ndarray:
        noise = rng.normal(0, sd, (sweeps, seeds, tasks))
        return mean + noise + (0 if shared is None else shared)

    def coverage(interval: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
        _, low, high = interval
        return float(np.mean((low <= truth) & (truth <= high)))

    for seeds in (3, 5):
        seed_effect = rng.normal(0, sd / 2, (sweeps, seeds, 1))  # a seed's shared batches
        values, reference = draw(mu, seeds, seed_effect), draw(rho, seeds, seed_effect)
        assert coverage(paired_delta_m_interval(values, reference)) >= 0.93
        other = draw(rho, seeds)
        assert coverage(unpaired_delta_m_interval(values, other)) >= 0.93
        once = draw(rho, 1)[:, 0]
        assert coverage(conditional_delta_m_interval(values, once)) < 0.93


def test_the_sweeper_sees_validation_not_test() -> None:
    from omegaconf import OmegaConf

    from mtl_celeba.train import monitored_value

    results = {"val": {"mean": {"accuracy": 0.81, "f1": 0.6}}, "test": {"mean": {"accuracy": 0.9}}}
    cfg = OmegaConf.create({"callbacks": {"model_checkpoint": {"monitor": "val/accuracy/mean"}}})
    assert monitored_value(cfg, results) == 0.81
    cfg.callbacks.model_checkpoint.monitor = "val/f1/mean"
    assert monitored_value(cfg, results) == 0.6
    cfg.callbacks.model_checkpoint.monitor = "val/loss"
    assert monitored_value(cfg, results) is None
    assert monitored_value(cfg, {"test": results["test"]}) is None
