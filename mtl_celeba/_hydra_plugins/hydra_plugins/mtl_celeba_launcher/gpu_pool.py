"""Hydra launcher ``hydra/launcher=gpu_pool``: parallel jobs, one process and one GPU each.

Hydra loads launchers only from the ``hydra_plugins`` namespace, so this thin shell lives
here; the scheduling itself is :mod:`mtl_celeba.sweeps.gpu_pool`.
"""

from __future__ import annotations

import logging
import time
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
from hydra_plugins.mtl_celeba_launcher.resume import NumberedJob, skip_completed
from omegaconf import DictConfig, open_dict

from mtl_celeba.sweeps.gpu_pool import JobTiming, Slot, job_slots, run_on_slots

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
    """Runs ``len(gpus) * jobs_per_gpu`` jobs at once (``cpu_jobs`` without a GPU).

    ``stagger_s`` spaces job starts; ``skip_completed`` skips jobs that an earlier run of the
    same sweep folder completed with the same overrides (see :mod:`.resume`).
    """

    def __init__(
        self,
        gpus: Any = "auto",
        jobs_per_gpu: int = 1,
        cpu_jobs: int = 1,
        stagger_s: float = 0.0,
        skip_completed: bool = False,
    ) -> None:
        self.gpus = list(gpus) if not isinstance(gpus, str) else gpus
        self.jobs_per_gpu = jobs_per_gpu
        self.cpu_jobs = cpu_jobs
        self.stagger_s = float(stagger_s)
        self.skip_completed = bool(skip_completed)
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
        return self.launch_numbered(list(enumerate(job_overrides, start=initial_job_idx)))

    def launch_numbered(self, jobs: Sequence[NumberedJob]) -> list[JobReturn]:
        """Run jobs with explicit job numbers (which need not be consecutive); returns in order."""
        assert (
            self.config is not None
            and self.hydra_context is not None
            and self.task_function is not None
        )
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        skipped: dict[int, JobReturn] = {}
        pending = list(jobs)
        if self.skip_completed:
            pending, skipped = skip_completed(self.config, self.hydra_context, jobs)
        slots = job_slots(self.gpus, self.jobs_per_gpu, self.cpu_jobs)
        where = (
            f"GPUs {sorted(set(s for s in slots if s is not None))}"
            if slots[0] is not None
            else "the CPU"
        )
        stagger = f", starts {self.stagger_s:g} s apart" if self.stagger_s else ""
        log.info(
            f"Launching {len(pending)} jobs, {len(slots)} at a time on {where}{stagger}; "
            f"sweep dir {sweep_dir}"
        )
        singleton_state = Singleton.get_state()
        payloads = [
            (
                cloudpickle.dumps(
                    (
                        number,
                        overrides,
                        self.hydra_context,
                        self.config,
                        self.task_function,
                        singleton_state,
                    )
                ),
            )
            for number, overrides in pending
        ]

        def announce(index: int, slot: Slot) -> None:
            number, overrides = pending[index]
            log.info(f"\t#{number} on {_device(slot)}: {' '.join(filter_overrides(overrides))}")

        def finished(index: int, result: Any, timing: JobTiming) -> None:
            status = "failed"
            if isinstance(result, bytes):
                status = cloudpickle.loads(result).status.name.lower()
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timing.started))
            log.info(
                f"\t#{pending[index][0]} {status} on {_device(timing.slot)}: "
                f"started {started}, wall time {timing.wall_s:.1f} s"
            )

        results = run_on_slots(
            _execute_job,
            payloads,
            slots,
            on_start=announce,
            on_finish=finished,
            stagger_s=self.stagger_s,
        )
        ran = {
            number: cloudpickle.loads(result)
            if isinstance(result, bytes)
            else _crashed(overrides, result)
            for (number, overrides), result in zip(pending, results, strict=True)
        }
        return [skipped[number] if number in skipped else ran[number] for number, _ in jobs]


def _device(slot: Slot) -> str:
    return f"GPU {slot}" if slot is not None else "CPU"


def _crashed(overrides: Sequence[str], error: BaseException) -> JobReturn:
    """A job whose process died before Hydra could report on it."""
    log.error(f"Job {' '.join(overrides)} crashed: {error!r}")
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)
