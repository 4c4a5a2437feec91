"""``mtl-train``: compose a Hydra config, train, test the best checkpoint, write metrics.json.

torch and Lightning are imported inside :func:`train`, after the config is validated: a
config mistake then fails in about a second instead of after the 20-30 s imports.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mtl_celeba.checkpoints import auto_resume_checkpoint, check_checkpoint, config_hash
from mtl_celeba.cli import hydra_entry
from mtl_celeba.config import hydra_choices, instantiate
from mtl_celeba.data.attributes import resolve_attributes
from mtl_celeba.errors import ConfigError, disk_full_error
from mtl_celeba.results import evaluation_results, format_table, results_table, write_results
from mtl_celeba.validate import validate_train_config

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of the ``callbacks`` group plus the strategy's scheduling callback, if any."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    strategy_callback = cfg.strategy.get("callback")
    if strategy_callback is not None:
        callbacks.append(instantiate(strategy_callback))
    return callbacks


def instantiate_loggers(cfg: DictConfig) -> list[Logger]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def apply_single_task(cfg: DictConfig) -> None:
    """``strategy=stl``: train one network on ``strategy.task`` alone (replaces data.attributes)."""
    if cfg.strategy.name != "stl":
        return
    task = cfg.strategy.get("task")
    if task is None:
        if len(cfg.data.attributes) != 1:
            raise ConfigError(
                "strategy=stl trains one network per attribute: run the ready multirun "
                "`mtl-train experiment=stl`, or pick one with strategy.task=NAME."
            )
        return
    with open_dict(cfg):
        cfg.data.attributes = resolve_attributes([task], key="strategy.task")


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The main choices of a run, as the report groups runs by them."""
    choices = hydra_choices()
    strategy = cfg.strategy
    return {
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "freeze": cfg.model.freeze,
        # BackboneFinetuning (callbacks=finetune): the epoch the backbone is unfrozen at
        "finetune": OmegaConf.select(
            cfg, "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch", default=None
        ),
        "strategy": strategy.name,
        "drop_metrics": list(strategy.metrics) if "metrics" in strategy else None,
        "attribute_set": choices.get("attributes", "custom"),
        "experiment": choices.get("experiment"),
        "data_source": cfg.data.source,
        "data_root": str(cfg.data.root),
        "image_size": cfg.data.image_size,
        "seed": cfg.seed,
        "precision": str(cfg.trainer.precision),
        "max_epochs": cfg.trainer.max_epochs,
    }


