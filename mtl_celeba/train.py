"""``mtl-train``: compose a Hydra config, train, test the best checkpoint, write metrics.json.

torch and Lightning are imported inside :func:`train`, after the config is validated: a
config mistake then fails in about a second instead of after the 20-30 s imports.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mtl_celeba.cli.checkpoints import check_trained_model
from mtl_celeba.cli.hydra_app import hydra_entry
from mtl_celeba.cli.validate import validate_train_config
from mtl_celeba.config import hydra_choices, instantiate
from mtl_celeba.data.attributes import resolve_attributes
from mtl_celeba.errors import ConfigError
from mtl_celeba.io import remove_leftover_temporaries
from mtl_celeba.run.layout import CHECKPOINT_DIR, RESULTS_FILE
from mtl_celeba.run.lifecycle import RunRecord
from mtl_celeba.run.results import (
    RunConfig,
    evaluation_results,
    format_table,
    results_table,
)
from mtl_celeba.run.resume import (
    auto_resume_checkpoint,
    check_checkpoint,
    clear_earlier_attempt,
    config_hash,
)
from mtl_celeba.scheduling.names import REFERENCE

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of the ``callbacks`` group, the strategy's scheduling callback, if any, and
    the gradient-conflict monitor (``strategy.diagnostics``)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    strategy_callback = cfg.strategy.get("callback")
    if strategy_callback is not None:
        callbacks.append(instantiate(strategy_callback))
    from mtl_celeba.scheduling.callbacks import ConflictMonitor

    callbacks.append(
        ConflictMonitor(
            diagnostics=cfg.strategy.get("diagnostics", False),
            every=cfg.strategy.get("diagnostics_every", 50),
        )
    )
    return callbacks


#: The extra that installs each optional logger's package (``logger=NAME``).
LOGGER_EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}


def instantiate_loggers(cfg: DictConfig) -> list[Logger]:
    """The loggers of the ``logger`` group; one line naming the extra when a package is missing."""
    loggers = []
    for name, config in (cfg.get("logger") or {}).items():
        if config is None:
            continue
        try:
            loggers.append(instantiate(config))
        except Exception as error:
            extra = LOGGER_EXTRAS.get(str(name))
            if extra is not None and _missing_module(error):
                raise ConfigError(
                    f"logger.{name} needs the {extra} package: install the extra with "
                    f"`uv sync --extra {extra}` (or `pip install {extra}`)."
                ) from None
            raise
    return loggers


def _missing_module(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) is a missing-module error."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError):
            return True
        error = error.__cause__ or error.__context__
    return False


def apply_single_task(cfg: DictConfig) -> None:
    """``strategy=stl``: train one network on ``strategy.task`` alone (replaces data.attributes)."""
    if cfg.strategy.name != REFERENCE:
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
            "%s: resuming %s from %s (%s of %s epochs done)",
            "resume=auto" if cfg.get("resume") == "auto" else "sweep rerun",
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
    leftovers = remove_leftover_temporaries(run_dir, run_dir / CHECKPOINT_DIR)
    if leftovers:  # a killed write (SIGKILL) skips its own clean-up
        log.info(
            "Removed %d temporary files left by a killed write: %s",
            len(leftovers),
            ", ".join(str(path.relative_to(run_dir)) for path in leftovers),
        )
    resumed = auto_resume_checkpoint(cfg, run_dir)  # before metrics.json is rewritten below
    if resumed is not None:  # train.log is appended to: mark where this attempt starts
        log.info("%s resumed: this attempt continues the one logged above %s", "=" * 12, "=" * 12)
    if resumed is None and (run_dir / RESULTS_FILE).exists():
        removed = clear_earlier_attempt(run_dir)  # a sweep job starting over in its old folder
        if removed:
            log.info(
                "Starting %s over: removed the earlier attempt's %s", run_dir, ", ".join(removed)
            )
    with RunRecord(run_dir, config_hash(cfg)) as record:
        results = record.results
        validate_train_config(cfg)  # fail fast: before the heavy imports
        apply_single_task(cfg)
        ckpt_path = resume_checkpoint(cfg, resumed)
        if ckpt_path:
            results["resumed_from"] = ckpt_path
        results["config"] = RunConfig.of_training(cfg, hydra_choices()).to_dict()

        import lightning as L

        from mtl_celeba.run.console import configure_lightning_output
        from mtl_celeba.run.timing import JobTimer

        configure_lightning_output()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        if ckpt_path:  # another version's weights or hyperparameters: one line, not Lightning's
            check_trained_model(ckpt_path, model)
        record.timer = JobTimer(record.started)
        callbacks = [*instantiate_callbacks(cfg), record.timer]
        resume_step = checkpoint_step(resumed) if resumed is not None else None
        trainer = build_trainer(cfg, callbacks, results["config"], resume_step)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        results.update(evaluate_best(cfg, trainer, model, datamodule))
        log_final_metrics(trainer, results)
    from mtl_celeba.run.curves import write_run_curves

    write_run_curves(run_dir)  # RUN/curves.png from the CSV logger; logs, never raises
    return results


def build_trainer(
    cfg: DictConfig,
    callbacks: list[Callback],
    hparams: dict[str, Any],
    resume_step: int | None = None,
) -> Any:
    """The Lightning Trainer of ``cfg.trainer`` with the run's callbacks (plus the one-line
    epoch progress bar unless another bar is configured) and loggers.

    ``resume_step``: the global step of the checkpoint a run resumes from in its own folder;
    TensorBoard's events of the killed attempt before it move into this attempt's file."""
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from mtl_celeba.run.progress import EpochProgressBar
    from mtl_celeba.run.tensorboard import add_task_curves_layout, merge_earlier_events
    from mtl_celeba.sweeps.requeue import cluster_plugins

    if cfg.trainer.get("enable_progress_bar", True) and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        callbacks = [*callbacks, EpochProgressBar()]
    loggers = instantiate_loggers(cfg)
    extra: dict[str, Any] = {}
    cluster = cluster_plugins()  # in a submitit SLURM job: Lightning's auto-requeue off
    if cluster:
        configured = [instantiate(p) for p in cfg.trainer.get("plugins") or []]
        extra["plugins"] = [*configured, *cluster]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    hparams["precision"] = str(trainer.precision)  # what Lightning runs: 16-mixed is bf16 on CPU
    for logger in loggers:
        logger.log_hyperparams({k: v for k, v in hparams.items() if v is not None})
        if isinstance(logger, TensorBoardLogger):
            if resume_step is not None:
                carried = merge_earlier_events(logger, resume_step)
                log.info("TensorBoard: carried %d events of the earlier attempt over", carried)
            add_task_curves_layout(logger)
    return trainer


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The final val/test metrics of ``metrics.json`` as flat ``hp/SPLIT/METRIC/(mean|TASK)`` scalars.

    An undefined metric (``null``: e.g. AUROC of a split without positives) is left out."""
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        if not results.get(split):
            continue
        for name, value in results[split]["mean"].items():
            if value is not None:
                metrics[f"hp/{split}/{name}/mean"] = float(value)
        for task, values in results[split]["per_task"].items():
            for name, value in values.items():
                if value is not None:
                    metrics[f"hp/{split}/{name}/{task}"] = float(value)
    return metrics


