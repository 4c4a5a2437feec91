"""The five Gramian methods that solve a problem (MGDA, CAGrad, Nash-MTL, Aligned-MTL, UPGrad)
against independent re-derivations from their papers, on random, conflicting, near-collinear,
disparate-norm and absent-task gradients at T = 2, 3, 8 and 40, and against the optimality
conditions of their problems.

Each re-derivation below works on the Jacobian itself (not the Gramian the methods see) and
states the paper's problem in its own terms, solved by a different algorithm than the method's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtl_celeba.scheduling.methods.alignedmtl import AlignedMTL
from mtl_celeba.scheduling.methods.cagrad import CAGrad, cagrad_weights
from mtl_celeba.scheduling.methods.mgda import MGDA, min_norm_weights
from mtl_celeba.scheduling.methods.nashmtl import NashMTL, nash_weights
from mtl_celeba.scheduling.methods.upgrad import UPGrad
from mtl_celeba.scheduling.strategy import TaskStep

TASK_COUNTS = [2, 3, 8, 40]
KINDS = ["random", "conflicting", "collinear", "disparate", "absent"]
WIDTH = 96  # gradient dimension (> 40, so 40 random gradients are independent)
C = 0.4  # CAGrad's c


def jacobian_for(kind: str, num_tasks: int) -> np.ndarray:
    """(T, WIDTH) float64 task gradients of one hard case (absent: one row is zero)."""
    rng = np.random.default_rng(100 * num_tasks + KINDS.index(kind))
    noise = rng.standard_normal((num_tasks, WIDTH))
    common = rng.standard_normal(WIDTH)
    if kind == "conflicting":  # pairs pulled apart: cosine about -0.6 within a pair
        jacobian = common + 2 * noise
        jacobian[1::2] = common - 2 * noise[0::2][: num_tasks // 2]
        return jacobian
    if kind == "collinear":
        return common + 1e-4 * noise
    if kind == "disparate":
        return noise * np.logspace(-2, 2, num_tasks)[:, None]
    if kind == "absent" and num_tasks > 2:
        noise[num_tasks // 2] = 0.0
    return noise


def update(strategy, jacobian: np.ndarray) -> np.ndarray:
    """The strategy's update ``sum_t w_t g_t`` from a float64 Gramian (absent rows: no label)."""
    present = np.abs(jacobian).sum(axis=1) > 0
    counts = torch.as_tensor(present, dtype=torch.float32) * 4
    gramian = torch.from_numpy(jacobian @ jacobian.T)
    step = TaskStep(torch.linspace(0.5, 1.0, len(jacobian)) * counts.sign(), counts, gramian)
    weights = strategy.weights(step).double().numpy()
    assert np.all(weights[~present] == 0)
    return weights @ jacobian


def relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# ------------------------------------------------------------------ the papers' problems
def mgda_paper(jacobian: np.ndarray) -> np.ndarray:
    """Sener & Koltun eq. (3): ``min_{a in simplex} ||sum_t a_t g_t||^2``, by SLSQP on J, then
    polished on SLSQP's support S by the problem's KKT system ``G_SS a_S = lambda 1``,
    ``1^T a_S = 1`` (SLSQP alone stops 1e-3 short when gradient norms span 10^4)."""
    num_tasks = len(jacobian)
    scaled = jacobian / np.sqrt((jacobian**2).sum() / num_tasks)

    def objective(a: np.ndarray) -> tuple[float, np.ndarray]:
        d = a @ scaled
        return float(d @ d), 2 * scaled @ d

    result = minimize(
        objective, np.full(num_tasks, 1 / num_tasks), jac=True, method="SLSQP",
        bounds=[(0, None)] * num_tasks, constraints={"type": "eq", "fun": lambda a: a.sum() - 1},
        options={"ftol": 1e-16, "maxiter": 5000},
    )  # fmt: skip
    support = result.x > 1e-6 * result.x.max()
    gramian = scaled @ scaled.T
    for _ in range(4 * num_tasks):  # primal active set from SLSQP's support
        size = int(support.sum())
        system = np.block(
            [
                [gramian[support][:, support], -np.ones((size, 1))],
                [np.ones((1, size)), np.zeros((1, 1))],
            ]
        )
        solution = np.linalg.lstsq(system, np.append(np.zeros(size), 1.0), rcond=None)[0]
        a = np.zeros(num_tasks)
        a[support] = solution[:size]
        if a.min() < -1e-12:  # drop the most negative weight
            support[np.argmin(a)] = False
            continue
        violation = gramian @ a - a @ gramian @ a
        if violation.min() >= -1e-12:
            break
        support[np.argmin(violation)] = True  # add the most violated task
    return np.clip(a, 0, None) @ jacobian


