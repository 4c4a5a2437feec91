"""The plugins' configs, registered in Hydra's ConfigStore when Hydra scans ``hydra_plugins``.

``hydra/launcher=gpu_pool`` and ``hydra/sweeper=grids`` then work in any Hydra app with the
package installed, as the official plugins' do. The fields are typed, so Hydra rejects an
unknown key or a value of the wrong type with one line naming it (``hydra.launcher.KEY``);
the range checks (``jobs_per_gpu`` >= 1, ...) are in :mod:`mtl_celeba.sweeps.gpu_pool`.
This module imports nothing but Hydra, so registering costs nothing at start-up. (No
``from __future__ import annotations``: Hydra runs this module before it is in
``sys.modules``, where dataclasses cannot resolve string annotations.)
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class GpuPoolLauncherConf:
    """``hydra/launcher=gpu_pool``: parallel jobs, one fresh process and one GPU each."""

    _target_: str = "hydra_plugins.mtl_celeba_launcher.gpu_pool.GpuPoolLauncher"
    #: ``auto`` (every visible GPU) or a list of GPU ids, e.g. ``[0,1]``
    gpus: Any = "auto"
    #: jobs packed onto each GPU at once
    jobs_per_gpu: int = 1
    #: jobs at once when no GPU is found
    cpu_jobs: int = 1
    #: seconds between job starts (jobs then don't all import and initialise CUDA at once)
    stagger_s: float = 0.0
    #: a rerun into the same hydra.sweep.dir skips jobs that completed there (same overrides)
    skip_completed: bool = False


@dataclass
class GridsSweeperConf:
    """``hydra/sweeper=grids``: the union of several parameter grids as one multirun."""

    _target_: str = "hydra_plugins.mtl_celeba_launcher.grids.GridUnionSweeper"
    #: jobs per launch (null: all at once)
    max_batch_size: int | None = None
    #: overrides shared by every grid, key -> sweep string (``a,b,c``)
    params: dict[str, Any] = field(default_factory=dict)
    #: the grids, each a mapping key -> sweep string; their products are joined
    grids: list[Any] = field(default_factory=list)
    #: a rerun into the same hydra.sweep.dir skips jobs that completed there (same overrides)
    skip_completed: bool = False


ConfigStore.instance().store(
    group="hydra/launcher", name="gpu_pool", node=GpuPoolLauncherConf, provider="mtl_celeba"
)
ConfigStore.instance().store(
    group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="mtl_celeba"
)
