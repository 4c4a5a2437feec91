"""DST maths against values worked out by hand, plus invariants, seeding and resume.

The hand-worked history (3 tasks, 3 training epochs), used throughout:

    depths d = [2, 4, 4]          -> P_d = d / 4   = [1/2, 1, 1]
    label counts c = [100, 50, 100] -> P_c = c / 100 = [1, 1/2, 1]
    raw initial losses L0 = [1, 2, 3], mean 2
        -> w = 2 / L0 = [2, 1, 2/3]; normalised L0 = w * L0 = [2, 2, 2]
    normalised epoch losses  L1 = [1.0, 1.5, 2.0]
                             L2 = [0.8, 1.5, 2.2]   (task 1 flat, task 2 rises: R' <= 0)
                             L3 = [0.6, 1.2, 1.1]
"""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.dst import (
    DST_METRICS,
    HISTORY_COLUMNS,
    DSTSchedule,
    activation_probability,
    count_probability,
    depth_probability,
    draw_gates,
    first_stagnancy_rate,
    incompleteness,
    incompleteness_probability,
    initial_loss_weights,
    next_stagnancy_rate,
    relative_progress,
    resolve_metrics,
    resolve_weights,
    shuffled_probabilities,
    stagnancy_probability,
    uniform_probabilities,
)

DEPTHS = [2, 4, 4]
COUNTS = [100, 50, 100]
RAW_L0 = [1.0, 2.0, 3.0]
L0 = [2.0, 2.0, 2.0]
L1 = [1.0, 1.5, 2.0]
L2 = [0.8, 1.5, 2.2]
L3 = [0.6, 1.2, 1.1]

# Epoch 1: I1 = L1 / 2 = [0.5, 0.75, 1.0], mean 0.75, I1 / mean = [2/3, 1, 4/3]
#   -> P_u = [2/3, 1, 1]          (task 2 clipped from 4/3 to 1)
#   R1 = |2 - L1| / 2 / P_u = [0.5 / (2/3), 0.25 / 1, 0 / 1] = [0.75, 0.25, 0]   (task 2: R = 0)
#   mean R1 = 1/3 -> P_r = [(1/3) / 0.75, (1/3) / 0.25 -> 1, R = 0 -> 1] = [4/9, 1, 1]
P_U1 = [2 / 3, 1.0, 1.0]
R1 = [0.75, 0.25, 0.0]
P_R1 = [4 / 9, 1.0, 1.0]
# Equal weights 1/5 over P_b, P_d, P_c, P_u, P_r:
#   task 0: (1 + 1/2 + 1 + 2/3 + 4/9) / 5 = (32.5/9) / 5 = 0.72222...
#   task 1: (1 + 1 + 1/2 + 1 + 1) / 5 = 0.9
#   task 2: (1 + 1 + 1 + 1 + 1) / 5 = 1
P1 = [(1 + 0.5 + 1 + 2 / 3 + 4 / 9) / 5, 0.9, 1.0]

# Epoch 2: I2 = L2 / 2 = [0.4, 0.75, 1.1], mean 0.75, I2 / mean = [8/15, 1, 22/15]
#   -> P_u = [8/15, 1, 1]
#   R' = (L1 - L2) / L1 / P_u = [0.2 / 1.0 / (8/15), 0 / 1.5, -0.2 / 2.0] = [0.375, 0, -0.1]
#   task 0: R' > 0 -> 0.1 * 0.375 + 0.9 * 0.75 = 0.0375 + 0.675 = 0.7125
#   tasks 1, 2: R' <= 0 -> EMA skipped, R2 = R1 = 0.25 and 0
#   mean R2 = 0.9625 / 3; P_r = [0.9625 / 3 / 0.7125 = 77/171, 1.28 -> 1, R = 0 -> 1]
P_U2 = [8 / 15, 1.0, 1.0]
R2 = [0.7125, 0.25, 0.0]
P_R2 = [77 / 171, 1.0, 1.0]
P2 = [(1 + 0.5 + 1 + 8 / 15 + 77 / 171) / 5, 0.9, 1.0]

