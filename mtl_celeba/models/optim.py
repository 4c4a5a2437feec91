"""Optimizer construction: PyTorch's fused (single-kernel) Adam/AdamW on CUDA."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

#: Optimizers with a fused CUDA implementation (one kernel for all parameters, no host loop).
FUSED = (torch.optim.Adam, torch.optim.AdamW)


def fused_kwargs(factory: Callable[..., torch.optim.Optimizer], cuda: bool) -> dict[str, Any]:
    """``{"fused": True}`` for Adam/AdamW (also as a ``functools.partial``) on CUDA, else ``{}``.

    A ``fused`` already set in the partial wins, so a config can turn it off.
    """
    base = getattr(factory, "func", factory)
    keywords = getattr(factory, "keywords", {}) or {}
    if cuda and base in FUSED and "fused" not in keywords:
        return {"fused": True}
    return {}


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer] | None,
    parameters: Iterable[torch.nn.Parameter],
    cuda: bool,
) -> torch.optim.Optimizer:
    """``factory(parameters)`` (Adam when None), fused on CUDA where PyTorch can."""
    factory = factory or torch.optim.Adam
    return factory(list(parameters), **fused_kwargs(factory, cuda))
