"""``mtl-bench`` (``python -m mtl_celeba.bench``): its command line, parsed before torch is imported."""

from __future__ import annotations

import argparse
from pathlib import Path

from mtl_celeba.bench import BENCH_OUT, VARIANTS
from mtl_celeba.errors import exit_on_user_error


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
        default=",".join(VARIANTS),
        help=f"comma-separated runs to make, in this order (default all: {','.join(VARIANTS)})",
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


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """``mtl-bench``: training throughput (see :mod:`mtl_celeba.bench.throughput`)."""
    args = bench_parser().parse_args(argv)
    if args.sweep:
        from mtl_celeba.bench.sweep import run_command

        run_command(args)
        return
    from mtl_celeba.bench.throughput import run

    run(args)


if __name__ == "__main__":
    main()