def resume_checkpoint(cfg: DictConfig, resumed: Path | None) -> str | None:
    """Check the checkpoint to start from (``resume=auto``'s or ``ckpt_path``), if any, on the
    CPU and before the model is built: one line for a missing, corrupt or mismatched file."""
    path = resumed or cfg.get("ckpt_path")
    if not path:
        return None
    info = check_checkpoint(path, list(cfg.data.attributes), cfg.model.get("backbone"))
    max_epochs = cfg.trainer.max_epochs
    if resumed is not None:
        log.info(
            "resume=auto: resuming %s from %s (%s of %s epochs done)",
            resumed.parent.parent,
            resumed.name,
            info["epochs_done"],
            max_epochs,
        )
    elif info["epochs_done"] >= max_epochs:
        raise ConfigError(
            f"ckpt_path {path} has already trained {info['epochs_done']} epochs and "
            f"trainer.max_epochs is {max_epochs}: raise trainer.max_epochs to continue, or "
            "test it with mtl-eval ckpt_path=..."
        )
    return str(path)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and test one configuration; returns the results written to ``run_dir/metrics.json``."""
    started = time.perf_counter()
    timer = None
    sigterm_handler = SigtermHandler()
    resumed = auto_resume_checkpoint(cfg, run_dir)  # before metrics.json is rewritten below
    results: dict[str, Any] = {
        "status": "running",
        "run_dir": str(run_dir),
        "config": {},
        "config_hash": config_hash(cfg),
    }
    try:
        write_results(run_dir, results)  # small, first: a full disk still gets a final status
        validate_train_config(cfg)  # fail fast: before the heavy imports
        apply_single_task(cfg)
        ckpt_path = resume_checkpoint(cfg, resumed)
        if ckpt_path:
            results["resumed_from"] = ckpt_path
        results["config"] = run_config(cfg)

        import lightning as L
        from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
        from lightning.pytorch.loggers import TensorBoardLogger

        from mtl_celeba.console import configure_lightning_output
        from mtl_celeba.dashboard import add_task_curves_layout
        from mtl_celeba.progress import EpochProgressBar
        from mtl_celeba.scheduling.strategy import TaskStrategy
        from mtl_celeba.timing import JobTimer

        configure_lightning_output()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        timer = JobTimer(started)
        callbacks = instantiate_callbacks(cfg)
        if cfg.trainer.get("enable_progress_bar", True) and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(EpochProgressBar())
        callbacks.append(timer)
        loggers = instantiate_loggers(cfg)
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        for logger in loggers:
            logger.log_hyperparams({k: v for k, v in results["config"].items() if v is not None})
            if isinstance(logger, TensorBoardLogger):
                add_task_curves_layout(logger)

        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        # before validate/test, which restore the callbacks' state from the best checkpoint
        schedules = [c.results_summary() for c in callbacks if isinstance(c, TaskStrategy)]
        checkpoint = next(
            (
                c
                for c in trainer.checkpoint_callbacks
                if isinstance(c, ModelCheckpoint) and c.monitor
            ),
            None,
        )
        best = (
            checkpoint.best_model_path
            if checkpoint is not None and checkpoint.best_model_path
            else None
        )
        best_epoch = int(torch_load_epoch(best)) + 1 if best else None  # counted from 1
        if cfg.get("test"):
            trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
            # the model (and the callbacks) hold the best checkpoint's state now: restoring it
            # again would only repeat Lightning's "Restoring states" message
            trainer.test(model, datamodule=datamodule, verbose=False)
        results.update(
            status="completed",
            **evaluation_results(model, datamodule),
            best_epoch=best_epoch,
            epochs_trained=trainer.current_epoch,
            best_checkpoint=best,
        )
        if schedules:
            results["schedule"] = schedules[0]
    except BaseException as error:
        if stopped_by_sigterm(error):
            # Lightning stops at the next step on SIGTERM by raising a SystemExit without a
            # code, which exits 0: a scheduler would count the stopped job as finished.
            results.update(status="failed", error="stopped by SIGTERM before the end")
            raise SystemExit(128 + signal.SIGTERM) from None
        disk_full = disk_full_error(error, run_dir)
        failure = disk_full or error
        results.update(status="failed", error=f"{type(failure).__name__}: {failure}")
        if disk_full is not None:
            raise disk_full from None
        raise
    finally:
        sigterm_handler.restore()
        finished = time.perf_counter()
        results["wall_time_s"] = round(finished - started, 2)
        if timer is not None:
            results["timing"] = timer.summary(finished)
        try:
            write_results(run_dir, results)
        except OSError as error:
            raise (disk_full_error(error, run_dir) or error) from None
    from mtl_celeba.curves import write_run_curves

    write_run_curves(run_dir)  # RUN/curves.png from the CSV logger; logs, never raises
    return results


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


def stopped_by_sigterm(error: BaseException) -> bool:
    """Whether ``error`` is Lightning's stop after a SIGTERM (imported only for a SystemExit,
    so a configuration mistake still fails before the training stack is loaded)."""
    if not isinstance(error, SystemExit):
        return False
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return isinstance(error, SIGTERMException)


def torch_load_epoch(checkpoint_path: str) -> int:
    """The epoch a checkpoint was saved at (Lightning's, 0-based), read without loading the
    weights onto a device."""
    import torch

    return torch.load(checkpoint_path, map_location="cpu", weights_only=False, mmap=True)["epoch"]


def summary_text(results: dict[str, Any], run_dir: Path) -> str:
    """The final table (test metrics), the run folder and how to open TensorBoard."""
    lines = []
    if results.get("test"):
        epoch, trained = results.get("best_epoch"), results.get("epochs_trained")
        if results.get("best_checkpoint") and epoch is not None:
            lines.append(f"Test metrics (best checkpoint, epoch {epoch} of {trained}):")
        elif results.get("best_checkpoint"):
            lines.append("Test metrics (best checkpoint):")
        else:  # e.g. debug=fast (fast_dev_run), which writes no checkpoint
            lines.append("Test metrics (final weights: no checkpoint was written):")
        lines += [format_table(results_table(results, "test")), ""]
    lines += [
        f"Run folder:  {run_dir}",
        f"Results:     {run_dir / 'metrics.json'}",
        f"TensorBoard: tensorboard --logdir {run_dir}",
    ]
    return "\n".join(lines)


@hydra_entry("train", validate_train_config)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the mean test accuracy (for sweepers that optimise it)."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = train(cfg, run_dir)  # a UserError ends the job with one line (hydra_entry)
    log.info("%s", summary_text(results, run_dir))
    test = results.get("test")
    return test["mean"]["accuracy"] if test else None


if __name__ == "__main__":
    main()
