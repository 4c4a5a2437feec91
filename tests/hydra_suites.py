"""Hydra's own plugin test suites against gpu_pool and grids, collected only when named:
tests/test_hydra_plugins.py runs this file in a fresh interpreter (the suites assume that no
other Hydra app ran in the process before them)."""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)


# Two jobs at once on the CPU: the suites' sweeps have 1 to 6 jobs.
@pytest.mark.parametrize("launcher_name, overrides", [("gpu_pool", ["hydra.launcher.cpu_jobs=2"])])
class TestGpuPoolLauncher(LauncherTestSuite):
    pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {},
            [
                "-m",
                "hydra/job_logging=hydra_debug",
                "hydra/job_logging=disabled",
                "hydra/launcher=gpu_pool",
                "hydra.launcher.cpu_jobs=2",
            ],
        )
    ],
)
class TestGpuPoolLauncherIntegration(IntegrationTestSuite):
    pass


# The sweeper with Hydra's in-process launcher: Hydra's batching suite, and the launcher suite's
# sweeps (single grid: the grids sweeper must then run what Hydra's basic sweeper runs).
@pytest.mark.parametrize(
    "launcher_name, overrides",
    [("basic", ["hydra/sweeper=grids", "hydra.sweeper.max_batch_size=2"])],
)
class TestGridsSweeperBatching(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("basic", ["hydra/sweeper=grids"])])
class TestGridsSweeperAsBasicSweeper(LauncherTestSuite):
    pass
