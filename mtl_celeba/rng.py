"""The global random generators' states, saved and put back around work that must not move them.

DST's initial-loss pass and the checkpointed schedule use this so that runs of different
strategies with the same seed keep drawing the same batches and augmentations.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's (CPU and CUDA) global random generators."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _plain_numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _plain_numpy_state(state: tuple[Any, ...]) -> tuple[Any, ...]:
    """numpy's legacy state with the key array as a list: loadable with ``weights_only=True``."""
    name, keys, position, has_gauss, cached_gaussian = state
    return name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state(
        (name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian)
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
