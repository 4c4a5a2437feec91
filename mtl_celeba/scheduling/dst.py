"""DST ("Dropped Scheduled Task", Malhotra, Vatsa, Singh, TMLR 2023) maths, free of Lightning.

Every epoch each task t is kept (gate 1) or dropped (gate 0) at random with an activation
probability P(k, t), a weighted sum of five terms in [0, 1]:

- regularization P_b(t) = 1, so no task is off for good;
- depth          P_d(t) = d_t / max_j d_j  (weight layers from the input to task t's output);
- count          P_c(t) = c_t / max_j c_j  (training samples labelled for task t);
- incompleteness P_u(k, t) = clip(I_k(t) / mean_j I_k(j), 0, 1),  I_k(t) = L_k(t) / L_0(t);
- stagnancy      P_r(k, t) = clip(mean_j R_k(j) / R_k(t), 0, 1), R_k an EMA of the loss's
  relative decrease divided by P_u.

The module has pure functions, one per term, and :class:`DSTSchedule`, a small stateful object
that keeps the loss history, the stagnancy rates and a seeded random generator, so that a
Lightning callback only has to feed it each epoch's mean task losses and apply the gates it
returns. Arrays are indexed by task and computed in float64. ``mtl_celeba/scheduling/README.md``
states the algorithm, every option and each place where the project departs from the authors'
script.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mtl_celeba.errors import ConfigError, check_choice, did_you_mean

#: The five DST metrics, in the order they are summed, logged and written.
DST_METRICS: tuple[str, ...] = ("regularization", "depth", "count", "incompleteness", "stagnancy")

#: EMA factor of the stagnancy rate (the authors' value).
DEFAULT_ALPHA = 0.1

#: Controls that keep DST's drop budget but remove its task-specific signal
#: (see README, 'Strategies').
CONTROLS: tuple[str, ...] = ("shuffled", "uniform")

#: Columns of one ``dst_history.csv`` row, as produced by :meth:`EpochRecord.rows`. Row k
#: describes training epoch k: ``gate`` is what task t trained with in epoch k (its share of
#: active steps with per-step gating), ``loss`` what it measured; the probabilities and
#: ``gate_next`` are computed after epoch k for epoch k + 1, so row k's ``gate_next`` is row
#: k + 1's ``gate``. ``dst_probability`` is DST's P(k, t) before a control reassigns it;
#: ``activation_probability`` is the probability the gate was drawn with.
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch",
    "task",
    "gate",
    "depth",
    "label_count",
    "initial_loss",
    "loss",
    *(f"p_{metric}" for metric in DST_METRICS),
    "stagnancy_rate",
    "dst_probability",
    "activation_probability",
    "gate_next",
)

# Slack for flooring weighted terms to a grid: 0.2 * 1.0 / 0.001 must floor to 200, not 199.
_FLOOR_SLACK = 1e-9
_STATE_VERSION = 1


# --------------------------------------------------------------------------- validation


def _task_vector(
    values: ArrayLike, name: str, num_tasks: int | None = None, allow_nan: bool = False
) -> np.ndarray:
    """``values`` as a finite 1-D float64 array (of ``num_tasks`` entries when given).

    ``allow_nan`` lets NaN through (a task with nothing measured); infinities never pass.
    """
    array = np.array(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence with one value per task, got shape {array.shape}"
        )
    if num_tasks is not None and array.size != num_tasks:
        raise ValueError(f"{name} has {array.size} values but there are {num_tasks} tasks")
    bad = np.flatnonzero(~np.isfinite(array) & ~(allow_nan & np.isnan(array)))
    if bad.size:
        raise ValueError(
            f"{name} must be finite, but task index {bad[0]} is {array[bad[0]]} "
            "(a diverged or empty loss: lower the learning rate or check that every task has labels)"
        )
    return array


def _non_negative(array: np.ndarray, name: str) -> np.ndarray:
    bad = np.flatnonzero(array < 0)
    if bad.size:
        raise ValueError(f"{name} must be non-negative, but task index {bad[0]} is {array[bad[0]]}")
    return array


def _positive(array: np.ndarray, name: str) -> np.ndarray:
    bad = np.flatnonzero(array <= 0)
    if bad.size:
        raise ValueError(f"{name} must be positive, but task index {bad[0]} is {array[bad[0]]}")
    return array


def _integers(values: ArrayLike, name: str) -> np.ndarray:
    """Non-negative whole numbers (layer or sample counts), at least one of them positive."""
    array = _non_negative(_task_vector(values, name), name)
    if not np.array_equal(array, np.round(array)):
        raise ValueError(f"{name} must be whole numbers, got {array.tolist()}")
    if array.max() == 0:
        raise ValueError(f"{name} must have at least one positive value, got {array.tolist()}")
    return array.astype(np.int64)


def resolve_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """Check a metric selection and return it in the canonical :data:`DST_METRICS` order.

    Raises :class:`ConfigError` for unknown names (with close-name suggestions), repeats,
    an empty selection, or a bare string instead of a list.
    """
    if isinstance(metrics, str):
        raise ConfigError(
            f"strategy.metrics must be a list of metric names, got the string {metrics!r}; "
            f"write e.g. [{metrics}]"
        )
    chosen = list(metrics)
    for name in chosen:
        if name not in DST_METRICS:
            raise ConfigError(
                f"strategy.metrics has unknown DST metric {name!r}: use one of "
                f"{', '.join(DST_METRICS)}.{did_you_mean(name, DST_METRICS)}"
            )
    if len(set(chosen)) != len(chosen):
        raise ConfigError(
            f"strategy.metrics lists a metric twice: {chosen}; name each at most once"
        )
    if not chosen:
        raise ConfigError(f"strategy.metrics is empty; enable at least one of {list(DST_METRICS)}")
    return tuple(metric for metric in DST_METRICS if metric in chosen)


def resolve_weights(
    metrics: Sequence[str], weights: Mapping[str, float] | None = None
) -> dict[str, float]:
    """The weight lambda_m of each enabled metric, summing to 1, in ``metrics`` order.

    ``None`` gives equal weights. Otherwise ``weights`` must name every enabled metric and no
    other, with finite non-negative values of positive sum; they are divided by their sum, so
    ``{depth: 2, stagnancy: 1}`` means 2/3 and 1/3. Raises :class:`ConfigError` otherwise.
    """
    metrics = resolve_metrics(metrics)
    if weights is None:
        return {metric: 1.0 / len(metrics) for metric in metrics}
    unknown = [name for name in weights if name not in metrics]
    if unknown:
        raise ConfigError(
            f"strategy.weights names {unknown}, which {'is' if len(unknown) == 1 else 'are'} not "
            f"among the enabled metrics {list(metrics)}; weight only enabled metrics "
            "(or add them to strategy.metrics)"
        )
    missing = [metric for metric in metrics if metric not in weights]
    if missing:
        raise ConfigError(
            f"strategy.weights has no weight for the enabled metrics {missing}; give one for every "
            "enabled metric, or leave strategy.weights unset for equal weights"
        )
    values = {}
    for metric in metrics:
        try:
            value = float(weights[metric])
        except (TypeError, ValueError):
            raise ConfigError(
                f"strategy.weights.{metric} must be a number, got {weights[metric]!r}"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"strategy.weights.{metric} must be a finite non-negative number, got {value}"
            )
        values[metric] = value
    total = sum(values.values())
    if total <= 0:
        raise ConfigError(
            f"strategy.weights must have a positive sum, got {values}; give some metric a weight above 0"
        )
    return {metric: value / total for metric, value in values.items()}


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0 < alpha <= 1:
        raise ConfigError(
            f"strategy.alpha must be in (0, 1], got {alpha}; the authors use {DEFAULT_ALPHA}"
        )
    return alpha


def _check_floor_to(floor_to: float | None) -> float | None:
    if floor_to is None:
        return None
    floor_to = float(floor_to)
    if not 0 < floor_to <= 1:
        raise ConfigError(
            f"strategy.floor_to must be null or in (0, 1], got {floor_to}; 0.001 reproduces the authors' script"
        )
    return floor_to


# --------------------------------------------------------------------------- the terms


def regularization_probability(num_tasks: int) -> np.ndarray:
    """P_b(t) = 1 for every task: the regulariser keeps every task reachable."""
    return np.ones(num_tasks, dtype=np.float64)


def depth_probability(depths: ArrayLike) -> np.ndarray:
    """P_d(t) = d_t / max_j d_j, with d_t the number of weight layers on task t's path."""
    depths = _integers(depths, "depths")
    return depths / depths.max()


