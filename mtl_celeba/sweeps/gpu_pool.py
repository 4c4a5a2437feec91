"""Run a Hydra sweep's jobs in parallel, one fresh process per job, each pinned to one GPU.

Lightning's DDP inside a Hydra multirun is known to break (Lightning #11300, Hydra #2070),
so a sweep runs single-device jobs side by side instead: with G visible GPUs and
``jobs_per_gpu`` k, G*k jobs run at once, each in its own spawned process whose
``CUDA_VISIBLE_DEVICES`` names exactly one GPU. Jobs share no CUDA state, and a failing job
does not stop the others. Without a GPU, ``cpu_jobs`` jobs run at once on the CPU.
``stagger_s`` spaces job starts so that jobs do not all import and initialise CUDA in the
same second. :func:`completed_run` tells which jobs of an earlier attempt at the same sweep
finished, so a rerun can skip them.
The Hydra plugin in ``mtl_celeba/_hydra_plugins`` is a thin shell around these functions.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mtl_celeba.config import visible_gpus
from mtl_celeba.errors import ConfigError
from mtl_celeba.run.layout import OVERRIDES_YAML
from mtl_celeba.run.results import read_results

#: A slot is the value a job's CUDA_VISIBLE_DEVICES is set to, or None for a CPU job.
Slot = str | None


def job_slots(
    gpus: Sequence[str | int] | str, jobs_per_gpu: int = 1, cpu_jobs: int = 1
) -> list[Slot]:
    """The parallel slots of a sweep: each GPU repeated ``jobs_per_gpu`` times, or CPU slots.

    ``gpus`` is ``"auto"`` (every visible GPU) or an explicit list of GPU ids.
    """
    if jobs_per_gpu < 1:
        raise ConfigError(f"hydra.launcher.jobs_per_gpu is {jobs_per_gpu}: use 1 or more.")
    if cpu_jobs < 1:
        raise ConfigError(f"hydra.launcher.cpu_jobs is {cpu_jobs}: use 1 or more.")
    if isinstance(gpus, str):
        if gpus != "auto":
            raise ConfigError(
                f"hydra.launcher.gpus is {gpus!r}: use auto or a list of GPU ids such as [0,1]."
            )
        gpus = visible_gpus()
    if not gpus:
        return [None] * cpu_jobs
    return [str(gpu) for gpu in gpus for _ in range(jobs_per_gpu)]


def _run_pinned(function: Callable[..., Any], slot: Slot, args: tuple[Any, ...]) -> Any:
    """Runs in the job's own process: pin the GPU before anything can initialise CUDA."""
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot
    return function(*args)


@dataclass(frozen=True)
class JobTiming:
    """When one job started (Unix time) and how long it ran, on which slot."""

    slot: Slot
    started: float
    wall_s: float


def run_on_slots(
    function: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    slots: Sequence[Slot],
    on_start: Callable[[int, Slot], None] | None = None,
    on_finish: Callable[[int, Any, JobTiming], None] | None = None,
    stagger_s: float = 0.0,
) -> list[Any]:
    """Call ``function(*job)`` for every job, at most one job per slot at a time.

    Each job runs in a newly spawned process of its own, so no CUDA context or other process
    state carries from one job to the next, and a job that raises or whose process dies
    does not stop the others: its entry in the result list (in job order) is the exception.
    Consecutive starts are at least ``stagger_s`` seconds apart. ``on_finish`` receives each
    job's index, result and :class:`JobTiming`. ``function`` and the jobs must be picklable.
    """
    if stagger_s < 0:
        raise ConfigError(f"hydra.launcher.stagger_s is {stagger_s}: use 0 or more seconds.")
    results: list[Any] = [None] * len(jobs)
    free = list(slots)
    pending: dict[Future[Any], tuple[int, Slot, ProcessPoolExecutor, float, float]] = {}
    queue = list(enumerate(jobs))
    context = multiprocessing.get_context("spawn")
    last_start: float | None = None
    while queue or pending:
        while queue and free:
            if last_start is not None and stagger_s > 0:
                time.sleep(max(0.0, last_start + stagger_s - time.monotonic()))
            index, job = queue.pop(0)
            slot = free.pop(0)
            if on_start is not None:
                on_start(index, slot)
            last_start = time.monotonic()
            executor = ProcessPoolExecutor(max_workers=1, mp_context=context)
            future = executor.submit(_run_pinned, function, slot, job)
            pending[future] = (index, slot, executor, time.time(), last_start)
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            index, slot, executor, started, clock = pending.pop(future)
            error = future.exception()
            results[index] = error if error is not None else future.result()
            executor.shutdown()
            free.append(slot)
            if on_finish is not None:
                on_finish(index, results[index], JobTiming(slot, started, time.monotonic() - clock))
    return results


def completed_run(job_dir: Path, overrides: Sequence[str]) -> bool:
    """Whether ``job_dir`` holds a finished run of exactly ``overrides``.

    Finished: its ``metrics.json`` says ``completed``. Same job: its ``.hydra/overrides.yaml``
    lists the same overrides, so a rerun of a changed grid never skips a job whose number now
    stands for another configuration. ``resume=auto`` (where to start from, not what to
    train) is left out of the comparison.
    """
    try:
        status = read_results(job_dir).get("status")
    except (OSError, ValueError):
        return False
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(job_dir / OVERRIDES_YAML))
    except Exception:  # missing or unreadable (OSError, YAML errors): not a job we can match
        return False
    if status != "completed" or not isinstance(recorded, list):
        return False
    # a job requeued at a SLURM time limit ran on with resume=auto (sweeps/requeue.py)
    return sorted(o for o in map(str, recorded) if o != "resume=auto") == sorted(
        o for o in overrides if o != "resume=auto"
    )
