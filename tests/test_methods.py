"""Every method's step on a tiny problem (2-3 tasks, a few parameters), against TorchJD's
reference implementations, hand-worked values, or the optimality conditions of its problem."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchjd import aggregation, scalarization

from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.alignedmtl import AlignedMTL
from mtl_celeba.scheduling.methods.cagrad import CAGrad
from mtl_celeba.scheduling.methods.dwa import DynamicWeightAverage, dwa_weights
from mtl_celeba.scheduling.methods.famo import FAMO
from mtl_celeba.scheduling.methods.gradnorm import GradNorm
from mtl_celeba.scheduling.methods.imtlg import IMTLG
from mtl_celeba.scheduling.methods.mgda import MGDA
from mtl_celeba.scheduling.methods.nashmtl import REGULARISATION, NashMTL
from mtl_celeba.scheduling.methods.pcgrad import PCGrad
from mtl_celeba.scheduling.methods.rlw import RandomLossWeighting
from mtl_celeba.scheduling.methods.si import ScaleInvariant
from mtl_celeba.scheduling.methods.upgrad import BoundedLeastSquaresProjector, UPGrad
from mtl_celeba.scheduling.methods.uw import UncertaintyWeighting
from mtl_celeba.scheduling.strategy import TaskStep, feature_gramian, parameter_gramian

# Three conflicting task gradients in R^4 (rows of the Jacobian).
JACOBIAN = torch.tensor(
    [[1.0, -0.5, 2.0, 0.3], [-1.2, 0.8, 0.4, -0.1], [0.5, 1.5, -1.0, 0.7]], dtype=torch.float64
)


def set_up(strategy, num_tasks: int):
    """Runs the strategy's ``setup`` hook against a stand-in module with ``num_tasks`` tasks."""
    module = SimpleNamespace(tasks=[f"t{i}" for i in range(num_tasks)], device=torch.device("cpu"))
    strategy.setup(None, module, "fit")
    return strategy


def step_for(jacobian: torch.Tensor, counts=None) -> TaskStep:
    """A step whose Gramian is that of ``jacobian``'s rows (losses arbitrary but positive)."""
    num_tasks = len(jacobian)
    counts = torch.full((num_tasks,), 4.0) if counts is None else torch.as_tensor(counts).float()
    losses = torch.linspace(0.5, 1.0, num_tasks) * (counts > 0)
    return TaskStep(losses, counts, (jacobian @ jacobian.T).float())


def update_of(strategy, jacobian: torch.Tensor, counts=None) -> torch.Tensor:
    """The update a Gramian method makes: its weights applied to the Jacobian's rows."""
    weights = strategy.weights(step_for(jacobian, counts)).double()
    return weights @ jacobian


# ------------------------------------------------------------------ feature_gramian
def test_feature_gramian_matches_a_per_task_autograd_loop():
    torch.manual_seed(0)
    features = torch.randn(5, 3, requires_grad=True)
    heads = torch.randn(3, 3)
    losses = torch.stack([(features @ heads[t]).sin().pow(2).mean() for t in range(3)])
    rows = [
        torch.autograd.grad(losses[t], features, retain_graph=True)[0].flatten() for t in range(3)
    ]
    explicit = torch.stack(rows)
    gramian = feature_gramian(losses, features)
    torch.testing.assert_close(gramian, explicit @ explicit.T)
    losses.sum().backward()  # the graph is kept for the real backward pass


# ------------------------------------------------------------------ gradient aggregation
@pytest.mark.parametrize(
    ("strategy", "reference"),
    [
        (IMTLG(), aggregation.IMTLG()),
        (AlignedMTL(), aggregation.AlignedMTL()),
    ],
    ids=["imtlg", "alignedmtl"],
)
def test_gramian_methods_equal_torchjd_aggregators_on_the_jacobian(strategy, reference):
    expected = reference(JACOBIAN.float()).double()
    torch.testing.assert_close(update_of(strategy, JACOBIAN), expected, atol=1e-4, rtol=1e-4)


def test_pcgrad_equals_torchjd_with_the_same_seed_and_repeats():
    torch.manual_seed(3)
    expected = aggregation.PCGrad()(JACOBIAN.float()).double()
    global_state = torch.get_rng_state()
    torch.testing.assert_close(update_of(PCGrad(seed=3), JACOBIAN), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.get_rng_state(), global_state), "the global generator is untouched"


def test_pcgrad_hand_worked_two_conflicting_gradients():
    # g1 = (1, 0), g2 = (-1, 1) conflict (<g1, g2> = -1):
    # g1' = g1 - (-1 / 2) g2 = (0.5, 0.5), g2' = g2 - (-1 / 1) g1 = (0, 1); sum (0.5, 1.5)
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    weights = PCGrad().weights(step_for(jacobian))
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5]))
    torch.testing.assert_close(weights.double() @ jacobian, torch.tensor([0.5, 1.5]).double())