# Epoch 3: I3 = L3 / 2 = [0.3, 0.6, 0.55], mean 1.45 / 3, I3 / mean = [18/29, 36/29, 33/29]
#   -> P_u = [18/29, 1, 1]
#   R' = (L2 - L3) / L2 / P_u = [0.2 / 0.8 / (18/29), 0.3 / 1.5, 1.1 / 2.2] = [29/72, 0.2, 0.5]
#   R3 = 0.1 R' + 0.9 R2 = [2.9/72 + 0.64125, 0.02 + 0.225, 0.05 + 0] = [0.68152..., 0.245, 0.05]
#   P_r = mean R3 / R3, clipped: task 0 below 1, tasks 1 and 2 above 1 -> 1
P_U3 = [18 / 29, 1.0, 1.0]
R3 = [2.9 / 72 + 0.64125, 0.245, 0.05]
MEAN_R3 = (2.9 / 72 + 0.64125 + 0.245 + 0.05) / 3
P_R3 = [MEAN_R3 / R3[0], 1.0, 1.0]
P3 = [(1 + 0.5 + 1 + 18 / 29 + P_R3[0]) / 5, 0.9, 1.0]


def approx(values: list[float]) -> object:
    return pytest.approx(values, rel=1e-12, abs=1e-12)


def schedule(**kwargs: object) -> DSTSchedule:
    made = DSTSchedule(DEPTHS, COUNTS, **kwargs)
    made.set_initial_losses(RAW_L0)
    return made


# --------------------------------------------------------------------------- pure functions


def test_static_terms_and_loss_weights() -> None:
    assert depth_probability(DEPTHS).tolist() == [0.5, 1.0, 1.0]
    assert count_probability(COUNTS).tolist() == [1.0, 0.5, 1.0]
    assert initial_loss_weights(RAW_L0) == approx([2.0, 1.0, 2 / 3])


def test_epoch_one_terms_by_hand() -> None:
    i1 = incompleteness(L0, L1)
    assert i1 == approx([0.5, 0.75, 1.0])
    p_u = incompleteness_probability(i1)
    assert p_u == approx(P_U1)  # task 2 clipped at 1
    rates = first_stagnancy_rate(L0, L1, p_u)
    assert rates == approx(R1)
    assert stagnancy_probability(rates) == approx(P_R1)  # task 2 has R = 0 -> 1


def test_first_rate_uses_absolute_change() -> None:
    # Loss rose from 2 to 3 in epoch 1: |2 - 3| / 2 / 1 = 0.5, not -0.5.
    assert first_stagnancy_rate([2.0, 2.0], [3.0, 2.0], [1.0, 1.0]) == approx([0.5, 0.0])


def test_later_rates_by_hand_skip_ema_when_no_progress() -> None:
    p_u2 = incompleteness_probability(incompleteness(L0, L2))
    assert p_u2 == approx(P_U2)
    assert relative_progress(L1, L2, p_u2) == approx([0.375, 0.0, -0.1])
    rates2 = next_stagnancy_rate(R1, L1, L2, p_u2, alpha=0.1)
    assert rates2 == approx(R2)
    assert stagnancy_probability(rates2) == approx(P_R2)

    p_u3 = incompleteness_probability(incompleteness(L0, L3))
    assert p_u3 == approx(P_U3)
    rates3 = next_stagnancy_rate(rates2, L2, L3, p_u3, alpha=0.1)
    assert rates3 == approx(R3)
    assert stagnancy_probability(rates3) == approx(P_R3)


def test_alpha_weights_the_new_progress() -> None:
    # alpha = 0.5: R = 0.5 * R' + 0.5 * R_prev = 0.5 * 0.5 + 0.5 * 0.1 = 0.3 (R' = (2 - 1) / 2 / 1).
    assert next_stagnancy_rate([0.1], [2.0], [1.0], [1.0], alpha=0.5) == approx([0.3])


