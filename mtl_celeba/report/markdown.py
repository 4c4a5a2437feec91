"""``report.md``: the tables, the "Does it help?" section and the notes, rendered as Markdown.

The report is first built as a list of blocks (:func:`report_blocks`: headings, paragraphs,
bullets, tables as DataFrames of strings, pictures, forest plots' data); :func:`render_markdown`
writes them as Markdown and :mod:`.html` as ``report.html``, so both files say the same.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from mtl_celeba.report.compare import (
    CONTEXT_KEYS,
    GROUP_KEYS,
    MAJORITY_KEYS,
    Comparison,
    majority_rates,
    not_above_majority,
    sort_groups,
)
from mtl_celeba.report.runs import natural_key
from mtl_celeba.report.statistics import (
    ALPHA,
    MIN_PAIRS,
    NOT_TESTABLE,
    REFERENCE_MODE_WORDS,
    Statistics,
    context_keys,
)
from mtl_celeba.scheduling.names import BASELINE

#: How the console scripts are called, by Hydra job name (for the reproduce command).
ENTRY_POINTS = {"train": "mtl-train", "evaluate": "mtl-eval"}
#: Shown in tables where a value cannot be computed (no MTL or STL reference, a single seed).
NOT_AVAILABLE = "n/a"
#: Every Delta_m% column says which way is better (the CelebA-40 literature's convention).
DELTA_M = "Δm% (lower is better)"


# --------------------------------------------------------------------------- markdown


def _percent(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{100 * value:.2f}"


def _mean_pm_std(mean: float, std: float) -> str:
    return _percent(mean) if pd.isna(std) else f"{_percent(mean)} ± {_percent(std)}"


def _gain(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{100 * value:+.2f}"


def _signed(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{value:+.2f}"


# --------------------------------------------------------------------------- blocks
# Texts may hold two inline marks, **bold** and `code`, which both renderers understand.


@dataclass
class Heading:
    """A heading (level 1: the title, 2: a section, 3: a context of "Does it help?")."""

    level: int
    text: str


@dataclass
class Paragraph:
    """One paragraph of text."""

    text: str


@dataclass
class Bullets:
    """A bullet list; an item's second line (after a newline) continues it."""

    items: list[str]


@dataclass
class Table:
    """A table whose cells are already formatted strings (``n/a`` where not available)."""

    frame: pd.DataFrame


@dataclass
class Pictures:
    """Images beside the report, by path relative to it."""

    paths: list[str]


@dataclass
class Forest:
    """The paired differences to MTL of one context (rows of ``Statistics.paired``, as
    fractions) and its configurations in table order, for a forest plot; the Markdown has no
    picture of them, only the table before it."""

    paired: pd.DataFrame
    configurations: list[str]


Block = Heading | Paragraph | Bullets | Table | Pictures | Forest


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub table; newlines and pipes in cells (error messages) would break its rows."""
    cells = frame.astype(str).map(lambda cell: cell.replace("\n", " ").replace("|", "\\|"))
    return cells.to_markdown(index=False, disable_numparse=True)


def drop_cell(row: pd.Series) -> str:
    """``12.5% of 24 gates``: a gating strategy's realised drop rate, mean over its runs."""
    rate = row.get("drop_rate", np.nan)
    if pd.isna(rate):
        return ""
    gates = row.get("gates", np.nan)
    drawn = "per step" if pd.isna(gates) else f"of {gates:g} gates"
    return f"{100 * rate:.1f}% {drawn}"