def test_upgrad_reproduces_torchjd_documented_example():
    # torchjd.aggregation's docstring (computed with TorchJD's default quadprog projector)
    jacobian = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    weights = UPGrad().weights(step_for(jacobian))
    torch.testing.assert_close(weights, torch.tensor([1.1109, 0.7894]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        weights.double() @ jacobian,
        torch.tensor([0.2929, 1.9004, 1.9004]).double(),
        atol=1e-4,
        rtol=0,
    )


def test_upgrad_projector_meets_the_kkt_conditions():
    # min v^T G v s.t. v >= u: optimal iff v >= u, G v >= 0 and (G v)_i (v_i - u_i) = 0
    gramian = JACOBIAN @ JACOBIAN.T
    projector = BoundedLeastSquaresProjector(reg_eps=0.0)
    scaled = gramian / torch.linalg.norm(gramian)
    for u in torch.eye(3, dtype=torch.float64):
        v = projector(u, gramian)
        assert torch.all(v >= u - 1e-9)
        assert torch.all(scaled @ v >= -1e-7)
        assert torch.allclose(
            (scaled @ v) * (v - u), torch.zeros(3, dtype=torch.float64), atol=1e-7
        )
    # UPGrad's update conflicts with no task
    assert torch.all(JACOBIAN @ update_of(UPGrad(), JACOBIAN) > 0)


def test_cagrad_is_the_best_worst_case_direction_in_its_ball():
    # two tasks in R^2: brute force max_d min_t <g_t, d> over ||d - g0|| = c ||g0||
    jacobian = torch.tensor([[2.0, 0.2], [-0.5, 1.0]], dtype=torch.float64)
    c = 0.4
    g = jacobian.numpy()
    g0 = g.mean(axis=0)
    angles = np.linspace(0, 2 * np.pi, 200_001)
    candidates = g0 + c * np.linalg.norm(g0) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    best = candidates[np.argmax((candidates @ g.T).min(axis=1))]
    update = update_of(CAGrad(c=c), jacobian).numpy() * (1 + c**2)  # before the official rescale
    np.testing.assert_allclose(update, best, atol=1e-3)


def test_nashmtl_solves_the_bargaining_equation():
    # at the authors' scale: G alpha = 1 / alpha for the Gramian itself (so ||d||^2 = T)
    strategy = NashMTL()
    weights = strategy.weights(step_for(JACOBIAN)).double()
    gramian = JACOBIAN @ JACOBIAN.T
    torch.testing.assert_close(gramian @ weights, 1 / weights, atol=1e-4, rtol=1e-4)
    # orthogonal gradients: alpha_t = 1 / ||g_t||
    jacobian = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    weights = NashMTL().weights(step_for(jacobian)).double()
    expected = torch.tensor([1 / 3, 1 / 4]).double() / math.sqrt(1 + REGULARISATION)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [MGDA, PCGrad, CAGrad, IMTLG, NashMTL, AlignedMTL, UPGrad],
    ids=["mgda", "pcgrad", "cagrad", "imtlg", "nashmtl", "alignedmtl", "upgrad"],
)
def test_gramian_methods_weigh_only_the_present_tasks(make):
    # task 1 has no label in the batch: zero gradient row, loss 0
    jacobian = JACOBIAN.clone()
    jacobian[1] = 0
    weights = make().weights(step_for(jacobian, counts=[4, 0, 4]))
    present = make().weights(step_for(JACOBIAN[[0, 2]]))
    assert weights[1] == 0
    torch.testing.assert_close(weights[[0, 2]], present, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ loss weighting
def test_si_gradient_is_the_inverse_losses_and_skips_absent_tasks():
    losses = torch.tensor([0.5, 0.0, 2.0], requires_grad=True)
    step = TaskStep(losses, torch.tensor([3.0, 0.0, 3.0]))
    loss = ScaleInvariant().combine(step)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(0.5) + math.log(2.0))
    torch.testing.assert_close(losses.grad, torch.tensor([2.0, 0.0, 0.5]))


def test_rlw_draws_torchjd_random_weights_from_its_own_seed():
    losses = torch.tensor([0.3, 0.6, 0.9], requires_grad=True)
    torch.manual_seed(7)
    scalarization.Random()(losses).backward()
    expected = losses.grad.clone()
    losses.grad = None
    strategy = RandomLossWeighting(seed=7)
    strategy.combine(TaskStep(losses, torch.ones(3))).backward()
    torch.testing.assert_close(losses.grad, expected)
    # the same draws over the present tasks only
    repeat = RandomLossWeighting(seed=7).weights(TaskStep(losses, torch.tensor([1.0, 0.0, 1.0])))
    assert repeat[1] == 0
    torch.testing.assert_close(repeat[[0, 2]], expected[[0, 2]] / expected[[0, 2]].sum())