def cagrad_paper(jacobian: np.ndarray) -> np.ndarray:
    """Liu et al. eq. (2), the primal: ``max_d min_t <g_t, d>`` s.t. ``||d - g0|| <= c ||g0||``,
    by SLSQP over (d, s); divided by ``1 + c^2`` as the official ``rescale=1``."""
    scale = np.sqrt((jacobian**2).sum() / len(jacobian))
    g = jacobian / scale
    g0 = g.mean(axis=0)
    radius = C * np.linalg.norm(g0)
    start = np.append(g0, (g @ g0).min())
    result = minimize(
        lambda x: -x[-1], start, jac=lambda x: np.append(np.zeros(len(g0)), -1.0),
        method="SLSQP",
        constraints=[
            {"type": "ineq", "fun": lambda x: g @ x[:-1] - x[-1],
             "jac": lambda x: np.hstack([g, -np.ones((len(g), 1))])},
            {"type": "ineq", "fun": lambda x: radius**2 - np.sum((x[:-1] - g0) ** 2),
             "jac": lambda x: np.append(-2 * (x[:-1] - g0), 0.0)},
        ],
        options={"ftol": 1e-16, "maxiter": 5000},
    )  # fmt: skip
    return result.x[:-1] * scale / (1 + C**2)


def nash_paper(jacobian: np.ndarray) -> np.ndarray:
    """Navon et al. eq. (4): ``G alpha = 1 / alpha``, as the root of ``F(x) = a (G a) - 1``,
    ``a = e^x``, by Newton's method with its Jacobian ``diag(a) G diag(a) + diag(a G a)`` and
    step halving on ``||F||``, from the orthogonal-gradient answer ``a = 1 / ||g_t||``."""
    gramian = jacobian @ jacobian.T
    x = -0.5 * np.log(np.diag(gramian))

    def residual(x: np.ndarray) -> np.ndarray:
        return np.exp(x) * (gramian @ np.exp(x)) - 1

    for _ in range(500):
        f = residual(x)
        if np.abs(f).max() < 1e-13:
            break
        a = np.exp(x)
        step = np.linalg.solve(a[:, None] * gramian * a[None, :] + np.diag(a * (gramian @ a)), f)
        t = 1.0
        while np.linalg.norm(residual(x - t * step)) >= np.linalg.norm(f) and t > 1e-12:
            t /= 2
        x = x - t * step
    assert np.abs(residual(x)).max() < 1e-10
    return np.exp(x) @ jacobian


def aligned_paper(jacobian: np.ndarray, eps: float) -> np.ndarray:
    """Senushkin et al. Alg. 1 from the SVD ``J = U S V^T``: the aligned gradients
    ``sigma_min U V^T`` (ranks with ``sigma^2 > T eps sigma_max^2``), averaged."""
    u, sigma, vt = np.linalg.svd(jacobian, full_matrices=False)
    keep = sigma**2 > len(jacobian) * eps * sigma.max() ** 2
    aligned = sigma[keep].min() * u[:, keep] @ vt[keep]
    return aligned.mean(axis=0)


def upgrad_paper(jacobian: np.ndarray) -> np.ndarray:
    """Quinton & Rey: each ``g_i / T`` projected onto the dual cone of the rows, i.e.
    ``w_i = argmin_{v >= e_i / T} v^T G v`` for TorchJD's ``G = J J^T / ||J||_F^2 + 1e-4 I``,
    by L-BFGS-B; the update is ``sum_i w_i^T J``."""
    num_tasks = len(jacobian)
    gramian = jacobian @ jacobian.T
    gramian = gramian / np.trace(gramian) + 1e-4 * np.eye(num_tasks)
    total = np.zeros(num_tasks)
    for i in range(num_tasks):
        lower = np.eye(num_tasks)[i] / num_tasks
        result = minimize(
            lambda v: (float(v @ gramian @ v), 2 * gramian @ v), lower, jac=True,
            method="L-BFGS-B", bounds=[(low, None) for low in lower],
            options={"ftol": 1e-20, "gtol": 1e-14, "maxiter": 20000},
        )  # fmt: skip
        total += result.x
    return total @ jacobian


def present_rows(jacobian: np.ndarray) -> np.ndarray:
    return jacobian[np.abs(jacobian).sum(axis=1) > 0]


CASES = [(kind, t) for t in TASK_COUNTS for kind in KINDS if not (kind == "absent" and t == 2)]
IDS = [f"{kind}-T{t}" for kind, t in CASES]


@pytest.mark.parametrize(("kind", "num_tasks"), CASES, ids=IDS)
def test_mgda_is_the_min_norm_point_of_the_hull(kind, num_tasks):
    jacobian = jacobian_for(kind, num_tasks)
    expected = mgda_paper(present_rows(jacobian))
    assert relative(update(MGDA(), jacobian), expected) < 1e-4