def summary_table(comparison: Comparison, statistics: Statistics | None = None) -> pd.DataFrame:
    """One line per configuration: the mean over tasks, its paired gain over MTL, Delta_m% vs
    STL (lower is better), its mean rank and, for gating strategies, the realised drop rate."""
    overall = comparison.overall
    if statistics is not None and not overall.empty:
        keys = [*GROUP_KEYS, "configuration"]
        extra = statistics.overall[[*keys, "mean_rank", "ranked_among"]]
        overall = overall.merge(extra, on=keys, how="left")
    table = pd.DataFrame(
        {
            "configuration": overall["configuration"],
            "backbone": overall["backbone"],
            "attribute set": overall["attribute_set"],
            "n": overall["n"],
            "mean": [
                _mean_pm_std(m, s) for m, s in zip(overall["mean"], overall["std"], strict=True)
            ],
            "gain vs MTL (paired)": overall["gain_mtl"].map(_gain),
            DELTA_M: overall["delta_m"].map(_signed),
        }
    )
    if "mean_rank" in overall:
        table["mean rank"] = [
            NOT_AVAILABLE if pd.isna(r) else f"{r:.2f} of {k:g}"
            for r, k in zip(overall["mean_rank"], overall["ranked_among"], strict=True)
        ]
    if "drop_rate" in overall and overall["drop_rate"].notna().any():
        table["dropped"] = [drop_cell(row) for _, row in overall.iterrows()]
    if "scale" in overall and overall["scale"].nunique() > 1:
        table.insert(3, "scale", overall["scale"])
    return table


def _section_tables(
    per_task: pd.DataFrame, overall: pd.DataFrame, majority: pd.Series | None
) -> list[Block]:
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
    gain_stl[DELTA_M] = overall["delta_m"].map(_signed).to_numpy()
    return [
        Table(values.rename_axis("configuration").reset_index()),
        Paragraph(
            "Gain over MTL (percentage points, mean of the paired differences over the seeds both ran):"
        ),
        Table(gain_mtl.rename_axis("configuration").reset_index()),
        Paragraph(
            f"Gain over STL (percentage points, paired by seed where STL ran the seeds) and {DELTA_M} against STL:"
        ),
        Table(gain_stl.rename_axis("configuration").reset_index()),
    ]


#: At most this many tasks are named in a majority-class sentence; the rest are counted.
MAJORITY_TASKS_NAMED = 8


def majority_sentences(below: pd.DataFrame, overall: pd.DataFrame) -> list[str]:
    """In words, which configurations do not beat the majority-class rate (on the mean over
    tasks, on which tasks), from :func:`~mtl_celeba.report.compare.not_above_majority`; first,
    per (backbone, attribute set, scale) of ``overall`` (the report's configurations) where
    none beats it on the mean, a sentence saying so."""
    sections = overall[MAJORITY_KEYS].drop_duplicates().shape[0]
    sentences = []
    for values, group in overall.groupby(MAJORITY_KEYS, sort=False):
        at_or_below = below[
            (below[MAJORITY_KEYS] == pd.Series(values, index=MAJORITY_KEYS)).all(axis=1)
            & below["on_mean"]
        ]
        if len(at_or_below) == len(group):
            scale, backbone, attribute_set = values
            sentences.append(
                f"No configuration of {backbone} · {attribute_set} · {scale} beats the "
                "majority-class rate on the mean over tasks."
            )
    for row in below.itertuples(index=False):
        where = f" ({row.backbone} · {row.attribute_set} · {row.scale})" if sections > 1 else ""
        parts = []
        if row.on_mean:
            parts.append(
                f"on the mean over tasks ({_percent(row.mean)}% vs {_percent(row.majority)}%)"
            )
        if row.tasks:
            named = ", ".join(
                f"{task} ({_percent(mean)}% vs {_percent(rate)}%)"
                for task, mean, rate in row.tasks[:MAJORITY_TASKS_NAMED]
            )
            more = len(row.tasks) - MAJORITY_TASKS_NAMED
            named += f" and {more} more" if more > 0 else ""
            tied = sum(
                bool(np.isclose(mean, rate, rtol=0, atol=1e-6)) for _, mean, rate in row.tasks
            )
            at = (
                ""
                if not tied
                else ", all exactly at it"
                if tied == len(row.tasks)
                else f", {tied} of them exactly at it"
            )
            parts.append(f"on {len(row.tasks)} task(s){at}: {named}")
        sentences.append(
            f"**{row.configuration}**{where} does not beat the majority-class rate "
            + " nor ".join(parts)
            + "."
        )
    return sentences


