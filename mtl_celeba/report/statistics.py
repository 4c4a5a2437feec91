"""Does a strategy help? Paired differences to MTL, Delta_m% against STL and mean ranks.

Pure functions on the report's run x task table (one row per completed run and task, with the
configuration's keys, ``seed``, ``task`` and the metric). Runs of the same seed see the same
training batches and augmentation whatever their strategy, so each configuration is compared
with MTL seed by seed, on the seeds both ran: the differences over those seeds get a mean, a
95% t confidence interval, a paired t-test p-value (Holm-corrected across the tasks of that
configuration) and the exact paired sign-flip p-value beside it. Differences without spread
(every seed differs by the same amount) are not tested: a t-test would divide by zero.

Delta_m% is written as the CelebA-40 literature writes it (FAMO, Nash-MTL, FairGrad):
Delta_m = 100 / T * sum_t (-1)^d_t (M_t - M_STL,t) / M_STL,t with d_t = 1 for a
higher-is-better metric, so a LOWER Delta_m% is better and a negative one beats STL.

Values are in the metric's own units (fractions); Delta_m is in %.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mtl_celeba.scheduling.names import BASELINE, REFERENCE

#: Keys naming a configuration's strategy; the other configuration keys (backbone, attribute
#: set, scale, ...) say which MTL runs a configuration is compared with.
STRATEGY_KEYS = ("strategy", "drop_metrics")
#: Significance level of the Holm-corrected tests and coverage of the intervals (1 - ALPHA).
ALPHA = 0.05
#: A t interval and a paired test need at least this many paired seeds.
MIN_PAIRS = 2
#: Differences whose standard deviation is below this share of their size (or of the metric's
#: resolution, one test image) have no spread: float noise, not a measured variation.
NO_SPREAD_RTOL = 1e-6
#: The sign-flip p-value is exact (all 2^n sign patterns) up to this many seeds.
EXACT_FLIPS_UP_TO = 16
#: How the single-task reference enters Delta_m%'s interval (the ``reference_mode`` column).
PAIRED, UNPAIRED, CONDITIONAL = "paired", "unpaired", "conditional"


# --------------------------------------------------------------------------- building blocks


def delta_m_sign(lower_is_better: bool = False) -> float:
    """(-1)^d with d = 1 for a higher-is-better metric: -1 for accuracy, F1, AUROC."""
    return 1.0 if lower_is_better else -1.0


def delta_m_array(
    values: np.ndarray, reference: np.ndarray, lower_is_better: bool = False
) -> np.ndarray:
    """Delta_m% over the last axis (tasks) of ``values`` against ``reference`` (broadcast).

    NaN where any task's value or reference is NaN or the reference is 0: Delta_m is defined
    over the full task set only.
    """
    values, reference = np.broadcast_arrays(
        np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = delta_m_sign(lower_is_better) * (values - reference) / reference
    terms = np.where(reference == 0, np.nan, terms)
    return 100.0 * terms.mean(axis=-1)


def delta_m(values: pd.Series, reference: pd.Series, lower_is_better: bool = False) -> float:
    """Delta_m% of ``values`` against ``reference`` (both indexed by task); lower is better.

    NaN when the reference lacks a task, a value or reference is NaN, or a reference is 0:
    a partial average would compare different task sets.
    """
    if values.empty:
        return float("nan")
    reference = reference.reindex(values.index)
    return float(delta_m_array(values.to_numpy(float), reference.to_numpy(float), lower_is_better))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not in the family).

    Written here because scipy has no Holm correction (``scipy.stats.false_discovery_control``
    is Benjamini-Hochberg, which controls the false discovery rate, not the family-wise error
    the report needs). With the m p-values sorted ascending, p_(i) becomes
    max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = len(order)
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        adjusted[index] = running
    return adjusted


def sign_flip_p(differences: Sequence[float]) -> float:
    """Two-sided paired sign-flip (permutation) p-value of the mean of ``differences``.

    Under "no effect" each paired difference is as likely positive as negative, so the
    p-value is the share of the 2^n sign patterns whose |mean| is at least the observed one.
    It needs no normality, and its smallest value is 2 / 2^n (0.25 with 3 seeds, 0.0625 with
    5): with few seeds it shows how much a small t-test p rests on the normality assumption.
    Exact up to EXACT_FLIPS_UP_TO values, else from 2^16 random patterns (fixed seed).
    """
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    if n == 0:
        return float("nan")
    if n <= EXACT_FLIPS_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(2**16, n))
        signs[0] = 1.0
    observed = abs(d.sum())
    flipped = np.abs(signs @ d)
    tolerance = 1e-9 * max(observed, np.abs(d).max(), 1e-300)
    return float(np.mean(flipped >= observed - tolerance))


def no_spread(sample: np.ndarray, resolution: float = 0.0) -> bool:
    """Whether ``sample``'s values are all the same up to float noise (relative to their size
    and to ``resolution``, the metric's smallest step)."""
    if len(sample) < 2:
        return False
    scale = max(float(np.abs(sample).max()), resolution)
    return bool(sample.std(ddof=1) <= NO_SPREAD_RTOL * scale)


