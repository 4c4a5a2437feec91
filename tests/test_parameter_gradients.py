"""``strategy.gradients=parameters``: every method defined on per-task gradients makes, on a small
network, the update a brute-force per-task backward pass gives (to 1e-5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mtl_celeba.config import instantiate
from mtl_celeba.errors import ConfigError
from mtl_celeba.scheduling.methods.alignedmtl import AlignedMTL
from mtl_celeba.scheduling.methods.cagrad import CAGrad
from mtl_celeba.scheduling.methods.config import ConFIG
from mtl_celeba.scheduling.methods.dbmtl import DBMTL
from mtl_celeba.scheduling.methods.fairgrad import FairGrad
from mtl_celeba.scheduling.methods.graddrop import GradDrop
from mtl_celeba.scheduling.methods.gradnorm import GradNorm
from mtl_celeba.scheduling.methods.gradvac import GradVac
from mtl_celeba.scheduling.methods.imtlg import IMTLG
from mtl_celeba.scheduling.methods.mgda import MGDA
from mtl_celeba.scheduling.methods.nashmtl import NashMTL
from mtl_celeba.scheduling.methods.pcgrad import PCGrad
from mtl_celeba.scheduling.methods.upgrad import UPGrad
from mtl_celeba.scheduling.strategy import TaskStep, parameter_gramian

NUM_TASKS = 3
#: Every method whose weights come from the Gramian of the per-task gradients.
GRAMIAN_METHODS = {
    "mgda": lambda: MGDA(gradients="parameters"),
    "pcgrad": lambda: PCGrad(seed=4, gradients="parameters"),
    "cagrad": lambda: CAGrad(gradients="parameters"),
    "imtlg": lambda: IMTLG(gradients="parameters"),
    "nashmtl": lambda: NashMTL(gradients="parameters"),
    "alignedmtl": lambda: AlignedMTL(gradients="parameters"),
    "upgrad": lambda: UPGrad(gradients="parameters"),
    "fairgrad": lambda: FairGrad(gradients="parameters"),
    "gradvac": lambda: GradVac(seed=4, gradients="parameters"),
    "config": lambda: ConFIG(gradients="parameters"),
    "dbmtl": lambda: DBMTL(gradients="parameters"),
}


class Tiny(nn.Module):
    """A conv + BatchNorm backbone and three linear heads (as the real models, in small)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
            nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
        )  # fmt: skip
        self.heads = nn.Linear(5, NUM_TASKS)
        self.tasks = [f"t{i}" for i in range(NUM_TASKS)]

    def losses(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.heads(self.backbone(images))
        return nn.functional.binary_cross_entropy_with_logits(
            logits, targets, reduction="none"
        ).mean(dim=0)


def tiny_problem(seed: int = 0) -> tuple[Tiny, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = Tiny()
    images = torch.randn(6, 3, 8, 8)
    targets = (torch.rand(6, NUM_TASKS) > 0.5).float()
    return model, images, targets


def per_task_rows(model: Tiny, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(T, P) float64: each task's backbone gradient, one ordinary backward pass per task."""
    shared = list(model.backbone.parameters())
    rows = []
    for t in range(NUM_TASKS):
        model.zero_grad()
        model.losses(images, targets)[t].backward()
        rows.append(torch.cat([p.grad.flatten() for p in shared]).double())
    model.zero_grad()
    return torch.stack(rows)


def trained_backbone_gradient(model: Tiny, strategy, images, targets) -> torch.Tensor:
    """The backbone's gradient after back-propagating the strategy's loss, the module's way."""
    model.zero_grad()
    losses = model.losses(images, targets)
    counts = torch.full((NUM_TASKS,), float(len(images)))
    gramian = None
    if strategy.needs_gramian:
        gramian = parameter_gramian(losses, list(model.backbone.parameters()))
    strategy.combine(TaskStep(losses, counts, gramian)).backward()
    return torch.cat([p.grad.flatten() for p in model.backbone.parameters()]).double()


@pytest.mark.parametrize("name", sorted(GRAMIAN_METHODS))
def test_gramian_method_on_parameters_matches_a_brute_force_backward(name):
    model, images, targets = tiny_problem()
    rows = per_task_rows(model, images, targets)
    reference = GRAMIAN_METHODS[name]()  # same seed: the same random choices
    with torch.no_grad():
        losses = model.losses(images, targets)
    counts = torch.full((NUM_TASKS,), float(len(images)))
    weights = reference.weights(TaskStep(losses, counts, (rows @ rows.T).float())).double()
    expected = weights @ rows
    strategy = GRAMIAN_METHODS[name]()
    assert strategy.gradients == "parameters"
    # BatchNorm's running statistics move at every forward pass, not its training output
    actual = trained_backbone_gradient(model, strategy, images, targets)
    assert expected.abs().max() > 0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-7)


def test_gradnorm_on_parameters_uses_the_parameter_gradient_norms():
    model, images, targets = tiny_problem(1)
    rows = per_task_rows(model, images, targets)
    norms = rows.norm(dim=1)
    strategy = GradNorm(alpha=1.5, gradients="parameters")
    strategy.setup(None, SimpleNamespace(tasks=model.tasks), "fit")
    losses = model.losses(images, targets)
    counts = torch.full((NUM_TASKS,), float(len(images)))
    gramian = parameter_gramian(losses, list(model.backbone.parameters()))
    strategy.combine(TaskStep(losses, counts, gramian)).backward()
    # at the first step r_t = 1 for all t: L_grad = sum_t |w_t n_t - mean(w n)| with w = 1
    relative = norms / norms.mean()
    expected = (relative * torch.sign(relative - relative.mean())).float()
    torch.testing.assert_close(strategy.task_weights.weight.grad, expected, rtol=1e-5, atol=1e-6)


def test_graddrop_on_parameters_matches_the_rule_on_brute_force_gradients():
    model, images, targets = tiny_problem(2)
    rows = per_task_rows(model, images, targets)
    strategy = GradDrop(seed=7, gradients="parameters")
    strategy.setup(None, SimpleNamespace(tasks=model.tasks, backbone=model.backbone), "fit")
    uniform = torch.rand(rows.shape[1], generator=torch.Generator().manual_seed(7)).double()
    # FAMO's (Nash-MTL's) GradDrop on the shared parameters, written out entry by entry
    purity = 0.5 * (1 + rows.sum(0) / (rows.abs().sum(0) + 1e-7))
    keep = ((purity > uniform) & (rows > 0)) | ((purity < uniform) & (rows < 0))
    expected = (rows * keep).sum(0)
    actual = trained_backbone_gradient(model, strategy, images, targets)
    assert not torch.allclose(expected, rows.sum(0)), "some entries were dropped"
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-7)
    heads = model.heads.weight.grad.clone()
    model.zero_grad()
    model.losses(images, targets).sum().backward()
    torch.testing.assert_close(heads, model.heads.weight.grad)  # heads: their own gradients


STRATEGY_CONFIGS = [*GRAMIAN_METHODS, "graddrop", "gradnorm"]


@pytest.mark.parametrize("name", STRATEGY_CONFIGS)
def test_every_gradient_method_config_takes_strategy_gradients(compose_train, name):
    cfg = compose_train([f"strategy={name}", "strategy.gradients=parameters"])
    assert instantiate(cfg.strategy.callback).gradients == "parameters"
    cfg = compose_train([f"strategy={name}", "strategy.gradients=weights"])
    with pytest.raises(ConfigError, match=r"strategy\.gradients is 'weights'"):
        instantiate(cfg.strategy.callback)
