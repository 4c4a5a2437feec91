"""Lightning callbacks that schedule tasks by setting the module's ``task_gates``.

The callbacks never touch the loss (Lightning ignores loss changes made in callbacks): they
set the :class:`~mtl_celeba.models.module.MultiTaskModule` buffers ``task_gates`` (and, for
DST, ``task_loss_weights``), which the module's ``training_step`` applies. The maths lives
in :mod:`mtl_celeba.scheduling.dst`, free of Lightning.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from mtl_celeba.errors import ConfigError
from mtl_celeba.io import write_text_atomic
from mtl_celeba.models.loss import masked_task_losses
from mtl_celeba.models.module import mean_over_ranks
from mtl_celeba.scheduling.dst import DST_METRICS, HISTORY_COLUMNS, DSTSchedule, draw_gates

GATE_EVERY = ("epoch", "step")


class TaskGating(Callback):
    """Base class: applies a gate vector per epoch (or per step) and keeps the gate history.

    Subclasses implement :meth:`gates_for_epoch` (and :meth:`gates_for_step` for per-step
    gating). The history of applied gates is part of the checkpoint, so a resumed run reports
    the same summary as an uninterrupted one.
    """

    name = "gating"

    def __init__(self, gate_every: str = "epoch") -> None:
        if gate_every not in GATE_EVERY:
            raise ConfigError(f"strategy.gate_every is {gate_every!r}: use epoch or step.")
        self.gate_every = gate_every
        self.tasks: list[str] = []
        #: Gates applied at the start of each training epoch, one list per epoch.
        self.applied: list[list[int]] = []
        #: Probability each task had of being active, per epoch (1.0 where it was certain).
        self.applied_probabilities: list[list[float]] = []

    # -- subclass interface
    def gates_for_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(gates, activation probabilities) for training epoch ``epoch`` (1-based)."""
        raise NotImplementedError

    def gates_for_step(self) -> np.ndarray:
        """Fresh gates for a later step of the current epoch (``gate_every=step``)."""
        raise NotImplementedError

    # -- Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.tasks = list(pl_module.tasks)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        gates, probabilities = self.gates_for_epoch(epoch)
        gates = _broadcast(trainer, gates)
        self._set_gates(pl_module, gates)
        del self.applied[epoch - 1 :], self.applied_probabilities[epoch - 1 :]
        self.applied.append([int(g) for g in gates])
        self.applied_probabilities.append([float(p) for p in probabilities])

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.gate_every == "step" and batch_idx > 0 and trainer.current_epoch > 0:
            self._set_gates(pl_module, _broadcast(trainer, self.gates_for_step()))

    @staticmethod
    def _set_gates(pl_module: L.LightningModule, gates: np.ndarray) -> None:
        pl_module.task_gates.copy_(torch.as_tensor(gates, dtype=pl_module.task_gates.dtype))

    # -- results
    def results_summary(self) -> dict[str, Any]:
        """For metrics.json: mean drop rate (1 - P) and epochs active, per task."""
        if not self.applied:
            return {"strategy": self.name, "epochs": 0}
        probabilities = np.asarray(self.applied_probabilities)
        gates = np.asarray(self.applied)
        return {
            "strategy": self.name,
            "epochs": len(self.applied),
            "mean_drop_rate": dict(
                zip(self.tasks, (1.0 - probabilities.mean(0)).round(6).tolist(), strict=True)
            ),
            "active_epochs": dict(zip(self.tasks, gates.sum(0).astype(int).tolist(), strict=True)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "applied_probabilities": self.applied_probabilities}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.applied = [list(g) for g in state_dict["applied"]]
        self.applied_probabilities = [list(p) for p in state_dict["applied_probabilities"]]


def _broadcast(trainer: L.Trainer, gates: np.ndarray) -> np.ndarray:
    """Rank zero's gates on every rank (they are equal already; this makes it certain)."""
    if trainer.world_size == 1:
        return np.asarray(gates)
    return np.asarray(trainer.strategy.broadcast(np.asarray(gates), src=0))


class RandomTaskDrop(TaskGating):
    """Baseline: each epoch every task is dropped independently with ``drop_probability``.

    At least one task stays active: a draw that drops every task keeps the first one (the rule
    of :func:`~mtl_celeba.scheduling.dst.draw_gates` for equal probabilities).
    """

    name = "random_drop"

    def __init__(
        self, drop_probability: float = 0.5, seed: int = 0, gate_every: str = "epoch"
    ) -> None:
        super().__init__(gate_every)
        if not 0.0 <= drop_probability < 1.0:
            raise ConfigError(
                f"strategy.drop_probability is {drop_probability}: use a value in [0, 1)."
            )
        self.drop_probability = drop_probability
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _probabilities(self) -> np.ndarray:
        return np.full(len(self.tasks), 1.0 - self.drop_probability)

    def gates_for_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        return draw_gates(self._probabilities(), self.rng), self._probabilities()

    def gates_for_step(self) -> np.ndarray:
        return draw_gates(self._probabilities(), self.rng)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.rng.bit_generator.state = dict(state_dict["rng"])


class DroppedScheduledTask(TaskGating):
    """DST (Malhotra, Vatsa, Singh, TMLR 2023): keep each task with probability P(k, t).

    Owns the :class:`~mtl_celeba.scheduling.dst.DSTSchedule`: the measurement pass for the
    initial losses before any update, the loss normalisation weights, each epoch's losses of
    every task (all-reduced across DDP ranks), the probabilities and the gate draws. Writes
    ``dst_history.csv`` (one row per epoch and task) to the run folder and logs every term
    to the loggers under ``dst/<quantity>/<task>``.
    """

    name = "dst"

    def __init__(
        self,
        metrics: Iterable[str] = DST_METRICS,
        weights: Mapping[str, float] | None = None,
        alpha: float = 0.1,
        normalize_initial_losses: bool = True,
        gate_every: str = "epoch",
        measurement_batches: int = 20,
        floor_to: float | None = None,
        ensure_one_active: bool = True,
        seed: int = 0,
        history_file: str | None = None,
    ) -> None:
        super().__init__(gate_every)
        if measurement_batches < 1:
            raise ConfigError(
                f"strategy.measurement_batches is {measurement_batches}: use 1 or more."
            )
        self.settings = {
            "metrics": list(metrics),
            "weights": dict(weights) if weights else None,
            "alpha": alpha,
            "normalize_initial_losses": normalize_initial_losses,
            "floor_to": floor_to,
            "ensure_one_active": ensure_one_active,
            "seed": seed,
        }
        DSTSchedule([1], [1], **self.settings)  # fail fast on bad settings, before any data loads
        self.measurement_batches = measurement_batches
        self.history_file = history_file
        self.schedule: DSTSchedule | None = None
        self.history: list[dict[str, Any]] = []
        self._pending_state: dict[str, Any] | None = None

    # -- building the schedule
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or self.schedule is not None:
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ConfigError(
                "strategy=dst needs the training data's label counts: train with a DataModule."
            )
        counts = np.asarray(datamodule.label_counts("train"))
        empty = [task for task, count in zip(self.tasks, counts, strict=True) if count == 0]
        if empty:
            raise ConfigError(
                f"{', '.join(empty)} has no labelled training sample (see data.hide_labels): DST cannot "
                "schedule a task it never sees; lower its hidden fraction."
            )
        self.schedule = DSTSchedule(pl_module.task_depths, counts, **self.settings)
        if self._pending_state is not None:
            self.schedule.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.schedule is not None
        if self.schedule.initial_losses is None:
            initial = self.measure_initial_losses(trainer, pl_module)
            self.schedule.set_initial_losses(initial)
        pl_module.task_loss_weights.copy_(
            torch.as_tensor(self.schedule.loss_weights, dtype=torch.float32)
        )

    @torch.no_grad()
    def measure_initial_losses(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> np.ndarray:
        """L_0: each task's mean loss over the first training batches, before any update.

        Runs in training mode (batch statistics, as the first epoch sees them) and restores
        every buffer afterwards, so the pass changes nothing in the model.
        """
        buffers = {name: buffer.clone() for name, buffer in pl_module.named_buffers()}
        pl_module.train()
        sums = torch.zeros(len(self.tasks), device=pl_module.device)
        counts = torch.zeros_like(sums)
        loader = trainer.datamodule.train_dataloader()
        for index, batch in enumerate(loader):
            if index >= self.measurement_batches:
                break
            images, targets, mask = trainer.strategy.batch_to_device(batch)
            pos_weight = pl_module.pos_weight if pl_module.hparams.pos_weight else None
            loss_sums, label_counts = masked_task_losses(
                pl_module(images), targets, mask, pos_weight
            )
            sums += loss_sums
            counts += label_counts
        for name, buffer in pl_module.named_buffers():
            buffer.copy_(buffers[name])
        return mean_over_ranks(trainer, sums, counts).double().cpu().numpy()

    # -- the per-epoch schedule
    def gates_for_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.schedule is not None
        return self.schedule.gates, self.schedule.probabilities

    def gates_for_step(self) -> np.ndarray:
        assert self.schedule is not None
        return self.schedule.draw()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.schedule is not None
        raw = pl_module.global_epoch_task_losses().double().cpu().numpy()
        record = self.schedule.update(raw * self.schedule.loss_weights)
        rows = record.rows(self.tasks)
        self.history = [row for row in self.history if row["epoch"] != record.epoch] + rows
        self._log(trainer, record)
        if trainer.is_global_zero:
            write_text_atomic(self._history_path(trainer), history_csv(self.history))

    def _history_path(self, trainer: L.Trainer) -> Path:
        return (
            Path(self.history_file)
            if self.history_file
            else Path(trainer.default_root_dir) / "dst_history.csv"
        )

    def _log(self, trainer: L.Trainer, record: Any) -> None:
        quantities = {
            "activation_probability": record.activation_probability,
            "drop_rate": record.drop_rate,
            "gate": record.gate_next,
            "loss": record.loss,
            "stagnancy_rate": record.stagnancy_rate,
            **{f"p_{metric}": term for metric, term in record.terms().items()},
        }
        metrics = {
            f"dst/{quantity}/{task}": float(values[index])
            for quantity, values in quantities.items()
            for index, task in enumerate(self.tasks)
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=record.epoch)

    # -- checkpointing
    def state_dict(self) -> dict[str, Any]:
        schedule = self.schedule.state_dict() if self.schedule is not None else self._pending_state
        return {**super().state_dict(), "schedule": schedule, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.history = list(state_dict["history"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state_dict["schedule"])
        else:
            self._pending_state = state_dict["schedule"]


def history_csv(rows: list[dict[str, Any]]) -> str:
    """``dst_history.csv`` text: the columns of :data:`HISTORY_COLUMNS`, empty cells for None."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(HISTORY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
