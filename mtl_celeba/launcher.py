"""Run a Hydra sweep's jobs in parallel, one fresh process per job, each pinned to one GPU.

Lightning's DDP inside a Hydra multirun is known to break (Lightning #11300, Hydra #2070),
so a sweep runs single-device jobs side by side instead: with G visible GPUs and
``jobs_per_gpu`` k, G*k jobs run at once, each in its own spawned process whose
``CUDA_VISIBLE_DEVICES`` names exactly one GPU. Jobs share no CUDA state, and a failing job
does not stop the others. Without a GPU, ``cpu_jobs`` jobs run at once on the CPU.
The Hydra plugin in ``mtl_celeba/_hydra_plugins`` is a thin shell around :func:`run_on_slots`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from mtl_celeba.errors import ConfigError

#: A slot is the value a job's CUDA_VISIBLE_DEVICES is set to, or None for a CPU job.
Slot = str | None


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else every device torch counts."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [gpu.strip() for gpu in declared.split(",") if gpu.strip() and gpu.strip() != "-1"]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


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


def run_on_slots(
    function: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    slots: Sequence[Slot],
    on_start: Callable[[int, Slot], None] | None = None,
) -> list[Any]:
    """Call ``function(*job)`` for every job, at most one job per slot at a time.

    Each job runs in a newly spawned process of its own, so no CUDA context or other process
    state carries from one job to the next, and a job that raises or whose process dies
    does not stop the others: its entry in the result list (in job order) is the exception.
    ``function`` and the jobs must be picklable.
    """
    results: list[Any] = [None] * len(jobs)
    free = list(slots)
    pending: dict[Future[Any], tuple[int, Slot, ProcessPoolExecutor]] = {}
    queue = list(enumerate(jobs))
    context = multiprocessing.get_context("spawn")
    while queue or pending:
        while queue and free:
            index, job = queue.pop(0)
            slot = free.pop(0)
            if on_start is not None:
                on_start(index, slot)
            executor = ProcessPoolExecutor(max_workers=1, mp_context=context)
            pending[executor.submit(_run_pinned, function, slot, job)] = (index, slot, executor)
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            index, slot, executor = pending.pop(future)
            error = future.exception()
            results[index] = error if error is not None else future.result()
            executor.shutdown()
            free.append(slot)
    return results