def test_zero_edge_cases() -> None:
    # Every loss 0: mean I = 0 -> all tasks equally complete, P_u = 1.
    assert incompleteness_probability([0.0, 0.0]).tolist() == [1.0, 1.0]
    # Every rate 0: P_r = 1 for all; one rate 0 among others: that task gets 1.
    assert stagnancy_probability([0.0, 0.0, 0.0]).tolist() == [1.0, 1.0, 1.0]
    assert stagnancy_probability([0.0, 0.3]) == approx([1.0, 0.5])  # mean 0.15 / 0.3
    # Loss 0 -> I = 0 -> P_u = 0: R' undefined. Epoch 1: R = 0; later: previous rate kept.
    p_u = incompleteness_probability(incompleteness([2.0, 2.0], [0.0, 1.0]))
    assert p_u.tolist() == [0.0, 1.0]
    assert np.isnan(relative_progress([2.0, 2.0], [0.0, 1.0], p_u)[0])
    assert first_stagnancy_rate([2.0, 2.0], [0.0, 1.0], p_u) == approx([0.0, 0.5])
    assert next_stagnancy_rate([0.4, 0.2], [1.0, 2.0], [0.0, 1.0], p_u) == approx([0.4, 0.23])
    # Previous loss 0: R' undefined -> previous rate kept (0.1 * 0.5 + 0.9 * 0.2 = 0.23 for task 1).
    assert next_stagnancy_rate([0.4, 0.2], [0.0, 2.0], [0.5, 1.0], [1.0, 1.0]) == approx(
        [0.4, 0.23]
    )


def test_activation_probability_equal_custom_and_single() -> None:
    terms = {
        "regularization": [1.0, 1.0, 1.0],
        "depth": [0.5, 1.0, 1.0],
        "count": [1.0, 0.5, 1.0],
        "incompleteness": P_U1,
        "stagnancy": P_R1,
    }
    assert activation_probability(terms) == approx(P1)
    # Custom weights {depth: 3, stagnancy: 1} -> 3/4 and 1/4:
    #   task 0: 0.75 * 0.5 + 0.25 * 4/9 = 0.375 + 1/9; tasks 1, 2: 0.75 + 0.25 = 1.
    custom = activation_probability(
        {"depth": terms["depth"], "stagnancy": terms["stagnancy"]}, {"depth": 3, "stagnancy": 1}
    )
    assert custom == approx([0.375 + 1 / 9, 1.0, 1.0])
    # A single metric is the term itself.
    assert activation_probability({"count": terms["count"]}) == approx([1.0, 0.5, 1.0])


def test_floor_to_reproduces_the_scripts_bits() -> None:
    terms = {
        "regularization": [1.0, 1.0, 1.0],
        "depth": [0.5, 1.0, 1.0],
        "count": [1.0, 0.5, 1.0],
        "incompleteness": P_U1,
        "stagnancy": P_R1,
    }
    # Task 0, in thousandths: 0.2*1 -> 200, 0.2*0.5 -> 100, 0.2*1 -> 200, 0.2*(2/3) = 0.1333 -> 133,
    # 0.2*(4/9) = 0.0888 -> 88; sum 721 -> 0.721 (exact: 0.72222). Task 1: 200+200+100+200+200.
    assert activation_probability(terms, floor_to=0.001) == approx([0.721, 0.9, 1.0])
    # Three metrics, 1/3 each: floor(333.33) = 333 per term, so an always-on task gets 0.999.
    three = {m: terms[m] for m in ("regularization", "depth", "count")}
    assert activation_probability(three, floor_to=0.001) == approx([0.832, 0.832, 0.999])
    # Task 0: 333 + floor(166.67) = 166 + 333 = 832; task 1: 333 + 333 + 166 = 832.
    # 0.5 * 0.7 = 0.35 is exactly 350 thousandths, though 0.5 * 0.7 / 0.001 is 349.99999999999994
    # in floating point: 350 + 500 -> 0.85, not 0.849.
    halves = {"depth": [0.7, 1.0], "count": [1.0, 1.0]}
    assert activation_probability(halves, floor_to=0.001) == approx([0.85, 1.0])


def test_draw_gates_frequencies_and_forced_task() -> None:
    rng = np.random.default_rng(0)
    draws = np.stack([draw_gates([0.0, 1.0, 0.3], rng) for _ in range(20000)])
    assert set(np.unique(draws)) <= {0, 1}
    assert draws[:, 0].max() == 0 and draws[:, 1].min() == 1
    assert abs(draws[:, 2].mean() - 0.3) < 0.02
    # All drawn off -> keep the most probable task, ties broken by the lowest index.
    assert draw_gates([0.0, 0.0, 0.0], rng).tolist() == [1, 0, 0]
    assert draw_gates([0.0, 1e-15, 1e-15], rng).tolist() == [0, 1, 0]
    assert draw_gates([0.0, 0.0], rng, ensure_one_active=False).tolist() == [0, 0]