@pytest.mark.parametrize(("kind", "num_tasks"), CASES, ids=IDS)
def test_mgda_weights_meet_the_kkt_conditions(kind, num_tasks):
    # min a^T G a on the simplex: optimal iff (G a)_t >= a^T G a for all t, = where a_t > 0
    gramian = present_rows(jacobian_for(kind, num_tasks))
    gramian = gramian @ gramian.T
    a = min_norm_weights(gramian)
    value = a @ gramian @ a
    scale = np.trace(gramian) / len(gramian)
    assert np.all(a >= 0) and abs(a.sum() - 1) < 1e-12
    assert np.all(gramian @ a >= value - 1e-9 * scale)
    assert np.all(np.abs((gramian @ a - value)[a > 1e-9]) <= 1e-9 * scale)


@pytest.mark.parametrize(("kind", "num_tasks"), CASES, ids=IDS)
def test_cagrad_is_the_best_worst_case_update_in_its_ball(kind, num_tasks):
    jacobian = jacobian_for(kind, num_tasks)
    expected = cagrad_paper(present_rows(jacobian))
    assert relative(update(CAGrad(c=C), jacobian), expected) < 1e-4


@pytest.mark.parametrize(("kind", "num_tasks"), CASES, ids=IDS)
def test_cagrad_dual_meets_the_kkt_conditions(kind, num_tasks):
    # d = g0 + rho g_w / ||g_w||: w minimises f(w) = w^T G 1/T + rho sqrt(w^T G w) on the
    # simplex iff grad f is equal on w's support and no smaller off it
    jacobian = present_rows(jacobian_for(kind, num_tasks))
    num_tasks = len(jacobian)
    gramian = jacobian @ jacobian.T
    weights = cagrad_weights(gramian, C)
    mean = np.full(num_tasks, 1 / num_tasks)
    rho = C * np.sqrt(mean @ gramian @ mean)
    w = (weights * (1 + C**2) - mean) / (weights * (1 + C**2) - mean).sum()
    gradient = gramian @ mean + rho * gramian @ w / np.sqrt(w @ gramian @ w)
    on = w > 1e-7
    scale = np.trace(gramian) / num_tasks
    lowest = gradient[on].min()
    assert np.all(gradient[on] - lowest <= 1e-6 * scale)
    assert np.all(gradient[~on] >= lowest - 1e-6 * scale)


@pytest.mark.parametrize(("kind", "num_tasks"), CASES, ids=IDS)
def test_nashmtl_solves_the_bargaining_equation_at_the_authors_scale(kind, num_tasks):
    jacobian = jacobian_for(kind, num_tasks)
    actual = update(NashMTL(), jacobian)
    assert relative(actual, nash_paper(present_rows(jacobian))) < 1e-4
    present = present_rows(jacobian)
    alpha = nash_weights(present @ present.T)
    np.testing.assert_allclose(present @ present.T @ alpha, 1 / alpha, rtol=1e-6)
    assert actual @ actual == pytest.approx(len(present), rel=1e-6)  # ||d||^2 = T


@pytest.mark.parametrize(("kind", "num_tasks"), CASES, ids=IDS)
def test_alignedmtl_averages_the_aligned_gradients(kind, num_tasks):
    jacobian = jacobian_for(kind, num_tasks)
    eps = float(np.finfo(np.float64).eps)  # the Gramian here is float64
    expected = aligned_paper(present_rows(jacobian), eps)
    assert relative(update(AlignedMTL(), jacobian), expected) < 1e-4


def test_alignedmtl_cuts_ranks_at_the_precision_of_a_float32_gramian():
    # gradients equal to float32 precision: their float32 Gramian's small eigenvalues are
    # rounding noise, so the update is the one of the common direction (rank 1), not 10^4x less
    rng = np.random.default_rng(0)
    jacobian = (rng.standard_normal(WIDTH) + 1e-6 * rng.standard_normal((8, WIDTH))).astype(
        np.float32
    )
    rows = torch.from_numpy(jacobian)
    step = TaskStep(torch.ones(8), torch.full((8,), 4.0), rows @ rows.T)
    actual = AlignedMTL().weights(step).double().numpy() @ jacobian.astype(np.float64)
    expected = aligned_paper(jacobian.astype(np.float64), float(np.finfo(np.float32).eps))
    assert relative(actual, expected) < 1e-4


@pytest.mark.parametrize(("kind", "num_tasks"), CASES, ids=IDS)
def test_upgrad_averages_the_dual_cone_projections(kind, num_tasks):
    jacobian = jacobian_for(kind, num_tasks)
    expected = upgrad_paper(present_rows(jacobian))
    assert relative(update(UPGrad(), jacobian), expected) < 1e-4
