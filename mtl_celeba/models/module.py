"""The multi-task LightningModule: one shared torchvision backbone, one head per task."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtl_celeba.models.backbones import build_backbone
from mtl_celeba.models.heads import build_heads
from mtl_celeba.models.loss import masked_task_losses
from mtl_celeba.models.metrics import TaskMetrics
from mtl_celeba.models.optim import build_optimizer
from mtl_celeba.rng import collect_rng_states, restore_rng_states
from mtl_celeba.run.results import METRIC_NAMES
from mtl_celeba.scheduling.callbacks import ConflictMonitor, find_conflict_monitor
from mtl_celeba.scheduling.strategy import (
    TaskStep,
    TaskStrategy,
    feature_gramian,
    find_strategy,
    mean_over_ranks,
    parameter_gramian,
)

Batch = tuple[Tensor, Tensor, Tensor]


class MultiTaskModule(L.LightningModule):
    """Hard parameter sharing: ``backbone`` features feed one small head per task.

    Each training step computes ``L_t``, task t's mean BCE over its labelled samples, and
    hands them to the run's :class:`~mtl_celeba.scheduling.strategy.TaskStrategy` (DST, MTL,
    a loss-weighting or gradient method), which returns the loss to back-propagate; the module
    has no method-specific code. Every task's loss is measured and logged, whatever the
    strategy does with it.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        backbone: str = "resnet18",
        weights: str | None = None,
        freeze: str | int | None = None,
        head_hidden: Sequence[int] = (),
        head_dropout: float = 0.0,
        head_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        pos_weight: bool = False,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.tasks = list(tasks)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        self.backbone = build_backbone(backbone, weights=weights, freeze=freeze)
        self.heads = build_heads(
            self.tasks,
            self.backbone.out_features,
            hidden=head_hidden,
            dropout=head_dropout,
            overrides=head_overrides,
        )
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()
        num_tasks = len(self.tasks)
        self.register_buffer("pos_weight", torch.ones(num_tasks))
        #: The run's strategy callback, found at setup (plain MTL until then).
        self.task_strategy: TaskStrategy = TaskStrategy()
        #: The run's gradient-conflict monitor, found at setup (None: nothing is measured).
        self.conflict_monitor: ConflictMonitor | None = None
        # Plain tensors, not buffers: DDP overwrites buffers with rank 0's copy at every forward,
        # and these per-rank sums must stay local until they are all-reduced at the epoch's end.
        self.train_loss_sum = torch.zeros(num_tasks)
        self.train_label_count = torch.zeros(num_tasks)
        # exact AUROC everywhere: its per-step update only stores the batch (binned AUROC
        # synchronises the host with the GPU at every step); the training split's scores cost
        # 8 bytes per sample and task until the epoch ends
        self.train_metrics = TaskMetrics(num_tasks)
        self.val_metrics = TaskMetrics(num_tasks)
        self.test_metrics = TaskMetrics(num_tasks)
        #: The last computed metrics per split: {split: {metric: [value per task]}}.
        self.results: dict[str, dict[str, list[float]]] = {}

    # ------------------------------------------------------------ structure
    @property
    def task_depths(self) -> list[int]:
        """Weight layers on each task's input-to-output path (DST's d_t)."""
        return [self.backbone.depth + self.heads.depths[task] for task in self.tasks]

    def features(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> the shared representation (B, F) that every head reads."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def head_logits(self, features: Tensor) -> Tensor:
        """Shared features (B, F) -> logits (B, T)."""
        return self.heads(features)

    def forward(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> logits (B, T): ``self.heads(self.features(images))``."""
        return self.heads(self.features(images))

    def task_losses(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """A batch's per-task summed losses and labelled counts, both (T,) (no metric update)."""
        images, targets, mask = batch
        pos_weight = self.pos_weight if self.hparams.pos_weight else None
        return masked_task_losses(self(images), targets, mask, pos_weight)

    def setup(self, stage: str) -> None:
        """Find the run's strategy; take the positive-class weights from the training split
        when ``pos_weight`` is on."""
        self.task_strategy = find_strategy(self._trainer)
        self.conflict_monitor = find_conflict_monitor(self._trainer)
        trainable = self.task_strategy.trainable_module()
        if trainable is not None and not hasattr(self, "strategy_state"):
            self.strategy_state = trainable.to(self.device)
        if self.trainer.strategy.root_device.type == "cuda":
            # TF32 matmuls for float32 layers (Lightning warns when this is left at "highest")
            torch.set_float32_matmul_precision("high")
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and self.hparams.pos_weight and datamodule is not None:
            rates = torch.as_tensor(datamodule.positive_rates("train"), dtype=torch.float32)
            self.pos_weight.copy_(((1 - rates) / rates.clamp_min(1e-6)).clamp(max=100.0))

    # ----------------------------------------------------------------- steps
    def _metrics(self, split: str) -> TaskMetrics:
        return getattr(self, f"{split}_metrics")

    def _shared_step(self, batch: Batch, split: str) -> tuple[Tensor, Tensor, Tensor]:
        """(shared features, per-task loss sums, labelled counts); updates the split's metrics."""
        images, targets, mask = batch
        features = self.features(images)
        logits = self.head_logits(features)
        pos_weight = self.pos_weight if self.hparams.pos_weight else None
        loss_sums, counts = masked_task_losses(logits, targets, mask, pos_weight)
        self._metrics(split).update(logits, targets, mask)
        return features, loss_sums, counts

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features, loss_sums, counts = self._shared_step(batch, "train")
        task_losses = loss_sums / counts.clamp_min(1)
        strategy = self.task_strategy
        gramian = None
        monitor = self.conflict_monitor
        measure = monitor is not None and monitor.due(self.trainer.global_step)
        if strategy.needs_gramian or measure:
            if strategy.gradients == "parameters":
                shared = [p for p in self.backbone.parameters() if p.requires_grad]
                gramian = parameter_gramian(task_losses, shared)
            else:
                gramian = feature_gramian(task_losses, features)
            if self.trainer.world_size > 1:
                gramian = self.trainer.strategy.reduce(gramian, reduce_op="sum")
        loss = strategy.combine(
            TaskStep(task_losses, counts, gramian if strategy.needs_gramian else None)
        )
        if measure:
            monitor.observe(gramian, counts)
        self.train_loss_sum += loss_sums.detach()
        self.train_label_count += counts.detach()
        # not on the progress bar: showing a step value there reads it back (a host-device
        # sync) at every step; the logger reads it every trainer.log_every_n_steps steps
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        _, loss_sums, counts = self._shared_step(batch, "val")
        self.log(
            "val/loss",
            (loss_sums / counts.clamp_min(1)).sum(),
            on_epoch=True,
            prog_bar=True,
            batch_size=batch[0].shape[0],
        )

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    # ------------------------------------------------------------ epoch ends
    def on_train_epoch_start(self) -> None:
        self.train_loss_sum = torch.zeros(len(self.tasks), device=self.device)
        self.train_label_count = torch.zeros(len(self.tasks), device=self.device)

    def global_epoch_task_losses(self) -> Tensor:
        """Mean training loss per task so far in the epoch, over every DDP rank's samples."""
        return mean_over_ranks(self.trainer, self.train_loss_sum, self.train_label_count)

    def epoch_task_losses(self) -> Tensor:
        """This rank's mean training loss per task so far in the epoch (before loss weights)."""
        return self.train_loss_sum / self.train_label_count.clamp_min(1)

    def _log_split_metrics(self, split: str) -> None:
        values = self._metrics(split).compute()
        self._metrics(split).reset()
        for name in METRIC_NAMES:
            per_task = {
                f"{split}/{name}/{task}": value
                for task, value in zip(self.tasks, values[name], strict=True)
            }
            self.log_dict(per_task)
            self.log(f"{split}/{name}/mean", values[name].nanmean(), prog_bar=name == "accuracy")
        self.results[split] = {name: values[name].tolist() for name in METRIC_NAMES}

    def on_train_epoch_end(self) -> None:
        task_losses = self.global_epoch_task_losses()
        self.log_dict(
            {f"train/loss/{task}": loss for task, loss in zip(self.tasks, task_losses, strict=True)}
        )
        self._log_split_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_split_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_split_metrics("test")

    # --------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the random generators' states, so a resumed run draws what an uninterrupted one would."""
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])
        if not hasattr(self, "strategy_state"):
            # evaluating a model trained with a strategy's own parameters: not needed to predict
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("strategy_state.")]:
                del state[key]

    # ------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        parameters = [p for p in self.parameters() if p.requires_grad]
        cuda = self.trainer.strategy.root_device.type == "cuda" if self._trainer else False
        optimizer = build_optimizer(self.optimizer_factory, parameters, cuda)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)},
        }
