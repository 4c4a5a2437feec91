"""``mtl-explore``: look at a CelebA copy's 40 attributes before choosing what to train on.

The command line is parsed here, before numpy, pandas and matplotlib are imported; the work
is :mod:`mtl_celeba.data.explore`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtl_celeba.config import CONFIG_DIR, PROJECT_ROOT
from mtl_celeba.errors import exit_on_user_error

#: mtl-explore's rules for picking K attributes (stated in summary.md).
CRITERIA = ("least_correlated", "balanced")


def explore_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-explore",
        description=(
            "Attribute correlations (phi heatmap, clustered), positive rates per split, sample "
            "grids, and a selector that writes an attributes=NAME preset."
        ),
    )
    parser.add_argument(
        "--root",
        required=True,
        type=Path,
        help="a CelebA copy (any layout; the data.root of training) or a folder made by mtl-synth --out",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=PROJECT_ROOT / "outputs" / "explore",
        help="folder for the PNGs, CSVs and summary.md (default outputs/explore)",
    )
    parser.add_argument("--select", type=int, default=None, metavar="K", help="pick K attributes")
    parser.add_argument(
        "--criterion",
        choices=CRITERIA,
        default="least_correlated",
        help="how --select picks (default least_correlated; see summary.md for the exact rule)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="preset name for the selection (default explore<K>_<criterion>)",
    )
    parser.add_argument(
        "--preset-dir",
        type=Path,
        default=CONFIG_DIR / "attributes",
        help="where the preset goes (default: the project's conf/attributes/)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing preset")
    parser.add_argument(
        "--attributes",
        default=None,
        help="comma-separated: the candidates for --select; without --select, the attributes to draw samples of",
    )
    parser.add_argument("--samples", type=int, default=8, help="images per side of a sample grid")
    parser.add_argument("--image-size", type=int, default=96, help="pixels per sample image")
    parser.add_argument("--pairs", type=int, default=10, help="pairs listed per table")
    parser.add_argument("--seed", type=int, default=0, help="which sample images are drawn")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """``mtl-explore``: correlations, positive rates, samples (see :mod:`mtl_celeba.data.explore`)."""
    args = explore_parser().parse_args(argv)
    from mtl_celeba.data.explore import run_command

    run_command(args)


if __name__ == "__main__":
    main()
