"""Hydra glue shared by the entry points: the config folder, resolvers, run metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from mtl_celeba.errors import UserError

#: The Hydra behaviour every entry point asks for (``@hydra.main(version_base=...)``).
VERSION_BASE = "1.3"

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_DIR = _PACKAGE_DIR.parent


def _is_checkout(folder: Path) -> bool:
    """Whether ``folder`` is the project's source checkout (a git clone, editable install)."""
    return (folder / "pyproject.toml").is_file() and (folder / "conf" / "train.yaml").is_file()


#: Where outputs/ and data/ go: the checkout's root when running from a source checkout (so
#: runs land in the repo from any folder), otherwise the working directory (an installed
#: wheel, like any command-line tool, writes where it is started).
PROJECT_ROOT = _CHECKOUT_DIR if _is_checkout(_CHECKOUT_DIR) else Path.cwd().resolve()
#: The Hydra config folder: the copy shipped inside the wheel, else the checkout's conf/.
CONFIG_DIR = _PACKAGE_DIR / "conf" if (_PACKAGE_DIR / "conf").is_dir() else _CHECKOUT_DIR / "conf"


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else every device torch counts."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [gpu.strip() for gpu in declared.split(",") if gpu.strip() and gpu.strip() != "-1"]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def _gpu_per_job() -> int:
    return 1 if visible_gpus() else 0


def register_resolvers() -> None:
    """``${project_root:}`` (the project folder, so runs land in outputs/ from any cwd) and ``${csv:}``."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("gpu_per_job"):
        # ${gpu_per_job:} -> 1 where this machine has a GPU, else 0 (Ray's num_gpus per job)
        OmegaConf.register_new_resolver("gpu_per_job", _gpu_per_job)
    if not OmegaConf.has_resolver("csv"):
        # ${csv:${data.attributes}} -> "A,B,C": a list as a Hydra sweep over its items
        OmegaConf.register_new_resolver("csv", lambda items: ",".join(str(item) for item in items))


register_resolvers()


def hydra_choices() -> dict[str, Any]:
    """The config-group choices of the current Hydra run (``{}`` outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return dict(HydraConfig.get().runtime.choices)


def is_multirun() -> bool:
    """Whether the current Hydra job belongs to a ``-m`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def instantiate(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that a :class:`UserError` raised by the target
    surfaces as itself (one clear line) rather than wrapped in Hydra's InstantiationException."""
    try:
        return hydra.utils.instantiate(config, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise
