"""The gating strategies: DST, its controls, and random task dropping; and the conflict monitor.

Each is a :class:`~mtl_celeba.scheduling.strategy.TaskStrategy` (a Lightning callback) whose
``combine`` multiplies every task loss by a 0/1 gate (and, for DST, the loss weight w_t).
The maths lives in :mod:`mtl_celeba.scheduling.dst`, free of Lightning.
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
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from tqdm.auto import tqdm

from mtl_celeba.errors import ConfigError
from mtl_celeba.io import write_json_atomic, write_text_atomic
from mtl_celeba.rng import collect_rng_states, restore_rng_states
from mtl_celeba.run.layout import DST_HISTORY, GRADIENT_CONFLICTS
from mtl_celeba.run.tensorboard import conflict_heatmap_image
from mtl_celeba.scheduling.conflicts import (
    ConflictSums,
    epoch_record,
    gradient_conflicts,
    summary_scalars,
)
from mtl_celeba.scheduling.dst import DST_METRICS, HISTORY_COLUMNS, DSTSchedule, draw_gates
from mtl_celeba.scheduling.strategy import TaskStep, TaskStrategy, find_strategy, mean_over_ranks

GATE_EVERY = ("epoch", "step")


class TaskGating(TaskStrategy):
    """Base class of the gating strategies: per-task 0/1 gates, drawn per epoch (or per step).

    The training loss is ``sum_t gate[t] * loss_weight[t] * L_t``. Subclasses implement
    :meth:`gates_for_epoch` (and :meth:`gates_for_step` for per-step gating) and may set
    :attr:`loss_weights`. What each task actually trained with is recorded per epoch (the share
    of the epoch's steps it was active in: 0 or 1 with per-epoch gates) and kept in the
    checkpoint, so a resumed run reports the same summary as an uninterrupted one.
    """

    name = "gating"

    def __init__(self, gate_every: str = "epoch") -> None:
        if gate_every not in GATE_EVERY:
            raise ConfigError(f"strategy.gate_every is {gate_every!r}: use epoch or step.")
        self.gate_every = gate_every
        self.tasks: list[str] = []
        #: Share of each epoch's training steps in which each task was active, one list per epoch.
        self.applied: list[list[float]] = []
        #: Probability each task had of being active, per epoch (1.0 where it was certain).
        self.applied_probabilities: list[list[float]] = []
        #: The gates in force, on the module's device.
        self.gates = torch.ones(0)
        #: Per-task loss multipliers (DST's w_t); ``None`` means all 1.
        self.loss_weights: Tensor | None = None
        self._active_steps = torch.zeros(0)
        self._steps = 0

    # -- subclass interface
    def gates_for_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(gates, activation probabilities) for training epoch ``epoch`` (1-based)."""
        raise NotImplementedError

    def gates_for_step(self) -> np.ndarray:
        """Fresh gates for a later step of the current epoch (``gate_every=step``)."""
        raise NotImplementedError

    # -- the contract
    def combine(self, step: TaskStep) -> Tensor:
        self._active_steps += self.gates  # on the device: no host sync per step
        self._steps += 1
        weights = self.gates if self.loss_weights is None else self.gates * self.loss_weights
        return (weights * step.losses).sum()

    # -- Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.tasks = list(pl_module.tasks)
        self.gates = torch.ones(len(self.tasks))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        gates, probabilities = self.gates_for_epoch(epoch)
        self._set_gates(pl_module, _broadcast(trainer, gates))
        self._active_steps = torch.zeros(len(self.tasks), device=pl_module.device)
        self._steps = 0
        del self.applied[epoch - 1 :], self.applied_probabilities[epoch - 1 :]
        self.applied_probabilities.append([float(p) for p in probabilities])

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.gate_every == "step" and batch_idx > 0 and trainer.current_epoch > 0:
            self._set_gates(pl_module, _broadcast(trainer, self.gates_for_step()))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shares = (self._active_steps / max(self._steps, 1)).cpu().tolist()
        del self.applied[trainer.current_epoch :]
        self.applied.append([round(share, 6) for share in shares])

    def _set_gates(self, pl_module: L.LightningModule, gates: np.ndarray) -> None:
        self.gates = torch.as_tensor(gates, dtype=torch.float32).to(pl_module.device)

    # -- results
    def results_summary(self) -> dict[str, Any]:
        """For metrics.json, per task: the expected drop rate (1 - P, mean over epochs), the
        realised one (share of steps it was dropped in) and its active epochs (summed shares)."""
        if not self.applied:
            return {"strategy": self.name, "epochs": 0}
        probabilities = np.asarray(self.applied_probabilities)[: len(self.applied)]
        shares = np.asarray(self.applied)

        def per_task(values: np.ndarray) -> dict[str, float]:
            return dict(zip(self.tasks, values.round(6).tolist(), strict=True))

        return {
            "strategy": self.name,
            "gate_every": self.gate_every,
            "epochs": len(self.applied),
            "mean_drop_rate": per_task(1.0 - probabilities.mean(0)),
            "realised_drop_rate": per_task(1.0 - shares.mean(0)),
            "active_epochs": per_task(shares.sum(0)),
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
    to the loggers under ``dst/<quantity>/<task>``. ``control="shuffled"`` or ``"uniform"``
    gives the controls ``dst_shuffled`` and ``dst_uniform`` (same drop budget, no task signal).
    """

    name = "dst"

    def __init__(
        self,
        metrics: Iterable[str] = DST_METRICS,
        weights: Mapping[str, float] | None = None,
        alpha: float = 0.1,
        normalize_initial_losses: bool = True,
        gate_every: str = "epoch",
        measurement_batches: int | str = "all",
        floor_to: float | None = None,
        ensure_one_active: bool = True,
        control: str | None = None,
        seed: int = 0,
        history_file: str | None = None,
        drop: bool = True,
    ) -> None:
        super().__init__(gate_every)
        self.measurement_batches = _check_measurement_batches(measurement_batches)
        self.settings = {
            "metrics": list(metrics),
            "weights": dict(weights) if weights else None,
            "alpha": alpha,
            "normalize_initial_losses": normalize_initial_losses,
            "floor_to": floor_to,
            "ensure_one_active": ensure_one_active,
            "control": control,
            "seed": seed,
        }
        DSTSchedule([1], [1], **self.settings)  # fail fast on bad settings, before any data loads
        self.name = "dst" if control is None else f"dst_{control}"
        #: False: ``dst_norm_only``, DST's L_0 loss normalisation with every task kept on
        #: (the schedule is still computed and logged, its gates are not applied)
        self.drop = drop
        if not drop:
            self.name = "dst_norm_only"
        self.history_file = history_file
        self.schedule: DSTSchedule | None = None
        self.history: list[dict[str, Any]] = []
        self._pending_state: dict[str, Any] | None = None
        self._warned_carry_over = False

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
        self.loss_weights = torch.as_tensor(self.schedule.loss_weights, dtype=torch.float32).to(
            pl_module.device
        )

    @torch.no_grad()
    def measure_initial_losses(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> np.ndarray:
        """L_0: each task's mean training loss before any update, as the authors measure it.

        By default a full pass over the training split (``measurement_batches="all"``), under
        the trainer's precision (bf16 autocast on GPUs, like training). The model runs in
        training mode (batch statistics, as epoch 1 sees them) and every buffer is restored
        afterwards, so BatchNorm's running statistics are untouched. The pass sees the
        training images without random flips or shifts, and the global random generators are
        restored afterwards, so the training batches and their augmentation stay exactly those
        of every other strategy with the same seed (paired runs).
        """
        rng_states = collect_rng_states()
        buffers = {name: buffer.clone() for name, buffer in pl_module.named_buffers()}
        pl_module.train()
        sums = torch.zeros(len(self.tasks), device=pl_module.device)
        counts = torch.zeros_like(sums)
        datamodule = trainer.datamodule
        limit = self.measurement_batches
        try:
            with datamodule.unaugmented(), trainer.precision_plugin.forward_context():
                loader = datamodule.train_dataloader()
                total = len(loader) if limit == "all" else min(limit, len(loader))
                batches = tqdm(
                    loader,
                    total=total,
                    desc="DST: initial losses",
                    leave=False,
                    disable=not (trainer.is_global_zero and trainer.progress_bar_callback),
                )
                for index, batch in enumerate(batches):
                    if index >= total:
                        break
                    loss_sums, label_counts = pl_module.task_losses(
                        trainer.strategy.batch_to_device(batch)
                    )
                    sums += loss_sums.float()
                    counts += label_counts
        finally:
            for name, buffer in pl_module.named_buffers():
                buffer.copy_(buffers[name])
            restore_rng_states(rng_states)
        initial = mean_over_ranks(trainer, sums, counts).double().cpu().numpy()
        unmeasured = [
            task for task, value in zip(self.tasks, initial, strict=True) if np.isnan(value)
        ]
        if unmeasured:
            raise ConfigError(
                f"{', '.join(unmeasured)} had no labelled sample in the first {limit} training "
                "batches of DST's measurement pass: use strategy.measurement_batches=all."
            )
        return initial

    # -- the per-epoch schedule
    def gates_for_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.schedule is not None
        if not self.drop:
            ones = np.ones(len(self.tasks))
            return ones.astype(np.int64), ones
        return self.schedule.gates, self.schedule.probabilities

    def gates_for_step(self) -> np.ndarray:
        assert self.schedule is not None
        if not self.drop:
            return np.ones(len(self.tasks), dtype=np.int64)
        return self.schedule.draw()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # records the gates this epoch used
        assert self.schedule is not None
        raw = pl_module.global_epoch_task_losses().double().cpu().numpy()
        record = self.schedule.update(raw * self.schedule.loss_weights)
        if record.carried_over and not self._warned_carry_over:
            names = ", ".join(self.tasks[t] for t in record.carried_over)
            rank_zero_warn(
                f"DST: {names} had no labelled sample in training epoch {record.epoch}; its "
                "loss is carried over from the previous epoch (warned once)."
            )
            self._warned_carry_over = True
        rows = record.rows(self.tasks, gate=self.applied[record.epoch - 1])
        self.history = [row for row in self.history if row["epoch"] != record.epoch] + rows
        self._log(trainer, record)
        if trainer.is_global_zero:
            write_text_atomic(self._history_path(trainer), history_csv(self.history))

    def _history_path(self, trainer: L.Trainer) -> Path:
        return (
            Path(self.history_file)
            if self.history_file
            else Path(trainer.default_root_dir) / DST_HISTORY
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


def _check_measurement_batches(value: int | str) -> int | str:
    if value == "all":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"strategy.measurement_batches is {value!r}: use all (a full pass over the training "
            "split, as the authors do) or a number of batches >= 1."
        )
    return value


def history_csv(rows: list[dict[str, Any]]) -> str:
    """``dst_history.csv`` text: the columns of :data:`HISTORY_COLUMNS`, empty cells for None."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(HISTORY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class ConflictMonitor(Callback):
    """Records the conflicts between task gradients: per epoch, the mean cosine of every pair
    of task gradients and each task's gradient norm (:mod:`mtl_celeba.scheduling.conflicts`).

    With a Gramian method every training step's Gramian is used as is (it is computed anyway;
    its ``strategy.gradients``). For any other strategy nothing is measured unless
    ``diagnostics`` (``strategy.diagnostics=true``) is on: then every ``every``-th step the
    module computes the Gramian of the gradients w.r.t. the shared features, one vectorised
    backward pass through the heads that leaves the parameters' gradients untouched, so
    training is the same with it on or off. Per-rank sums are averaged over the DDP ranks at
    the epoch's end; the epochs go to ``gradient_conflicts.json`` (atomically, rank zero) and to
    the loggers (``conflicts/mean_cosine``, ``conflicts/norm/<task>`` and a heatmap image).
    """

    def __init__(self, diagnostics: bool = False, every: int = 50, path: str | None = None) -> None:
        if not isinstance(diagnostics, bool):
            raise ConfigError(f"strategy.diagnostics is {diagnostics!r}: use true or false.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(
                f"strategy.diagnostics_every is {every!r}: use a number of training steps >= 1."
            )
        self.diagnostics = diagnostics
        self.every = every
        self.path = path
        self.tasks: list[str] = []
        #: ``gramian`` (the strategy's own, every step), ``diagnostics`` or None (off).
        self.source: str | None = None
        self.gradients = "features"
        self.epochs: list[dict[str, Any]] = []
        self._sums: ConflictSums | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.tasks = list(pl_module.tasks)
        strategy = find_strategy(trainer)
        if strategy.needs_gramian:
            self.source, self.gradients = "gramian", strategy.gradients
        elif self.diagnostics:
            self.source, self.gradients = "diagnostics", "features"

    def due(self, global_step: int) -> bool:
        """Whether training step ``global_step`` (0-based) should measure the Gramian."""
        if self.source == "gramian":
            return True
        return self.source == "diagnostics" and global_step % self.every == 0

    def observe(self, gramian: Tensor, counts: Tensor) -> None:
        """Adds one step's Gramian (T, T) and labelled counts (T,) to the epoch's sums."""
        if self._sums is None:
            self._sums = ConflictSums(len(self.tasks), gramian.device)
        self._sums.add(*gradient_conflicts(gramian, counts > 0))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sums = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.source is None:
            return
        sums = self._sums or ConflictSums(len(self.tasks), pl_module.device)
        epoch = trainer.current_epoch + 1
        record = epoch_record(
            epoch, sums.steps, mean_over_ranks(trainer, *sums.flat()), len(self.tasks)
        )
        del self.epochs[epoch - 1 :]
        self.epochs.append(record)
        self._log(trainer, record)
        if trainer.is_global_zero:
            path = (
                Path(self.path)
                if self.path
                else Path(trainer.default_root_dir) / GRADIENT_CONFLICTS
            )
            write_json_atomic(path, self.contents())

    def contents(self) -> dict[str, Any]:
        """What ``gradient_conflicts.json`` holds: the tasks in matrix order, where the
        measurements came from and every epoch's matrices."""
        return {
            "tasks": self.tasks,
            "source": self.source,
            "gradients": self.gradients,
            "every": 1 if self.source == "gramian" else self.every,
            "epochs": self.epochs,
        }

    def _log(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        metrics = {f"conflicts/{name}": v for name, v in summary_scalars(record).items()}
        metrics |= {
            f"conflicts/norm/{task}": norm
            for task, norm in zip(self.tasks, record["norm"], strict=True)
            if norm is not None
        }
        cosines = np.array(
            [[np.nan if v is None else v for v in row] for row in record["cosine"]], dtype=float
        )
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=record["epoch"])
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    "conflicts/cosine_heatmap",
                    conflict_heatmap_image(cosines),
                    global_step=record["epoch"],
                    dataformats="HWC",
                )

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = [dict(epoch) for epoch in state_dict["epochs"]]


def find_conflict_monitor(trainer: L.Trainer | None) -> ConflictMonitor | None:
    """The trainer's :class:`ConflictMonitor`, or ``None`` (nothing is measured)."""
    callbacks = trainer.callbacks if trainer is not None else []
    monitors = [callback for callback in callbacks if isinstance(callback, ConflictMonitor)]
    return monitors[0] if monitors else None
