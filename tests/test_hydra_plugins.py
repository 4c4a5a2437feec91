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
from hydra_plugins.mtl_celeba_launcher.gpu_pool import GpuPoolLauncher
from hydra_plugins.mtl_celeba_launcher.grids import GridUnionSweeper


def test_discovery() -> None:
    """Hydra finds both plugins in the ``hydra_plugins`` namespace."""
    assert GpuPoolLauncher.__name__ in [p.__name__ for p in Plugins.instance().discover(Launcher)]
    assert GridUnionSweeper.__name__ in [p.__name__ for p in Plugins.instance().discover(Sweeper)]


SUITES = Path(__file__).with_name("hydra_suites.py")


def run_hydra_suites(marker: str) -> None:
    """Hydra's suites (tests/hydra_suites.py) in a fresh interpreter: they assume a process in
    which no other Hydra app has run (Hydra's singletons, the job's working folder and logging
    configured by this suite's earlier tests change what they see)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, str(SUITES)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_hydra_launcher_and_sweeper_suites() -> None:
    """LauncherTestSuite against gpu_pool; BatchedSweeperTestSuite and LauncherTestSuite's
    sweeps against the grids sweeper."""
    run_hydra_suites("not slow")


@pytest.mark.slow
def test_hydra_integration_suite() -> None:
    """IntegrationTestSuite against gpu_pool (a Hydra app in a subprocess per case)."""
    run_hydra_suites("slow")


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