def count_probability(label_counts: ArrayLike) -> np.ndarray:
    """P_c(t) = c_t / max_j c_j, with c_t the number of training samples labelled for task t."""
    counts = _integers(label_counts, "label_counts")
    return counts / counts.max()


def initial_loss_weights(initial_losses: ArrayLike) -> np.ndarray:
    """w_t = mean_j L_0(j) / L_0(t): scales every task's loss to the same starting value.

    ``initial_losses`` are the raw mean losses of the measurement pass; each must be positive
    (a zero initial loss leaves nothing to normalise by and makes incompleteness undefined).
    """
    initial = _positive(_task_vector(initial_losses, "initial_losses"), "initial_losses")
    return initial.mean() / initial


def incompleteness(initial_losses: ArrayLike, losses: ArrayLike) -> np.ndarray:
    """I_k(t) = L_k(t) / L_0(t): the fraction of the starting loss still left to learn."""
    initial = _positive(_task_vector(initial_losses, "initial_losses"), "initial_losses")
    current = _non_negative(_task_vector(losses, "losses", initial.size), "losses")
    return current / initial


def incompleteness_probability(incompleteness_values: ArrayLike) -> np.ndarray:
    """P_u(k, t) = clip(I_k(t) / mean_j I_k(j), 0, 1): tasks with less left to learn are dropped more.

    When every I is 0 (every loss is 0) all tasks are equally complete, so P_u = 1 for all: the
    limit of equal incompleteness values.
    """
    values = _non_negative(_task_vector(incompleteness_values, "incompleteness"), "incompleteness")
    mean = values.mean()
    if mean == 0:
        return np.ones_like(values)
    return np.clip(values / mean, 0.0, 1.0)