# --------------------------------------------------------------------------- the schedule


def test_schedule_follows_the_hand_worked_history() -> None:
    dst = schedule(seed=3)
    assert dst.loss_weights == approx([2.0, 1.0, 2 / 3])
    assert dst.initial_losses == approx(L0)
    assert dst.gates.tolist() == [1, 1, 1] and dst.probabilities.tolist() == [1.0, 1.0, 1.0]

    expected = [(P_U1, R1, P_R1, P1), (P_U2, R2, P_R2, P2), (P_U3, R3, P_R3, P3)]
    for epoch, (losses, (p_u, rates, p_r, p)) in enumerate(
        zip([L1, L2, L3], expected, strict=True), start=1
    ):
        record = dst.update(losses)
        assert record.epoch == dst.epoch == epoch
        assert record.p_incompleteness == approx(p_u)
        assert record.stagnancy_rate == approx(rates)
        assert record.p_stagnancy == approx(p_r)
        assert record.p_depth.tolist() == [0.5, 1.0, 1.0]
        assert record.activation_probability == approx(p)
        assert record.drop_rate == approx([1 - value for value in p])
        assert record.gate_next.tolist() == dst.gates.tolist()
        assert record.gate_next[2] == 1  # probability 1


def test_schedule_without_normalisation_keeps_raw_losses() -> None:
    dst = schedule(normalize_initial_losses=False)
    assert dst.loss_weights.tolist() == [1.0, 1.0, 1.0]
    assert dst.initial_losses.tolist() == RAW_L0
    # I = [0.5, 0.5, 0.5] -> P_u = 1; R1 = 0.5 each -> P_r = 1.
    record = dst.update([0.5, 1.0, 1.5])
    assert record.p_incompleteness.tolist() == [1.0, 1.0, 1.0]
    assert record.stagnancy_rate == approx([0.5, 0.5, 0.5])


def test_single_metric_schedule_and_rows() -> None:
    dst = schedule(metrics=["depth"])
    record = dst.update(L1)
    assert record.activation_probability.tolist() == [0.5, 1.0, 1.0]
    assert record.terms().keys() == {"depth"}
    rows = record.rows(["Smiling", "Young", "Male"])
    assert [list(row) for row in rows] == [list(HISTORY_COLUMNS)] * 3
    first = rows[0]
    assert first["epoch"] == 1 and first["task"] == "Smiling"
    assert first["depth"] == 2 and type(first["depth"]) is int
    assert first["label_count"] == 100 and type(first["gate_next"]) is int
    assert first["initial_loss"] == 2.0 and first["loss"] == 1.0
    assert first["p_depth"] == 0.5 and type(first["p_depth"]) is float
    for metric in ("regularization", "count", "incompleteness", "stagnancy"):
        assert first[f"p_{metric}"] is None
    assert first["stagnancy_rate"] == pytest.approx(0.75)  # always tracked
    with pytest.raises(ValueError, match="task names"):
        record.rows(["only one"])


def test_custom_weights_in_schedule() -> None:
    dst = schedule(metrics=["depth", "stagnancy"], weights={"depth": 3, "stagnancy": 1})
    assert dst.weights == {"depth": 0.75, "stagnancy": 0.25}
    assert dst.update(L1).activation_probability == approx([0.375 + 1 / 9, 1.0, 1.0])


