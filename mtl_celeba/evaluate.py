"""``mtl-eval``: evaluate a checkpoint on the test (or val) split and write metrics.json.

As in ``mtl-train``, torch and Lightning are imported after the config and the checkpoint
are checked, so mistakes fail in seconds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtl_celeba.cli.hydra_app import hydra_entry
from mtl_celeba.cli.validate import validate_data_config, validate_eval_config
from mtl_celeba.config import instantiate
from mtl_celeba.errors import ConfigError, did_you_mean
from mtl_celeba.run.layout import (
    HYDRA_DIR,
    HYDRA_FILES,
    RESULTS_FILE,
    checkpoint_run_dir,
    training_choices,
    training_config,
)
from mtl_celeba.run.results import (
    RunConfig,
    evaluation_results,
    format_table,
    results_table,
    write_results,
)
from mtl_celeba.run.resume import check_checkpoint

log = logging.getLogger(__name__)


def check_data_keys(overrides: DictConfig, run_data: DictConfig, run_config: Path) -> None:
    """Keys set under ``data`` exist in the training run's data config (else the DataModule
    would fail deep inside Hydra's instantiate)."""
    keys = [f"data.{key}" for key in run_data]
    for key in overrides:
        if key not in run_data:
            raise ConfigError(
                f"data.{key} is not a key of the data config of the run that wrote the "
                f"checkpoint ({run_config}).{did_you_mean(f'data.{key}', keys)}"
            )


def remove_empty_run_folder(run_dir: Path) -> None:
    """After a failed evaluation: remove what Hydra wrote into ``run_dir`` (``.hydra/`` and the
    log file) and the folder itself if nothing else is in it, so failures leave no empty
    ``outputs/eval/runs/<time>/``. A folder with results or other files is left alone.

    The open log file is unlinked, not closed: later records go to the removed file unseen."""
    hydra_files = [run_dir / name for name in HYDRA_FILES]
    for path in [*hydra_files, *run_dir.glob("*.log")]:
        path.unlink(missing_ok=True)
    for folder in (run_dir / HYDRA_DIR, run_dir):
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): keep it
            return


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; returns the results written to run_dir."""
    started = time.perf_counter()
    validate_eval_config(cfg)
    checkpoint = Path(cfg.ckpt_path)
    check_checkpoint(checkpoint)  # missing, truncated or not a checkpoint: one line
    train_cfg = training_config(checkpoint)
    check_data_keys(cfg.data, train_cfg.data, checkpoint_run_dir(checkpoint) / HYDRA_DIR)
    data_cfg = OmegaConf.merge(train_cfg.data, cfg.data)
    OmegaConf.set_struct(train_cfg, False)
    train_cfg.data = data_cfg
    validate_data_config(data_cfg)
    check_checkpoint(checkpoint, list(train_cfg.data.attributes))  # its run's data

    import lightning as L

    from mtl_celeba.cli.checkpoints import load_model
    from mtl_celeba.run.console import configure_lightning_output

    configure_lightning_output()
    model = load_model(checkpoint)  # another version's checkpoint: one line, before the data
    datamodule = instantiate(train_cfg.data)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, **cfg.trainer)
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(model, datamodule=datamodule, verbose=False)
    results = {
        "status": "completed",
        "run_dir": str(run_dir),
        "evaluated_checkpoint": str(checkpoint),
        "split": cfg.split,
        "config": RunConfig.of_training(train_cfg, training_choices(checkpoint)).to_dict(),
        **evaluation_results(model, datamodule),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    write_results(run_dir, results)
    return results


@hydra_entry("eval", validate_eval_config)
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``mtl-eval``; a failure leaves no run folder behind."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = evaluate(cfg, run_dir)
    except BaseException:
        if not (run_dir / RESULTS_FILE).exists():
            remove_empty_run_folder(run_dir)
        raise
    log.info(
        "%s metrics of %s:\n%s\n\nResults: %s",
        cfg.split,
        cfg.ckpt_path,
        format_table(results_table(results, cfg.split)),
        run_dir / RESULTS_FILE,
    )


if __name__ == "__main__":
    main()