@dataclass(frozen=True)
class Interval:
    """Mean of a sample with its t confidence interval, the t-test p and the sign-flip p.

    NaN where fewer than MIN_PAIRS values; ``testable`` is False when the values have no
    spread (the same non-zero value in every seed): then no interval and no t-test.
    """

    n: int
    mean: float
    low: float
    high: float
    pvalue: float
    p_exact: float = float("nan")
    testable: bool = True

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(
    values: Sequence[float], confidence: float = 1 - ALPHA, resolution: float = 0.0
) -> Interval:
    """Mean, t confidence interval, one-sample t-test p (against 0) and sign-flip p of ``values``.

    A paired t-test is the one-sample test of the paired differences (``ttest_rel`` equals
    ``ttest_1samp`` on them). All-zero differences (identical runs) give p = 1: no evidence
    of a difference. The same non-zero difference in every seed (likely with 2-3 seeds: the
    metric moves in whole test images) is not testable: the t statistic would be infinite.
    """
    sample = np.asarray(values, dtype=float)
    sample = sample[~np.isnan(sample)]
    n = len(sample)
    mean = float(sample.mean()) if n else float("nan")
    nan = float("nan")
    if n < MIN_PAIRS:
        return Interval(n, mean, nan, nan, nan)
    if not sample.any():
        return Interval(n, 0.0, 0.0, 0.0, 1.0, 1.0)
    p_exact = sign_flip_p(sample)
    if no_spread(sample, resolution):
        return Interval(n, mean, nan, nan, nan, p_exact, testable=False)
    with warnings.catch_warnings():
        # Nearly identical differences warn about precision loss; the result is still usable.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(sample, 0.0)
        interval = result.confidence_interval(confidence_level=confidence)
    return Interval(
        n, mean, float(interval.low), float(interval.high), float(result.pvalue), p_exact
    )