def test_dwa_matches_torchjd_dwa_over_three_epochs():
    # two batches per epoch with equal label counts: TorchJD's mean of batch means equals the
    # module's mean over samples
    batches = torch.tensor(
        [[[0.9, 0.8], [0.8, 0.8]], [[0.7, 0.75], [0.6, 0.7]], [[0.5, 0.7], [0.5, 0.7]]]
    )
    reference = scalarization.DWA(temperature=2.0)
    strategy = set_up(DynamicWeightAverage(temperature=2.0), 2)
    module = SimpleNamespace(global_epoch_task_losses=None)
    trainer = SimpleNamespace(current_epoch=0, loggers=[])
    for epoch, epoch_batches in enumerate(batches):
        trainer.current_epoch = epoch
        for losses in epoch_batches:
            losses = losses.clone().requires_grad_(True)
            reference(losses).backward()
            expected = losses.grad.clone()
            losses.grad = None
            strategy.combine(TaskStep(losses, torch.ones(2))).backward()
            torch.testing.assert_close(losses.grad, expected)
        reference.step()
        module.global_epoch_task_losses = lambda b=epoch_batches: b.mean(dim=0)
        strategy.on_train_epoch_end(trainer, module)
    # hand-worked: epoch 4 uses r = L(3) / L(2) = (0.5 / 0.65, 0.7 / 0.725)
    ratio = torch.tensor([0.5 / 0.65, 0.7 / 0.725])
    expected = 2 * torch.exp(ratio / 2) / torch.exp(ratio / 2).sum()
    torch.testing.assert_close(strategy.current_weights(), expected)
    nan = torch.tensor([math.nan, 1.0])
    assert dwa_weights(nan, torch.ones(2), 2.0).tolist() == [1.0, 1.0]


def test_uw_equals_torchjd_uw_and_skips_absent_tasks():
    strategy = set_up(UncertaintyWeighting(), 3)
    with torch.no_grad():
        strategy.scalarizer.log_var.copy_(torch.tensor([0.2, -0.3, 0.5]))
    reference = scalarization.UW(3)
    with torch.no_grad():
        reference.log_var.copy_(strategy.scalarizer.log_var)
    losses = torch.tensor([0.4, 0.7, 1.1])
    ours = strategy.combine(TaskStep(losses, torch.ones(3)))
    ours.backward()
    expected = reference(losses)
    expected.backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(strategy.scalarizer.log_var.grad, reference.log_var.grad)
    strategy.scalarizer.log_var.grad = None
    strategy.combine(
        TaskStep(losses * torch.tensor([1, 0, 1]), torch.tensor([2.0, 0, 2]))
    ).backward()
    assert strategy.scalarizer.log_var.grad[1] == 0
    assert strategy.trainable_module() is strategy.scalarizer


def test_gradnorm_step_hand_worked():
    strategy = set_up(GradNorm(alpha=1.5), 2)
    weight = strategy.task_weights.weight
    gramian = torch.diag(torch.tensor([1.0, 9.0]))  # gradient norms 1 and 3
    # first step: L(0) = losses, r = 1, target = mean(w n); the norms, over their mean: 0.5, 1.5
    strategy.combine(TaskStep(torch.tensor([0.8, 0.5]), torch.ones(2), gramian)).backward()
    torch.testing.assert_close(weight.grad, torch.tensor([-0.5, 1.5]))  # sign(w n - t) n
    weight.grad = None
    with torch.no_grad():
        weight.copy_(torch.tensor([3.0, 1.0]))  # renormalised to sum 2 before use: (1.5, 0.5)
    losses = torch.tensor([0.4, 0.45], requires_grad=True)
    loss = strategy.combine(TaskStep(losses, torch.ones(2), gramian))
    loss.backward()
    torch.testing.assert_close(weight.detach(), torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(losses.grad, torch.tensor([1.5, 0.5]))
    norms = torch.tensor([0.5, 1.5])
    rates = torch.tensor([0.4 / 0.8, 0.45 / 0.5])
    ratios = rates / rates.mean()
    scaled = torch.tensor([1.5, 0.5]) * norms
    target = scaled.mean() * ratios**1.5
    torch.testing.assert_close(weight.grad, torch.sign(scaled - target) * norms)
    expected = (torch.tensor([1.5, 0.5]) * losses.detach()).sum() + (scaled - target).abs().sum()
    torch.testing.assert_close(loss.detach(), expected)


def test_famo_equals_torchjd_famo_over_a_few_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    reference = scalarization.FAMO(2)
    strategy = set_up(FAMO(), 2)
    inputs = torch.randn(8, 3)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin)]

    def losses_of(m):
        return m(inputs).pow(2).mean(dim=0) + 0.1

    for _ in range(3):
        reference(losses_of(twin)).backward()
        strategy.combine(TaskStep(losses_of(model), torch.ones(2))).backward()
        torch.testing.assert_close(model.weight.grad, twin.weight.grad)
        before = losses_of(model).detach()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            reference.update(losses_of(twin))
            strategy.update(before, losses_of(model), torch.ones(2, dtype=torch.bool))
        torch.testing.assert_close(strategy.logits.detach(), reference._w.detach())
    assert strategy.logits.abs().sum() > 0, "the logits moved"