def stl_table(stl: pd.DataFrame) -> pd.DataFrame:
    """The single-task reference as one row per task, one column per backbone (and scale)."""
    cells = stl.assign(
        cell=[
            _mean_pm_std(m, s) if pd.isna(n) else f"{_mean_pm_std(m, s)} (n={n:g})"
            for m, s, n in zip(stl["mean"], stl["std"], stl["n"], strict=True)
        ]
    )
    if "scale" in cells and cells["scale"].nunique() > 1:
        cells["column"] = cells["backbone"] + " · " + cells["scale"]
    else:
        cells["column"] = cells["backbone"]
    table = cells.pivot(index="task", columns="column", values="cell").fillna(NOT_AVAILABLE)
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
    for (backbone, attribute_set, scale), group in overall.groupby(
        ["backbone", "attribute_set", "scale"], sort=False
    ):
        if not (group["strategy"] == BASELINE).any():
            notes.append(
                f"No MTL run for {backbone} · {attribute_set} · {scale}: the gain over MTL is "
                f"{NOT_AVAILABLE}."
            )
    for row in comparison.repeated_seeds.itertuples(index=False):
        if pd.isna(row.seed):
            continue
        notes.append(
            f"{row.configuration} · {row.backbone} · {row.attribute_set} has "
            f"{row.runs} runs with seed {row.seed}: runs that differ in other settings are averaged together."
        )
    return notes


def seed_notes(
    scores: pd.DataFrame, statistics: Statistics, repeats: pd.DataFrame | None = None
) -> list[str]:
    """Which seeds each number leaves out, by configuration: seeds without an MTL partner (not
    run, failed or unfinished), seeds with a NaN or missing task, runs counted once."""
    notes = []
    multi = scores[(scores["strategy"] != "stl") & scores["seed"].notna()]
    context = list(CONTEXT_KEYS)
    for values, group in multi.groupby(context, sort=False, dropna=False):
        seeds = group.groupby(["configuration", "strategy"], sort=False)["seed"].agg(
            lambda s: set(s.astype(int))
        )
        mtl = set().union(*seeds[seeds.index.get_level_values("strategy") == BASELINE])
        if not mtl:
            continue
        where = " · ".join(str(v) for v in values)
        for (label, strategy), own in seeds.items():
            if strategy == BASELINE:
                continue
            alone, without = sorted(own - mtl), sorted(mtl - own)
            parts = []
            if alone:
                parts.append(
                    f"seed{'s' if len(alone) > 1 else ''} {', '.join(map(str, alone))} without an MTL run"
                )
            if without:
                parts.append(
                    f"MTL seed{'s' if len(without) > 1 else ''} {', '.join(map(str, without))} "
                    "without a run of it (not run, failed or unfinished)"
                )
            if parts:
                notes.append(
                    f"{label} · {where}: {'; '.join(parts)}: its gains, Δm% and rank use only "
                    "the seeds it shares with MTL."
                )
    for row in statistics.overall.itertuples(index=False):
        if isinstance(row.excluded, str) and row.excluded:
            notes.append(
                f"{row.configuration} · {row.backbone} · {row.scale}: {row.excluded}: left out of "
                "its Δm% and of the paired tests of that task."
            )
    if repeats is not None:
        for row in repeats.itertuples(index=False):
            what = f"{row.configuration}" + (f" ({row.task})" if row.task else "")
            notes.append(
                f"{what} seed {int(row.seed)} was run twice (`{row.run}` repeats `{row.kept}`, "
                "e.g. in two grids): counted once, the first run."
            )
    return notes


# --------------------------------------------------------------------------- does it help?
# The statistics come from mtl_celeba.report.statistics; these functions only lay them out.


def _p_value(p: float, name: str = "p") -> str:
    """``p=0.004``, ``p<0.001``."""
    if pd.isna(p):
        return f"{name}={NOT_AVAILABLE}"
    return f"{name}<0.001" if p < 0.001 else f"{name}={p:.3f}"


