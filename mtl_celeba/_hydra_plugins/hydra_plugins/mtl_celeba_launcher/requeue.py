"""Hydra launchers ``hydra/launcher=slurm`` and ``slurm_local``: hydra-submitit-launcher's SLURM
and local launchers with the requeue hook.

Hydra loads launchers only from the ``hydra_plugins`` namespace, so these thin shells live
here; the hook itself is :class:`mtl_celeba.sweeps.requeue.RequeueMixin`.
"""

from __future__ import annotations

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from mtl_celeba.sweeps.requeue import RequeueMixin


class RequeueSlurmLauncher(RequeueMixin, SlurmLauncher):
    """``hydra/launcher=slurm``: submitit's SLURM launcher, requeued with ``resume=auto``."""


class RequeueLocalLauncher(RequeueMixin, LocalLauncher):
    """``hydra/launcher=slurm_local``: the same hook on submitit's local executor (tests, a
    workstation), whose controller restarts a requeued job."""
