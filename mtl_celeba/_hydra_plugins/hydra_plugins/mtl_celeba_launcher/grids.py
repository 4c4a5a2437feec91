"""Hydra sweeper ``hydra/sweeper=grids``: the union of several parameter grids in one sweep.

Hydra's basic sweeper runs one cartesian product. A comparison such as "every strategy x
backbone x seed, plus one single-task run per attribute" is a union of two products; this
sweeper runs such a union as one multirun (one sweep folder, jobs numbered 0..N-1), so
``mtl-train -m experiment=NAME`` is the whole command. Overrides on the command line apply
to every grid. Every job runs even when some fail; the sweep then ends with the first error.
With ``skip_completed: true`` (on in the named experiments) a rerun into the same
``hydra.sweep.dir`` skips the jobs that completed there before and runs the others, with any
launcher (see :mod:`.resume`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.mtl_celeba_launcher.resume import NumberedJob, skip_completed
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def grid_product(parser: OverridesParser, params: Sequence[str]) -> list[list[str]]:
    """The cartesian product of one grid's overrides, e.g. ``["a=1,2", "b=x"]`` -> ``[[a=1, b=x], [a=2, b=x]]``.

    A later override of a key replaces an earlier one, so command-line arguments win.
    """
    choices: dict[str, list[str]] = {}
    for override in parser.parse_overrides(list(params)):
        key = override.get_key_element()
        if override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        elif override.is_sweep_override():
            raise ValueError(
                f"the grids sweeper supports only lists of values, not {override.input_line}"
            )
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    jobs: list[list[str]] = [[]]
    for options in choices.values():
        jobs = [[*job, option] for job in jobs for option in options]
    return jobs


class GridUnionSweeper(Sweeper):
    """Runs every job of every grid in ``grids`` (each a mapping key -> sweep string)."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: Mapping[str, str] | None = None,
        grids: Sequence[Mapping[str, Any]] | None = None,
        skip_completed: bool = False,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.skip_completed = bool(skip_completed)
        self.params = dict(params or {})
        self.grids = [dict(grid) for grid in grids or [{}]]
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def jobs(self, arguments: Sequence[str]) -> list[list[str]]:
        """The override lists of all jobs: each grid's product, command-line arguments applied to all."""
        loader = self.hydra_context.config_loader if self.hydra_context is not None else None
        parser = OverridesParser.create(config_loader=loader)
        jobs: list[list[str]] = []
        for grid in self.grids:
            params = [f"{key}={value}" for key, value in {**self.params, **grid}.items()]
            jobs.extend(
                job for job in grid_product(parser, [*params, *arguments]) if job not in jobs
            )
        return jobs

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.hydra_context is not None
        jobs: list[NumberedJob] = list(enumerate(self.jobs(arguments)))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(f"Sweeping {len(jobs)} jobs from {len(self.grids)} grid(s) into {sweep_dir}")
        returns: list[Sequence[JobReturn]] = []
        if self.skip_completed:
            jobs, skipped = skip_completed(self.config, self.hydra_context, jobs)
            if skipped:
                returns.append(list(skipped.values()))
        size = self.max_batch_size or len(jobs) or 1
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            self.validate_batch_is_legal([overrides for _, overrides in batch])
            returns.append(self._launch(batch))
        failed = [
            result for batch in returns for result in batch if result.status == JobStatus.FAILED
        ]
        if failed:
            _ = failed[0].return_value  # raises that job's error, as Hydra's basic sweeper does
        return returns

    def _launch(self, batch: Sequence[NumberedJob]) -> Sequence[JobReturn]:
        """Launch numbered jobs: all at once where the launcher takes job numbers (gpu_pool),
        otherwise one launch per run of consecutive numbers (skipped jobs leave gaps)."""
        if hasattr(self.launcher, "launch_numbered"):
            return self.launcher.launch_numbered(batch)
        results: list[JobReturn] = []
        start = 0
        for end in range(1, len(batch) + 1):
            if end == len(batch) or batch[end][0] != batch[end - 1][0] + 1:
                run = batch[start:end]
                results.extend(self.launcher.launch([o for _, o in run], initial_job_idx=run[0][0]))
                start = end
        return results
