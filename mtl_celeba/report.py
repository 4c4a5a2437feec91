"""``mtl-report``: compare the runs of one or more sweep folders in tables and plots.

Reads every run folder's ``metrics.json`` into one pandas table (one row per run x task),
averages each configuration over its seeds, compares it with plain MTL and with the
single-task (STL) runs, and writes ``report.md``, ``report.csv`` and PNG plots.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from mtl_celeba.errors import UserError
from mtl_celeba.io import write_text_atomic
from mtl_celeba.report_plots import write_plots
from mtl_celeba.results import RESULTS_FILE, read_results
from mtl_celeba.scheduling.dst import DST_METRICS
from mtl_celeba.statistics import ALPHA, MIN_PAIRS, Statistics, analyse, context_keys, delta_m

#: A configuration: its runs differ only in the seed and are averaged together.
GROUP_KEYS = ["strategy", "drop_metrics", "transfer", "backbone", "attribute_set"]
#: The order strategies are listed in: MTL (the paired baseline), the dropping strategies, the
#: field's methods (loss weighting, then gradient aggregation), STL (the reference) last.
#: Strategies not listed here follow the listed methods alphabetically, before STL.
STRATEGY_ORDER = (
    "mtl", "random_drop", "dst", "dst_shuffled", "dst_uniform",
    "si", "rlw", "dwa", "uw", "gradnorm", "famo",
    "mgda", "pcgrad", "cagrad", "imtlg", "nashmtl", "alignedmtl", "upgrad",
    "stl",
)  # fmt: skip
#: Metrics where a smaller value is better; Delta_m flips their sign. None of the reported
#: metrics (accuracy, balanced accuracy, F1, AUROC) is one, but the definition needs the set.
LOWER_IS_BETTER: frozenset[str] = frozenset()
#: How the console scripts are called, by Hydra job name (for the reproduce command).
ENTRY_POINTS = {"train": "mtl-train", "evaluate": "mtl-eval"}
#: Shown in tables where a value cannot be computed (no MTL or STL reference, a single seed).
NOT_AVAILABLE = "n/a"

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"


# --------------------------------------------------------------------------- finding runs


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Every run folder (one holding ``metrics.json`` or ``.hydra/``) at any depth below ``paths``."""
    run_dirs: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(
                f"{path} does not exist: pass a sweep folder such as outputs/train/multiruns/<time>."
            )
        if not path.is_dir():
            raise UserError(
                f"{path} is not a folder: pass a sweep folder such as outputs/train/multiruns/<time>."
            )
        found = {p.parent for p in path.rglob(RESULTS_FILE) if p.is_file()}
        found |= {p.parent for p in path.rglob(".hydra") if p.is_dir()}
        if not found:
            raise UserError(
                f"{path} holds no run folders (none has a {RESULTS_FILE} or a .hydra/ folder): "
                "pass the folder a sweep wrote, such as outputs/train/multiruns/<time>."
            )
        run_dirs |= {p.resolve() for p in found}
    return sorted(run_dirs, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    """Sort job folders 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def drop_metrics_label(metrics: Sequence[str] | None) -> str:
    """A short name for an enabled DST metric set: ``all``, ``all but stagnancy``, ``depth+count``."""
    if not metrics:
        return "-"
    enabled = [m for m in DST_METRICS if m in metrics] + sorted(set(metrics) - set(DST_METRICS))
    missing = [m for m in DST_METRICS if m not in metrics]
    if not missing:
        return "all"
    if len(missing) == 1 and len(enabled) == len(DST_METRICS) - 1:
        return f"all but {missing[0]}"
    return "+".join(enabled)


def transfer_label(config: dict[str, Any]) -> str:
    """How a run uses a pretrained backbone: ``-`` (trained from scratch, nothing frozen),
    ``linear probe from DEFAULT``, ``last 2 blocks from resnet18.pth``, ``full fine-tune from ...``,
    ``two-stage (backbone from epoch 3) from ...`` (metrics.json ``weights``, ``freeze``, ``finetune``;
    ``finetune`` is Lightning's 0-based ``unfreeze_backbone_at_epoch``, the label counts from 1)."""
    weights, freeze, finetune = config.get("weights"), config.get("freeze"), config.get("finetune")
    if str(freeze).strip().lower() == "none":
        freeze = None
    if weights is None and freeze is None and finetune is None:
        return "-"
    if finetune is not None:
        mode = f"two-stage (backbone from epoch {int(finetune) + 1})"
    elif str(freeze).lower() == "all":
        mode = "linear probe"
    elif freeze is not None:
        mode = f"last {freeze} blocks"
    else:
        mode = "full fine-tune"
    return f"{mode} from {'scratch' if weights is None else Path(str(weights)).name}"


def configuration_label(strategy: str, drop_metrics: str, transfer: str = "-") -> str:
    """``dst (all)``, ``random_drop``, ``mtl · linear probe from DEFAULT``: how tables and plots
    name a configuration."""
    label = strategy if drop_metrics == "-" else f"{strategy} ({drop_metrics})"
    return label if transfer == "-" else f"{label} · {transfer}"


def _overrides(run_dir: Path) -> str:
    """The job's command-line overrides from Hydra's ``.hydra/overrides.yaml`` ('' if none)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    try:
        return " ".join(str(o) for o in OmegaConf.load(path))
    except Exception:  # a damaged file only costs the description of a failed run
        return ""


def _run_rows(run_dir: Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task of a completed run: its configuration and test metrics."""
    config = results.get("config") or {}
    strategy = str(config.get("strategy", "unknown"))
    drop_metrics = drop_metrics_label(config.get("drop_metrics"))
    transfer = transfer_label(config)
    run = {
        "run": str(run_dir),
        "strategy": strategy,
        "drop_metrics": drop_metrics,
        "transfer": transfer,
        "configuration": configuration_label(strategy, drop_metrics, transfer),
        "backbone": str(config.get("backbone", "unknown")),
        "attribute_set": str(config.get("attribute_set", "unknown")),
        "seed": config.get("seed"),
        "data_source": str(config.get("data_source", "unknown")),
        "data_root": config.get("data_root"),
        "image_size": config.get("image_size"),
        "max_epochs": config.get("max_epochs"),
        "precision": config.get("precision"),
        "experiment": config.get("experiment"),
        "epochs_trained": results.get("epochs_trained"),
    }
    majority = results.get("majority_accuracy") or {}
    return [
        {
            **run,
            "task": task,
            **metrics,
            "majority_accuracy": majority.get(task, np.nan),
        }
        for task, metrics in results["test"]["per_task"].items()
    ]


def _failure_reason(run_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """Why a run cannot be reported (None if it can), and its parsed results if readable."""
    try:
        results = read_results(run_dir)
    except FileNotFoundError:
        return f"no {RESULTS_FILE}: the job stopped before training started", None
    except (OSError, ValueError) as error:
        return f"{RESULTS_FILE} cannot be read ({error})", None
    status = results.get("status")
    if status == "failed":
        return results.get("error") or "failed without an error message", results
    if status == "running":
        return (
            "never finished: status is still 'running' (killed, out of memory or timed out)",
            results,
        )
    if status != "completed":
        return f"unknown status {status!r}", results
    per_task = (results.get("test") or {}).get("per_task")
    if not per_task:
        return "completed without test metrics (run with test=false?)", results
    return None, results


#: The columns of the run x task table besides the metrics (those in the runs' metrics.json).
_RUN_COLUMNS = [
    "run", "strategy", "drop_metrics", "transfer", "configuration", "backbone", "attribute_set", "seed",
    "data_source", "data_root", "image_size", "max_epochs", "precision", "experiment",
    "epochs_trained", "task", "majority_accuracy",
]  # fmt: skip


def collect_runs(run_dirs: Iterable[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read run folders into (scores, failed).

    ``scores`` has one row per completed run x task: the configuration, the task and its test
    metrics. ``failed`` has one row per run that cannot be reported: ``run``, ``overrides``
    (the job's Hydra overrides) and ``reason``.
    """
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for run_dir in run_dirs:
        reason, results = _failure_reason(run_dir)
        if reason is None and results is not None:
            rows.extend(_run_rows(run_dir, results))
        else:
            failed.append(
                {"run": str(run_dir), "overrides": _overrides(run_dir), "reason": str(reason)}
            )
    scores = pd.DataFrame(rows) if rows else pd.DataFrame(columns=_RUN_COLUMNS)
    return scores, pd.DataFrame(failed, columns=["run", "overrides", "reason"])


# --------------------------------------------------------------------------- the numbers


def sort_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Order rows by backbone, attribute set, strategy (STRATEGY_ORDER), drop metrics, then task as read."""
    rank = {name: float(i) for i, name in enumerate(STRATEGY_ORDER)}
    unlisted = rank["stl"] - 0.5  # after the listed methods, before STL
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
    stl = scores[scores["strategy"] == "stl"]
    return _mean_std(stl, ["backbone", "task"], metric).sort_values(
        ["backbone", "task"], ignore_index=True
    )


#: Metrics reported as fractions in metrics.json (an external reference must use the same units).
FRACTION_METRICS = frozenset({"accuracy", "balanced_accuracy", "f1", "auroc"})


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
    multi = scores[scores["strategy"] != "stl"]
    # "configuration" names (strategy, drop metrics); grouping by it too keeps the name.
    keys = [*GROUP_KEYS, "configuration"]
    per_task = _mean_std(multi, [*keys, "task"], metric)

    # the MTL reference: plain MTL from scratch (a transfer sweep's other variants are compared to it)
    is_mtl = (per_task["strategy"] == "mtl") & (per_task["transfer"] == "-")
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
    is_mtl = (overall["strategy"] == "mtl") & (overall["transfer"] == "-")
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


# --------------------------------------------------------------------------- markdown


def _percent(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{100 * value:.2f}"


def _mean_pm_std(mean: float, std: float) -> str:
    return _percent(mean) if pd.isna(std) else f"{_percent(mean)} ± {_percent(std)}"


def _gain(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{100 * value:+.2f}"


def _signed(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{value:+.2f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub table; newlines and pipes in cells (error messages) would break its rows."""
    cells = frame.astype(str).map(lambda cell: cell.replace("\n", " ").replace("|", "\\|"))
    return cells.to_markdown(index=False, disable_numparse=True)


def summary_table(comparison: Comparison) -> pd.DataFrame:
    """One line per configuration: the mean over tasks, its gain over MTL and Delta_m% vs STL."""
    overall = comparison.overall
    return pd.DataFrame(
        {
            "configuration": overall["configuration"],
            "backbone": overall["backbone"],
            "attribute set": overall["attribute_set"],
            "n": overall["n"],
            "mean": [
                _mean_pm_std(m, s) for m, s in zip(overall["mean"], overall["std"], strict=True)
            ],
            "gain vs MTL": overall["gain_mtl"].map(_gain),
            "Δm% vs STL": overall["delta_m"].map(_signed),
        }
    )


def _section_tables(
    per_task: pd.DataFrame, overall: pd.DataFrame, majority: pd.Series | None
) -> list[str]:
    """The three tables of one (backbone, attribute set): values, gain over MTL, gain over STL."""
    tasks = list(dict.fromkeys(per_task["task"]))
    labels = list(overall["configuration"])

    def by_task(column: str, fmt: Any) -> pd.DataFrame:
        cells = per_task.assign(
            cell=[fmt(*row) for row in per_task[column].itertuples(index=False, name=None)]
        )
        return cells.pivot(index="configuration", columns="task", values="cell").reindex(
            index=labels, columns=tasks
        )

    values = by_task(["mean", "std"], _mean_pm_std)
    values.insert(0, "n", overall["n"].astype(str).to_numpy())
    values["mean over tasks"] = [
        _mean_pm_std(m, s) for m, s in zip(overall["mean"], overall["std"], strict=True)
    ]
    if majority is not None:
        values.loc["majority class"] = [
            "",
            *(_percent(majority.get(t, np.nan)) for t in tasks),
            _percent(majority.reindex(tasks).mean()),
        ]
    gain_mtl = by_task(["gain_mtl"], _gain)
    gain_mtl["mean over tasks"] = overall["gain_mtl"].map(_gain).to_numpy()
    gain_stl = by_task(["gain_stl"], _gain)
    gain_stl["Δm% vs STL"] = overall["delta_m"].map(_signed).to_numpy()
    return [
        markdown_table(values.rename_axis("configuration").reset_index()),
        "Gain over MTL (percentage points):\n\n"
        + markdown_table(gain_mtl.rename_axis("configuration").reset_index()),
        "Gain over STL (percentage points) and Δm% against STL:\n\n"
        + markdown_table(gain_stl.rename_axis("configuration").reset_index()),
    ]


def stl_table(stl: pd.DataFrame) -> pd.DataFrame:
    """The single-task reference as one row per task, one column per backbone."""
    cells = stl.assign(
        cell=[
            _mean_pm_std(m, s) if pd.isna(n) else f"{_mean_pm_std(m, s)} (n={n:g})"
            for m, s, n in zip(stl["mean"], stl["std"], stl["n"], strict=True)
        ]
    )
    table = cells.pivot(index="task", columns="backbone", values="cell").fillna(NOT_AVAILABLE)
    return table.rename_axis(columns=None).reset_index()


def comparison_notes(comparison: Comparison) -> list[str]:
    """What the tables cannot say: missing MTL or STL references, seeds counted twice."""
    notes = []
    for backbone, missing in comparison.missing_stl.groupby("backbone", sort=True):
        notes.append(
            f"No STL run for {backbone} on {', '.join(missing['task'])}: the gain over STL for these "
            f"tasks, and Δm% for configurations that include them, are {NOT_AVAILABLE}."
        )
    overall = comparison.overall
    for (backbone, attribute_set), group in overall.groupby(
        ["backbone", "attribute_set"], sort=False
    ):
        if not (group["strategy"] == "mtl").any():
            notes.append(
                f"No MTL run for {backbone} · {attribute_set}: the gain over MTL is {NOT_AVAILABLE}."
            )
    for row in comparison.repeated_seeds.itertuples(index=False):
        notes.append(
            f"{row.configuration} · {row.backbone} · {row.attribute_set} has "
            f"{row.runs} runs with seed {row.seed}: runs that differ in other settings are averaged together."
        )
    return notes


# --------------------------------------------------------------------------- does it help?
# The statistics come from mtl_celeba.statistics; these functions only lay them out.


def _p_value(p: float) -> str:
    """``p=0.004``, ``p<0.001``."""
    return f"p={NOT_AVAILABLE}" if pd.isna(p) else ("p<0.001" if p < 0.001 else f"p={p:.3f}")


def _difference_cell(row: pd.Series) -> str:
    """``+0.41 [+0.12, +0.70] p=0.004 ▲``: paired difference to MTL in points, Holm-adjusted p."""
    pairs = int(row["pairs"])
    if pairs < MIN_PAIRS:
        return f"{NOT_AVAILABLE} ({pairs} paired seed{'' if pairs == 1 else 's'})"
    mark = {"gain": " ▲", "loss": " ▼"}.get(row["significant"], "")
    return (
        f"{_gain(row['diff'])} [{_gain(row['ci_low'])}, {_gain(row['ci_high'])}] "
        f"{_p_value(row['p_holm'])}{mark}"
    )


def _delta_m_cell(row: pd.Series) -> str:
    """Delta_m% ± the half-width of its 95% interval over seeds."""
    if pd.isna(row["delta_m"]):
        return NOT_AVAILABLE
    if pd.isna(row["delta_m_low"]):
        return f"{row['delta_m']:+.2f} (1 seed)"
    return f"{row['delta_m']:+.2f} ± {(row['delta_m_high'] - row['delta_m_low']) / 2:.2f}"


def _rows_of(frame: pd.DataFrame, context: dict[str, Any]) -> pd.DataFrame:
    """The rows of ``frame`` in one context (a merge: NaN keys match, unlike ==)."""
    return frame.merge(pd.DataFrame([context]), on=list(context), how="inner")


def help_section(statistics: Statistics, reference: str) -> list[str]:
    """The "Does it help?" section: per context its sentences and a table of paired differences."""
    overall = sort_groups(statistics.overall)
    if overall.empty:
        return []
    lines = [
        "## Does it help?",
        "",
        "Each configuration minus MTL run with the same seed, per task, in percentage points: "
        f"mean over seeds [{100 * (1 - ALPHA):.0f}% t confidence interval], p = paired t-test "
        "p-value, Holm-adjusted across the configuration's tasks; ▲ / ▼ a significant gain / "
        f"loss at the {100 * ALPHA:.0f}% level after that correction. Δm% against {reference} "
        "is computed per seed: mean ± the half-width of its 95% t interval over seeds. Mean "
        "rank: per task the configurations of the section are ranked by their mean "
        "(1 = best), then the ranks are averaged over tasks. A comparison needs at least "
        f"{MIN_PAIRS} paired seeds.",
        "",
    ]
    keys = context_keys(GROUP_KEYS)
    for values, configurations in overall.groupby(keys, sort=False, dropna=False):
        context = dict(zip(keys, values, strict=True))
        paired = _rows_of(statistics.paired, context)
        sentences = _rows_of(statistics.sentences, context).set_index("configuration")["sentence"]
        tasks = list(dict.fromkeys(paired["task"]))
        cells = {(r["configuration"], r["task"]): _difference_cell(r) for _, r in paired.iterrows()}
        table = pd.DataFrame(
            [
                {
                    "configuration": row["configuration"],
                    "seeds": NOT_AVAILABLE if pd.isna(row["seeds"]) else f"{row['seeds']:g}",
                    **{
                        task: "baseline"
                        if row["strategy"] == "mtl"
                        else cells.get((row["configuration"], task), NOT_AVAILABLE)
                        for task in tasks
                    },
                    "Δm% vs STL": _delta_m_cell(row),
                    "mean rank": f"{row['mean_rank']:.2f} of {row['ranked_among']:g}",
                }
                for _, row in configurations.iterrows()
            ]
        )
        # "-" marks a context that does not apply (e.g. no transfer setting): not shown
        title = " · ".join(str(v) for v in values if not pd.isna(v) and v != "-")
        lines += [f"### {title}", ""]
        lines += [f"- {sentences[c]}" for c in configurations["configuration"] if c in sentences]
        if sentences.empty:
            lines.append("No configuration besides MTL here: nothing to compare with MTL.")
        lines += ["", markdown_table(table), ""]
    return lines


def statistics_table(statistics: Statistics) -> pd.DataFrame:
    """The statistics as ``report.csv`` columns: one row per configuration (fractions; Δm in %)."""
    overall = statistics.overall[
        [*GROUP_KEYS, "seeds", "delta_m_low", "delta_m_high", "mean_rank"]
    ].rename(columns={"delta_m_low": "delta_m_pct_ci_low", "delta_m_high": "delta_m_pct_ci_high"})
    paired = statistics.paired
    if paired.empty:
        return overall
    values = ["pairs", "diff", "ci_low", "ci_high", "p", "p_holm", "significant"]
    wide = paired.set_index([*GROUP_KEYS, "task"])[values].unstack("task")
    tasks = list(dict.fromkeys(paired["task"]))
    wide = wide[[(value, task) for task in tasks for value in values]]
    wide.columns = [f"{task}_{value}_vs_mtl" for value, task in wide.columns]
    return overall.merge(wide.reset_index(), on=GROUP_KEYS, how="left")


@dataclass
class Header:
    """What the report's first lines say about the runs behind it."""

    sources: list[Path]
    runs: int
    completed: int
    data: str
    setup: str
    commands: list[str]
    metric: str
    generated: str = field(default_factory=lambda: datetime.now().strftime("%Y-%m-%d %H:%M"))
    #: ``--stl-reference``: the external single-task reference replacing the STL runs.
    reference_file: Path | None = None

    @property
    def reference(self) -> str:
        """What Delta_m% and the gains over STL compare with, in words."""
        if self.reference_file is None:
            return "the STL runs (their mean over seeds per backbone and task)"
        return f"the external reference `{self.reference_file}` (--stl-reference)"


def data_description(scores: pd.DataFrame) -> str:
    """Synthetic or real CelebA, as the completed runs say (both, with counts, if mixed)."""
    runs = scores.drop_duplicates("run")
    parts = []
    for source, group in runs.groupby("data_source", sort=True):
        roots = ", ".join(
            f"`{root}`" for root in sorted(group["data_root"].dropna().astype(str).unique())
        )
        if source == "celeba":
            text = f"full-scale protocol on real CelebA ({roots})"
        elif source == "synthetic":
            text = "synthetic CelebA (generated stand-in images: the numbers test the pipeline, not real faces)"
        else:
            text = f"data source {source!r}"
        parts.append(text if len(runs) == len(group) else f"{text}: {len(group)} runs")
    return "; ".join(parts) or "no completed run"


def setup_description(scores: pd.DataFrame) -> str:
    """The settings shared by the runs: image size, epochs, precision (each value if they differ)."""
    runs = scores.drop_duplicates("run")
    parts = []
    for column, name in (
        ("experiment", "experiment"),
        ("image_size", "image size"),
        ("max_epochs", "max epochs"),
        ("precision", "precision"),
    ):
        values = sorted(runs[column].dropna().astype(str).unique())
        if values:
            parts.append(f"{name} {' / '.join(values)}")
    return ", ".join(parts) or "unknown"


def reproduce_commands(paths: Sequence[Path]) -> list[str]:
    """The sweep command of every ``multirun.yaml`` below ``paths`` (Hydra's record of the launch)."""
    commands = []
    for path in paths:
        for multirun in sorted(Path(path).rglob("multirun.yaml"), key=_natural_key):
            try:
                hydra = OmegaConf.load(multirun).hydra
                overrides = [*hydra.overrides.hydra, *hydra.overrides.task]
                entry = ENTRY_POINTS.get(str(hydra.job.name), "mtl-train")
            except Exception:  # an unreadable record only costs the command line
                continue
            # Hydra adds hydra.mode=MULTIRUN itself for -m.
            args = [shlex.quote(str(o)) for o in overrides if str(o) != "hydra.mode=MULTIRUN"]
            commands.append(" ".join([entry, "-m", *args]))
    return list(dict.fromkeys(commands))


def render_markdown(
    header: Header,
    scores: pd.DataFrame,
    comparison: Comparison,
    failed: pd.DataFrame,
    notes: Sequence[str],
    plots: Sequence[str],
    out_dir: Path,
    statistics: Statistics | None = None,
) -> str:
    """The whole ``report.md``."""
    metric = header.metric.replace("_", " ")
    lines = [
        "# Multi-task CelebA report",
        "",
        f"- **Data:** {header.data}",
        f"- **Runs:** {header.runs} run folders, {header.completed} completed, "
        f"{header.runs - header.completed} failed or unfinished",
        f"- **Sweep folders:** {', '.join(f'`{p}`' for p in header.sources)}",
        f"- **Setup:** {header.setup}",
        f"- **Generated:** {header.generated}",
    ]
    lines += [f"- **Reproduce:** `{command}`" for command in header.commands]
    lines += [
        f"- **Metric:** test {metric} in %, mean ± std over seeds (n runs); gains in percentage "
        "points; Δm% = 100/T Σ_t (M_t − M_STL,t) / M_STL,t (the sign flips for lower-is-better metrics).",
        f"- **Single-task reference (STL):** {header.reference}.",
        "- **Paired runs:** runs are paired by seed: every strategy run with the same seed sees the "
        "same training batches in the same order with the same augmentation, so each "
        "configuration is compared with MTL seed by seed.",
        "- **Model selection on validation only:** the test metrics are those of the best epoch "
        "by the validation mean (accuracy by default, `callbacks.model_checkpoint.monitor`); the "
        "test set never picks the epoch (the DST authors' script picks the best epoch on the test set).",
        "",
    ]
    if statistics is not None:
        lines += help_section(statistics, header.reference)
    if not comparison.overall.empty:
        lines += ["## Summary", "", markdown_table(summary_table(comparison)), ""]
    majority = scores.groupby(["backbone", "attribute_set", "task"])["majority_accuracy"].mean()
    for (backbone, attribute_set), overall in comparison.overall.groupby(
        ["backbone", "attribute_set"], sort=False
    ):
        in_section = (comparison.per_task["backbone"] == backbone) & (
            comparison.per_task["attribute_set"] == attribute_set
        )
        reference = majority.loc[(backbone, attribute_set)] if header.metric == "accuracy" else None
        lines += [f"## {backbone} · {attribute_set}", "", f"Test {metric} (%):", ""]
        for table in _section_tables(comparison.per_task[in_section], overall, reference):
            lines += [table, ""]
    if not comparison.stl.empty:
        lines += [
            "## Single-task reference (STL)",
            "",
            f"Test {metric} (%) of one network per task, mean ± std over seeds (n runs):"
            if header.reference_file is None
            else f"Test {metric} (%) of {header.reference}:",
            "",
        ]
        lines += [markdown_table(stl_table(comparison.stl)), ""]
    if not failed.empty:
        # Relative to the report, so the paths still work when the sweep folder moves.
        rows = failed.assign(run=[os.path.relpath(run, out_dir) for run in failed["run"]])
        lines += [
            "## Failed runs",
            "",
            "Not included in the tables above:",
            "",
            markdown_table(rows),
            "",
        ]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(plot).stem}]({plot})" for plot in plots] + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def write_report(
    sweep_dirs: Sequence[Path],
    out_dir: Path,
    metric: str = "accuracy",
    stl_reference: Path | None = None,
) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Read the runs below ``sweep_dirs``, write the report files into ``out_dir``.

    ``stl_reference``: a CSV of single-task values replacing the STL runs (``--stl-reference``).

    Returns the path of ``report.md``, the summary table (one line per configuration) and the
    failed runs.
    """
    run_dirs = find_run_dirs(sweep_dirs)
    scores, failed = collect_runs(run_dirs)
    reported = [column for column in scores.columns if column not in _RUN_COLUMNS]
    if metric not in reported:
        if not scores.empty:
            raise UserError(
                f"--metric {metric} is not a metric of the runs' metrics.json; "
                f"choose one of: {', '.join(reported)}."
            )
        scores[metric] = pd.Series(dtype=float)  # no completed run: every table stays empty
    external = None
    if stl_reference is not None:
        backbones = sorted(scores["backbone"].dropna().astype(str).unique())
        external = read_stl_reference(stl_reference, metric, backbones)
    comparison = compare(scores, metric, stl=external)
    lower_is_better = metric in LOWER_IS_BETTER
    statistics = analyse(scores, metric, GROUP_KEYS, comparison.stl, lower_is_better)
    table = wide_table(comparison)
    if not table.empty:
        table = table.merge(statistics_table(statistics), on=GROUP_KEYS, how="left")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / REPORT_CSV, table.to_csv(index=False))
    plots, plot_notes = write_plots(
        scores, comparison.per_task, comparison.overall, comparison.stl, metric, out_dir
    )
    header = Header(
        sources=[p.resolve() for p in sweep_dirs],
        runs=len(run_dirs),
        completed=scores["run"].nunique(),
        data=data_description(scores),
        setup=setup_description(scores),
        commands=reproduce_commands(sweep_dirs),
        metric=metric,
        reference_file=stl_reference,
    )
    notes = [*comparison_notes(comparison), *plot_notes]
    if external is not None and (scores["strategy"] == "stl").any():
        notes.append("STL runs were found but --stl-reference replaces them as the reference.")
    markdown = render_markdown(
        header, scores, comparison, failed, notes, plots, out_dir, statistics=statistics
    )
    write_text_atomic(out_dir / REPORT_MD, markdown)
    return out_dir / REPORT_MD, summary_table(comparison), failed


def run_command(args: argparse.Namespace) -> None:
    """``mtl-report`` (parsed by :func:`mtl_celeba.commands.report`): write and summarise."""
    out_dir = args.out or args.sweep_dirs[0]
    report, summary, failed = write_report(
        args.sweep_dirs, out_dir, args.metric, args.stl_reference
    )
    if not summary.empty:
        print(summary.to_string(index=False))
    if not failed.empty:
        print(f"\n{len(failed)} run(s) failed or did not finish: listed in the report.")
    print(f"\nReport: {report}")


if __name__ == "__main__":
    from mtl_celeba.commands import report

    report()