def _difference_cell(row: pd.Series) -> str:
    """``+0.41 [+0.12, +0.70] p=0.004 ▲ (sign-flip p=0.062)``: the paired difference to MTL
    in points, the Holm-adjusted t-test p (which the mark uses) and the exact sign-flip p."""
    pairs = int(row["pairs"])
    if pairs < MIN_PAIRS:
        return f"{NOT_AVAILABLE} ({pairs} paired seed{'' if pairs == 1 else 's'})"
    exact = _p_value(row["p_exact"], "sign-flip p")
    if not row["testable"]:
        return f"{_gain(row['diff'])}, {NOT_TESTABLE} ({exact})"
    mark = {"gain": " ▲", "loss": " ▼"}.get(row["significant"], "")
    return (
        f"{_gain(row['diff'])} [{_gain(row['ci_low'])}, {_gain(row['ci_high'])}] "
        f"{_p_value(row['p_holm'])}{mark} ({exact})"
    )


def _delta_m_cell(row: pd.Series) -> str:
    """Delta_m% ± the half-width of its 95% interval, or n/a with the reason."""
    reason = row.get("not_available")
    if isinstance(reason, str) and reason:
        return f"{NOT_AVAILABLE} ({reason})"
    if pd.isna(row["delta_m"]):
        return NOT_AVAILABLE
    if pd.isna(row["delta_m_low"]):
        return f"{row['delta_m']:+.2f} (1 seed)"
    words = REFERENCE_MODE_WORDS.get(row["reference_mode"], "")
    if row["reference_mode"] == "conditional" and row.get("reference_runs", 1) > 1:
        words = ", conditional on the STL means"
    half = (row["delta_m_high"] - row["delta_m_low"]) / 2
    return (
        f"{row['delta_m']:+.2f} ± {half:.2f}{words.replace(', ', ' (', 1) + ')' if words else ''}"
    )


def _rows_of(frame: pd.DataFrame, context: dict[str, Any]) -> pd.DataFrame:
    """The rows of ``frame`` in one context (a merge: NaN keys match, unlike ==)."""
    return frame.merge(pd.DataFrame([context]), on=list(context), how="inner")


def dropped_nothing(label: str, drop_rate: float, gates: float) -> str | None:
    """The sentence saying a gating strategy dropped no task-epoch (None if it dropped some)."""
    if pd.isna(drop_rate) or drop_rate > 0:
        return None
    drawn = "" if pd.isna(gates) else f" (all {gates:g} gates drawn on)"
    return (
        f"{label} dropped nothing{drawn}: its difference to MTL is its loss normalisation "
        "alone, not its dropping."
    )


