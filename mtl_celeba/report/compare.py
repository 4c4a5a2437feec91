"""The numbers of the report: configurations averaged over seeds, compared with MTL and with the
single-task reference (Δm%), in the order the report lists them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mtl_celeba.errors import UserError
from mtl_celeba.report.statistics import MIN_PAIRS, delta_m_over_seeds, reference_keys
from mtl_celeba.run.results import METRIC_NAMES
from mtl_celeba.scheduling.names import BASELINE, REFERENCE, STRATEGY_ORDER

#: A configuration: its runs differ only in the seed and are averaged together. ``scale``
#: (data, images, image size, epochs, precision, label noise, other overrides) keeps runs of
#: different scales apart: they are never paired or ranked together.
GROUP_KEYS = ["strategy", "drop_metrics", "transfer", "backbone", "attribute_set", "scale"]
#: What a configuration is compared with MTL within (everything but the strategy).
CONTEXT_KEYS = ["backbone", "attribute_set", "scale"]
#: Metrics where a smaller value is better; Delta_m flips their sign. None of the reported
#: metrics (accuracy, balanced accuracy, F1, AUROC) is one, but the definition needs the set.
LOWER_IS_BETTER: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- the numbers


def sort_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Order rows by backbone, attribute set, strategy (STRATEGY_ORDER), drop metrics, then task as read."""
    rank = {name: float(i) for i, name in enumerate(STRATEGY_ORDER)}
    unlisted = rank[REFERENCE] - 0.5  # after the listed methods, before STL
    keys = {
        "_scale": table.get("scale", ""),
        "_backbone": table["backbone"],
        "_attribute_set": table["attribute_set"],
        "_strategy": table["strategy"].map(lambda s: rank.get(s, unlisted)),
        "_strategy_name": table["strategy"],
        "_not_all_metrics": table["drop_metrics"] != "all",
        "_metrics": table["drop_metrics"],
        "_transfer": table["transfer"],  # "-" (from scratch) first
    }
    if "task" in table:
        first_seen = {task: i for i, task in enumerate(dict.fromkeys(table["task"]))}
        keys["_task"] = table["task"].map(first_seen)
    ordered = table.assign(**keys).sort_values(list(keys))
    return ordered.drop(columns=list(keys)).reset_index(drop=True)


