"""``mtl-bench --sweep``: a small real sweep, timed, and the full protocol's wall time from it.

A sweep's cost is not its training steps alone: each job pays a fixed cost (set-up before the
first epoch, the best checkpoint's validation and test after the last) and the device idles
between jobs unless several share it. This runs a real multirun (``dst_vs_baselines`` at a
small scale by default, any overrides accepted), samples the device's utilisation meanwhile
(``nvidia-smi`` on a GPU, ``/proc/stat`` on the CPU), and reads every job's ``timing`` from
its ``metrics.json``. From the measured figures it estimates ``make reproduce``:

    job time   = fixed cost + epochs x training images x (epoch seconds per training image)
    wall time  = sum of the job times / concurrency

where the epoch cost per image is measured per strategy (DST's epochs carry its measurement
pass), the fixed cost is the median job's, and the concurrency is the measured one (the jobs'
summed wall time over the sweep's). An estimate is only as good as the likeness of the sweep
to the target: same device, backbone, image size and precision (the printout says which).
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl_celeba.errors import ConfigError
from mtl_celeba.run.layout import RESULTS_FILE
from mtl_celeba.run.results import RunConfig, read_results

#: ``make reproduce``'s grids and scales, as in the Makefile (a test keeps the two equal).
REPRODUCE_EXPERIMENTS = ("dst_vs_baselines", "drop_metrics")
REPRODUCE_SYNTHETIC = (
    "model=cpu_cnn",
    "data.num_images=10200",
    "data.image_size=32",
    "data.batch_size=32",
    "trainer.max_epochs=8",
    "+trainer.limit_train_batches=64",
    "trainer.enable_progress_bar=false",
)
REPRODUCE_CELEBA = (
    "data=celeba",
    "trainer=gpu",
    "trainer.max_epochs=15",
    "hydra/launcher=gpu_pool",
)
#: The default small sweep: one seed of dst_vs_baselines (every strategy and the STL runs).
DEFAULT_SWEEP = ("experiment=dst_vs_baselines", "seed=0", "trainer.max_epochs=2")
#: On the CPU the small sweep runs at make reproduce's own scale (network, images, batches per
#: epoch), so its per-image epoch cost and fixed cost are the target's; only the epochs differ.
CPU_SCALE = tuple(o for o in REPRODUCE_SYNTHETIC if not o.startswith("trainer.max_epochs="))
GPU_SCALE = (
    "model=resnet18",
    "data.num_images=24000",
    "data.image_size=128",
    "trainer=gpu",
    "hydra/launcher=gpu_pool",
    "hydra.launcher.jobs_per_gpu=4",
)


# ------------------------------------------------------------------ utilisation
def cpu_busy_share(before: Sequence[int], after: Sequence[int]) -> float:
    """The busy share of all CPUs between two ``/proc/stat`` ``cpu`` lines (idle and iowait
    count as idle)."""
    total = sum(after) - sum(before)
    idle = (after[3] + after[4]) - (before[3] + before[4])
    return 0.0 if total <= 0 else 1.0 - idle / total


def _proc_stat() -> list[int]:
    with open("/proc/stat") as handle:
        return [int(v) for v in handle.readline().split()[1:]]


def parse_nvidia_smi(line: str) -> float | None:
    """One ``utilization.gpu`` sample (``nvidia-smi --format=csv,noheader,nounits``), in 0..1."""
    try:
        return float(line.strip().rstrip("%").strip()) / 100.0
    except ValueError:
        return None


@contextmanager
def utilisation(cuda: bool, interval_s: float = 0.5) -> Iterator[list[float]]:
    """Sample the device's busy share every ``interval_s`` while the block runs.

    On a GPU, every GPU's ``utilization.gpu`` from one ``nvidia-smi -lms`` process (the share
    of time a kernel ran); on the CPU, the busy share of all cores from ``/proc/stat``.
    """
    samples: list[float] = []
    if cuda:
        command = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
            f"-lms={int(interval_s * 1000)}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

        def sample() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                value = parse_nvidia_smi(line)
                if value is not None:
                    samples.append(value)

        def finish() -> None:
            process.terminate()
            process.wait()

    else:
        stop = threading.Event()

        def sample() -> None:
            previous = _proc_stat()
            while not stop.wait(interval_s):
                current = _proc_stat()
                samples.append(cpu_busy_share(previous, current))
                previous = current

        finish = stop.set

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        finish()
        sampler.join(timeout=5)


# ------------------------------------------------------------------ job costs
@dataclass
class JobCost:
    """One completed job's measured cost (from its ``metrics.json``)."""

    strategy: str
    train_images: int
    epoch_s: list[float]
    fixed_s: float
    wall_s: float
    #: what the cost depends on besides the strategy: (backbone, image size, precision)
    setting: tuple[str, int, str]

    @property
    def epoch_s_per_image(self) -> float:
        return statistics.fmean(self.epoch_s) / self.train_images