def _t_quantile(confidence: float, df: np.ndarray | float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return stats.t.ppf(0.5 + confidence / 2, df)


def _t_interval_over_seeds(
    per_seed: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the last (seed) axis and its t interval; NaN bounds below MIN_PAIRS seeds."""
    n = per_seed.shape[-1]
    mean = per_seed.mean(axis=-1)
    if n < MIN_PAIRS:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    half = _t_quantile(confidence, n - 1) * per_seed.std(axis=-1, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def paired_delta_m_interval(
    values: np.ndarray,
    reference: np.ndarray,
    lower_is_better: bool = False,
    confidence: float = 1 - ALPHA,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delta_m% and its t interval when the reference ran the same seeds (arrays ..., seeds, tasks).

    Delta_m is taken per seed against that seed's reference run, so the interval over seeds
    carries the reference's own noise. Returns (mean, low, high) over the leading axes.
    """
    per_seed = delta_m_array(values, reference, lower_is_better)
    return _t_interval_over_seeds(per_seed, confidence)


def unpaired_delta_m_interval(
    values: np.ndarray,
    reference: np.ndarray,
    lower_is_better: bool = False,
    confidence: float = 1 - ALPHA,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delta_m% and its interval by the delta method when the reference ran other seeds.

    ``values``: (..., seeds, tasks), complete; ``reference``: (..., reference runs, tasks),
    NaN where a task has fewer runs. Delta_m = 100/T sum_t s (mean M_t / mean R_t - 1): its
    variance is the configuration's over seeds (per-seed values against the reference means)
    plus, per task, (100/T M_t / R_t^2)^2 var(R_t) / n_t from the reference's own runs; the
    t quantile takes Welch-Satterthwaite's degrees of freedom.
    """
    values = np.asarray(values, dtype=float)
    reference = np.asarray(reference, dtype=float)
    tasks, n = values.shape[-1], values.shape[-2]
    r_mean = np.nanmean(reference, axis=-2)
    r_var = np.nanvar(reference, axis=-2, ddof=1)
    r_n = (~np.isnan(reference)).sum(axis=-2)
    per_seed = delta_m_array(values, r_mean[..., None, :], lower_is_better)
    mean = per_seed.mean(axis=-1)
    if n < MIN_PAIRS or (r_n < MIN_PAIRS).any():
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    var_a = per_seed.var(axis=-1, ddof=1) / n
    gradient = 100.0 / tasks * values.mean(axis=-2) / r_mean**2
    var_b = gradient**2 * r_var / r_n
    total = var_a + var_b.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = total**2 / (var_a**2 / (n - 1) + (var_b**2 / (r_n - 1)).sum(axis=-1))
    half = _t_quantile(confidence, df) * np.sqrt(total)
    return mean, mean - half, mean + half


def conditional_delta_m_interval(
    values: np.ndarray,
    reference: np.ndarray,
    lower_is_better: bool = False,
    confidence: float = 1 - ALPHA,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delta_m% and its t interval over the configuration's seeds with the reference held fixed
    (``reference``: one value per task): it is conditional on that reference, whose own noise
    it leaves out (an STL task run once, or an external table)."""
    per_seed = delta_m_array(
        values, np.asarray(reference, dtype=float)[..., None, :], lower_is_better
    )
    return _t_interval_over_seeds(per_seed, confidence)


# --------------------------------------------------------------------------- the analyses


def context_keys(group_keys: Sequence[str]) -> list[str]:
    """The configuration keys besides the strategy: runs are compared within one context."""
    return [key for key in group_keys if key not in STRATEGY_KEYS]


def seed_scores(scores: pd.DataFrame, metric: str, group_keys: Sequence[str]) -> pd.DataFrame:
    """One row per (configuration, seed, task) of the multi-task runs, the metric as ``value``.

    Runs repeating a seed within a configuration are averaged (the report notes them); runs
    without a seed cannot be paired and are left out. ``resolution`` is the metric's smallest
    step, one test image (0 where the test set's size is unknown).
    """
    multi = scores[(scores["strategy"] != REFERENCE) & scores["seed"].notna()]
    keys = [*group_keys, "configuration", "seed", "task"]
    images = multi["test_images"] if "test_images" in multi else pd.Series(np.nan, multi.index)
    multi = multi.assign(resolution=(1.0 / pd.to_numeric(images, errors="coerce")).fillna(0.0))
    grouped = multi.groupby(keys, sort=False, dropna=False)
    # mean() skips NaN: a NaN metric must stay NaN (an unusable seed), not vanish
    value = grouped[metric].agg(lambda v: v.mean() if v.notna().all() else np.nan)
    return pd.DataFrame({"value": value, "resolution": grouped["resolution"].max()}).reset_index()


def paired_differences(
    scores: pd.DataFrame,
    metric: str,
    group_keys: Sequence[str],
    lower_is_better: bool = False,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Per (configuration, task) other than MTL: the paired difference to MTL over shared seeds.

    Columns: the configuration keys, ``configuration``, ``task``, ``pairs`` (seeds run by both
    with a finite metric), ``diff`` (mean of configuration - MTL), ``ci_low``/``ci_high`` (95% t
    interval), ``p`` (paired t-test), ``p_exact`` (paired sign-flip), ``testable`` (False: no
    spread), ``p_holm`` (Holm across the configuration's tested tasks) and ``significant``
    ("gain", "loss" or ""; from ``p_holm``).
    """
    columns = [
        *group_keys, "configuration", "task", "pairs", "diff", "ci_low", "ci_high", "p",
        "p_exact", "testable", "p_holm", "significant",
    ]  # fmt: skip
    per_seed = seed_scores(scores, metric, group_keys)
    context = context_keys(group_keys)
    baseline = per_seed.loc[
        per_seed["strategy"] == BASELINE, [*context, "seed", "task", "value"]
    ].rename(columns={"value": "baseline"})
    others = per_seed[per_seed["strategy"] != BASELINE]
    if others.empty:
        return pd.DataFrame(columns=columns)
    merged = others.merge(baseline, on=[*context, "seed", "task"], how="left")
    merged["difference"] = merged["value"] - merged["baseline"]

    rows = []
    for key, group in merged.groupby(
        [*group_keys, "configuration", "task"], sort=False, dropna=False
    ):
        interval = t_interval(group["difference"], resolution=float(group["resolution"].max()))
        rows.append(
            (
                *key, interval.n, interval.mean, interval.low, interval.high, interval.pvalue,
                interval.p_exact, interval.testable,
            )
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=columns[:-2])
    table["p_holm"] = table.groupby([*group_keys, "configuration"], sort=False, dropna=False)[
        "p"
    ].transform(lambda p: holm(p.to_numpy()))
    better = table["diff"] < 0 if lower_is_better else table["diff"] > 0
    significant = table["p_holm"] < alpha
    table["significant"] = np.where(
        significant & better, "gain", np.where(significant & ~better, "loss", "")
    )
    return table


def reference_keys(group_keys: Sequence[str]) -> list[str]:
    """The configuration keys an STL run must share to be a configuration's reference: the
    backbone and the scale (STL trains one task, so attribute set and transfer do not apply)."""
    return [key for key in context_keys(group_keys) if key not in ("attribute_set", "transfer")]


def _names(tasks: Sequence[str]) -> str:
    return ", ".join(tasks) if len(tasks) <= 3 else f"{len(tasks)} tasks"


def _seed_list(seeds: Sequence[float]) -> str:
    return ", ".join(f"{int(s)}" for s in sorted(seeds))


def delta_m_over_seeds(
    scores: pd.DataFrame,
    metric: str,
    group_keys: Sequence[str],
    reference: pd.DataFrame,
    lower_is_better: bool = False,
    stl_runs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per configuration: Delta_m% against the single-task reference (lower is better).

    Only seeds with a finite value on every task of the configuration count. With ``stl_runs``
    (the STL rows of the run table) of the same backbone and scale: paired by seed when STL
    ran at least MIN_PAIRS of the configuration's seeds (``reference_mode`` "paired"), else by
    the delta method when every task has MIN_PAIRS STL runs ("unpaired"), else conditional on
    the STL means ("conditional", e.g. one STL run per task). Without STL runs, ``reference``
    (backbone, task, mean; an external table) is held fixed ("conditional").

    Columns: the configuration keys, ``configuration``, ``seeds`` (seeds used), ``delta_m``,
    ``delta_m_low``, ``delta_m_high``, ``reference_mode``, ``reference_runs`` (most STL runs of
    a task), ``missing_reference`` (tasks without one), ``not_available`` (why Delta_m is n/a)
    and ``excluded`` (seeds left out, with why).
    """
    columns = [
        *group_keys, "configuration", "seeds", "delta_m", "delta_m_low", "delta_m_high",
        "reference_mode", "reference_runs", "missing_reference", "not_available", "excluded",
    ]  # fmt: skip
    per_seed = seed_scores(scores, metric, group_keys)
    ref_keys = reference_keys(group_keys)
    stl = None
    if stl_runs is not None and not stl_runs.empty:
        stl = (
            stl_runs.groupby([*ref_keys, "seed", "task"], sort=False, dropna=False)[metric]
            .mean()
            .rename("value")
            .reset_index()
        )
    nan = float("nan")
    rows = []
    for key, group in per_seed.groupby([*group_keys, "configuration"], sort=False, dropna=False):
        config = dict(zip([*group_keys, "configuration"], key, strict=True))
        wide = group.pivot_table(index="seed", columns="task", values="value", dropna=False)
        tasks = list(dict.fromkeys(group["task"]))
        wide = wide.reindex(columns=tasks)
        excluded = []
        for seed, run in wide.iterrows():
            lacking = [t for t in tasks if pd.isna(run[t])]
            if lacking:
                excluded.append(f"seed {int(seed)} ({_names(lacking)}: no finite {metric})")
        wide = wide.dropna()
        if stl is not None:
            mine = stl
            for name in ref_keys:
                mine = mine[
                    (mine[name] == config[name]) | (mine[name].isna() & pd.isna(config[name]))
                ]
            ref_wide = mine.pivot_table(index="seed", columns="task", values="value", dropna=False)
            ref_wide = ref_wide.reindex(columns=tasks)
            means = ref_wide.mean()
            counts = ref_wide.notna().sum()
        else:
            ref_wide = None
            table = reference
            for name in [k for k in ref_keys if k in reference.columns]:
                table = table[table[name] == config[name]]
            means = table.drop_duplicates("task").set_index("task")["mean"].reindex(tasks)
            counts = pd.Series(1, index=tasks)
        missing = [t for t in tasks if pd.isna(means.get(t, nan))]
        zero = [t for t in tasks if t not in missing and means[t] == 0]
        reason = ""
        if missing:
            reason = f"no single-task reference for {_names(missing)}"
        elif zero:
            reason = f"the single-task reference of {_names(zero)} is 0 (Δm% divides by it)"
        elif wide.empty:
            reason = f"no seed has a finite {metric} on every task"
        mode, runs, used = CONDITIONAL, int(counts.max()) if len(counts) else 0, len(wide)
        mean, low, high = nan, nan, nan
        if not reason:
            values = wide.to_numpy(float)
            shared = []
            if ref_wide is not None:
                complete = ref_wide.dropna()
                shared = [s for s in wide.index if s in complete.index]
            if len(shared) >= MIN_PAIRS:
                mode, used = PAIRED, len(shared)
                result = paired_delta_m_interval(
                    wide.loc[shared].to_numpy(float),
                    complete.loc[shared].to_numpy(float),
                    lower_is_better,
                )
            elif ref_wide is not None and (counts >= MIN_PAIRS).all():
                mode = UNPAIRED
                result = unpaired_delta_m_interval(
                    values, ref_wide.to_numpy(float), lower_is_better
                )
            else:
                result = conditional_delta_m_interval(
                    values, means.to_numpy(float), lower_is_better
                )
            mean, low, high = (float(v) for v in result)
        rows.append(
            (
                *key, used, mean, low, high, mode, runs, ", ".join(missing), reason,
                "; ".join(excluded),
            )
        )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def mean_ranks(
    scores: pd.DataFrame, metric: str, group_keys: Sequence[str], lower_is_better: bool = False
) -> pd.DataFrame:
    """Per configuration: its mean rank across tasks among the configurations of its context.

    Where the context has MTL, each task ranks the configurations by their paired difference
    to MTL over the seeds they share with it (MTL itself: 0), so every configuration is
    ranked on the same seeds as its gain; a configuration sharing no seed with MTL is not
    ranked. Without MTL, by the means over seeds. 1 = best, ties share the average rank.
    Columns: the configuration keys, ``configuration``, ``mean_rank``, ``ranked_among``.
    """
    per_seed = seed_scores(scores, metric, group_keys)
    keys = [*group_keys, "configuration"]
    context = context_keys(group_keys)
    baseline = per_seed.loc[
        per_seed["strategy"] == BASELINE, [*context, "seed", "task", "value"]
    ].rename(columns={"value": "baseline"})
    merged = per_seed.merge(baseline, on=[*context, "seed", "task"], how="left")
    has_mtl = merged.groupby(context, sort=False, dropna=False)["strategy"].transform(
        lambda s: (s == BASELINE).any()
    )
    merged["score"] = np.where(has_mtl, merged["value"] - merged["baseline"], merged["value"])
    means = merged.groupby([*keys, "task"], sort=False, dropna=False)["score"].mean().reset_index()
    # runs without a seed still count where there is nothing to pair with
    means["rank"] = means.groupby([*context, "task"], sort=False, dropna=False)["score"].rank(
        ascending=lower_is_better, method="average"
    )
    ranks = (
        means.groupby(keys, sort=False, dropna=False)["rank"]
        .agg(lambda r: r.mean() if r.notna().all() else np.nan)
        .rename("mean_rank")
        .reset_index()
    )
    counts = ranks.groupby(context, sort=False, dropna=False)["mean_rank"].transform("count")
    return ranks.assign(ranked_among=counts)


# --------------------------------------------------------------------------- in words


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _task_phrase(row: pd.Series) -> str:
    return f"{row['task']} {_points(row['diff'])} pp [{_points(row['ci_low'])}, {_points(row['ci_high'])}]"


#: The interval's label by how the single-task reference entered it.
REFERENCE_MODE_WORDS = {
    PAIRED: "",
    UNPAIRED: ", STL on other seeds: delta method",
    CONDITIONAL: ", conditional on one STL run",
}


def delta_m_phrase(row: pd.Series | None) -> str:
    """``Δm% -1.23 ± 0.45``, or n/a with the reason (lower is better)."""
    if row is None or not row["seeds"] > 0:
        reason = "" if row is None else row.get("not_available", "")
        return f"Δm% n/a ({reason or 'no run with a seed'})"
    if isinstance(row.get("not_available"), str) and row["not_available"]:
        return f"Δm% n/a ({row['not_available']})"
    if pd.isna(row["delta_m_low"]):
        return f"Δm% {row['delta_m']:+.2f} ({row['seeds']:g} seed: no interval)"
    words = REFERENCE_MODE_WORDS[row["reference_mode"]]
    if row["reference_mode"] == CONDITIONAL and row.get("reference_runs", 1) > 1:
        words = ", conditional on the STL means"
    half = (row["delta_m_high"] - row["delta_m_low"]) / 2
    return f"Δm% {row['delta_m']:+.2f} ± {half:.2f}{words}"


NOT_TESTABLE = "not testable (every seed differs by the same amount)"


def sentence(label: str, paired: pd.DataFrame, delta: pd.Series | None) -> str:
    """One plain sentence: on how many tasks ``label`` beats or loses to MTL, and its Delta_m%.

    ``paired`` holds the configuration's rows of :func:`paired_differences`; ``delta`` its row of
    :func:`delta_m_over_seeds`. The ± after Delta_m% is the 95% interval's half-width.
    """
    head = f"{label} vs MTL:"
    tasks = len(paired)
    pairs = int(paired["pairs"].min()) if tasks else 0
    if pairs == 0:
        return (
            f"{head} no MTL run with the same seed, no paired comparison; {delta_m_phrase(delta)}."
        )
    if pairs < MIN_PAIRS:
        return (
            f"{head} only {pairs} paired seed, fewer than {MIN_PAIRS}: no confidence interval "
            f"or test; {delta_m_phrase(delta)}."
        )

    def clause(kind: str, word: str) -> str:
        hits = paired[paired["significant"] == kind]
        if hits.empty:
            return f"{word} on none"
        listed = "; ".join(_task_phrase(row) for _, row in hits.iterrows())
        return f"{word} on {len(hits)} of {tasks} tasks ({listed})"

    untested = paired[~paired["testable"].astype(bool)]
    extra = ""
    if not untested.empty:
        extra = f"; {NOT_TESTABLE} on {', '.join(untested['task'])}"
    return (
        f"{head} {clause('gain', 'better')}, {clause('loss', 'worse')}{extra}; "
        f"{delta_m_phrase(delta)}."
    )


# --------------------------------------------------------------------------- all together


@dataclass
class Statistics:
    """The report's answer to "does it help?", all in the metric's units (Delta_m in %)."""

    #: One row per (configuration other than MTL, task): :func:`paired_differences`.
    paired: pd.DataFrame
    #: One row per configuration: seeds, Delta_m% and its interval, mean rank.
    overall: pd.DataFrame
    #: One row per configuration other than MTL: its sentence.
    sentences: pd.DataFrame


def analyse(
    scores: pd.DataFrame,
    metric: str,
    group_keys: Sequence[str],
    reference: pd.DataFrame,
    lower_is_better: bool = False,
    stl_runs: pd.DataFrame | None = None,
) -> Statistics:
    """Every statistic of the "Does it help?" section (``reference``: backbone, task, mean;
    ``stl_runs``: the STL rows of the run table, None for an external reference)."""
    keys = [*group_keys, "configuration"]
    paired = paired_differences(scores, metric, group_keys, lower_is_better)
    delta = delta_m_over_seeds(scores, metric, group_keys, reference, lower_is_better, stl_runs)
    ranks = mean_ranks(scores, metric, group_keys, lower_is_better)
    overall = delta.merge(ranks, on=keys, how="outer")

    # Configurations are matched by their keys as text: a key may be NaN (NaN != NaN).
    def ident(frame: pd.DataFrame) -> pd.Series:
        return pd.Series(
            ["\x1f".join(map(str, row)) for row in frame[keys].itertuples(index=False)],
            index=frame.index,
            dtype=object,
        )

    delta_rows = {
        name: row for name, (_, row) in zip(ident(overall), overall.iterrows(), strict=True)
    }
    rows = []
    for name, group in paired.groupby(ident(paired), sort=False):
        first = group.iloc[0]
        rows.append((*first[keys], sentence(first["configuration"], group, delta_rows.get(name))))
    sentences = pd.DataFrame(rows, columns=[*keys, "sentence"])
    return Statistics(paired=paired, overall=overall, sentences=sentences)
