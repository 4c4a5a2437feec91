"""SLURM jobs that survive their time limit: submitit's checkpoint hook, with ``resume=auto``.

``hydra/launcher=slurm`` asks SLURM for a signal (``USR2``) ``signal_delay_s`` before the time
limit. submitit's handler in the job calls the launcher's ``checkpoint`` (this module's
:meth:`RequeueMixin.checkpoint`), saves the submission it returns, requeues the job
(``scontrol requeue``; the local executor restarts it) and exits. The hook

- marks the run as requeued (:func:`mtl_celeba.run.lifecycle.note_requeue`), so its
  ``metrics.json`` says ``requeued``, not ``failed``;
- resubmits the same job with ``resume=auto``: the next attempt runs in the same folder and
  continues from its ``checkpoints/last.ckpt`` (written at the end of every epoch; the epoch
  that was running when the signal came is trained again).

Lightning's own SLURM auto-requeue is switched off inside submitit jobs
(:func:`cluster_plugins`): two handlers would each requeue the job, and Lightning's
``hpc_ckpt`` would not be found by the resubmitted Hydra job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mtl_celeba.run.lifecycle import note_requeue

#: The override the checkpoint hook adds to a requeued job (replacing any other ``resume=``).
RESUME_AUTO = "resume=auto"


def with_resume_auto(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with ``resume=auto`` (once, in place of any other ``resume=`` value)."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume"]
    return [*kept, RESUME_AUTO]


class RequeueMixin:
    """The checkpoint hook for hydra-submitit-launcher's launchers (submitit calls it on the
    time-limit or preemption signal, in the job's process). The launchers that use it are in
    ``hydra_plugins/mtl_celeba_launcher/requeue.py``, where Hydra looks for launchers."""

    def checkpoint(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Any],
    ) -> Any:
        """The same job again, with ``resume=auto``: it continues from its folder's last.ckpt."""
        import submitit

        note_requeue("submitit's time-limit or preemption signal")
        return submitit.helpers.DelayedSubmission(
            self, with_resume_auto(sweep_overrides), job_dir_key, job_num, job_id, singleton_state
        )


def cluster_plugins() -> list[Any]:
    """Trainer plugins for a job started by submitit on SLURM: a SLURMEnvironment without
    Lightning's auto-requeue (submitit's hook requeues); none elsewhere."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]
