"""Does a strategy help? Paired differences to MTL, Delta_m% against STL and mean ranks.

Pure functions on the report's run x task table (one row per completed run and task, with the
configuration's keys, ``seed``, ``task`` and the metric). Runs of the same seed see the same
training batches and augmentation whatever their strategy, so each configuration is compared
with MTL seed by seed: the differences over seeds get a mean, a 95% t confidence interval and
a paired t-test p-value, Holm-corrected across the tasks of that configuration.

Values are in the metric's own units (fractions); Delta_m is in %.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mtl_celeba.scheduling.names import BASELINE, REFERENCE

#: Keys naming a configuration's strategy; the other configuration keys (backbone, attribute
#: set, ...) say which MTL runs a configuration is compared with.
STRATEGY_KEYS = ("strategy", "drop_metrics")
#: Significance level of the Holm-corrected tests and coverage of the intervals (1 - ALPHA).
ALPHA = 0.05
#: A t interval and a paired test need at least this many paired seeds.
MIN_PAIRS = 2


# --------------------------------------------------------------------------- building blocks


def delta_m(values: pd.Series, reference: pd.Series, lower_is_better: bool = False) -> float:
    """Delta_m% of ``values`` against ``reference`` (both indexed by task), as in the MTL literature.

    Delta_m = 100 / T * sum_t (-1)^l_t (M_t - M_ref,t) / M_ref,t, with l_t = 1 for a
    lower-is-better metric. NaN when the reference lacks a task: a partial average would
    compare different task sets.
    """
    reference = reference.reindex(values.index)
    if values.empty or reference.isna().any() or values.isna().any():
        return float("nan")
    sign = -1.0 if lower_is_better else 1.0
    return float(100.0 * (sign * (values - reference) / reference).mean())


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not in the family).

    Written here because scipy has no Holm correction (``scipy.stats.false_discovery_control``
    is Benjamini-Hochberg, which controls the false discovery rate, not the family-wise error
    the issue asks for). With the m p-values sorted ascending, p_(i) becomes
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


@dataclass(frozen=True)
class Interval:
    """Mean of a sample with its t confidence interval; NaN where fewer than MIN_PAIRS values."""

    n: int
    mean: float
    low: float
    high: float
    pvalue: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: Sequence[float], confidence: float = 1 - ALPHA) -> Interval:
    """Mean, t confidence interval and one-sample t-test p-value (against 0) of ``values``.

    A paired t-test is the one-sample test of the paired differences (``ttest_rel`` equals
    ``ttest_1samp`` on them). All-zero differences (identical runs) give p = 1 rather than
    scipy's NaN (0/0): there is no evidence of a difference.
    """
    sample = np.asarray(values, dtype=float)
    sample = sample[~np.isnan(sample)]
    n = len(sample)
    mean = float(sample.mean()) if n else float("nan")
    if n < MIN_PAIRS:
        return Interval(n, mean, float("nan"), float("nan"), float("nan"))
    if not sample.any():
        return Interval(n, 0.0, 0.0, 0.0, 1.0)
    with warnings.catch_warnings():
        # Nearly identical differences warn about precision loss; the result is still usable.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(sample, 0.0)
        interval = result.confidence_interval(confidence_level=confidence)
    return Interval(n, mean, float(interval.low), float(interval.high), float(result.pvalue))


# --------------------------------------------------------------------------- the analyses


def context_keys(group_keys: Sequence[str]) -> list[str]:
    """The configuration keys besides the strategy: runs are compared within one context."""
    return [key for key in group_keys if key not in STRATEGY_KEYS]


def seed_scores(scores: pd.DataFrame, metric: str, group_keys: Sequence[str]) -> pd.DataFrame:
    """One row per (configuration, seed, task) of the multi-task runs, the metric as ``value``.

    Runs repeating a seed within a configuration are averaged (the report notes them); runs
    without a seed cannot be paired and are left out.
    """
    multi = scores[(scores["strategy"] != REFERENCE) & scores["seed"].notna()]
    keys = [*group_keys, "configuration", "seed", "task"]
    return (
        multi.groupby(keys, sort=False, dropna=False)[metric].mean().rename("value").reset_index()
    )


def paired_differences(
    scores: pd.DataFrame,
    metric: str,
    group_keys: Sequence[str],
    lower_is_better: bool = False,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Per (configuration, task) other than MTL: the paired difference to MTL over seeds.

    Columns: the configuration keys, ``configuration``, ``task``, ``pairs`` (seeds run by both),
    ``diff`` (mean of configuration - MTL), ``ci_low``/``ci_high`` (95% t interval), ``p``
    (paired t-test), ``p_holm`` (Holm across the configuration's tasks) and ``significant``
    ("gain", "loss" or "").
    """
    columns = [
        *group_keys, "configuration", "task", "pairs", "diff", "ci_low", "ci_high", "p",
        "p_holm", "significant",
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
        interval = t_interval(group["difference"])
        rows.append((*key, interval.n, interval.mean, interval.low, interval.high, interval.pvalue))
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


def delta_m_over_seeds(
    scores: pd.DataFrame,
    metric: str,
    group_keys: Sequence[str],
    reference: pd.DataFrame,
    lower_is_better: bool = False,
) -> pd.DataFrame:
    """Per configuration: Delta_m% against the single-task reference, with a t interval over seeds.

    Delta_m is computed for each seed of the configuration (its per-task values against the
    reference mean per task, ``reference`` having columns backbone, task and mean), then
    averaged over seeds. Columns: the configuration keys, ``configuration``, ``seeds``,
    ``delta_m``, ``delta_m_low``, ``delta_m_high``, ``missing_reference`` (tasks without one).
    """
    columns = [
        *group_keys, "configuration", "seeds", "delta_m", "delta_m_low", "delta_m_high",
        "missing_reference",
    ]  # fmt: skip
    per_seed = seed_scores(scores, metric, group_keys)
    rows = []
    for key, group in per_seed.groupby([*group_keys, "configuration"], sort=False, dropna=False):
        backbone = group["backbone"].iloc[0]
        by_task = reference[reference["backbone"] == backbone].set_index("task")["mean"]
        tasks = list(dict.fromkeys(group["task"]))
        missing = [task for task in tasks if pd.isna(by_task.get(task, np.nan))]
        per_run = [
            delta_m(run.set_index("task")["value"], by_task, lower_is_better)
            for _, run in group.groupby("seed", sort=False)
        ]
        if missing:
            per_run = [float("nan")] * len(per_run)
        interval = t_interval(per_run)
        rows.append(
            (*key, len(per_run), interval.mean, interval.low, interval.high, ", ".join(missing))
        )
    return pd.DataFrame(rows, columns=columns)


def mean_ranks(
    scores: pd.DataFrame, metric: str, group_keys: Sequence[str], lower_is_better: bool = False
) -> pd.DataFrame:
    """Per configuration: its mean rank across tasks among the configurations of its context.

    Each task ranks the multi-task configurations' means over seeds (1 = best, ties share the
    average rank); the mean rank averages these over the tasks. Columns: the configuration
    keys, ``configuration``, ``mean_rank``, ``ranked_among`` (configurations in the context).
    """
    multi = scores[scores["strategy"] != REFERENCE]
    keys = [*group_keys, "configuration"]
    means = multi.groupby([*keys, "task"], sort=False, dropna=False)[metric].mean().reset_index()
    context = context_keys(group_keys)
    means["rank"] = means.groupby([*context, "task"], sort=False, dropna=False)[metric].rank(
        ascending=lower_is_better, method="average"
    )
    ranks = (
        means.groupby(keys, sort=False, dropna=False)["rank"]
        .mean()
        .rename("mean_rank")
        .reset_index()
    )
    counts = ranks.groupby(context, sort=False, dropna=False)["configuration"].transform("count")
    return ranks.assign(ranked_among=counts)


# --------------------------------------------------------------------------- in words


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _task_phrase(row: pd.Series) -> str:
    return f"{row['task']} {_points(row['diff'])} pp [{_points(row['ci_low'])}, {_points(row['ci_high'])}]"


def _delta_m_phrase(row: pd.Series | None) -> str:
    if row is None or not row["seeds"] > 0:
        return "Δm% n/a (no run with a seed)"
    missing = row["missing_reference"]
    if isinstance(missing, str) and missing:
        tasks = missing.split(", ")
        named = missing if len(tasks) <= 3 else f"{len(tasks)} tasks"
        return f"Δm% n/a (no single-task reference for {named})"
    if row["seeds"] < MIN_PAIRS:
        return f"Δm% {row['delta_m']:+.2f} (1 seed: no interval)"
    half = (row["delta_m_high"] - row["delta_m_low"]) / 2
    return f"Δm% {row['delta_m']:+.2f} ± {half:.2f}"


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
            f"{head} no MTL run with the same seed, no paired comparison; {_delta_m_phrase(delta)}."
        )
    if pairs < MIN_PAIRS:
        return (
            f"{head} only {pairs} paired seed, fewer than {MIN_PAIRS}: no confidence interval "
            f"or test; {_delta_m_phrase(delta)}."
        )

    def clause(kind: str, word: str) -> str:
        hits = paired[paired["significant"] == kind]
        if hits.empty:
            return f"{word} on none"
        listed = "; ".join(_task_phrase(row) for _, row in hits.iterrows())
        return f"{word} on {len(hits)} of {tasks} tasks ({listed})"

    return (
        f"{head} {clause('gain', 'better')}, {clause('loss', 'worse')}; {_delta_m_phrase(delta)}."
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
) -> Statistics:
    """Every statistic of the "Does it help?" section (``reference``: backbone, task, mean)."""
    keys = [*group_keys, "configuration"]
    paired = paired_differences(scores, metric, group_keys, lower_is_better)
    delta = delta_m_over_seeds(scores, metric, group_keys, reference, lower_is_better)
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
