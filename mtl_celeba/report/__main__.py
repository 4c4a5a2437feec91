"""``mtl-report`` (``python -m mtl_celeba.report``): its command line, parsed before pandas and
matplotlib are imported."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtl_celeba.errors import exit_on_user_error


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-report",
        description="Compare the runs of Hydra sweep folders: report.md, report.html, report.csv "
        "and PNG plots.",
    )
    parser.add_argument(
        "sweep_dirs",
        nargs="+",
        type=Path,
        metavar="SWEEP_DIR",
        help="sweep or run folders (searched at any depth)",
    )
    parser.add_argument(
        "--out", type=Path, help="where to write the report (default: the first SWEEP_DIR)"
    )
    parser.add_argument(
        "--metric",
        default="accuracy",
        help="test metric of metrics.json to compare: accuracy (default), balanced_accuracy, f1, auroc",
    )
    parser.add_argument(
        "--stl-reference",
        type=Path,
        metavar="FILE",
        help="single-task reference for Δm%% instead of STL runs: a CSV with columns task and "
        "the metric (fractions), optionally backbone",
    )
    parser.add_argument(
        "--literature",
        metavar="NAME",
        help="add the published Δm%% of each method beside the measured one, from a table "
        "shipped with the package: famo_celeba40",
    )
    parser.add_argument(
        "--no-html", action="store_true", help="do not write report.html (report.md only)"
    )
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """``mtl-report``: the comparison report of sweep folders (see :mod:`mtl_celeba.report`)."""
    args = report_parser().parse_args(argv)
    from mtl_celeba.report.command import run_command

    run_command(args)


if __name__ == "__main__":
    main()