def test_famo_skips_absent_tasks():
    strategy = set_up(FAMO(), 3)
    losses = torch.tensor([0.5, 0.0, 1.0])
    present = torch.tensor([True, False, True])
    weights = strategy.weights(TaskStep(losses, present.float()))
    # z uniform over the present tasks: w_t = (1 / L_t) / sum(1 / L), absent 0
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 0.0, 1 / 3]), atol=1e-6, rtol=0)
    strategy.update(losses, torch.tensor([0.4, 0.0, 0.9]), present)
    assert strategy.logits[1] == 0 and strategy.logits[0] < strategy.logits[2]


# ------------------------------------------------------------------ FAMO's CelebA network
def test_famo_cnn_is_the_papers_network():
    from torch import nn

    from mtl_celeba.models.backbones import build_backbone

    backbone = build_backbone("famo_cnn")
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 256, 256, 512, 512]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 512)]
    assert backbone.depth == 9 and len(backbone.blocks) == 9
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, backbone.out_features) == (2, 512)


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize(
    "make",
    [lambda: RandomLossWeighting(seed=1), lambda: PCGrad(seed=1), FAMO, NashMTL],
    ids=["rlw", "pcgrad", "famo", "nashmtl"],
)
def test_stateful_methods_continue_from_their_checkpointed_state(make, tmp_path):
    step = step_for(JACOBIAN)
    after = step.losses * 0.9

    def advance(strategy):
        strategy.combine(step)
        if isinstance(strategy, FAMO):
            strategy.update(step.losses, after, step.present)

    first = set_up(make(), 3)
    for _ in range(3):
        advance(first)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    second = set_up(make(), 3)
    second.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for _ in range(2):  # the resumed copy makes the same next steps (same draws, Adam moments)
        advance(first)
        advance(second)
    torch.testing.assert_close(second.weights(step), first.weights(step))
    assert second.epoch_mean_weights == first.epoch_mean_weights


# ------------------------------------------------------------------ FAMO's data protocol
def test_squash_resize_keeps_the_whole_image_and_normalize_false_scales_only(synthetic_root):
    from PIL import Image

    from mtl_celeba.data.augment import device_transform, naive_transform
    from mtl_celeba.data.images import load_face

    path = next(synthetic_root.rglob("*.jpg"))
    squashed = load_face(path, 32, resize="squash")
    cropped = load_face(path, 32)
    with Image.open(path) as image:
        image.draft("RGB", (32, 32))  # the same (DCT-scaled) decoding as load_face
        whole = np.array(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    assert squashed.shape == cropped.shape == (32, 32, 3)
    assert np.array_equal(squashed, whole) and not np.array_equal(cropped, whole)
    batch = torch.from_numpy(squashed).permute(2, 0, 1)[None]
    scaled = device_transform(batch, train=True, flip=False, normalize=False)
    torch.testing.assert_close(scaled, batch.float() / 255)
    per_image = naive_transform(32, train=False, normalize=False)(squashed)
    torch.testing.assert_close(per_image[None], scaled)


# ------------------------------------------------------------------ parameter_gramian
def test_parameter_gramian_matches_a_per_task_backward_on_a_small_model():
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(inplace=True),
        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5),
    )  # fmt: skip
    heads = torch.nn.Linear(5, 3)
    images = torch.randn(6, 3, 8, 8)
    losses = heads(backbone(images)).sin().pow(2).mean(dim=0)
    shared = list(backbone.parameters())
    rows = []
    for t in range(3):
        backbone.zero_grad()
        losses[t].backward(retain_graph=True)
        rows.append(torch.cat([p.grad.flatten() for p in shared]))
    explicit = torch.stack(rows).double()
    gramian = parameter_gramian(losses, shared)
    assert gramian.dtype == torch.float32
    torch.testing.assert_close(gramian.double(), explicit @ explicit.T, rtol=1e-5, atol=1e-7)


def test_gramian_methods_reject_an_unknown_gradients_option():
    with pytest.raises(ConfigError, match=r"strategy\.gradients"):
        MGDA(gradients="weights")
