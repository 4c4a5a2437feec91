"""``mtl-report``: compare the runs of one or more sweep folders in tables and plots.

Reads every run folder's ``metrics.json`` (:mod:`.runs`), averages each configuration over its
seeds and compares it with plain MTL and with the single-task (STL) runs (:mod:`.compare`,
:mod:`.statistics`), and writes ``report.md`` (:mod:`.markdown`), the same report as one
self-contained ``report.html`` (:mod:`.html`), ``report.csv`` and PNG plots (:mod:`.plots`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mtl_celeba.errors import check_choice
from mtl_celeba.io import write_text_atomic
from mtl_celeba.report.compare import (
    GROUP_KEYS,
    LOWER_IS_BETTER,
    compare,
    read_stl_reference,
    wide_table,
)
from mtl_celeba.report.html import render_html
from mtl_celeba.report.literature import beside, read_literature
from mtl_celeba.report.markdown import (
    Header,
    comparison_notes,
    data_description,
    render_markdown,
    report_blocks,
    reproduce_commands,
    seed_notes,
    setup_description,
    statistics_table,
    summary_table,
)
from mtl_celeba.report.plots import write_conflict_plots, write_plots
from mtl_celeba.report.runs import RUN_COLUMNS, collect_runs, drop_repeats, find_run_dirs
from mtl_celeba.report.statistics import (
    analyse,
)
from mtl_celeba.scheduling.names import REFERENCE

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
REPORT_HTML = "report.html"

# --------------------------------------------------------------------------- entry point


def write_report(
    sweep_dirs: Sequence[Path],
    out_dir: Path,
    metric: str = "accuracy",
    stl_reference: Path | None = None,
    html: bool = True,
) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Read the runs below ``sweep_dirs``, write the report files into ``out_dir``.

    ``stl_reference``: a CSV of single-task values replacing the STL runs (``--stl-reference``).
    ``html``: also write ``report.html`` (``--no-html`` turns it off).

    Returns the path of ``report.md``, the summary table (one line per configuration) and the
    failed runs.
    """
    run_dirs = find_run_dirs(sweep_dirs)
    scores, failed = collect_runs(run_dirs)
    completed = scores["run"].nunique()  # before the repeats are dropped: they completed too
    scores, repeats = drop_repeats(scores)
    reported = [column for column in scores.columns if column not in RUN_COLUMNS]
    if metric not in reported:
        if not scores.empty:
            check_choice(metric, "--metric", reported, "the metrics of the runs' metrics.json")
        scores[metric] = pd.Series(dtype=float)  # no completed run: every table stays empty
    external = None
    if stl_reference is not None:
        backbones = sorted(scores["backbone"].dropna().astype(str).unique())
        external = read_stl_reference(stl_reference, metric, backbones)
    comparison = compare(scores, metric, stl=external)
    lower_is_better = metric in LOWER_IS_BETTER
    stl_runs = None if external is not None else scores[scores["strategy"] == REFERENCE]
    statistics = analyse(
        scores, metric, GROUP_KEYS, comparison.stl, lower_is_better, stl_runs=stl_runs
    )
    table = wide_table(comparison)
    if not table.empty:
        table = table.merge(statistics_table(statistics), on=GROUP_KEYS, how="left")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / REPORT_CSV, table.to_csv(index=False))
    plots, plot_notes = write_plots(
        scores, comparison.per_task, comparison.overall, comparison.stl, metric, out_dir
    )
    conflict_plots, conflict_notes = write_conflict_plots(scores, out_dir)
    plot_notes += conflict_notes
    header = Header(
        sources=[p.resolve() for p in sweep_dirs],
        runs=len(run_dirs),
        completed=completed,
        data=data_description(scores),
        setup=setup_description(scores),
        commands=reproduce_commands(sweep_dirs),
        metric=metric,
        reference_file=stl_reference,
        repeats=len(repeats),
    )
    # relative to the report, like the failed runs, so the notes stay valid when the sweep moves
    repeats = repeats.assign(
        run=[os.path.relpath(run, out_dir) for run in repeats["run"]],
        kept=[os.path.relpath(run, out_dir) for run in repeats["kept"]],
    )
    notes = [*comparison_notes(comparison), *seed_notes(scores, statistics, repeats), *plot_notes]
    if external is not None and (scores["strategy"] == REFERENCE).any():
        notes.append("STL runs were found but --stl-reference replaces them as the reference.")
    blocks = report_blocks(
        header,
        scores,
        comparison,
        failed,
        notes,
        plots,
        out_dir,
        statistics=statistics,
        schedules=comparison.overall[[*GROUP_KEYS, "configuration", "drop_rate", "gates"]]
        if "drop_rate" in comparison.overall
        else None,
        conflict_plots=conflict_plots,
    )
    write_text_atomic(out_dir / REPORT_MD, render_markdown(blocks))
    if html:
        write_text_atomic(out_dir / REPORT_HTML, render_html(blocks, out_dir))
    return out_dir / REPORT_MD, summary_table(comparison, statistics), failed


def run_command(args: argparse.Namespace) -> None:
    """``mtl-report`` (parsed by :mod:`mtl_celeba.report.__main__`): write and summarise."""
    out_dir = args.out or args.sweep_dirs[0]
    literature = read_literature(args.literature) if getattr(args, "literature", None) else None
    report, summary, failed = write_report(
        args.sweep_dirs,
        out_dir,
        args.metric,
        args.stl_reference,
        html=not getattr(args, "no_html", False),
    )
    if literature is not None:
        summary = beside(summary, literature)
    if not summary.empty:
        print(summary.to_string(index=False))
    if not failed.empty:
        print(f"\n{len(failed)} run(s) failed or did not finish: listed in the report.")
    print(f"\nReport: {report}")