def images_per_epoch(train: int, batch_size: int, limit: int | float | None) -> int:
    """Training images one epoch sees: the whole split, or the first batches that Lightning's
    ``trainer.limit_train_batches`` allows (a count of batches, or a fraction of them)."""
    if limit is None:
        return train
    batches = math.ceil(train / batch_size)
    kept = int(batches * limit) if isinstance(limit, float) else min(int(limit), batches)
    return min(train, kept * batch_size)


def _sweep_epoch_setting(sweep_dir: Path) -> tuple[int | None, int | float | None]:
    """(data.batch_size, trainer.limit_train_batches) of a sweep, from its multirun.yaml."""
    from omegaconf import OmegaConf

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None, None
    cfg = OmegaConf.load(path)
    batch = OmegaConf.select(cfg, "data.batch_size", default=None)
    return batch, OmegaConf.select(cfg, "trainer.limit_train_batches", default=None)


def job_costs(sweep_dir: Path) -> list[JobCost]:
    """The completed jobs below ``sweep_dir`` that recorded their ``timing``; their training
    images per epoch count ``trainer.limit_train_batches`` when the sweep set it."""
    batch, limit = _sweep_epoch_setting(sweep_dir)
    costs = []
    for path in sorted(Path(sweep_dir).rglob(RESULTS_FILE)):
        try:
            data = read_results(path.parent)
        except (OSError, ValueError):
            continue  # a run still writing, or a broken file: not a measurement
        timing = data.get("timing") or {}
        if data.get("status") != "completed" or not timing.get("epoch_s"):
            continue
        costs.append(
            JobCost(
                strategy=RunConfig.from_dict(data["config"]).strategy,
                train_images=images_per_epoch(
                    int(data["samples"]["train"]), int(batch or 1), limit if batch else None
                ),
                epoch_s=list(timing["epoch_s"]),
                fixed_s=float(timing["fixed_s"]),
                wall_s=float(data["wall_time_s"]),
                setting=setting_of(RunConfig.from_dict(data["config"]).to_dict()),
            )
        )
    return costs


def setting_of(config: Any) -> tuple[str, int, str]:
    """(backbone, image size, precision) of a run's config (metrics.json's or a composed one)."""
    return (str(config["backbone"]), int(config["image_size"]), str(config["precision"]))


@dataclass
class TargetJob:
    """A job of the sweep to estimate: its strategy, epochs and training images per epoch."""

    strategy: str
    epochs: int
    train_images: int
    setting: tuple[str, int, str]


