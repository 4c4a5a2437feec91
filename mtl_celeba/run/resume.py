"""Checkpoints before training: check the one given, and find the one ``resume=auto`` continues.

Both run before Lightning is imported, so a wrong ``ckpt_path`` fails in seconds with one
line. torch is imported only when a checkpoint is actually read.

"Same configuration" for ``resume=auto``: the composed config (every key, as Hydra saves
it in ``RUN/.hydra/config.yaml``, interpolations unresolved) minus :data:`RUN_KEYS`, which
only say where to start from. Its hash is stored in each run's ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtl_celeba.errors import ConfigError
from mtl_celeba.run.layout import (
    CHECKPOINT_DIR,
    CURVES_PNG,
    DST_HISTORY,
    LAST_CHECKPOINT,
    METRICS_CSV,
)
from mtl_celeba.run.results import read_results

#: Keys that do not change what a run trains; ignored when matching runs for ``resume=auto``.
RUN_KEYS = ("ckpt_path", "resume")


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Read a Lightning checkpoint on the CPU; a missing, truncated or foreign file raises
    :class:`ConfigError` naming ``key``."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"{key} {path} {what}: pass a .ckpt file written by mtl-train "
            "(RUN/checkpoints/last.ckpt or the best epoch beside it)."
        )
    import torch

    try:
        # weights_only: never run code from a file we were merely pointed at
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise ConfigError(
            f"{key} {path} is not a readable checkpoint (truncated or not a PyTorch file: "
            f"{reason}): pass another .ckpt written by mtl-train, e.g. RUN/checkpoints/last.ckpt."
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state or "hyper_parameters" not in state:
        raise ConfigError(
            f"{key} {path} is a PyTorch file but not a checkpoint of mtl-train (no state_dict "
            "and hyper_parameters): pass a .ckpt from a run's checkpoints/ folder."
        )
    return state


def check_checkpoint(
    path: str | Path,
    tasks: Sequence[str] | None = None,
    backbone: str | None = None,
    key: str = "ckpt_path",
) -> dict[str, Any]:
    """Check that ``path`` is a readable checkpoint of a model on ``tasks`` and ``backbone``
    (each checked if given).

    Returns ``{"global_step", "epoch", "epochs_done", "tasks", "backbone"}``. Raises :class:`ConfigError`
    with one line otherwise, instead of Lightning's state_dict size-mismatch traceback.
    """
    state = load_checkpoint(path, key)
    hparams = state["hyper_parameters"]
    trained_tasks = list(hparams.get("tasks", []))
    if tasks is not None and list(tasks) != trained_tasks:
        raise ConfigError(
            f"{key} {path} was trained on tasks {trained_tasks} but the config asks for "
            f"{list(tasks)}: use the same data.attributes (same order), or drop {key} "
            "to start a new run."
        )
    trained_backbone = hparams.get("backbone")
    if backbone is not None and trained_backbone != backbone:
        raise ConfigError(
            f"{key} {path} holds a {trained_backbone} but the config asks for model.backbone="
            f"{backbone}: use model={trained_backbone} (or the same model.* keys), or drop {key}."
        )
    epoch = int(state.get("epoch", -1))
    return {
        "global_step": int(state.get("global_step", 0)),
        "epoch": epoch,
        "epochs_done": epoch + 1,
        "tasks": trained_tasks,
        "backbone": trained_backbone,
    }


def config_hash(cfg: DictConfig) -> str:
    """A short hash of the composed config minus :data:`RUN_KEYS` (and any ``hydra`` node)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    for key in ("hydra", *RUN_KEYS):
        container.pop(key, None)
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's ``metrics.json`` (``{}`` if absent or unreadable)."""
    try:
        return read_results(run_dir)
    except (OSError, ValueError):
        return {}


def is_resumable(run_dir: Path, cfg_hash: str) -> bool:
    """An unfinished run (status not ``completed``) of the same configuration, with a last.ckpt,
    in a folder that can be written (one turned read-only mid-run still says ``running``)."""
    status = read_status(run_dir)
    return (
        status.get("config_hash") == cfg_hash
        and status.get("status") != "completed"
        and (run_dir / LAST_CHECKPOINT).is_file()
        and os.access(run_dir, os.W_OK | os.X_OK)
        and os.access(run_dir / CHECKPOINT_DIR, os.W_OK | os.X_OK)
    )


def find_resumable_run(runs_dir: Path, cfg_hash: str) -> Path | None:
    """The resumable run folder under ``runs_dir`` whose last.ckpt is the newest, if any."""
    if not runs_dir.is_dir():
        return None
    candidates = [run for run in runs_dir.iterdir() if run.is_dir() and is_resumable(run, cfg_hash)]
    if not candidates:
        return None
    return max(candidates, key=lambda run: (run / LAST_CHECKPOINT).stat().st_mtime)


def sweep_resumes() -> bool:
    """Whether this is a multirun job whose sweeper skips completed jobs (``grids``, the default,
    with ``hydra.sweeper.skip_completed``): its rerun then continues an unfinished job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hydra = HydraConfig.get()
    return hydra.mode == RunMode.MULTIRUN and bool(
        OmegaConf.select(hydra, "sweeper.skip_completed", default=False)
    )


#: What an earlier attempt of a job leaves in its folder besides metrics.json and .hydra/.
ATTEMPT_OUTPUTS = (CHECKPOINT_DIR, "tensorboard", str(METRICS_CSV.parent), CURVES_PNG, DST_HISTORY)


def clear_earlier_attempt(run_dir: Path) -> list[str]:
    """Remove an earlier attempt's checkpoints, logs and curves from a sweep job's folder before
    the job starts over there (not resumed), so the folder never holds two attempts' files
    (``-v1`` checkpoints, two sets of TensorBoard events). Returns the names removed."""
    removed = []
    for name in ATTEMPT_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def auto_resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """``resume=auto`` inside the run folder: its last.ckpt, if the folder holds an unfinished run
    of this configuration (call before the new ``metrics.json`` overwrites the old one).

    ``mtl-train`` points ``hydra.run.dir`` at the run to continue before Hydra starts (see
    :mod:`mtl_celeba.cli.hydra_app`); sweep jobs rerun in their old folder land here directly,
    and resume without ``resume=auto`` where the sweeper skips completed jobs
    (:func:`sweep_resumes`).
    """
    if cfg.get("ckpt_path") or (cfg.get("resume") != "auto" and not sweep_resumes()):
        return None
    if not is_resumable(run_dir, config_hash(cfg)):
        return None
    return run_dir / LAST_CHECKPOINT