def relative_progress(
    previous_losses: ArrayLike, losses: ArrayLike, p_incompleteness: ArrayLike
) -> np.ndarray:
    """R'(t) = (L_prev(t) - L(t)) / L_prev(t) / P_u(t); NaN where it is undefined.

    It is undefined where L_prev(t) = 0 (no loss to decrease) or P_u(t) = 0 (the loss is 0,
    nothing left to learn); the stagnancy rate treats those tasks as showing no progress.
    """
    previous = _non_negative(_task_vector(previous_losses, "previous_losses"), "previous_losses")
    current = _non_negative(_task_vector(losses, "losses", previous.size), "losses")
    p_u = _non_negative(
        _task_vector(p_incompleteness, "p_incompleteness", previous.size), "p_incompleteness"
    )
    progress = np.full_like(previous, np.nan)
    defined = (previous > 0) & (p_u > 0)
    progress[defined] = (previous[defined] - current[defined]) / previous[defined] / p_u[defined]
    return progress


def first_stagnancy_rate(
    initial_losses: ArrayLike, losses: ArrayLike, p_incompleteness: ArrayLike
) -> np.ndarray:
    """R_1(t) = |L_0(t) - L_1(t)| / L_0(t) / P_u(1, t), after the first training epoch.

    Where P_u(1, t) = 0 (L_1(t) = 0) the quotient is undefined; R_1(t) = 0 there ("no measured
    progress"), which :func:`stagnancy_probability` maps to P_r = 1.
    """
    progress = relative_progress(initial_losses, losses, p_incompleteness)
    return np.where(np.isnan(progress), 0.0, np.abs(progress))


