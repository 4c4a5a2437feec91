"""Skipping the jobs of a sweep that an earlier attempt already completed (``skip_completed``).

A rerun of a sweep with the same ``hydra.sweep.dir`` finds each job's folder from its job
number and ``hydra.sweep.subdir`` (as Hydra's ``run_job`` does), and skips the job when
:func:`mtl_celeba.sweeps.gpu_pool.completed_run` says that folder finished the same overrides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from mtl_celeba.sweeps.gpu_pool import completed_run

log = logging.getLogger(__name__)

#: A numbered job: (job number in the sweep, its overrides).
NumberedJob = tuple[int, Sequence[str]]


def job_dir(config: DictConfig, hydra_context: HydraContext, job: NumberedJob) -> Path:
    """The folder Hydra gives job ``job`` of the sweep ``config``."""
    index, overrides = job
    sweep_dir = Path(str(config.hydra.sweep.dir))
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]
    if subdir == "${hydra.job.num}":  # the default: no need to compose the job's config
        return sweep_dir / str(index)
    job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_config):
        job_config.hydra.job.num = index
        job_config.hydra.job.id = f"{job_config.hydra.job.name}_{index}"
    return sweep_dir / str(job_config.hydra.sweep.subdir)


def skip_completed(
    config: DictConfig, hydra_context: HydraContext, jobs: Sequence[NumberedJob]
) -> tuple[list[NumberedJob], dict[int, JobReturn]]:
    """Split ``jobs`` into those still to run and returns (by job number) for the completed ones."""
    pending: list[NumberedJob] = []
    done: dict[int, JobReturn] = {}
    for job in jobs:
        folder = job_dir(config, hydra_context, job)
        if completed_run(folder, job[1]):
            done[job[0]] = JobReturn(
                overrides=list(job[1]),
                working_dir=str(folder),
                status=JobStatus.COMPLETED,
                _return_value=None,
            )
        else:
            pending.append(job)
    if done:
        log.info(
            f"skipping {len(done)} completed jobs (already in {config.hydra.sweep.dir}); "
            f"{len(pending)} to run"
        )
    return pending, done