def test_random_histories_stay_in_range() -> None:
    rng = np.random.default_rng(1234)
    for trial in range(300):
        tasks = int(rng.integers(1, 7))
        metrics = [m for m in DST_METRICS if rng.random() < 0.6] or ["stagnancy"]
        weights = {m: float(rng.random()) + 1e-3 for m in metrics} if rng.random() < 0.5 else None
        dst = DSTSchedule(
            rng.integers(1, 30, tasks),
            rng.integers(1, 1000, tasks),
            metrics=metrics,
            weights=weights,
            alpha=float(rng.uniform(0.01, 1.0)),
            seed=trial,
            floor_to=[None, 0.001, 0.05][trial % 3],
        )
        dst.set_initial_losses(rng.uniform(0.01, 5.0, tasks))
        for _ in range(8):
            # Losses may rise, fall, stall or hit exactly 0.
            losses = rng.uniform(0.0, 6.0, tasks) * (rng.random(tasks) > 0.15)
            record = dst.update(losses)
            for term in record.terms().values():
                assert np.all((term >= 0) & (term <= 1))
            assert np.all(np.isfinite(record.stagnancy_rate)) and np.all(record.stagnancy_rate >= 0)
            p = record.activation_probability
            assert np.all((p >= 0) & (p <= 1))
            for gates in (record.gate_next, dst.draw()):
                assert set(gates.tolist()) <= {0, 1} and gates.sum() >= 1