def log_final_metrics(trainer: Any, results: dict[str, Any]) -> None:
    """TensorBoard's HParams tab: the run's config with its final metrics (:func:`final_metrics`),
    so that the runs of a sweep compare there. (The other loggers already hold the test
    metrics as logged by ``trainer.test``.)"""
    from lightning.pytorch.loggers import TensorBoardLogger

    metrics = final_metrics(results)
    if not metrics:
        return
    params = {k: v for k, v in results.get("config", {}).items() if v is not None}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=metrics)
            logger.finalize("success")  # flush and close the reopened event file


def evaluate_best(cfg: DictConfig, trainer: Any, model: Any, datamodule: Any) -> dict[str, Any]:
    """After fit: validate and test the best checkpoint (if ``cfg.test``); the final fields of
    metrics.json (status completed, metrics, best epoch, the strategy's schedule)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mtl_celeba.scheduling.strategy import TaskStrategy

    # before validate/test, which restore the callbacks' state from the best checkpoint
    schedules = [c.results_summary() for c in trainer.callbacks if isinstance(c, TaskStrategy)]
    checkpoint = next(
        (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor),
        None,
    )
    best = checkpoint.best_model_path if checkpoint is not None else None
    best = best or None
    best_epoch = int(torch_load_epoch(best)) + 1 if best else None  # counted from 1
    if cfg.get("test"):
        trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
        # the model (and the callbacks) hold the best checkpoint's state now: restoring it
        # again would only repeat Lightning's "Restoring states" message
        trainer.test(model, datamodule=datamodule, verbose=False)
    final = {
        "status": "completed",
        **evaluation_results(model, datamodule),
        "best_epoch": best_epoch,
        "epochs_trained": trainer.current_epoch,
        "best_checkpoint": best,
    }
    if schedules:
        final["schedule"] = schedules[0]
    return final


def checkpoint_step(checkpoint_path: str | Path) -> int:
    """The global step a checkpoint was saved at, read without loading the weights."""
    import torch

    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("global_step", 0))


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
        f"Results:     {run_dir / RESULTS_FILE}",
        f"TensorBoard: tensorboard --logdir {shlex.quote(str(run_dir))}",
    ]
    return "\n".join(lines)


def monitored_value(cfg: DictConfig, results: dict[str, Any]) -> float | None:
    """The validation value that picked the checkpoint: ``callbacks.model_checkpoint.monitor``
    (``val/<metric>/mean``) of the best epoch, from the validation pass on the best checkpoint.

    Never a test number: a sweeper optimising what ``main`` returns would tune on the test set.
    None when the monitor is not a validation mean metrics.json records (e.g. ``val/loss``).
    """
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
    parts = str(monitor).split("/")
    if len(parts) != 3 or parts[0] != "val" or parts[2] != "mean":
        return None
    value = ((results.get("val") or {}).get("mean") or {}).get(parts[1])
    return None if value is None else float(value)


@hydra_entry("train", validate_train_config)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the monitored validation value at the best epoch (for
    sweepers that optimise it), never a test number."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = train(cfg, run_dir)  # a UserError ends the job with one line (hydra_entry)
    log.info("%s", summary_text(results, run_dir))
    return monitored_value(cfg, results)


if __name__ == "__main__":
    main()
