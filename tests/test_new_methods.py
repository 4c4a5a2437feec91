"""FairGrad, GradVac, GradDrop, ConFIG and DB-MTL against independent re-derivations from their
papers (written here, not the authors' code) on random, conflicting, near-collinear,
disparate-norm and absent-task cases at T = 2, 3, 8, 40; and one tiny end-to-end run each."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torchjd.aggregation import ConFIG as TorchJDConFIG
from torchjd.aggregation import FairGradWeighting

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.config import ConFIG, config_weights
from mtl_celeba.scheduling.methods.dbmtl import DBMTL
from mtl_celeba.scheduling.methods.fairgrad import FairGrad, fairgrad_weights
from mtl_celeba.scheduling.methods.graddrop import GradDrop, graddrop_gradient
from mtl_celeba.scheduling.methods.gradvac import GradVac
from mtl_celeba.scheduling.strategy import TaskStep

SIZES = (2, 3, 8, 40)
CASES = ("random", "conflicting", "near_collinear", "disparate")
TOLERANCE = 1e-6


def jacobian_for(case: str, num_tasks: int, seed: int = 0, width: int = 64) -> torch.Tensor:
    """(T, width) float64 task gradients of one hard case."""
    generator = torch.Generator().manual_seed(seed * 1000 + num_tasks)
    rows = torch.randn(num_tasks, width, generator=generator, dtype=torch.float64)
    if case == "conflicting":  # every odd task nearly opposes the task before it
        half = num_tasks // 2
        rows[1 : 2 * half : 2] = -rows[0 : 2 * half : 2] + 0.2 * rows[1 : 2 * half : 2]
    elif case == "near_collinear":  # one direction, 1% apart
        base = torch.randn(width, generator=generator, dtype=torch.float64)
        rows = base + 1e-2 * rows
    elif case == "disparate":  # norms over two orders of magnitude
        rows = rows * torch.logspace(-1, 1, num_tasks, dtype=torch.float64)[:, None]
    return rows


def step_for(jacobian: torch.Tensor, losses: torch.Tensor | None = None, present=None) -> TaskStep:
    """A step with the Jacobian's Gramian (float64), absent tasks' rows zeroed."""
    num_tasks = len(jacobian)
    present = torch.ones(num_tasks, dtype=torch.bool) if present is None else present
    jacobian = jacobian * present[:, None]
    if losses is None:
        losses = torch.linspace(0.3, 1.2, num_tasks, dtype=torch.float64)
    counts = present.float() * 8
    return TaskStep(losses * present, counts, jacobian @ jacobian.T)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def all_cases():
    return [(case, size) for case in CASES for size in SIZES]


def absent_mask(num_tasks: int) -> torch.Tensor:
    """Every third task missing from the batch (task 1 when T = 2)."""
    present = torch.ones(num_tasks, dtype=torch.bool)
    present[1::3] = False
    return present


# ------------------------------------------------------------------ FairGrad
def fairgrad_by_log_newton(gramian: np.ndarray, alpha: float) -> np.ndarray:
    """G w = w^(-1/alpha) (the paper's Eq. 4) by plain Newton steps in u = log w, each clipped
    to |du| <= 1, from u = 0."""
    u = np.zeros(len(gramian))
    for _ in range(500):
        w = np.exp(u)
        residual = gramian @ w - w ** (-1 / alpha)
        jacobian = gramian * w[None, :] + np.diag(w ** (-1 / alpha) / alpha)
        u = u + np.clip(np.linalg.solve(jacobian, -residual), -1.0, 1.0)
    return np.exp(u)


@pytest.mark.parametrize(("case", "num_tasks"), all_cases())
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_solves_the_papers_equation(case, num_tasks, alpha):
    jacobian = jacobian_for(case, num_tasks)
    gramian = (jacobian @ jacobian.T).numpy()
    ours = fairgrad_weights(gramian, alpha)
    assert (ours > 0).all()
    target = ours ** (-1 / alpha)
    assert np.abs(gramian @ ours - target).max() <= 1e-8 * target.max()
    expected = fairgrad_by_log_newton(gramian, alpha)
    assert relative(torch.from_numpy(ours) @ jacobian, torch.from_numpy(expected) @ jacobian) < 1e-6


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e4])
def test_fairgrad_holds_at_any_gradient_scale(scale):
    """The equation is not scale-free; the solver must reach it on tiny and huge Gramians."""
    jacobian = jacobian_for("random", 40) * math.sqrt(scale)
    gramian = (jacobian @ jacobian.T).numpy()
    ours = fairgrad_weights(gramian, 2.0)
    expected = fairgrad_by_log_newton(gramian, 2.0)
    assert relative(torch.from_numpy(ours) @ jacobian, torch.from_numpy(expected) @ jacobian) < 1e-6


def test_fairgrad_equals_torchjd_where_its_solver_converges():
    jacobian = jacobian_for("random", 8)
    gramian = jacobian @ jacobian.T
    strategy = FairGrad(alpha=2.0)
    ours = strategy.weights(step_for(jacobian)).double()
    library = FairGradWeighting(alpha=2.0)(gramian)
    assert relative(ours @ jacobian, library @ jacobian) < 1e-5


@pytest.mark.parametrize("num_tasks", SIZES)
def test_fairgrad_weighs_only_present_tasks(num_tasks):
    jacobian = jacobian_for("conflicting", num_tasks)
    present = absent_mask(num_tasks)
    weights = FairGrad(alpha=2.0).weights(step_for(jacobian, present=present)).double()
    assert (weights[~present] == 0).all()
    sub = jacobian[present]
    expected = fairgrad_by_log_newton((sub @ sub.T).numpy(), 2.0)
    assert relative(weights[present] @ sub, torch.from_numpy(expected) @ sub) < 1e-5


def test_fairgrad_rejects_a_bad_alpha():
    with pytest.raises(ConfigError, match=r"strategy\.alpha"):
        FairGrad(alpha=0)


# ------------------------------------------------------------------ ConFIG
def config_from_the_paper(jacobian: torch.Tensor) -> torch.Tensor:
    """Eq. 2: the least-norm x with <u_t, x> = 1 for every unit gradient u_t, normalised, times
    the summed projections of the gradients on it."""
    units = (jacobian / jacobian.norm(dim=1, keepdim=True)).numpy()
    direction, *_ = np.linalg.lstsq(units, np.ones(len(units)), rcond=None)
    unit = torch.from_numpy(direction / np.linalg.norm(direction))
    return (jacobian @ unit).sum() * unit


@pytest.mark.parametrize(("case", "num_tasks"), all_cases())
def test_config_equals_the_papers_update(case, num_tasks):
    jacobian = jacobian_for(case, num_tasks)
    ours = ConFIG().weights(step_for(jacobian)).double() @ jacobian
    assert relative(ours, config_from_the_paper(jacobian)) < TOLERANCE
    # conflict-free: the same positive cosine with every task gradient
    cosines = (jacobian @ ours) / (jacobian.norm(dim=1) * ours.norm())
    assert (cosines > 0).all()
    assert float(cosines.max() - cosines.min()) < 1e-6


@pytest.mark.parametrize(("case", "num_tasks"), all_cases())
def test_config_wrapper_equals_torchjd_config_on_the_jacobian(case, num_tasks):
    jacobian = jacobian_for(case, num_tasks)
    ours = config_weights(jacobian @ jacobian.T, torch.finfo(torch.float64).eps) @ jacobian
    assert relative(ours, TorchJDConFIG()(jacobian)) < TOLERANCE


@pytest.mark.parametrize("num_tasks", SIZES)
def test_config_weighs_only_present_tasks(num_tasks):
    jacobian = jacobian_for("random", num_tasks)
    present = absent_mask(num_tasks)
    weights = ConFIG().weights(step_for(jacobian, present=present)).double()
    assert (weights[~present] == 0).all()
    expected = config_from_the_paper(jacobian[present])
    assert relative(weights @ jacobian, expected) < 1e-5


# ------------------------------------------------------------------ DB-MTL
def dbmtl_from_the_paper(jacobian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """log-loss gradients g_t / (L_t + eps), each rescaled to the largest norm, summed."""
    logs = jacobian / (losses[:, None] + 1e-8)
    norms = logs.norm(dim=1)
    return (logs * (norms.max() / (norms + 1e-8))[:, None]).sum(dim=0)


@pytest.mark.parametrize(("case", "num_tasks"), all_cases())
def test_dbmtl_equals_the_papers_update(case, num_tasks):
    jacobian = jacobian_for(case, num_tasks)
    losses = torch.logspace(-2, 0.5, num_tasks, dtype=torch.float64)
    ours = DBMTL().weights(step_for(jacobian, losses)).double() @ jacobian
    assert relative(ours, dbmtl_from_the_paper(jacobian, losses)) < TOLERANCE


@pytest.mark.parametrize("num_tasks", SIZES)
def test_dbmtl_weighs_only_present_tasks(num_tasks):
    jacobian = jacobian_for("disparate", num_tasks)
    losses = torch.linspace(0.1, 2.0, num_tasks, dtype=torch.float64)
    present = absent_mask(num_tasks)
    weights = DBMTL().weights(step_for(jacobian, losses, present)).double()
    assert (weights[~present] == 0).all()
    expected = dbmtl_from_the_paper(jacobian[present], losses[present])
    assert relative(weights @ jacobian, expected) < 1e-5


# ------------------------------------------------------------------ GradVac
def gradvac_from_the_paper(jacobian, targets, beta, orders):
    """Sec. 3: g_i' += ||g_i'|| (t sqrt(1 - c^2) - c sqrt(1 - t^2)) / (||g_j|| sqrt(1 - t^2)) g_j
    whenever the cosine c of g_i' and g_j is below the target t; t <- (1 - beta) t + beta c."""
    modified = []
    for i, order in enumerate(orders):
        row = jacobian[i].clone()
        for j in order:
            cosine = float(row @ jacobian[j] / (row.norm() * jacobian[j].norm()))
            target = float(targets[i, j])
            if cosine < target:
                scale = row.norm() * (
                    target * math.sqrt(1 - cosine**2) - cosine * math.sqrt(1 - target**2)
                )
                row = row + scale / (jacobian[j].norm() * math.sqrt(1 - target**2)) * jacobian[j]
            targets[i, j] = (1 - beta) * target + beta * cosine
        modified.append(row)
    return torch.stack(modified).sum(dim=0)


def orders_of(generator_state: torch.Tensor, num_tasks: int):
    """The visiting orders the strategy's generator gives: one permutation of the others per task."""
    generator = torch.Generator()
    generator.set_state(generator_state)
    orders = []
    for i in range(num_tasks):
        others = [j for j in range(num_tasks) if j != i]
        orders.append([others[k] for k in torch.randperm(len(others), generator=generator)])
    return orders


@pytest.mark.parametrize(("case", "num_tasks"), all_cases())
def test_gradvac_equals_the_papers_update_over_steps(case, num_tasks):
    strategy = GradVac(beta=0.5, seed=3)
    targets = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
    for step in range(3):
        jacobian = jacobian_for(case, num_tasks, seed=step)
        orders = orders_of(strategy.rng_state, num_tasks)
        expected = gradvac_from_the_paper(jacobian, targets, 0.5, orders)
        ours = strategy.weights(step_for(jacobian)).double() @ jacobian
        assert relative(ours, expected) < 1e-5, step
        assert torch.allclose(strategy.targets, targets, atol=1e-9)


def test_gradvac_lifts_a_cosine_exactly_to_its_target():
    """Two tasks at cosine -0.6, targets 0.5: each modified gradient g_i + c g_j has cosine 0.5
    with the other task's gradient, and the update is their sum, so w = (1 + c_10, 1 + c_01)."""
    jacobian = torch.tensor([[1.0, 0.0], [-0.6, 0.8]], dtype=torch.float64)
    strategy = GradVac(beta=0.5)
    strategy.targets = torch.full((2, 2), 0.5, dtype=torch.float64)
    weights = strategy.weights(step_for(jacobian)).double()
    for i, j in ((0, 1), (1, 0)):
        row = jacobian[i] + (weights[j] - 1) * jacobian[j]
        cosine = row @ jacobian[j] / (row.norm() * jacobian[j].norm())
        assert float(cosine) == pytest.approx(0.5, abs=1e-7)
    # the targets move half way to the observed cosine -0.6
    assert strategy.targets[0, 1] == pytest.approx(0.5 * 0.5 + 0.5 * -0.6)


@pytest.mark.parametrize("num_tasks", SIZES)
def test_gradvac_keeps_the_targets_of_absent_tasks(num_tasks):
    strategy = GradVac(beta=0.5, seed=1)
    jacobian = jacobian_for("conflicting", num_tasks)
    strategy.weights(step_for(jacobian))
    before = strategy.targets.clone()
    present = absent_mask(num_tasks)
    targets = before[present][:, present].clone()
    orders = orders_of(strategy.rng_state, int(present.sum()))
    expected = gradvac_from_the_paper(jacobian[present], targets, 0.5, orders)
    weights = strategy.weights(step_for(jacobian, present=present)).double()
    assert (weights[~present] == 0).all()
    assert relative(weights @ jacobian, expected) < 1e-5
    absent_pairs = ~(present[:, None] & present[None, :])
    assert torch.equal(strategy.targets[absent_pairs], before[absent_pairs])


def test_gradvac_rejects_a_bad_beta():
    with pytest.raises(ConfigError, match=r"strategy\.beta"):
        GradVac(beta=1.5)


# ------------------------------------------------------------------ GradDrop
def graddrop_from_the_paper(jacobian, inputs, uniform, leak):
    """Eq. 1-3, feature by feature, with the batch summed after the input's sign (Sec. 3.3)."""
    num_tasks, _, width = jacobian.shape
    out = torch.zeros(jacobian.shape[1:], dtype=torch.float64)
    for f in range(width):
        signed = [float((jacobian[t, :, f] * inputs[:, f].sign()).sum()) for t in range(num_tasks)]
        purity = 0.5 * (1 + sum(signed) / (sum(abs(s) for s in signed) + 1e-7))
        for t in range(num_tasks):
            if purity > uniform[f]:
                keep = signed[t] > 0
            elif purity < uniform[f]:
                keep = signed[t] < 0
            else:
                keep = False
            out[:, f] += (leak + (1 - leak) * keep) * jacobian[t, :, f].double()
    return out


@pytest.mark.parametrize("case", ["random", "conflicting", "disparate"])
@pytest.mark.parametrize("num_tasks", SIZES)
@pytest.mark.parametrize("leak", [0.0, 0.25])
def test_graddrop_equals_the_papers_rule_for_a_fixed_draw(case, num_tasks, leak):
    generator = torch.Generator().manual_seed(num_tasks)
    batch, width = 6, 16
    heads = jacobian_for(case, num_tasks, width=width)
    inputs = torch.randn(batch, width, generator=generator, dtype=torch.float64)
    jacobian = heads[:, None, :] * torch.rand(batch, width, generator=generator)[None]
    uniform = torch.rand(width, generator=generator)
    ours, masks = graddrop_gradient(jacobian, inputs, uniform, leak)
    assert masks.shape == (num_tasks, width)
    expected = graddrop_from_the_paper(jacobian, inputs, uniform, leak)
    assert torch.allclose(ours.double(), expected, rtol=1e-5, atol=1e-6)


def test_graddrop_keeps_a_sign_with_probability_its_purity():
    """Two tasks: +3 and -1 at one feature, so P = (1 + 2/4) / 2 = 0.75 keeps the + task."""
    jacobian = torch.tensor([[[3.0]], [[-1.0]]])
    inputs = torch.ones(1, 1)
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    kept_positive = 0
    for _ in range(draws):
        _, masks = graddrop_gradient(jacobian, inputs, torch.rand(1, generator=generator))
        assert masks[:, 0].sum() == 1  # exactly one sign survives
        kept_positive += int(masks[0, 0])
    assert abs(kept_positive / draws - 0.75) < 0.015


def test_graddrop_trains_heads_on_their_own_gradients_and_the_backbone_on_graddrops():
    torch.manual_seed(0)
    backbone, heads = nn.Linear(5, 4), nn.Linear(4, 3)
    strategy = GradDrop(leak=0.0, seed=11)
    strategy.setup(None, SimpleNamespace(tasks=["a", "b", "c"], heads=heads), "fit")
    images, targets = torch.randn(8, 5), torch.rand(8, 3).round()

    def losses_of(features):
        logits = heads(features)
        return nn.functional.binary_cross_entropy_with_logits(
            logits, targets, reduction="none"
        ).mean(0)

    features = backbone(images)
    losses = losses_of(features)
    strategy.combine(TaskStep(losses, torch.full((3,), 8.0))).backward()
    # the same by hand: per-task feature gradients, the paper's rule with the same draw
    features = backbone(images)
    task_losses = losses_of(features)
    jacobian = torch.stack(
        [torch.autograd.grad(task_losses[t], features, retain_graph=True)[0] for t in range(3)]
    )
    uniform = torch.rand(4, generator=torch.Generator().manual_seed(11))
    dropped = graddrop_from_the_paper(jacobian, features.detach(), uniform, 0.0).float()
    expected_backbone = torch.autograd.grad(features, backbone.weight, grad_outputs=dropped)[0]
    expected_heads = torch.autograd.grad(task_losses.sum(), heads.weight)[0]
    assert torch.allclose(heads.weight.grad, expected_heads, atol=1e-6)
    assert torch.allclose(backbone.weight.grad, expected_backbone, atol=1e-6)
    strategy.teardown(None, None, "fit")


def test_config_on_a_float32_gramian_stays_within_float32_precision():
    """In training the Gramian is float32; the update then moves by float32 rounding only."""
    jacobian = jacobian_for("conflicting", 8)
    gramian32 = (jacobian.float() @ jacobian.float().T).float()
    step = TaskStep(torch.ones(8), torch.ones(8), gramian32)
    ours = ConFIG().weights(step).double() @ jacobian
    assert relative(ours, config_from_the_paper(jacobian)) < 1e-4


def test_gradvac_and_graddrop_continue_from_their_checkpointed_state():
    jacobian = jacobian_for("random", 5)
    first, second = GradVac(beta=0.5, seed=2), GradVac(beta=0.5, seed=99)
    first.weights(step_for(jacobian))
    second.load_state_dict(first.state_dict())
    again = jacobian_for("conflicting", 5, seed=1)
    assert torch.equal(first.weights(step_for(again)), second.weights(step_for(again)))
    dropper, restored = GradDrop(seed=4), GradDrop(seed=5)
    torch.rand(3, generator=dropper.generator)
    restored.load_state_dict(dropper.state_dict())
    assert torch.equal(
        torch.rand(6, generator=dropper.generator), torch.rand(6, generator=restored.generator)
    )


# ------------------------------------------------------------------ end to end
NEW_METHODS = ["fairgrad", "gradvac", "graddrop", "config", "dbmtl"]
HIDDEN = ["data.hide_labels={Smiling: 0.99}", "data.hide_labels_seed=3"]
EXTRA = {"gradvac": HIDDEN, "dbmtl": HIDDEN, "graddrop": ["trainer.precision=bf16-mixed"]}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory):
    """One image cache for the module's runs (building it is most of a tiny run's time)."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("method", NEW_METHODS)
def test_new_method_trains_end_to_end(compose_train, tmp_path, shared_cache, method):
    from mtl_celeba.train import train

    extra = EXTRA.get(method, [])
    overrides = [f"strategy={method}", f"data.cache_dir={shared_cache}", "test=false", *extra]
    overrides.append("trainer.max_epochs=1")
    if HIDDEN[0] not in extra:
        overrides.append("+trainer.limit_train_batches=3")
    results = train(compose_train(overrides), tmp_path / "run")
    assert results["status"] == "completed"
    assert results["schedule"]["strategy"] == method
    weights = results["schedule"]["mean_weight"]
    assert set(weights) == set(results["attributes"])
    assert all(w is not None and math.isfinite(w) and w >= 0 for w in weights.values())
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    parameters = state["state_dict"]
    assert all(torch.isfinite(p).all() for p in parameters.values() if p.is_floating_point())
