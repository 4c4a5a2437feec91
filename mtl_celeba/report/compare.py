"""The numbers of the report: configurations averaged over seeds, compared with MTL and with the
single-task reference (Δm%), in the order the report lists them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mtl_celeba.errors import UserError
from mtl_celeba.report.statistics import (
    delta_m,
)
from mtl_celeba.run.results import METRIC_NAMES
from mtl_celeba.scheduling.names import BASELINE, REFERENCE, STRATEGY_ORDER

#: A configuration: its runs differ only in the seed and are averaged together.
GROUP_KEYS = ["strategy", "drop_metrics", "transfer", "backbone", "attribute_set"]
#: Metrics where a smaller value is better; Delta_m flips their sign. None of the reported
#: metrics (accuracy, balanced accuracy, F1, AUROC) is one, but the definition needs the set.
LOWER_IS_BETTER: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- the numbers


def sort_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Order rows by backbone, attribute set, strategy (STRATEGY_ORDER), drop metrics, then task as read."""
    rank = {name: float(i) for i, name in enumerate(STRATEGY_ORDER)}
    unlisted = rank[REFERENCE] - 0.5  # after the listed methods, before STL
    keys = {
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


def stl_reference(scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Single-task runs: mean, std and n over seeds per (backbone, task), whatever their attribute set."""
    stl = scores[scores["strategy"] == REFERENCE]
    return _mean_std(stl, ["backbone", "task"], metric).sort_values(
        ["backbone", "task"], ignore_index=True
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


def _delta_m_per_configuration(per_task: pd.DataFrame, lower_is_better: bool) -> pd.DataFrame:
    """Delta_m% against STL of each configuration, from its per-task means."""
    rows = []
    for key, group in per_task.groupby(GROUP_KEYS, sort=False):
        by_task = group.set_index("task")
        rows.append((*key, delta_m(by_task["mean"], by_task["stl_mean"], lower_is_better)))
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "delta_m"])


def compare(
    scores: pd.DataFrame, metric: str = "accuracy", stl: pd.DataFrame | None = None
) -> Comparison:
    """Average every configuration over its seeds and compare it with MTL and STL.

    ``stl`` replaces the STL runs as the single-task reference (``--stl-reference``: columns
    backbone, task, mean, std, n).
    """
    multi = scores[scores["strategy"] != REFERENCE]
    # "configuration" names (strategy, drop metrics); grouping by it too keeps the name.
    keys = [*GROUP_KEYS, "configuration"]
    per_task = _mean_std(multi, [*keys, "task"], metric)

    # the MTL reference: plain MTL from scratch (a transfer sweep's other variants are compared to it)
    is_mtl = (per_task["strategy"] == BASELINE) & (per_task["transfer"] == "-")
    mtl = per_task.loc[is_mtl, ["backbone", "attribute_set", "task", "mean"]]
    per_task = per_task.merge(
        mtl.rename(columns={"mean": "mtl_mean"}),
        on=["backbone", "attribute_set", "task"],
        how="left",
    )
    if stl is None:
        stl = stl_reference(scores, metric)
    per_task = per_task.merge(
        stl[["backbone", "task", "mean"]].rename(columns={"mean": "stl_mean"}),
        on=["backbone", "task"],
        how="left",
    )
    per_task["gain_mtl"] = per_task["mean"] - per_task["mtl_mean"]
    per_task["gain_stl"] = per_task["mean"] - per_task["stl_mean"]

    # The mean over tasks is taken per run first, so its std is the spread over seeds.
    run_means = multi.groupby([*keys, "run"], sort=False)[metric].mean().reset_index()
    overall = _mean_std(run_means, keys, metric)
    is_mtl = (overall["strategy"] == BASELINE) & (overall["transfer"] == "-")
    mtl_overall = overall.loc[is_mtl, ["backbone", "attribute_set", "mean"]]
    overall = overall.merge(
        mtl_overall.rename(columns={"mean": "mtl_mean"}),
        on=["backbone", "attribute_set"],
        how="left",
    )
    overall["gain_mtl"] = overall["mean"] - overall["mtl_mean"]
    overall = overall.merge(
        _delta_m_per_configuration(per_task, metric in LOWER_IS_BETTER), on=GROUP_KEYS, how="left"
    )

    per_task = sort_groups(per_task.drop(columns=["mtl_mean"]))
    missing = per_task.loc[per_task["stl_mean"].isna(), ["backbone", "task"]].drop_duplicates()
    seeds = multi.drop_duplicates("run").groupby([*keys, "seed"], dropna=False).size()
    repeated = seeds[seeds > 1].reset_index(name="runs")
    return Comparison(
        per_task=per_task.drop(columns=["stl_mean"]),
        overall=sort_groups(overall.drop(columns=["mtl_mean"])),
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