def help_section(
    statistics: Statistics, reference: str, schedules: pd.DataFrame | None = None
) -> list[Block]:
    """The "Does it help?" section: per context its sentences, a table of paired differences
    and their forest plot's data.

    ``schedules``: per configuration its mean ``drop_rate`` and ``gates`` (gating strategies).
    """
    overall = sort_groups(statistics.overall)
    if overall.empty:
        return []
    keys_all = [*GROUP_KEYS, "configuration"]
    if schedules is not None:
        overall = overall.merge(schedules, on=keys_all, how="left")
    blocks: list[Block] = [
        Heading(2, "Does it help?"),
        Paragraph(
            "Each configuration minus MTL run with the same seed, per task, in percentage points, on "
            "the seeds both ran: mean over seeds "
            f"[{100 * (1 - ALPHA):.0f}% t confidence interval], p = paired t-test p-value, "
            "Holm-adjusted; sign-flip p = the exact paired sign-flip (permutation) p-value, "
            "unadjusted, whose smallest possible value is 2/2^n with n seeds (0.25 with 3, 0.0625 "
            "with 5): where it is far above the t-test's p, the t-test's significance rests on "
            f"its normality assumption. ▲ / ▼ mark a Holm-adjusted t-test p below {ALPHA:g} "
            "(a gain / a loss). Differences without spread (the same amount in every seed) are "
            f"{NOT_TESTABLE.split(' (')[0]} and not marked."
        ),
        Paragraph(
            "Holm's correction is per configuration: its family is that configuration's tested "
            "tasks against MTL, not the configurations of the section."
        ),
        Paragraph(
            f"{DELTA_M} against {reference}: Δm% = 100/T Σ_t (−1)^δ_t (M_t − M_STL,t) / M_STL,t "
            "with δ_t = 1 for higher-is-better metrics, as FAMO, Nash-MTL and FairGrad write it: "
            "negative is better than STL. It is taken per seed against STL's run with the same "
            "seed where STL ran the seeds, so its 95% t interval (±) carries STL's own noise; "
            "where STL ran other seeds, the interval is the delta method's over both; where STL "
            "ran once per task, it is labelled conditional on that run. Over the full task set "
            "only: a seed lacking a task, or a zero reference, gives n/a. Mean rank: per task "
            "the configurations of the section are ranked by their paired difference to MTL "
            "(1 = best), then the ranks are averaged over tasks. A comparison needs at least "
            f"{MIN_PAIRS} paired seeds."
        ),
    ]
    keys = context_keys(GROUP_KEYS)
    for values, configurations in overall.groupby(keys, sort=False, dropna=False):
        context = dict(zip(keys, values, strict=True))
        paired = _rows_of(statistics.paired, context)
        sentences = _rows_of(statistics.sentences, context).set_index("configuration")["sentence"]
        tasks = list(dict.fromkeys(paired["task"]))
        cells = {(r["configuration"], r["task"]): _difference_cell(r) for _, r in paired.iterrows()}
        gating = "drop_rate" in configurations and configurations["drop_rate"].notna().any()
        table = pd.DataFrame(
            [
                {
                    "configuration": row["configuration"],
                    "seeds": NOT_AVAILABLE if pd.isna(row["seeds"]) else f"{row['seeds']:g}",
                    **{
                        task: "baseline"
                        if row["strategy"] == BASELINE
                        else cells.get((row["configuration"], task), NOT_AVAILABLE)
                        for task in tasks
                    },
                    DELTA_M: _delta_m_cell(row),
                    "mean rank": NOT_AVAILABLE
                    if pd.isna(row["mean_rank"])
                    else f"{row['mean_rank']:.2f} of {row['ranked_among']:g}",
                    **({"dropped": drop_cell(row)} if gating else {}),
                }
                for _, row in configurations.iterrows()
            ]
        )
        # "-" marks a context that does not apply (e.g. no transfer setting): not shown
        title = " · ".join(str(v) for v in values if not pd.isna(v) and v != "-")
        blocks.append(Heading(3, title))
        items = []
        for _, row in configurations.iterrows():
            label = row["configuration"]
            if label in sentences:
                nothing = dropped_nothing(
                    label, row.get("drop_rate", np.nan), row.get("gates", np.nan)
                )
                items.append(sentences[label] + (f"\n{nothing}" if nothing else ""))
        if items:
            blocks.append(Bullets(items))
        if sentences.empty:
            blocks.append(
                Paragraph("No configuration besides MTL here: nothing to compare with MTL.")
            )
        blocks += [Table(table), Forest(paired, list(configurations["configuration"]))]
    return blocks


def statistics_table(statistics: Statistics) -> pd.DataFrame:
    """The statistics as ``report.csv`` columns: one row per configuration (fractions; Δm in %)."""
    overall = statistics.overall[
        [*GROUP_KEYS, "seeds", "delta_m_low", "delta_m_high", "reference_mode", "mean_rank"]
    ].rename(columns={"delta_m_low": "delta_m_pct_ci_low", "delta_m_high": "delta_m_pct_ci_high"})
    paired = statistics.paired
    if paired.empty:
        return overall
    values = [
        "pairs",
        "diff",
        "ci_low",
        "ci_high",
        "p",
        "p_exact",
        "testable",
        "p_holm",
        "significant",
    ]
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
    #: completed runs that repeat another completed run's configuration and seed (counted once)
    repeats: int = 0

    @property
    def reference(self) -> str:
        """What Delta_m% and the gains over STL compare with, in words."""
        if self.reference_file is None:
            return (
                "the STL runs of the same backbone and scale (paired by seed where STL ran the "
                "seed, else their mean over seeds per task)"
            )
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
            text = f"real CelebA ({roots})"
        elif source == "synthetic":
            text = "synthetic CelebA (generated stand-in images: the numbers test the pipeline, not real faces)"
        else:
            text = f"data source {source!r}"
        parts.append(text if len(runs) == len(group) else f"{text}: {len(group)} runs")
    return "; ".join(parts) or "no completed run"