def next_stagnancy_rate(
    rates: ArrayLike,
    previous_losses: ArrayLike,
    losses: ArrayLike,
    p_incompleteness: ArrayLike,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """R_k(t) for k >= 2: alpha R'(t) + (1 - alpha) R_{k-1}(t) where R'(t) > 0, else R_{k-1}(t).

    R' is :func:`relative_progress` of L_{k-1} -> L_k. A task whose loss did not fall (R' <= 0)
    or whose R' is undefined keeps its previous rate unchanged.
    """
    alpha = _check_alpha(alpha)
    previous_rates = _non_negative(_task_vector(rates, "rates"), "rates")
    progress = relative_progress(previous_losses, losses, p_incompleteness)
    if progress.size != previous_rates.size:
        raise ValueError(
            f"rates has {previous_rates.size} values but the losses have {progress.size}"
        )
    improved = progress > 0  # NaN compares False: undefined progress keeps the old rate
    updated = previous_rates.copy()
    updated[improved] = alpha * progress[improved] + (1 - alpha) * previous_rates[improved]
    return updated


def stagnancy_probability(rates: ArrayLike) -> np.ndarray:
    """P_r(k, t) = clip(mean_j R_k(j) / R_k(t), 0, 1): fast-learning tasks are dropped more.

    R_k(t) = 0 (a task that shows no progress, the most stagnant) gives P_r = 1, the limit of
    the quotient; when every R is 0 all tasks get 1.
    """
    values = _non_negative(_task_vector(rates, "rates"), "rates")
    probability = np.ones_like(values)
    moving = values > 0
    probability[moving] = np.clip(values.mean() / values[moving], 0.0, 1.0)
    return probability


def activation_probability(
    terms: Mapping[str, ArrayLike],
    weights: Mapping[str, float] | None = None,
    floor_to: float | None = None,
) -> np.ndarray:
    """P(k, t) = sum over the enabled metrics m of lambda_m P_m(t), in [0, 1].

    ``terms`` maps each enabled metric to its per-task term; its keys are the enabled set.
    ``weights`` are checked and normalised by :func:`resolve_weights` (``None``: equal).
    ``floor_to`` (e.g. 0.001, the authors' script) floors each weighted term lambda_m P_m down to
    a multiple of it before summing; ``None`` keeps exact values.
    """
    lambdas = resolve_weights(list(terms), weights)
    floor_to = _check_floor_to(floor_to)
    arrays = {metric: _task_vector(terms[metric], f"the {metric} term") for metric in lambdas}
    sizes = {array.size for array in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(
            f"the DST terms have different task counts: { {m: a.size for m, a in arrays.items()} }"
        )
    for metric, array in arrays.items():
        if array.min() < 0 or array.max() > 1:
            raise ValueError(f"the {metric} term must lie in [0, 1], got {array.tolist()}")
    if floor_to is None:
        total = sum(lambdas[metric] * arrays[metric] for metric in lambdas)
    else:
        # Count whole grid steps per term, as the script counts "bits" out of 1000.
        steps = sum(
            np.floor(lambdas[metric] * arrays[metric] / floor_to + _FLOOR_SLACK)
            for metric in lambdas
        )
        total = steps * floor_to
    return np.clip(total, 0.0, 1.0)


def shuffled_probabilities(probabilities: ArrayLike, rng: np.random.Generator) -> np.ndarray:
    """The ``dst_shuffled`` control: the same probabilities given to a random permutation of
    the tasks. The drop budget (the multiset of P) is kept; which task gets which is not."""
    p = _task_vector(probabilities, "probabilities")
    return p[rng.permutation(p.size)]


def uniform_probabilities(probabilities: ArrayLike) -> np.ndarray:
    """The ``dst_uniform`` control: every task gets the mean probability (the same expected
    number of dropped tasks, spread evenly)."""
    p = _task_vector(probabilities, "probabilities")
    return np.full(p.size, p.mean())


def _check_control(control: str | None) -> str | None:
    if control is not None:
        check_choice(control, "strategy.control", CONTROLS, "null (DST itself) or")
    return control


def _draw(
    probabilities: ArrayLike, rng: np.random.Generator, ensure_one_active: bool
) -> tuple[np.ndarray, int | None]:
    """Gates and the index of the task forced on (None when the draw left some task on)."""
    p = _task_vector(probabilities, "probabilities")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"probabilities must lie in [0, 1], got {p.tolist()}")
    # One uniform per task and call, whatever the outcome, so the stream stays aligned.
    gates = (rng.random(p.size) < p).astype(np.int64)
    if ensure_one_active and not gates.any():
        forced = int(np.argmax(p))  # the first of the most probable tasks
        gates[forced] = 1
        return gates, forced
    return gates, None


def draw_gates(
    probabilities: ArrayLike, rng: np.random.Generator, ensure_one_active: bool = True
) -> np.ndarray:
    """Independent Bernoulli gates: g_t = 1 with probability P(t), as a 0/1 int64 array.

    Consumes exactly one ``rng.random()`` value per task. With ``ensure_one_active``, a draw that
    drops every task instead keeps the task with the highest probability (ties: lowest index),
    so every epoch (or step) trains something.
    """
    return _draw(probabilities, rng, ensure_one_active)[0]


# --------------------------------------------------------------------------- the schedule


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)
    array.setflags(write=False)
    return array