def estimate_wall_s(
    costs: Sequence[JobCost], concurrency: float, targets: Sequence[TargetJob]
) -> tuple[float, list[str]]:
    """Seconds the ``targets`` take, from measured ``costs`` (see the module docstring);
    also the strategies that had no measured job and took the median of all jobs' cost."""
    if not costs:
        raise ConfigError("no completed job with timing in the sweep: nothing to estimate from.")
    per_image: dict[str, float] = {}
    for strategy in {c.strategy for c in costs}:
        per_image[strategy] = statistics.median(
            c.epoch_s_per_image for c in costs if c.strategy == strategy
        )
    overall = statistics.median(c.epoch_s_per_image for c in costs)
    fixed = statistics.median(c.fixed_s for c in costs)
    unmeasured = sorted({t.strategy for t in targets} - set(per_image))
    total = sum(
        fixed + t.epochs * t.train_images * per_image.get(t.strategy, overall) for t in targets
    )
    return total / max(concurrency, 1e-9), unmeasured


def reproduce_targets(celeba: bool, extra: Sequence[str] = ()) -> list[TargetJob]:
    """The jobs of ``make reproduce`` (``CELEBA=...`` when ``celeba``), from the grids themselves."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.mtl_celeba_launcher.grids import GridUnionSweeper

    from mtl_celeba.config import CONFIG_DIR, VERSION_BASE
    from mtl_celeba.data.synthetic import CELEBA_SPLIT_SIZES, partition_sizes

    scale = [*(REPRODUCE_CELEBA if celeba else REPRODUCE_SYNTHETIC), *extra]
    targets = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
        for experiment in REPRODUCE_EXPERIMENTS:
            base = [f"experiment={experiment}", *scale]
            cfg = compose("train", overrides=base, return_hydra_config=True)
            for job in GridUnionSweeper(grids=cfg.hydra.sweeper.grids).jobs(scale):
                job_cfg = compose("train", overrides=[f"experiment={experiment}", *job])
                train = images_per_epoch(
                    CELEBA_SPLIT_SIZES[0]
                    if celeba
                    else partition_sizes(int(job_cfg.data.num_images))[0],
                    int(job_cfg.data.batch_size),
                    job_cfg.trainer.get("limit_train_batches"),
                )
                setting = {
                    "backbone": job_cfg.model.backbone,
                    "image_size": job_cfg.data.image_size,
                    "precision": job_cfg.trainer.precision,
                }
                targets.append(
                    TargetJob(
                        job_cfg.strategy.name,
                        int(job_cfg.trainer.max_epochs),
                        train,
                        setting_of(setting),
                    )
                )
    GlobalHydra.instance().clear()
    return targets


# ------------------------------------------------------------------ the command
def merge_overrides(defaults: Sequence[str], user: Sequence[str]) -> list[str]:
    """``defaults`` without the keys that ``user`` sets, then ``user`` (``experiment=stl``
    replaces the default experiment rather than clashing with it)."""

    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    keys = {key(o) for o in user}
    return [*(o for o in defaults if key(o) not in keys), *user]


def run_sweep(overrides: Sequence[str], sweep_dir: Path, cuda: bool) -> dict[str, Any]:
    """Run ``mtl-train -m OVERRIDES`` into ``sweep_dir`` while sampling utilisation."""
    command = [sys.executable, "-m", "mtl_celeba.train", "-m", *overrides]
    command.append(f"hydra.sweep.dir={sweep_dir}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log = sweep_dir / "sweep.log"
    started = time.perf_counter()
    with utilisation(cuda) as samples, open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    return {
        "command": " ".join(["mtl-train", "-m", *overrides]),
        "returncode": done.returncode,
        "log": str(log),
        "wall_s": round(wall, 1),
        "utilisation": round(statistics.fmean(samples), 3) if samples else None,
        "samples": len(samples),
    }


def sweep_summary(sweep: dict[str, Any], costs: Sequence[JobCost]) -> dict[str, Any]:
    """Jobs per hour, the measured concurrency, the median fixed cost and epoch cost."""
    wall = sweep["wall_s"]
    concurrency = sum(c.wall_s for c in costs) / wall if wall > 0 else 0.0
    return {
        **sweep,
        "jobs": len(costs),
        "jobs_per_hour": round(len(costs) * 3600 / wall, 1) if wall > 0 else None,
        "concurrency": round(concurrency, 2),
        "median_fixed_s": round(statistics.median(c.fixed_s for c in costs), 2) if costs else None,
        "median_job_s": round(statistics.median(c.wall_s for c in costs), 2) if costs else None,
        "epoch_ms_per_image": {
            s: round(
                1000 * statistics.median(c.epoch_s_per_image for c in costs if c.strategy == s), 3
            )
            for s in sorted({c.strategy for c in costs})
        },
    }


def describe(setting: tuple[str, int, str]) -> str:
    backbone, size, precision = setting
    return f"{backbone}, {size} px, {precision}"


def run_command(args: Any) -> None:
    """``mtl-bench --sweep [OVERRIDES]``: run, measure, estimate, print, write JSON."""
    import shutil
    import tempfile

    from mtl_celeba.config import PROJECT_ROOT
    from mtl_celeba.io import write_json_atomic

    cuda = shutil.which("nvidia-smi") is not None and _cuda_available()
    overrides = merge_overrides(
        [*DEFAULT_SWEEP, *(GPU_SCALE if cuda else CPU_SCALE)], args.overrides
    )
    root = PROJECT_ROOT / "outputs" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    sweep_dir = Path(args.sweep_dir or tempfile.mkdtemp(prefix="sweep-", dir=root))
    print(f"mtl-bench --sweep on {'GPU' if cuda else 'CPU'}: mtl-train -m {' '.join(overrides)}")
    print(f"  into {sweep_dir} (log: {sweep_dir / 'sweep.log'})")
    sweep = run_sweep(overrides, sweep_dir, cuda)
    costs = job_costs(sweep_dir)
    summary = sweep_summary(sweep, costs)
    if not costs:
        raise ConfigError(
            f"the sweep completed no job (exit status {sweep['returncode']}): see {sweep['log']}."
        )
    measured = sorted({c.setting for c in costs})
    estimates = {}
    for name, celeba in (("make reproduce", False), ("make reproduce CELEBA=...", True)):
        targets = reproduce_targets(celeba)
        seconds, unmeasured = estimate_wall_s(costs, summary["concurrency"], targets)
        settings = sorted({t.setting for t in targets})
        estimates[name] = {
            "jobs": len(targets),
            "hours": round(seconds / 3600, 2),
            "comparable": settings == measured,
            "target_settings": [describe(s) for s in settings],
            "strategies_not_measured": unmeasured,
        }
    summary["measured_settings"] = [describe(s) for s in measured]
    summary["estimates"] = estimates
    busy = summary["utilisation"]
    print(
        f"\n{summary['jobs']} jobs in {summary['wall_s']:.0f} s: {summary['jobs_per_hour']} jobs/hour, "
        f"{summary['concurrency']:.2f} jobs at once on average, "
        f"mean {'GPU' if cuda else 'CPU'} utilisation "
        f"{'n/a' if busy is None else f'{100 * busy:.0f}%'}; median job {summary['median_job_s']} s, "
        f"of which fixed (set-up + test) {summary['median_fixed_s']} s."
    )
    print(
        "Epoch cost (ms per training image): "
        + ", ".join(f"{s} {v}" for s, v in summary["epoch_ms_per_image"].items())
    )
    for name, estimate in estimates.items():
        note = (
            ""
            if estimate["comparable"]
            else f" (NOT comparable: measured at {'; '.join(summary['measured_settings'])}, "
            f"the target runs at {'; '.join(estimate['target_settings'])})"
        )
        print(f"Estimated {name}: {estimate['jobs']} jobs, {estimate['hours']:.2f} h{note}")
    out = Path(args.out).with_name("sweep.json")
    write_json_atomic(out, summary)
    print(f"Results: {out}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