def setup_description(scores: pd.DataFrame) -> str:
    """The scales of the runs in words (each with its run count if there are several)."""
    runs = scores.drop_duplicates("run")
    if "scale" not in runs or runs.empty:
        return "unknown"
    counts = runs["scale"].value_counts(sort=False)
    if len(counts) == 1:
        return str(counts.index[0])
    return "; ".join(f"{scale} ({n} runs)" for scale, n in counts.items()) + (
        ": reported in separate sections, never paired"
    )


def reproduce_commands(paths: Sequence[Path]) -> list[str]:
    """The sweep command of every ``multirun.yaml`` below ``paths`` (Hydra's record of the launch)."""
    commands = []
    for path in paths:
        for multirun in sorted(Path(path).rglob("multirun.yaml"), key=natural_key):
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


def conflicts_section(plots: Sequence[tuple[str, str]]) -> list[Block]:
    """The "Gradient conflicts" section: how to read the heatmaps and a link to each
    ((file name, what it shows) pairs); no blocks when no run recorded conflicts."""
    if not plots:
        return []
    blocks: list[Block] = [
        Heading(2, "Gradient conflicts"),
        Paragraph(
            "Each heatmap is one configuration: the cosine between the gradients of two tasks, "
            "averaged over the training steps measured, the epochs and the seeds (n). Red cells are "
            "pairs whose gradients conflict (cosine < 0: a step for one task raises the other's "
            "loss, to first order), which is how negative transfer shows up; blue cells are aligned "
            "pairs. One colour scale per picture, centred at 0. Beside each heatmap, each task's "
            "mean cosine with the others, and for the strategies that drop tasks (DST, its "
            "controls, random dropping) the share of training steps it was dropped in, so the "
            "drop decisions can be read against the conflicts. Gramian methods measure every step "
            "from their own Gramian; the other strategies only with `strategy.diagnostics=true` "
            "(every `strategy.diagnostics_every` steps, w.r.t. the shared features: 'sampled')."
        ),
    ]
    for name, title in plots:
        blocks += [Paragraph(f"{title}:"), Pictures([name])]
    return blocks


