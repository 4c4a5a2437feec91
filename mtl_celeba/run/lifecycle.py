"""The life of one training run's record: ``metrics.json`` from ``running`` to its final status.

Every way a run can end is written down: ``completed``; ``failed`` with the error (a full disk
as one line naming the mount, a folder turned read-only as one line naming the file; when even
``metrics.json`` cannot be written, the line says so); a SIGTERM (a scheduler's stop or preemption) as ``failed`` and
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

from mtl_celeba.errors import UnwritableError, UserError, disk_full_error, unwritable_error
from mtl_celeba.run.layout import RESULTS_FILE
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
        self._threads = ThreadErrors()

    def __enter__(self) -> RunRecord:
        try:
            write_results(self.run_dir, self.results)
        except BaseException as error:
            self._sigterm.restore()
            raise (self._one_line(error) or error) from None
        self._threads.install()
        return self

    def _one_line(self, error: BaseException) -> Exception | None:
        """A full disk or an unwritable folder as a one-line error, else None."""
        return disk_full_error(error, self.run_dir) or unwritable_error(error, self.run_dir)

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._threads.restore()
        replacement = self._record_failure(error) if error is not None else None
        self._sigterm.restore()
        finished = time.perf_counter()
        self.results["wall_time_s"] = round(finished - self.started, 2)
        if self.timer is not None:
            self.results["timing"] = self.timer.summary(finished)
        try:
            write_results(self.run_dir, self.results)
        except OSError as write_error:
            cause = self._one_line(write_error) or write_error
            if error is None:
                raise cause from None
            # keep the first error; say that the record could not be written
            quiet_log_files()
            reason = replacement if isinstance(replacement, UserError) else None
            first = str(reason or self.results.get("error", "")).rstrip(".")
            raise UnwritableError(
                f"{first}; the record {self.run_dir / RESULTS_FILE} could not be written either "
                f"({write_error.strerror or write_error}), so it still says running: "
                "resume=auto skips the folder while it is not writable."
            ) from None
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
        one_line = self._one_line(error)
        if one_line is None and self._threads.first is not None:
            # the first error may be a background thread's (the TensorBoard event writer's)
            one_line = self._one_line(self._threads.first)
        failure = one_line or error
        self.results.update(status="failed", error=f"{type(failure).__name__}: {failure}")
        if isinstance(one_line, UnwritableError):
            quiet_log_files()
        return one_line


def quiet_log_files() -> None:
    """Once the run folder cannot be written: its log file (``train.log``) fails silently
    instead of printing a "Logging error" traceback for every line (the console keeps them)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handleError = lambda record: None  # type: ignore[method-assign]


class ThreadErrors:
    """While a run trains: the first error of a background thread (TensorBoard's event writer,
    a data loader's pin-memory thread) logged as one line and kept, instead of a traceback
    printed from the thread that would scroll the run's own first error out of view."""

    def __init__(self) -> None:
        self.first: BaseException | None = None
        self._previous = threading.excepthook

    def install(self) -> None:
        self._previous = threading.excepthook
        threading.excepthook = self._hook

    def restore(self) -> None:
        if threading.excepthook == self._hook:
            threading.excepthook = self._previous

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        if unwritable_error(args.exc_value, ".") is not None:
            quiet_log_files()
        name = args.thread.name if args.thread is not None else "a thread"
        log.warning(
            "background thread %s failed: %s: %s", name, args.exc_type.__name__, args.exc_value
        )
        if self.first is None:
            self.first = args.exc_value


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
