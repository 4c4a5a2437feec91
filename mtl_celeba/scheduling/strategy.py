"""The one contract every multi-task method implements.

A *strategy* turns one training step's per-task losses into the scalar loss that Lightning
back-propagates. Plain MTL sums them; DST and random dropping multiply them by 0/1 gates;
loss-weighting methods (DWA, UW, FAMO, ...) by weights they adapt; gradient methods (MGDA,
PCGrad, UPGrad, ...) by weights computed from the Gramian of the per-task gradients. Every
update these methods make is a combination ``sum_t w_t g_t`` of the task gradients ``g_t``,
so "a loss to back-propagate" is enough to express all of them, and automatic optimisation,
AMP, gradient clipping and DDP's gradient all-reduce keep working unchanged.

A strategy is a Lightning :class:`~lightning.pytorch.callbacks.Callback`, so it has every hook
it needs (``setup`` for the data's label counts, ``on_train_start`` for a measurement pass,
``on_train_epoch_end`` for per-epoch updates, ``on_train_batch_end`` for a method that looks
at the losses after the update, ``state_dict`` for checkpoints). The LightningModule calls
:meth:`TaskStrategy.combine` in ``training_step`` and knows nothing else about the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from mtl_celeba.scheduling.names import BASELINE, REFERENCE

#: The values of ``strategy.gradients``.
GRADIENTS = ("features", "parameters")


def mean_over_ranks(trainer: L.Trainer | None, sums: Tensor, counts: Tensor) -> Tensor:
    """Per-task ``sums / counts`` after summing both over the DDP ranks (unchanged on one device).

    NaN where no rank saw a labelled sample: nothing was measured (a 0 would read as a loss
    of 0). One all-reduce of both, on copies (DDP's reduce works in place).
    """
    counts = counts.to(sums.dtype)
    if trainer is not None and trainer.world_size > 1:
        both = trainer.strategy.reduce(torch.stack([sums, counts]), reduce_op="sum")
        sums, counts = both[0], both[1]
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)


@dataclass(frozen=True)
class TaskStep:
    """What a strategy sees of one training step (T tasks).

    Attributes:
        losses: (T,) differentiable; task t's mean loss over the batch's samples labelled for
            t (0 where the batch has none).
        counts: (T,) how many samples of the batch carry a label for each task.
        gramian: (T, T) float32 Gram matrix ``G[s, t] = <g_s, g_t>`` of the per-task gradients
            with respect to the shared features, or to all shared (backbone) parameters when
            the strategy's :attr:`TaskStrategy.gradients` is ``"parameters"``, summed over DDP
            ranks (so every rank holds the same matrix); ``None`` unless the strategy sets
            :attr:`TaskStrategy.needs_gramian`.
    """

    losses: Tensor
    counts: Tensor
    gramian: Tensor | None = None

    @property
    def present(self) -> Tensor:
        """(T,) bool: tasks with at least one labelled sample in this batch."""
        return self.counts > 0


class TaskStrategy(Callback):
    """Base class and the plain multi-task baseline (``strategy=mtl``: every task, weight 1).

    Subclasses override :meth:`combine` and any Lightning hook they need. Set
    ``needs_gramian = True`` to receive :attr:`TaskStep.gramian`. State that must survive a
    resume goes in ``state_dict``/``load_state_dict`` (Lightning stores callbacks' states in
    every checkpoint).
    """

    #: The ``strategy.name`` of the config, as metrics.json and the report show it.
    name: ClassVar[str] = BASELINE
    #: Whether :meth:`combine` needs the Gramian of the per-task gradients.
    needs_gramian: ClassVar[bool] = False
    #: The gradients that Gramian is of: ``"features"`` (w.r.t. the shared representation,
    #: MGDA-UB style, cheap) or ``"parameters"`` (w.r.t. every shared backbone parameter).
    gradients: str = "features"

    def combine(self, step: TaskStep) -> Tensor:
        """The scalar loss to back-propagate for this step."""
        return step.losses.sum()

    def trainable_module(self) -> nn.Module | None:
        """Parameters the model's optimizer should train with the network (e.g. uncertainty
        weighting's log-variances), or ``None``. The LightningModule registers the module as
        ``strategy_state`` at setup, before DDP wraps the model and the optimizer is built, so
        these parameters are all-reduced, checkpointed and moved to the device like the rest."""
        return None

    def results_summary(self) -> dict[str, Any]:
        """What this strategy adds to ``metrics.json`` under ``schedule`` (its name at least)."""
        return {"strategy": self.name}


class SingleTask(TaskStrategy):
    """``strategy=stl``: one network per attribute, its one task's loss as is."""

    name: ClassVar[str] = REFERENCE


def find_strategy(trainer: L.Trainer | None) -> TaskStrategy:
    """The trainer's strategy callback; plain MTL when there is none (e.g. in ``mtl-eval``)."""
    callbacks = trainer.callbacks if trainer is not None else []
    strategies = [callback for callback in callbacks if isinstance(callback, TaskStrategy)]
    if len(strategies) > 1:
        names = ", ".join(type(s).__name__ for s in strategies)
        raise RuntimeError(f"one task strategy per run, got {names}")
    return strategies[0] if strategies else TaskStrategy()


def feature_gramian(losses: Tensor, features: Tensor) -> Tensor:
    """``G = J J^T`` for ``J[t] = d losses[t] / d features`` (all samples' features flattened).

    The per-task gradients are taken with respect to the shared representation (the
    backbone's output), as MGDA-UB does: a vectorised backward pass through the small heads
    only, so a gradient method costs little more than MTL. Returned in float32 whatever the
    autocast precision. The graph is kept for the real backward pass.
    """
    num_tasks = losses.shape[0]
    identity = torch.eye(num_tasks, device=losses.device, dtype=losses.dtype)
    (jacobian,) = torch.autograd.grad(
        losses, features, grad_outputs=identity, retain_graph=True, is_grads_batched=True
    )
    flat = jacobian.reshape(num_tasks, -1).float()
    return flat @ flat.T


def parameter_gramian(losses: Tensor, parameters: Sequence[Tensor]) -> Tensor:
    """``G = J J^T`` for ``J[t] = d losses[t] / d parameters`` (all parameters flattened).

    The per-task gradients with respect to every shared parameter, as FAMO's CelebA code and
    the papers' "shared parameters" use: one vectorised backward pass (vmapped over the T
    rows of the identity) through the whole network, holding T gradients of the backbone.
    Written on autograd rather than TorchJD's ``autogram.Engine``, which computes this Gramian
    without the T gradients but hooks every module to re-run its forward pass (BatchNorm's
    running statistics would move twice a step; its batch-dimension shortcut requires
    sample-independent modules, which BatchNorm is not) and rejects in-place operations, both
    of which the backbones here have. Accumulated in float32 whatever the autocast precision
    (parameter gradients are float32 under bf16 autocast); the graph is kept.
    """
    num_tasks = losses.shape[0]
    identity = torch.eye(num_tasks, device=losses.device, dtype=losses.dtype)
    grads = torch.autograd.grad(
        losses,
        list(parameters),
        grad_outputs=identity,
        retain_graph=True,
        is_grads_batched=True,
        allow_unused=True,
    )
    gramian = torch.zeros(num_tasks, num_tasks, device=losses.device, dtype=torch.float32)
    for grad in grads:
        if grad is not None:
            flat = grad.reshape(num_tasks, -1).float()
            gramian += flat @ flat.T
    return gramian