def report_blocks(
    header: Header,
    scores: pd.DataFrame,
    comparison: Comparison,
    failed: pd.DataFrame,
    notes: Sequence[str],
    plots: Sequence[str],
    out_dir: Path,
    statistics: Statistics | None = None,
    schedules: pd.DataFrame | None = None,
    conflict_plots: Sequence[tuple[str, str]] = (),
) -> list[Block]:
    """The whole report as blocks (``schedules``: per configuration the realised drop rate;
    ``conflict_plots``: the gradient-conflict heatmaps, see :func:`conflicts_section`)."""
    metric = header.metric.replace("_", " ")
    facts = [
        f"**Data:** {header.data}",
        f"**Runs:** {header.runs} run folders, {header.completed} completed"
        + (
            f" ({header.repeats} repeating another's configuration and seed, counted once)"
            if header.repeats
            else ""
        )
        + f", {header.runs - header.completed} failed or unfinished",
        f"**Sweep folders:** {', '.join(f'`{p}`' for p in header.sources)}",
        f"**Setup:** {header.setup}",
        f"**Generated:** {header.generated}",
    ]
    facts += [f"**Reproduce:** `{command}`" for command in header.commands]
    facts += [
        f"**Metric:** test {metric} in %, mean ± std over seeds (n runs); gains in percentage "
        "points, paired by seed; Δm% = 100/T Σ_t (−1)^δ_t (M_t − M_STL,t) / M_STL,t with "
        "δ_t = 1 for higher-is-better metrics: **lower is better** (the convention of FAMO, "
        "Nash-MTL and FairGrad; LibMTL's Δp has the opposite sign).",
        f"**Single-task reference (STL):** {header.reference}.",
        "**Paired runs:** runs are paired by seed: every strategy run with the same seed sees the "
        "same training batches in the same order with the same augmentation, so each "
        "configuration is compared with MTL seed by seed.",
        "**Model selection on validation only:** the test metrics are those of the best epoch "
        "by the validation mean (accuracy by default, `callbacks.model_checkpoint.monitor`); the "
        "test set never picks the epoch (the DST authors' script picks the best epoch on the test set).",
    ]
    blocks: list[Block] = [Heading(1, "Multi-task CelebA report"), Bullets(facts)]
    if statistics is not None:
        blocks += help_section(statistics, header.reference, schedules)
    if not comparison.overall.empty:
        blocks += [Heading(2, "Summary"), Table(summary_table(comparison, statistics))]
        if header.metric == "accuracy":
            below = not_above_majority(comparison, majority_rates(scores))
            sentences = majority_sentences(below, comparison.overall)
            if sentences:
                blocks += [
                    Paragraph(
                        "Majority-class baseline (always predicting each task's training majority "
                        "class; test accuracy, mean over seeds vs the rate, at or below it counts):"
                    ),
                    Bullets(sentences),
                ]
            else:
                blocks.append(
                    Paragraph(
                        "Every configuration beats the majority-class rate on every task and on "
                        "the mean over tasks."
                    )
                )
    majority = scores.groupby(["scale", "backbone", "attribute_set", "task"])[
        "majority_accuracy"
    ].mean()
    for (scale, backbone, attribute_set), overall in comparison.overall.groupby(
        ["scale", "backbone", "attribute_set"], sort=False
    ):
        in_section = (
            (comparison.per_task["backbone"] == backbone)
            & (comparison.per_task["attribute_set"] == attribute_set)
            & (comparison.per_task["scale"] == scale)
        )
        reference = (
            majority.loc[(scale, backbone, attribute_set)] if header.metric == "accuracy" else None
        )
        blocks += [
            Heading(2, f"{backbone} · {attribute_set} · {scale}"),
            Paragraph(f"Setup: {scale}."),
            Paragraph(f"Test {metric} (%):"),
        ]
        blocks += _section_tables(comparison.per_task[in_section], overall, reference)
    if not comparison.stl.empty:
        blocks += [
            Heading(2, "Single-task reference (STL)"),
            Paragraph(
                f"Test {metric} (%) of one network per task, mean ± std over seeds (n runs):"
                if header.reference_file is None
                else f"Test {metric} (%) of {header.reference}:"
            ),
            Table(stl_table(comparison.stl)),
        ]
    if not failed.empty:
        # Relative to the report, so the paths still work when the sweep folder moves.
        rows = failed.assign(run=[os.path.relpath(run, out_dir) for run in failed["run"]])
        blocks += [
            Heading(2, "Failed runs"),
            Paragraph("Not included in the tables above:"),
            Table(rows),
        ]
    if plots:
        blocks += [Heading(2, "Plots"), Pictures(list(plots))]
    blocks += conflicts_section(conflict_plots)
    if notes:
        blocks += [Heading(2, "Notes"), Bullets(list(notes))]
    return blocks


def _markdown_lines(block: Block) -> list[str]:
    """One block as Markdown lines (a forest plot's data is the table before it: no lines)."""
    if isinstance(block, Heading):
        return [f"{'#' * block.level} {block.text}"]
    if isinstance(block, Paragraph):
        return [block.text]
    if isinstance(block, Bullets):
        return [f"- {item}".replace("\n", "\n  ") for item in block.items]
    if isinstance(block, Table):
        return [markdown_table(block.frame)]
    if isinstance(block, Pictures):
        return [f"![{Path(path).stem}]({path})" for path in block.paths]
    return []


def render_markdown(blocks: Sequence[Block]) -> str:
    """The whole ``report.md``: every block, a blank line after each."""
    lines = []
    for block in blocks:
        text = _markdown_lines(block)
        if text:
            lines += [*text, ""]
    return "\n".join(lines)
