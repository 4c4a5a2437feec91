"""``mtl-eval``: evaluate a checkpoint on the test (or val) split and write metrics.json.

As in ``mtl-train``, torch and Lightning are imported after the config and the checkpoint
are checked, so mistakes fail in seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtl_celeba.checkpoints import check_checkpoint
from mtl_celeba.cli import hydra_entry
from mtl_celeba.config import instantiate
from mtl_celeba.errors import ConfigError, UserError
from mtl_celeba.results import evaluation_results, format_table, results_table, write_results
from mtl_celeba.validate import validate_data_config, validate_eval_config


def training_config(checkpoint: Path) -> DictConfig:
    """The composed config of the run that wrote ``checkpoint`` (``RUN/checkpoints/x.ckpt``)."""
    path = checkpoint.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.exists():
        raise ConfigError(
            f"No training config at {path}: ckpt_path must point into a run folder written by "
            "mtl-train (RUN/checkpoints/*.ckpt), whose .hydra/config.yaml describes the data."
        )
    return OmegaConf.load(path)  # type: ignore[return-value]


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; returns the results written to run_dir."""
    started = time.perf_counter()
    validate_eval_config(cfg)
    checkpoint = Path(cfg.ckpt_path)
    check_checkpoint(checkpoint)  # missing, truncated or not a checkpoint: one line
    train_cfg = training_config(checkpoint)
    data_cfg = OmegaConf.merge(train_cfg.data, cfg.data)
    OmegaConf.set_struct(train_cfg, False)
    train_cfg.data = data_cfg
    validate_data_config(data_cfg)
    check_checkpoint(checkpoint, list(train_cfg.data.attributes))  # its run's data

    import lightning as L

    from mtl_celeba.models.module import MultiTaskModule

    datamodule = instantiate(train_cfg.data)
    # weights=None: the checkpoint holds the trained weights; never download pretrained ones here
    model = MultiTaskModule.load_from_checkpoint(checkpoint, map_location="cpu", weights=None)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, **cfg.trainer)
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(model, datamodule=datamodule, verbose=False)
    results = {
        "status": "completed",
        "run_dir": str(run_dir),
        "evaluated_checkpoint": str(checkpoint),
        "split": cfg.split,
        "config": {
            "backbone": model.hparams.backbone,
            "strategy": train_cfg.strategy.name,
            "seed": train_cfg.seed,
        },
        **evaluation_results(model, datamodule),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }
    write_results(run_dir, results)
    return results


@hydra_entry("eval", validate_eval_config)
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``mtl-eval``."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = evaluate(cfg, run_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"\n{cfg.split} metrics of {cfg.ckpt_path}:")
    print(format_table(results_table(results, cfg.split)))
    print(f"\nResults: {run_dir / 'metrics.json'}")


if __name__ == "__main__":
    main()
