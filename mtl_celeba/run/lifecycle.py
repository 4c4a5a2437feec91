"""The life of one training run's record: ``metrics.json`` from ``running`` to its final status.

Every way a run can end is written down: ``completed``; ``failed`` with the error (a full disk
as one line naming the mount); a SIGTERM (a scheduler's stop or preemption) as ``failed`` and
exit status 143; Ctrl-C (SIGINT) as ``interrupted``, exit status 130 and a line saying how to
resume; a submitit time-limit or preemption signal whose hook requeues the job
(:func:`note_requeue`) as ``requeued``, with submitit's own exit status. The wall time and
the set-up/epoch split (:class:`~mtl_celeba.run.timing.JobTimer`) are recorded whatever the
ending. Light on imports: mtl-train enters it before torch is loaded.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from mtl_celeba.errors import disk_full_error
from mtl_celeba.run.results import write_results

log = logging.getLogger(__name__)


class RunRecord:
    """``with RunRecord(run_dir, config_hash) as record:`` around a run's work.

    On entry ``metrics.json`` says ``running`` (written first and small, so that a full disk
    still gets a final status, overwritten in place); the work adds its fields to
    :attr:`results` and sets ``status`` to ``completed``; on exit the record is written with
    the wall time and timing, whatever happened.
    """

    def __init__(self, run_dir: Path, config_hash: str) -> None:
        self.run_dir = run_dir
        self.started = time.perf_counter()
        #: The run's JobTimer, once the training stack is imported (None before).
        self.timer: Any = None
        self.results: dict[str, Any] = {
            "status": "running",
            "run_dir": str(run_dir),
            "config": {},
            "config_hash": config_hash,
        }
        self._sigterm = SigtermHandler()

    def __enter__(self) -> RunRecord:
        try:
            write_results(self.run_dir, self.results)
        except BaseException as error:
            self._sigterm.restore()
            raise (disk_full_error(error, self.run_dir) or error) from None
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        replacement = self._record_failure(error) if error is not None else None
        self._sigterm.restore()
        finished = time.perf_counter()
        self.results["wall_time_s"] = round(finished - self.started, 2)
        if self.timer is not None:
            self.results["timing"] = self.timer.summary(finished)
        try:
            write_results(self.run_dir, self.results)
        except OSError as write_error:
            raise (disk_full_error(write_error, self.run_dir) or write_error) from None
        if replacement is not None:
            raise replacement from None
        return False  # the original error, if any, goes on

    def _record_failure(self, error: BaseException) -> BaseException | None:
        """Set the failed status; returns the exception to raise instead of ``error``, if any."""
        if interrupted_by_ctrl_c(error):
            self.results.update(status="interrupted", error="interrupted by Ctrl-C (SIGINT)")
            log.warning(
                "Interrupted: %s keeps its last finished epoch in checkpoints/last.ckpt; rerun "
                "the same command with resume=auto (a sweep: the same command and "
                "hydra.sweep.dir) to continue it.",
                self.run_dir,
            )
            return SystemExit(128 + signal.SIGINT)
        if _requeue_reason is not None and isinstance(error, SystemExit):
            # submitit's signal handler exits after requeuing the job; its exit code stays
            self.results.update(
                status="requeued",
                error=f"{_requeue_reason}: requeued, the next attempt resumes from "
                "checkpoints/last.ckpt",
            )
            log.warning(
                "%s requeued: the next attempt resumes from its checkpoints/last.ckpt (%s)",
                self.run_dir,
                _requeue_reason,
            )
            return None
        if stopped_by_sigterm(error):
            # Lightning stops at the next step on SIGTERM by raising a SystemExit without a
            # code, which exits 0: a scheduler would count the stopped job as finished.
            self.results.update(status="failed", error="stopped by SIGTERM before the end")
            return SystemExit(128 + signal.SIGTERM)
        disk_full = disk_full_error(error, self.run_dir)
        failure = disk_full or error
        self.results.update(status="failed", error=f"{type(failure).__name__}: {failure}")
        return disk_full


#: Why the job was requeued, once a requeue hook said so (this process then ends).
_requeue_reason: str | None = None


def note_requeue(reason: str) -> None:
    """Record that this job is being requeued (called by submitit's checkpoint hook, in the
    signal handler, just before submitit exits): the run then ends as ``requeued``."""
    global _requeue_reason
    _requeue_reason = reason


class SigtermHandler:
    """The process's SIGTERM handler, put back after training.

    Lightning installs its own for fit, validate and test (it only sets a flag its loops read)
    and restores the previous one in its teardown, but skips that when the strategy's teardown
    raises (a background checkpoint write that failed). The process would keep a handler that
    ignores SIGTERM: an in-process sweep could no longer be stopped by it, and worker processes
    forked later (the synthetic generator's pool) would inherit it and never terminate.
    """

    def __init__(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        self.handler = signal.getsignal(signal.SIGTERM) if main else None

    def restore(self) -> None:
        if self.handler is not None:  # None: not the main thread, or not set from Python
            signal.signal(signal.SIGTERM, self.handler)


def interrupted_by_ctrl_c(error: BaseException) -> bool:
    """Whether ``error`` is a Ctrl-C: the KeyboardInterrupt itself, or the ``SystemExit(1)``
    Lightning raises after its graceful shutdown from one (while handling it)."""
    if isinstance(error, KeyboardInterrupt):
        return True
    return isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt)


def stopped_by_sigterm(error: BaseException) -> bool:
    """Whether ``error`` is Lightning's stop after a SIGTERM (imported only for a SystemExit,
    so a configuration mistake still fails before the training stack is loaded)."""
    if not isinstance(error, SystemExit):
        return False
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(error, SIGTERMException)
