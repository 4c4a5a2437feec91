"""Hydra glue shared by the entry points: the config folder, resolvers, run metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from mtl_celeba.errors import UserError

#: The project's root folder (holds conf/, outputs/ and data/).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The Hydra config folder.
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """``${project_root:}`` (the project folder, so runs land in outputs/ from any cwd) and ``${csv:}``."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
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