def _cell(value: Any) -> Any:
    """A numpy scalar as a plain Python number, for CSV and JSON writers."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class EpochRecord:
    """Everything DST computed after training epoch ``epoch`` (k >= 1), one array entry per task.

    Losses are the normalised ones (multiplied by :attr:`DSTSchedule.loss_weights`). ``p_*``
    holds each metric's raw term P_m in [0, 1] and is ``None`` for a disabled metric.
    ``gate_next`` is the gate drawn for epoch k + 1; ``forced_task`` is the index of the task
    kept on because the draw dropped every task (``None`` when that did not happen).
    """

    epoch: int
    depth: np.ndarray
    label_count: np.ndarray
    initial_loss: np.ndarray
    loss: np.ndarray
    p_regularization: np.ndarray | None
    p_depth: np.ndarray | None
    p_count: np.ndarray | None
    p_incompleteness: np.ndarray | None
    p_stagnancy: np.ndarray | None
    stagnancy_rate: np.ndarray
    dst_probability: np.ndarray
    activation_probability: np.ndarray
    gate_next: np.ndarray
    forced_task: int | None = None
    #: Tasks with no labelled sample in the epoch, whose loss was carried over from epoch k - 1.
    carried_over: tuple[int, ...] = ()

    @property
    def drop_rate(self) -> np.ndarray:
        """1 - P(k, t): the probability that task t is dropped in epoch k + 1."""
        return 1.0 - self.activation_probability

    def terms(self) -> dict[str, np.ndarray]:
        """The terms of the enabled metrics, in :data:`DST_METRICS` order."""
        found = {metric: getattr(self, f"p_{metric}") for metric in DST_METRICS}
        return {metric: term for metric, term in found.items() if term is not None}

    def rows(
        self, task_names: Sequence[str], gate: ArrayLike | None = None
    ) -> list[dict[str, Any]]:
        """One dict per task with exactly :data:`HISTORY_COLUMNS`; disabled metrics are ``None``.

        ``gate`` is what each task trained with in this epoch (the caller knows it: 0/1, or
        the share of active steps with per-step gating); ``None`` leaves the cells empty.
        """
        if len(task_names) != self.loss.size:
            raise ValueError(f"got {len(task_names)} task names for {self.loss.size} tasks")
        gates = None if gate is None else _task_vector(gate, "gate", self.loss.size)
        rows = []
        for index, name in enumerate(task_names):
            row: dict[str, Any] = {
                "epoch": self.epoch,
                "task": str(name),
                "gate": None if gates is None else _cell(gates[index]),
            }
            for column in HISTORY_COLUMNS[3:]:
                values = getattr(self, column)
                row[column] = None if values is None else _cell(values[index])
            rows.append(row)
        return rows


class DSTSchedule:
    """The DST schedule of one training run: loss history, stagnancy rates, probabilities, gates.

    Use: build it from the static task facts; after the measurement pass (before any parameter
    update) call :meth:`set_initial_losses` with each task's raw mean loss; train epoch 1 with
    every gate on and each task's loss multiplied by :attr:`loss_weights`; after each training
    epoch k = 1, 2, ... call :meth:`update` with that epoch's mean normalised loss of every task
    (measured whether the task was active or not) and apply :attr:`gates` to epoch k + 1.
    For per-step gating call :meth:`draw` before each later step of the epoch.

    The schedule is a deterministic function of its inputs and ``seed``: every DDP rank that
    feeds it the same (all-reduced) losses draws the same gates, and :meth:`state_dict` /
    :meth:`load_state_dict` continue a run exactly where it stopped.

    Args:
        depths: d_t, weight layers from the input to task t's output (whole numbers).
        label_counts: c_t, training samples labelled for task t (whole numbers).
        metrics: the enabled subset of :data:`DST_METRICS` (default all five).
        weights: lambda_m per enabled metric, normalised to sum 1 (default equal).
        alpha: EMA factor of the stagnancy rate, in (0, 1].
        seed: seeds the ``numpy.random.Generator(PCG64)`` that draws the gates.
        normalize_initial_losses: scale each task loss by w_t = mean_j L_0(j) / L_0(t)
            (the authors' default); ``False`` keeps w_t = 1.
        floor_to: floor each weighted term down to a multiple of this (0.001 is the authors'
            script); ``None`` (default) keeps exact probabilities.
        ensure_one_active: when a draw drops every task, keep the most probable one.
        control: ``None`` for DST itself; ``"shuffled"`` or ``"uniform"`` reassign DST's
            probabilities before each epoch's draw (:func:`shuffled_probabilities`,
            :func:`uniform_probabilities`), the controls that isolate DST's task signal.
    """

    def __init__(
        self,
        depths: ArrayLike,
        label_counts: ArrayLike,
        metrics: Iterable[str] = DST_METRICS,
        weights: Mapping[str, float] | None = None,
        alpha: float = DEFAULT_ALPHA,
        seed: int = 0,
        normalize_initial_losses: bool = True,
        floor_to: float | None = None,
        ensure_one_active: bool = True,
        control: str | None = None,
    ) -> None:
        self.depths = _frozen(_integers(depths, "depths"))
        self.label_counts = _frozen(_integers(label_counts, "label_counts"))
        if self.depths.size != self.label_counts.size:
            raise ValueError(
                f"depths has {self.depths.size} values but label_counts has {self.label_counts.size}"
            )
        self.num_tasks = int(self.depths.size)
        self.metrics = resolve_metrics(metrics)
        self.weights = resolve_weights(self.metrics, weights)
        self.alpha = _check_alpha(alpha)
        self.seed = int(seed)
        self.normalize_initial_losses = bool(normalize_initial_losses)
        self.floor_to = _check_floor_to(floor_to)
        self.ensure_one_active = bool(ensure_one_active)
        self.control = _check_control(control)
        self._static_terms = {
            "regularization": regularization_probability(self.num_tasks),
            "depth": depth_probability(self.depths),
            "count": count_probability(self.label_counts),
        }
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._raw_initial_losses: np.ndarray | None = None
        self._losses: list[np.ndarray] = []
        self._rates: np.ndarray | None = None
        self._probabilities = np.ones(self.num_tasks)
        self._gates = np.ones(self.num_tasks, dtype=np.int64)

    # ------------------------------------------------------------------ read-only views

    @property
    def epoch(self) -> int:
        """Number of completed :meth:`update` calls: the last training epoch k seen (0 before)."""
        return len(self._losses)

    @property
    def loss_weights(self) -> np.ndarray:
        """w_t to multiply each task's loss by; all 1 before :meth:`set_initial_losses`."""
        if self._raw_initial_losses is None or not self.normalize_initial_losses:
            return np.ones(self.num_tasks)
        return initial_loss_weights(self._raw_initial_losses)

    @property
    def initial_losses(self) -> np.ndarray | None:
        """L_0(t) after normalisation (w_t L_0(t)); ``None`` before :meth:`set_initial_losses`."""
        if self._raw_initial_losses is None:
            return None
        return self.loss_weights * self._raw_initial_losses

    @property
    def stagnancy_rates(self) -> np.ndarray | None:
        """R_k(t) after the last update; ``None`` before the first."""
        return None if self._rates is None else self._rates.copy()

    @property
    def probabilities(self) -> np.ndarray:
        """The activation probabilities in force (all 1 before the first update)."""
        return self._probabilities.copy()

    @property
    def gates(self) -> np.ndarray:
        """The current 0/1 gate per task (all 1 before the first update)."""
        return self._gates.copy()

    # ------------------------------------------------------------------ inputs

    def set_initial_losses(self, losses: ArrayLike) -> None:
        """Record L_0: each task's raw mean training loss from the pass before any update.

        May be repeated until the first :meth:`update`, never after (it would rewrite history).
        """
        if self.epoch:
            raise RuntimeError("set_initial_losses must be called before the first update()")
        self._raw_initial_losses = _positive(
            _task_vector(losses, "initial_losses", self.num_tasks), "initial_losses"
        )

    def update(self, epoch_losses: ArrayLike) -> EpochRecord:
        """Feed training epoch k's mean normalised loss per task; draw the gates for epoch k + 1.

        ``epoch_losses[t]`` is task t's loss multiplied by ``loss_weights[t]``, averaged over the
        epoch's samples labelled for t, whether t was active or not. NaN marks a task with no
        labelled sample in the epoch: nothing was measured, so its loss is carried over from
        epoch k - 1 (L_0 at k = 1), which keeps its incompleteness and leaves its stagnancy rate
        unchanged (a loss of 0 would read as "fully learnt"). Raises ``ValueError`` for a wrong
        length or a negative or infinite loss.
        """
        initial = self.initial_losses
        if initial is None:
            raise RuntimeError(
                "call set_initial_losses() with the measurement pass before update()"
            )
        values = _task_vector(epoch_losses, "epoch_losses", self.num_tasks, allow_nan=True)
        previous = self._losses[-1] if self._losses else initial
        missing = np.isnan(values)
        losses = _non_negative(np.where(missing, previous, values), "epoch_losses")

        p_incompleteness = incompleteness_probability(incompleteness(initial, losses))
        if self._rates is None:
            rates = first_stagnancy_rate(initial, losses, p_incompleteness)
        else:
            rates = next_stagnancy_rate(self._rates, previous, losses, p_incompleteness, self.alpha)
        terms = {
            **self._static_terms,
            "incompleteness": p_incompleteness,
            "stagnancy": stagnancy_probability(rates),
        }
        enabled = {metric: terms[metric] for metric in self.metrics}
        dst_probabilities = activation_probability(enabled, self.weights, self.floor_to)
        if self.control == "shuffled":
            probabilities = shuffled_probabilities(dst_probabilities, self._rng)
        elif self.control == "uniform":
            probabilities = uniform_probabilities(dst_probabilities)
        else:
            probabilities = dst_probabilities
        gates, forced = _draw(probabilities, self._rng, self.ensure_one_active)

        self._losses.append(losses)
        self._rates = rates
        self._probabilities = probabilities
        self._gates = gates
        return EpochRecord(
            epoch=self.epoch,
            depth=_frozen(self.depths),
            label_count=_frozen(self.label_counts),
            initial_loss=_frozen(initial),
            loss=_frozen(losses),
            **{f"p_{m}": _frozen(terms[m]) if m in enabled else None for m in DST_METRICS},
            stagnancy_rate=_frozen(rates),
            dst_probability=_frozen(dst_probabilities),
            activation_probability=_frozen(probabilities),
            gate_next=_frozen(gates),
            forced_task=forced,
            carried_over=tuple(int(t) for t in np.flatnonzero(missing)),
        )

    def draw(self, probabilities: ArrayLike | None = None) -> np.ndarray:
        """Draw fresh gates with the schedule's generator and make them the current gates.

        ``None`` uses the probabilities in force (per-step gating); the draw follows the same
        rules as :meth:`update`'s, including ``ensure_one_active``.
        """
        chosen = self._probabilities if probabilities is None else probabilities
        self._gates = _draw(chosen, self._rng, self.ensure_one_active)[0]
        return self.gates

    # ------------------------------------------------------------------ checkpointing

    def _settings(self) -> dict[str, Any]:
        return {
            "depths": self.depths.tolist(),
            "label_counts": self.label_counts.tolist(),
            "metrics": list(self.metrics),
            "weights": dict(self.weights),
            "alpha": self.alpha,
            "normalize_initial_losses": self.normalize_initial_losses,
            "floor_to": self.floor_to,
            "ensure_one_active": self.ensure_one_active,
            "control": self.control,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (lists, floats, ints, strings, None): torch.save/pickle/JSON friendly.

        Holds the settings (checked on load), the raw initial losses, every epoch's losses, the
        stagnancy rates, probabilities, gates and the generator's exact bit state.
        """
        return {
            "version": _STATE_VERSION,
            "settings": self._settings(),
            "raw_initial_losses": None
            if self._raw_initial_losses is None
            else self._raw_initial_losses.tolist(),
            "losses": [losses.tolist() for losses in self._losses],
            "stagnancy_rates": None if self._rates is None else self._rates.tolist(),
            "probabilities": self._probabilities.tolist(),
            "gates": self._gates.tolist(),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; later draws equal those of an uninterrupted run.

        Raises :class:`ConfigError` if the checkpoint was made with other DST settings or task
        facts (resuming with them would not continue the same schedule).
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported DST state version {state.get('version')!r}")
        saved, current = state["settings"], self._settings()
        changed = [key for key in current if saved.get(key) != current[key]]
        if changed:
            details = "; ".join(
                f"{key}: checkpoint {saved.get(key)!r}, now {current[key]!r}" for key in changed
            )
            raise ConfigError(
                f"the checkpoint's DST schedule was made with other settings ({details}); "
                "resume with the same strategy and data settings, or start a new run"
            )
        raw = state["raw_initial_losses"]
        self._raw_initial_losses = None if raw is None else np.array(raw, dtype=np.float64)
        self._losses = [np.array(losses, dtype=np.float64) for losses in state["losses"]]
        rates = state["stagnancy_rates"]
        self._rates = None if rates is None else np.array(rates, dtype=np.float64)
        self._probabilities = np.array(state["probabilities"], dtype=np.float64)
        self._gates = np.array(state["gates"], dtype=np.int64)
        self._rng.bit_generator.state = dict(state["rng"])
