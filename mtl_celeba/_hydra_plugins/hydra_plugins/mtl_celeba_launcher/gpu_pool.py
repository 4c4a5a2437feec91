"""Hydra launcher ``hydra/launcher=gpu_pool``: parallel jobs, one process and one GPU each.

Hydra loads launchers only from the ``hydra_plugins`` namespace, so this thin shell lives
here; the scheduling itself is :mod:`mtl_celeba.launcher`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from mtl_celeba.launcher import job_slots, run_on_slots

log = logging.getLogger(__name__)


def _execute_job(payload: bytes) -> bytes:
    """One sweep job in its own process (the joblib launcher's recipe, minus joblib)."""
    index, overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(
        payload
    )
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{index}"
        sweep_config.hydra.job.num = index
    HydraConfig.instance().set_config(sweep_config)
    result = run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    return cloudpickle.dumps(result)


class GpuPoolLauncher(Launcher):
    """Runs ``len(gpus) * jobs_per_gpu`` jobs at once (``cpu_jobs`` without a GPU)."""

    def __init__(self, gpus: Any = "auto", jobs_per_gpu: int = 1, cpu_jobs: int = 1) -> None:
        self.gpus = list(gpus) if not isinstance(gpus, str) else gpus
        self.jobs_per_gpu = jobs_per_gpu
        self.cpu_jobs = cpu_jobs
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert (
            self.config is not None
            and self.hydra_context is not None
            and self.task_function is not None
        )
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        slots = job_slots(self.gpus, self.jobs_per_gpu, self.cpu_jobs)
        where = (
            f"GPUs {sorted(set(s for s in slots if s is not None))}"
            if slots[0] is not None
            else "the CPU"
        )
        log.info(
            f"Launching {len(job_overrides)} jobs, {len(slots)} at a time on {where}; sweep dir {sweep_dir}"
        )
        singleton_state = Singleton.get_state()
        jobs = [
            (
                cloudpickle.dumps(
                    (
                        initial_job_idx + i,
                        overrides,
                        self.hydra_context,
                        self.config,
                        self.task_function,
                        singleton_state,
                    )
                ),
            )
            for i, overrides in enumerate(job_overrides)
        ]

        def announce(index: int, slot: str | None) -> None:
            device = f"GPU {slot}" if slot is not None else "CPU"
            log.info(
                f"\t#{initial_job_idx + index} on {device}: {' '.join(filter_overrides(job_overrides[index]))}"
            )

        results = run_on_slots(_execute_job, jobs, slots, on_start=announce)
        return [
            cloudpickle.loads(result) if isinstance(result, bytes) else _crashed(overrides, result)
            for overrides, result in zip(job_overrides, results, strict=True)
        ]


def _crashed(overrides: Sequence[str], error: BaseException) -> JobReturn:
    """A job whose process died before Hydra could report on it."""
    log.error(f"Job {' '.join(overrides)} crashed: {error!r}")
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)
