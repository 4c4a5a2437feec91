"""The ``gpu_pool`` launcher and the ``grids`` sweeper against Hydra's own plugin test suites.

These are the suites every official Hydra launcher runs (hydra-core's
``hydra.test_utils.launcher_common_tests``), on Hydra's test app and configs: nothing of this
project's ``conf/`` is on their search path, so they pass only because the plugins register
their configs in Hydra's ConfigStore (``hydra_plugins/mtl_celeba_launcher/config.py``).
The launcher runs every job in a freshly spawned process, so these cases take a few seconds
each; the integration cases (a Hydra app in a subprocess each) are marked slow.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from hydra_plugins.mtl_celeba_launcher.gpu_pool import GpuPoolLauncher
from hydra_plugins.mtl_celeba_launcher.grids import GridUnionSweeper


def test_discovery() -> None:
    """Hydra finds both plugins in the ``hydra_plugins`` namespace."""
    assert GpuPoolLauncher.__name__ in [p.__name__ for p in Plugins.instance().discover(Launcher)]
    assert GridUnionSweeper.__name__ in [p.__name__ for p in Plugins.instance().discover(Sweeper)]


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


#: A Hydra app that knows nothing of this project: its own config, the plugins by name only.
APP = textwrap.dedent(
    """
    import os, hydra

    @hydra.main(version_base="1.3", config_path=".", config_name="config")
    def app(cfg):
        print("job", cfg.x, os.getpid(), flush=True)

    if __name__ == "__main__":  # gpu_pool spawns its jobs: the main module must be importable
        app()
    """
)
CONFIG = textwrap.dedent(
    """
    defaults:
      - override hydra/launcher: gpu_pool
      - override hydra/sweeper: grids
      - _self_
    x: 0
    hydra:
      job:
        chdir: false
      sweeper:
        grids:
          - {x: "1,2"}
          - {x: "3"}
    """
)


def run_app(folder: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """Run :data:`APP` as a multirun in ``folder`` (its sweep in ``folder/sweep``)."""
    (folder / "app.py").write_text(APP)
    (folder / "config.yaml").write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "app.py", "-m", *overrides, f"hydra.sweep.dir={folder / 'sweep'}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("hydra.launcher.jobs_per_gpu=many", "hydra.launcher.jobs_per_gpu"),
        ("hydra.launcher.stagger=1", "hydra.launcher.stagger"),
        ("hydra.sweeper.skip_completed=maybe", "hydra.sweeper.skip_completed"),
    ],
)
def test_bad_plugin_values_are_rejected_in_any_app(tmp_path: Path, override: str, key: str) -> None:
    """The structured configs type their fields: a wrong type or an unknown key fails at
    composition, naming the key, before any job starts."""
    done = run_app(tmp_path, override)
    assert done.returncode != 0
    assert key in done.stderr, done.stderr
    assert "job" not in done.stdout


def test_grids_sweeper_and_gpu_pool_in_any_app(tmp_path: Path) -> None:
    """Both plugins by name in a foreign app: the union of two grids, a process per job."""
    done = run_app(tmp_path, "hydra.launcher.cpu_jobs=2")
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = [line.split() for line in done.stdout.splitlines() if line.startswith("job ")]
    assert sorted(x for _, x, _ in jobs) == ["1", "2", "3"], done.stdout
    assert len({pid for _, _, pid in jobs}) == 3  # each job in a fresh process
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2"]
