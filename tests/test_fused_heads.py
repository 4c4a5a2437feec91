"""The fused task heads against separate per-task heads with the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl_celeba.models.heads import TaskHead, TaskHeads, build_heads, head_settings

TASKS = ["Smiling", "Bald", "Young", "Male", "Eyeglasses"]


def reference_heads(fused: TaskHeads, in_features: int, settings: dict) -> dict[str, TaskHead]:
    """Separate TaskHead modules carrying the fused heads' weights (copied, not shared)."""
    heads = {}
    for task in fused.tasks:
        hidden, dropout = settings[task]
        head = TaskHead(in_features, hidden, dropout)
        linears = [m for m in head.layers if isinstance(m, nn.Linear)]
        params = fused.task_parameters(task)
        with torch.no_grad():
            for k, linear in enumerate(linears):
                linear.weight.copy_(params[2 * k])
                linear.bias.copy_(params[2 * k + 1])
        heads[task] = head
    return heads


CASES = {
    "linear": {"hidden": [], "dropout": 0.0, "overrides": None},
    "one hidden": {"hidden": [16], "dropout": 0.0, "overrides": None},
    "unequal depths": {
        "hidden": [16],
        "dropout": 0.0,
        "overrides": {
            "Bald": {"hidden": [12, 8]},
            "Male": {"hidden": []},
            "Young": {"hidden": [12, 8]},
        },
    },
    "dropout, eval": {
        "hidden": [16],
        "dropout": 0.3,
        "overrides": {"Young": {"hidden": [], "dropout": 0.2}, "Male": {"dropout": 0.0}},
    },
}


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_gradients_equal_per_task_heads(case: str) -> None:
    torch.manual_seed(0)
    args = CASES[case]
    in_features = 24
    settings = head_settings(TASKS, args["hidden"], args["dropout"], args["overrides"])
    fused = build_heads(TASKS, in_features, args["hidden"], args["dropout"], args["overrides"])
    reference = reference_heads(fused, in_features, settings)
    if args["dropout"]:
        fused.eval()
        for head in reference.values():
            head.eval()
    features = torch.randn(6, in_features, requires_grad=True)
    weights = torch.randn(6, len(TASKS))

    logits = fused(features)
    assert logits.shape == (6, len(TASKS))
    (logits * weights).sum().backward()
    fused_feature_grad = features.grad.clone()
    features.grad = None

    expected = torch.stack([reference[task](features) for task in TASKS], dim=1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(fused_feature_grad, features.grad)
    for task in TASKS:
        ref_grads = [
            g
            for m in reference[task].layers
            if isinstance(m, nn.Linear)
            for g in (m.weight.grad, m.bias.grad)
        ]
        for got, want in zip(fused.task_parameters(task, grad=True), ref_grads, strict=True):
            torch.testing.assert_close(got, want)
    assert fused.depths == {task: len(settings[task][0]) + 1 for task in TASKS}


def test_groups_follow_head_shapes_and_keep_task_order() -> None:
    overrides = {"Bald": {"hidden": [12, 8]}, "Male": {"hidden": [12, 8]}}
    fused = build_heads(TASKS, 24, [16], 0.0, overrides)
    assert fused.group_tasks == [["Smiling", "Young", "Eyeglasses"], ["Bald", "Male"]]
    assert len(build_heads(TASKS, 24, [16]).groups) == 1


def test_same_seed_gives_the_weights_of_separate_heads() -> None:
    """Initialisation draws what the per-task heads drew: a seed keeps its old weights."""
    torch.manual_seed(3)
    fused = build_heads(TASKS, 24, [16])
    torch.manual_seed(3)
    separate = [TaskHead(24, [16]) for _ in TASKS]
    for task, head in zip(TASKS, separate, strict=True):
        torch.testing.assert_close(fused.task_parameters(task)[0], head.layers[0].weight)


def test_dropout_draws_independent_masks_in_training() -> None:
    torch.manual_seed(0)
    fused = build_heads(["a", "b"], 32, [], 0.5).train()
    features = torch.ones(4, 32)
    with torch.no_grad():
        for p in fused.parameters():
            p.fill_(1.0)
    logits = fused(features)
    assert not torch.equal(logits[:, 0], logits[:, 1])  # each task its own mask
    assert torch.equal(fused.eval()(features), fused(features))


def test_old_per_task_state_dicts_still_load() -> None:
    torch.manual_seed(1)
    settings = head_settings(TASKS, [16], 0.1, {"Bald": {"hidden": [12, 8]}})
    old = nn.ModuleDict(
        {task: TaskHead(24, hidden, dropout) for task, (hidden, dropout) in settings.items()}
    )
    fused = build_heads(TASKS, 24, [16], 0.1, {"Bald": {"hidden": [12, 8]}})
    fused.load_state_dict(old.state_dict())
    features = torch.randn(5, 24)
    old.eval(), fused.eval()
    expected = torch.stack([old[task](features) for task in TASKS], dim=1)
    torch.testing.assert_close(fused(features), expected)
