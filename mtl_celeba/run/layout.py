"""What a run folder holds, by name: the one place its file names are spelt.

A run folder is Hydra's job folder (``outputs/train/runs/<time>/`` or a sweep's
``<sweep>/<job>/``). mtl-train writes it, mtl-eval and mtl-predict read a checkpoint's run
folder back, mtl-report and the sweep launchers read many of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtl_celeba.errors import ConfigError

#: The run's status, configuration and final metrics (see :mod:`mtl_celeba.run.results`).
RESULTS_FILE = "metrics.json"
#: Hydra's record of the run: the composed config and the command line's overrides.
HYDRA_DIR = ".hydra"
CONFIG_YAML = Path(HYDRA_DIR) / "config.yaml"
OVERRIDES_YAML = Path(HYDRA_DIR) / "overrides.yaml"
HYDRA_YAML = Path(HYDRA_DIR) / "hydra.yaml"
HYDRA_FILES = tuple(Path(HYDRA_DIR) / f"{name}.yaml" for name in ("config", "hydra", "overrides"))
CHECKPOINT_DIR = "checkpoints"
#: The latest epoch's checkpoint, which ``resume=auto`` continues from.
LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / "last.ckpt"
#: Lightning's CSV logger: one row per logged step or epoch.
METRICS_CSV = Path("csv") / "metrics.csv"
#: The per-task training curves drawn from METRICS_CSV at the end of the run.
CURVES_PNG = "curves.png"
#: DST's per-epoch probabilities and gates (written by the scheduling callbacks).
DST_HISTORY = "dst_history.csv"
#: Per-epoch mean cosine between every pair of task gradients and each task's gradient norm
#: (written by the conflict monitor when the strategy has a Gramian or strategy.diagnostics is on).
GRADIENT_CONFLICTS = "gradient_conflicts.json"


def checkpoint_run_dir(checkpoint: str | Path) -> Path:
    """The run folder that wrote ``checkpoint`` (``RUN/checkpoints/x.ckpt`` -> ``RUN``)."""
    return Path(checkpoint).resolve().parent.parent


def training_config(checkpoint: str | Path) -> DictConfig:
    """The composed config of the run that wrote ``checkpoint`` (``RUN/checkpoints/x.ckpt``)."""
    path = checkpoint_run_dir(checkpoint) / CONFIG_YAML
    if not path.exists():
        raise ConfigError(
            f"ckpt_path {checkpoint} is not inside a run folder written by mtl-train: there is no "
            f"{path}, which says what data (image size, attributes) it was trained on. Pass the "
            "checkpoint where mtl-train wrote it (RUN/checkpoints/*.ckpt), or copy the run's "
            ".hydra/ folder beside the checkpoints/ folder that holds it."
        )
    return OmegaConf.load(path)  # type: ignore[return-value]


def training_choices(checkpoint: str | Path) -> dict[str, Any]:
    """The config-group choices (``attributes``, ``experiment``, ...) of the run that wrote
    ``checkpoint``; ``{}`` when its ``.hydra/hydra.yaml`` is missing or unreadable."""
    path = checkpoint_run_dir(checkpoint) / HYDRA_YAML
    try:
        return dict(OmegaConf.to_container(OmegaConf.load(path).hydra.runtime.choices))  # type: ignore[arg-type]
    except Exception:  # the choices only label the record; the evaluation needs none of them
        return {}
