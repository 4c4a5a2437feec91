"""What a person reads while a run goes: one stream of messages, repeated in the run's log file.

Every message of ``mtl-train`` and ``mtl-eval`` (the project's, Lightning's, and Python
warnings) is a :mod:`logging` record. Hydra's job logging (``conf/hydra/default.yaml``) prints
them plainly on stdout and writes them, with time, level and source, to the run folder's
``<job>.log`` (``train.log``, ``evaluate.log``). Progress bars are tqdm's and stay on the
console only. Errors a user can fix end on stderr as ``error: ...`` (exit status 2).

Light to import (no torch, no Lightning): Hydra's logging config names :class:`ConsoleHandler`
before the job starts. Epochs on the progress bar: :mod:`mtl_celeba.run.progress`.
"""

from __future__ import annotations

import logging
import warnings

from tqdm import tqdm

#: Lightning logs every ``rank_zero_info`` message through one of these loggers (whichever of
#: lightning.pytorch and lightning.fabric was imported last).
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class ConsoleHandler(logging.StreamHandler):
    """A stream handler that writes through tqdm: a message lands above the progress bars,
    never glued to the end of a half-drawn one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)


class DropLightningTips(logging.Filter):
    """Drop Lightning's advertisements (``💡 Tip: ... try installing litlogger / litmodels``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def configure_lightning_output() -> None:
    """Lightning's messages once, through the job's logging; its noise filtered at the source.

    - On import, the ``lightning`` package adds its own stderr handler to its logger, so each
      message came twice (stdout through Hydra's handler, stderr through Lightning's). Where
      the job's logging is set up (the root logger has handlers), that handler is removed.
    - The "💡 Tip" lines (a cloud service's advertisement) are dropped on the loggers that
      print them; every other Lightning message stays.
    - Two warnings are filtered by message and module: torch's ``LeafSpec`` deprecation,
      raised by Lightning's own ``_pytree`` helper at each fit, validate and test (nothing a
      user can change), and Lightning's "number of training batches is smaller than the
      logging interval" for small data (the per-epoch metrics are logged all the same; only
      step-level points are fewer, see docs/training.md, 'Metrics and TensorBoard').
    - Other Python warnings are logged (``py.warnings``), so they reach the log file too.
    """
    if logging.getLogger().hasHandlers():
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLightningTips) for f in logger.filters):
            logger.addFilter(DropLightningTips())
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    warnings.filterwarnings(
        "ignore",
        message=r"The number of training batches \(\d+\) is smaller than the logging interval",
        module=r"lightning\.pytorch\.loops\.fit_loop",
    )
    logging.captureWarnings(True)