def test_same_seed_repeats_gates_and_other_seed_differs() -> None:
    def run(seed: int) -> list[list[int]]:
        dst = schedule(metrics=["depth", "count"], seed=seed)  # P = [0.75, 0.75, 1]
        dst.update(L1)
        return [dst.draw().tolist() for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def _run(dst: DSTSchedule, histories: list[list[float]]) -> list[tuple[list[float], list[int]]]:
    """Per epoch: the probabilities and the update's gates followed by three per-step draws."""
    out = []
    for losses in histories:
        record = dst.update(losses)
        steps = [dst.draw().tolist() for _ in range(3)]
        out.append((record.activation_probability.tolist(), [record.gate_next.tolist(), *steps]))
    return out


@pytest.mark.parametrize("transport", ["torch", "pickle", "json"])
def test_resume_mid_run_draws_what_an_uninterrupted_run_draws(transport: str) -> None:
    later = [[0.5, 1.4, 1.0], [0.45, 1.0, 0.9], [0.5, 0.7, 0.85]]
    uninterrupted = _run(schedule(seed=11), [L1, L2, L3, *later])

    first_half = schedule(seed=11)
    head = _run(first_half, [L1, L2, L3])
    state = first_half.state_dict()
    if transport == "torch":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    elif transport == "pickle":
        state = pickle.loads(pickle.dumps(state))
    else:
        state = json.loads(json.dumps(state))

    resumed = DSTSchedule(DEPTHS, COUNTS, seed=999)  # the seed is replaced by the saved state
    resumed.load_state_dict(state)
    assert resumed.epoch == 3 and resumed.gates.tolist() == first_half.gates.tolist()
    assert head + _run(resumed, later) == uninterrupted


def test_resume_with_other_settings_is_refused() -> None:
    dst = schedule()
    dst.update(L1)
    other = DSTSchedule(DEPTHS, COUNTS, alpha=0.2)
    with pytest.raises(ConfigError, match="alpha"):
        other.load_state_dict(dst.state_dict())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("metrics", "weights", "message"),
    [
        (["depht"], None, "unknown DST metric 'depht'.*Did you mean depth"),
        ("depth", None, "must be a list"),
        ([], None, "empty"),
        (["depth", "depth"], None, "twice"),
        (["depth"], {"depth": 1, "count": 1}, r"\['count'\].*not among the enabled"),
        (["depth", "count"], {"depth": 1}, r"no weight for the enabled metrics \['count'\]"),
        (["depth"], {"depth": -1}, "non-negative"),
        (["depth", "count"], {"depth": 0, "count": 0}, "positive sum"),
        (["depth"], {"depth": "heavy"}, "must be a number"),
    ],
)
def test_bad_metrics_and_weights_raise_config_error(
    metrics: object, weights: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        DSTSchedule(DEPTHS, COUNTS, metrics=metrics, weights=weights)


def test_metric_order_is_canonical() -> None:
    assert resolve_metrics(["stagnancy", "depth"]) == ("depth", "stagnancy")
    assert resolve_weights(["count", "depth"]) == {"depth": 0.5, "count": 0.5}


def test_bad_options_and_inputs() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        DSTSchedule(DEPTHS, COUNTS, alpha=0)
    with pytest.raises(ConfigError, match="floor_to"):
        DSTSchedule(DEPTHS, COUNTS, floor_to=0)
    with pytest.raises(ValueError, match="label_counts has 2"):
        DSTSchedule(DEPTHS, [1, 2])
    with pytest.raises(ValueError, match="whole numbers"):
        DSTSchedule([1.5, 2, 2], COUNTS)
    dst = DSTSchedule(DEPTHS, COUNTS)
    with pytest.raises(RuntimeError, match="set_initial_losses"):
        dst.update(L1)
    with pytest.raises(ValueError, match=r"initial_losses must be positive.*task index 1"):
        dst.set_initial_losses([1.0, 0.0, 1.0])
    dst.set_initial_losses(RAW_L0)
    with pytest.raises(ValueError, match=r"finite.*task index 2"):
        dst.update([1.0, 1.0, float("inf")])
    with pytest.raises(ValueError, match="non-negative"):
        dst.update([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="3 tasks"):
        dst.update([1.0, 1.0])
    dst.update(L1)
    with pytest.raises(RuntimeError, match="before the first update"):
        dst.set_initial_losses(RAW_L0)


def test_a_task_with_nothing_measured_carries_its_loss_over() -> None:
    """NaN (no labelled sample in the epoch) keeps the previous loss, not a loss of 0."""
    carried = DSTSchedule(DEPTHS, COUNTS, seed=3)
    reference = DSTSchedule(DEPTHS, COUNTS, seed=3)
    for schedule in (carried, reference):
        schedule.set_initial_losses(RAW_L0)
    first = carried.update([L1[0], float("nan"), L1[2]])
    expected = reference.update([L1[0], reference.initial_losses[1], L1[2]])
    assert first.carried_over == (1,)
    np.testing.assert_array_equal(first.loss, expected.loss)
    np.testing.assert_array_equal(first.activation_probability, expected.activation_probability)
    second = carried.update([L1[0] * 0.9, float("nan"), L1[2] * 0.9])
    assert second.loss[1] == first.loss[1]
    assert second.stagnancy_rate[1] == first.stagnancy_rate[1], "no progress measured: R kept"


def test_controls_keep_the_budget_and_drop_the_task_signal() -> None:
    p = np.array([1.0, 0.9, 0.6, 0.3])
    rng = np.random.Generator(np.random.PCG64(0))
    shuffled = shuffled_probabilities(p, rng)
    assert sorted(shuffled) == sorted(p)
    permutation = np.random.Generator(np.random.PCG64(0)).permutation(4)
    np.testing.assert_array_equal(shuffled, p[permutation])
    np.testing.assert_allclose(uniform_probabilities(p), np.full(4, p.mean()))


@pytest.mark.parametrize("control", ["shuffled", "uniform"])
def test_a_control_draws_from_dst_probabilities_reassigned(control: str) -> None:
    dst = DSTSchedule(DEPTHS, COUNTS, seed=5)
    ctl = DSTSchedule(DEPTHS, COUNTS, seed=5, control=control)
    for schedule in (dst, ctl):
        schedule.set_initial_losses(RAW_L0)
    own, controlled = dst.update(L1), ctl.update(L1)
    np.testing.assert_array_equal(controlled.dst_probability, own.activation_probability)
    applied = controlled.activation_probability
    if control == "uniform":
        np.testing.assert_allclose(applied, np.full(3, own.activation_probability.mean()))
    else:
        assert sorted(applied) == sorted(own.activation_probability)
    assert ctl.state_dict()["settings"]["control"] == control
    with pytest.raises(ConfigError, match=r"strategy\.control"):
        DSTSchedule(DEPTHS, COUNTS, control="reversed")


def test_history_rows_carry_the_gate_each_task_trained_with() -> None:
    dst = DSTSchedule(DEPTHS, COUNTS, seed=1)
    dst.set_initial_losses(RAW_L0)
    record = dst.update(L1)
    rows = record.rows(["a", "b", "c"], gate=[1, 0, 0.5])
    assert [row["gate"] for row in rows] == [1, 0, 0.5]
    assert list(rows[0]) == list(HISTORY_COLUMNS)
    assert all(row["gate"] is None for row in record.rows(["a", "b", "c"]))