def _mean_std(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    return (
        frame.groupby(keys, sort=False)[value].agg(mean="mean", std="std", n="count").reset_index()
    )


STL_KEYS = reference_keys(GROUP_KEYS)


def stl_reference(scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Single-task runs: mean, std and n over seeds per (backbone, scale, task), whatever
    their attribute set."""
    stl = scores[scores["strategy"] == REFERENCE]
    return _mean_std(stl, [*STL_KEYS, "task"], metric).sort_values(
        [*STL_KEYS, "task"], ignore_index=True
    )


#: Metrics reported as fractions in metrics.json (an external reference must use the same units).
FRACTION_METRICS = frozenset(METRIC_NAMES)


def read_stl_reference(path: Path, metric: str, backbones: Sequence[str]) -> pd.DataFrame:
    """An external single-task reference (``--stl-reference``) as the report's STL table.

    A CSV with columns ``task`` and ``metric`` (as fractions, like metrics.json) and optionally
    ``backbone``; without it the values serve every backbone in ``backbones``. Returns
    backbone, task, mean, std and n (std and n are unknown: NaN).
    """
    fix = f"give a CSV with columns task,{metric} (optionally backbone), one row per task"
    if not path.is_file():
        raise UserError(f"--stl-reference {path} is not a file: {fix}.")
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise UserError(f"--stl-reference {path} cannot be read as CSV ({error}): {fix}.") from None
    missing = [column for column in ("task", metric) if column not in table.columns]
    if missing:
        raise UserError(f"{path} has no column {', '.join(missing)}: {fix}.")
    values = pd.to_numeric(table[metric], errors="coerce")
    if values.isna().any():
        line = int(values.isna().to_numpy().argmax()) + 2  # the header is line 1
        raise UserError(f"{path} line {line}: {metric} is not a number: {fix}.")
    if metric in FRACTION_METRICS and ((values < 0) | (values > 1)).any():
        raise UserError(
            f"{path}: {metric} values outside [0, 1]: give fractions as in metrics.json "
            "(0.91, not 91)."
        )
    reference = pd.DataFrame({"task": table["task"].astype(str).str.strip(), "mean": values})
    if "backbone" in table.columns:
        reference.insert(0, "backbone", table["backbone"].astype(str).str.strip())
    else:
        reference = pd.concat(
            [reference.assign(backbone=b) for b in backbones] or [reference.assign(backbone="")],
            ignore_index=True,
        )
    repeated = reference[reference.duplicated(["backbone", "task"], keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        raise UserError(
            f"{path} has more than one row for task {first['task']}"
            + (f" and backbone {first['backbone']}" if "backbone" in table.columns else "")
            + ": keep one."
        )
    reference = reference.assign(std=np.nan, n=np.nan)
    return reference[["backbone", "task", "mean", "std", "n"]].sort_values(
        ["backbone", "task"], ignore_index=True
    )


@dataclass
class Comparison:
    """The report's numbers, all in the metric's own units (Delta_m in %)."""

    #: One row per (configuration, task): mean, std, n over seeds, gain_mtl, gain_stl.
    per_task: pd.DataFrame
    #: One row per configuration: mean over tasks (mean, std, n over seeds), gain_mtl, delta_m.
    overall: pd.DataFrame
    #: The single-task reference: one row per (backbone, task).
    stl: pd.DataFrame
    #: (backbone, task) pairs compared with STL that have no STL run.
    missing_stl: pd.DataFrame
    #: Configurations where some seed occurs more than once (runs differing in something else).
    repeated_seeds: pd.DataFrame


def compare(
    scores: pd.DataFrame, metric: str = "accuracy", stl: pd.DataFrame | None = None
) -> Comparison:
    """Average every configuration over its seeds and compare it with MTL and STL.

    The gains over MTL are paired: the mean of (configuration - MTL) over the seeds both ran,
    per task (overall: the mean of those over tasks). The gains over STL are paired the same
    way where STL ran at least MIN_PAIRS of the seeds, else the difference of the means. Delta_m% is
    :func:`~mtl_celeba.report.statistics.delta_m_over_seeds` (lower is better). ``stl``
    replaces the STL runs as the single-task reference (``--stl-reference``: columns backbone,
    task, mean, std, n).
    """
    multi = scores[scores["strategy"] != REFERENCE]
    # "configuration" names (strategy, drop metrics); grouping by it too keeps the name.
    keys = [*GROUP_KEYS, "configuration"]
    per_task = _mean_std(multi, [*keys, "task"], metric)

    # the MTL reference: plain MTL from scratch, seed by seed (a transfer sweep's other
    # variants are compared to it)
    is_mtl = (multi["strategy"] == BASELINE) & (multi["transfer"] == "-")
    mtl = (
        multi[is_mtl & multi["seed"].notna()]
        .groupby([*CONTEXT_KEYS, "seed", "task"], sort=False)[metric]
        .mean()
        .rename("mtl_value")
        .reset_index()
    )
    paired = multi[multi["seed"].notna()].merge(mtl, on=[*CONTEXT_KEYS, "seed", "task"])
    paired = paired.assign(difference=paired[metric] - paired["mtl_value"])
    gains = (
        paired.groupby([*keys, "task"], sort=False)["difference"].mean().rename("gain_mtl")
    ).reset_index()
    per_task = per_task.merge(gains, on=[*keys, "task"], how="left")
    external = stl is not None
    if stl is None:
        stl = stl_reference(scores, metric)
    on = [key for key in STL_KEYS if key in stl.columns]
    per_task = per_task.merge(
        stl[[*on, "task", "mean"]].rename(columns={"mean": "stl_mean"}),
        on=[*on, "task"],
        how="left",
    )
    per_task["gain_stl"] = per_task["mean"] - per_task["stl_mean"]
    if not external:
        # paired by seed where STL ran MIN_PAIRS of the configuration's seeds, like Delta_m%
        stl_seeded = (
            scores[(scores["strategy"] == REFERENCE) & scores["seed"].notna()]
            .groupby([*STL_KEYS, "seed", "task"], sort=False)[metric]
            .mean()
            .rename("stl_value")
            .reset_index()
        )
        with_stl = multi[multi["seed"].notna()].merge(stl_seeded, on=[*STL_KEYS, "seed", "task"])
        with_stl = with_stl.assign(difference=with_stl[metric] - with_stl["stl_value"])
        paired_stl = (
            with_stl.groupby([*keys, "task"], sort=False)["difference"]
            .agg(gain_stl_paired="mean", stl_pairs="count")
            .reset_index()
        )
        per_task = per_task.merge(paired_stl, on=[*keys, "task"], how="left")
        use = per_task["stl_pairs"] >= MIN_PAIRS
        per_task.loc[use, "gain_stl"] = per_task.loc[use, "gain_stl_paired"]
        per_task = per_task.drop(columns=["gain_stl_paired", "stl_pairs"])

    # The mean over tasks is taken per run first, so its std is the spread over seeds.
    run_means = multi.groupby([*keys, "run"], sort=False)[metric].mean().reset_index()
    overall = _mean_std(run_means, keys, metric)
    gain_over_tasks = per_task.groupby(keys, sort=False)["gain_mtl"].agg(
        lambda g: g.mean() if g.notna().all() else np.nan
    )
    overall = overall.merge(gain_over_tasks.reset_index(), on=keys, how="left")
    delta = delta_m_over_seeds(
        scores,
        metric,
        GROUP_KEYS,
        stl,
        metric in LOWER_IS_BETTER,
        stl_runs=None if external else scores[scores["strategy"] == REFERENCE],
    )
    overall = overall.merge(delta[[*keys, "delta_m"]], on=keys, how="left")
    # what a gating strategy did: its realised drop rate and gates, mean over its runs
    if "drop_rate" in multi:
        schedules = (
            multi.drop_duplicates("run").groupby(keys, sort=False)[["drop_rate", "gates"]].mean()
        )
        overall = overall.merge(schedules.reset_index(), on=keys, how="left")

    per_task = sort_groups(per_task)
    missing = per_task.loc[per_task["stl_mean"].isna(), ["backbone", "task"]].drop_duplicates()
    seeds = multi.drop_duplicates("run").groupby([*keys, "seed"], dropna=False).size()
    repeated = seeds[seeds > 1].reset_index(name="runs")
    return Comparison(
        per_task=per_task.drop(columns=["stl_mean"]),
        overall=sort_groups(overall),
        stl=stl,
        missing_stl=missing.reset_index(drop=True),
        repeated_seeds=repeated,
    )


def wide_table(comparison: Comparison) -> pd.DataFrame:
    """``report.csv``: one row per configuration; per task its mean, std and gains, then the overall columns."""
    overall = comparison.overall.rename(
        columns={
            "n": "runs",
            "mean": "mean_over_tasks",
            "std": "mean_over_tasks_std",
            "gain_mtl": "mean_over_tasks_gain_mtl",
            "delta_m": "delta_m_pct",
        }
    )
    per_task = comparison.per_task
    if per_task.empty:
        return overall
    values = ["mean", "std", "gain_mtl", "gain_stl"]
    wide = per_task.pivot(index=GROUP_KEYS, columns="task", values=values)
    tasks = list(dict.fromkeys(per_task["task"]))
    wide = wide[[(value, task) for task in tasks for value in values]]
    wide.columns = [f"{task}_{value}" for value, task in wide.columns]
    return overall.merge(wide.reset_index(), on=GROUP_KEYS, how="left")


# --------------------------------------------------------------------------- majority class

#: What the majority-class baseline is compared within: its rate depends on the data only.
MAJORITY_KEYS = ["scale", "backbone", "attribute_set"]


def majority_rates(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (scale, backbone, attribute set, task) the test accuracy of always predicting the
    training majority class (``majority``), mean over the runs that recorded it."""
    if "majority_accuracy" not in scores:
        return pd.DataFrame(columns=[*MAJORITY_KEYS, "task", "majority"])
    return (
        scores.groupby([*MAJORITY_KEYS, "task"], sort=False)["majority_accuracy"]
        .mean()
        .rename("majority")
        .dropna()
        .reset_index()
    )


def not_above_majority(comparison: Comparison, majority: pd.DataFrame) -> pd.DataFrame:
    """The configurations that do not beat the majority-class rate: one row per configuration
    whose mean accuracy over seeds is at or below the rate on the mean over tasks or on a task.

    Columns: the configuration's keys, ``mean`` and ``majority`` (means over tasks),
    ``on_mean`` (at or below on the mean) and ``tasks`` (a list of (task, mean, majority) at
    or below the rate, the furthest below first), all as fractions. Only for accuracy: the rate is an accuracy.
    """
    keys = [*GROUP_KEYS, "configuration"]
    columns = [*keys, "mean", "majority", "on_mean", "tasks"]
    per_task = comparison.per_task.merge(majority, on=[*MAJORITY_KEYS, "task"], how="left")
    overall = comparison.overall.set_index(keys)
    rows = []
    for values, group in per_task.groupby(keys, sort=False):
        below = group[group["mean"] <= group["majority"]]
        below = below.assign(short=(below["mean"] - below["majority"]).round(6)).sort_values(
            "short", kind="stable"
        )  # the furthest below first
        mean = overall.loc[values, "mean"]
        # the mean rate only where every task has one, as the configuration's mean has them all
        rate = group["majority"].mean() if group["majority"].notna().all() else np.nan
        on_mean = bool(mean <= rate)
        if on_mean or not below.empty:
            rows.append(
                [
                    *values,
                    mean,
                    rate,
                    on_mean,
                    list(below[["task", "mean", "majority"]].itertuples(index=False, name=None)),
                ]
            )
    return sort_groups(pd.DataFrame(rows, columns=columns))
