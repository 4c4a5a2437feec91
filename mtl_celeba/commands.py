"""The command lines of mtl-bench, mtl-explore, mtl-report and mtl-predict, without heavy imports.

``--help`` and a usage error answer in about a second: the module that does the work
(pandas, matplotlib, torch, Lightning: 5-30 s to import on a small CPU) is imported only
once the command line is parsed. mtl-train and mtl-eval get the same from
:mod:`mtl_celeba.cli` (their Hydra command lines are checked before the heavy imports).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mtl_celeba.config import CONFIG_DIR, PROJECT_ROOT
from mtl_celeba.errors import exit_on_user_error

#: mtl-bench's runs for each backbone, in the order they run.
BENCH_VARIANTS = ("plain", "model_only", "fast", "naive", "mtl", "dst")
BENCH_OUT = PROJECT_ROOT / "outputs" / "bench" / "bench.json"
#: mtl-explore's rules for picking K attributes (stated in summary.md).
EXPLORE_CRITERIA = ("least_correlated", "balanced")


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-bench",
        description=(
            "Training throughput (images/s) of a plain PyTorch loop, the project's module on a "
            "device-resident batch, the fast and the naive input pipelines, and DST against "
            "plain MTL, on the device found (CUDA, else CPU). "
            "Defaults depend on the device (CPU / GPU)."
        ),
    )
    parser.add_argument(
        "--backbones",
        default=None,
        help="comma-separated model configs or torchvision names (CPU: resnet18; GPU: resnet18,vgg16)",
    )
    parser.add_argument("--image-size", type=int, help="image side in pixels (CPU 64, GPU 128)")
    parser.add_argument("--batch-size", type=int, help="training batch size (CPU 64, GPU 256)")
    parser.add_argument("--precision", help="Lightning precision (CPU 32-true, GPU bf16-mixed)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the backbone (model.compile=true)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="DataLoader workers of the fast and naive pipelines (CPU 0, GPU min(8, cores))",
    )
    parser.add_argument(
        "--num-images", type=int, help="synthetic CelebA size (CPU 3000, GPU 30000)"
    )
    parser.add_argument(
        "--data-source",
        choices=("synthetic", "celeba"),
        default="synthetic",
        help="synthetic CelebA (generated once under data/) or a real CelebA copy",
    )
    parser.add_argument(
        "--data-root", help="the CelebA folder (required with --data-source celeba)"
    )
    parser.add_argument("--windows", type=int, help="timed windows per run (5)")
    parser.add_argument(
        "--window-steps", type=int, help="training steps per window (CPU 5, GPU 30)"
    )
    parser.add_argument(
        "--warmup-steps", type=int, help="untimed steps before the first window (CPU 2, GPU 30)"
    )
    parser.add_argument(
        "--variants",
        default=",".join(BENCH_VARIANTS),
        help=f"comma-separated runs to make, in this order (default all: {','.join(BENCH_VARIANTS)})",
    )
    parser.add_argument(
        "--strategies",
        default="",
        help=(
            "comma-separated strategy configs (e.g. mtl,dst,pcgrad,famo) to time on the fast "
            "pipeline, each step time printed relative to plain MTL's (MTL is added if missing)"
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH_OUT, help=f"results file (default {BENCH_OUT})"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=(
            "instead: run a small real sweep (one seed of dst_vs_baselines; the overrides "
            "change it), report jobs/hour, device utilisation and each job's fixed cost, and "
            "estimate make reproduce's wall time from them (writes sweep.json beside --out)"
        ),
    )
    parser.add_argument(
        "--sweep-dir",
        type=Path,
        help="with --sweep: the sweep folder (default: a new one under outputs/bench/)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra Hydra overrides of conf/train.yaml, e.g. attributes=all40 data.max_shift=4",
    )
    return parser


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
        choices=EXPLORE_CRITERIA,
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


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-report",
        description="Compare the runs of Hydra sweep folders: report.md, report.csv and PNG plots.",
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
    return parser


@exit_on_user_error
def bench(argv: list[str] | None = None) -> None:
    """``mtl-bench``: training throughput (see :mod:`mtl_celeba.benchmark`)."""
    args = bench_parser().parse_args(argv)
    if args.sweep:
        from mtl_celeba.sweep_bench import run_command

        run_command(args)
        return
    from mtl_celeba.benchmark import run

    run(args)


@exit_on_user_error
def explore(argv: list[str] | None = None) -> None:
    """``mtl-explore``: correlations, positive rates, samples (see :mod:`mtl_celeba.explore`)."""
    args = explore_parser().parse_args(argv)
    from mtl_celeba.explore import run_command

    run_command(args)


@exit_on_user_error
def report(argv: list[str] | None = None) -> None:
    """``mtl-report``: the comparison report of sweep folders (see :mod:`mtl_celeba.report`)."""
    args = report_parser().parse_args(argv)
    from mtl_celeba.report import run_command

    run_command(args)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def predict(cfg: DictConfig) -> Any:
    """``mtl-predict``: a checkpoint's predictions for images (see :mod:`mtl_celeba.predict`)."""
    from mtl_celeba.predict import run_command

    run_command(cfg)
