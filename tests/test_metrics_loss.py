"""The masked per-task loss and the per-task metrics, against values worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtl_celeba.models.loss import masked_task_losses
from mtl_celeba.models.metrics import TaskMetrics


def test_masked_loss_ignores_missing_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-2.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    sums, counts = masked_task_losses(logits, targets, mask)
    bce = F.binary_cross_entropy_with_logits
    assert counts.tolist() == [2.0, 2.0]
    expected_task0 = bce(torch.tensor(2.0), torch.tensor(1.0)) + bce(
        torch.tensor(0.5), torch.tensor(0.0)
    )
    expected_task1 = bce(torch.tensor(-1.0), torch.tensor(0.0)) + bce(
        torch.tensor(0.0), torch.tensor(0.0)
    )
    assert sums[0].item() == pytest.approx(expected_task0.item())
    assert sums[1].item() == pytest.approx(expected_task1.item())


def test_masked_loss_pos_weight_scales_positive_terms():
    logits = torch.tensor([[0.0]])
    targets = torch.tensor([[1.0]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    plain, _ = masked_task_losses(logits, targets, mask)
    weighted, _ = masked_task_losses(logits, targets, mask, pos_weight=torch.tensor([3.0]))
    assert weighted.item() == pytest.approx(3 * plain.item())


def test_task_metrics_by_hand():
    # task 0: preds (p>0.5) = [1, 1, 0, 0], targets [1, 0, 0, 1] -> tp 1, fp 1, tn 1, fn 1
    # task 1: sample 3 is missing; preds [1, 0, 0], targets [1, 0, 1] -> tp 1, fn 1, tn 1
    logits = torch.tensor([[3.0, 2.0], [1.0, -2.0], [-1.0, -1.0], [-3.0, 5.0]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, False]])
    metrics = TaskMetrics(2)
    metrics.update(logits[:2], targets[:2], mask[:2])
    metrics.update(logits[2:], targets[2:], mask[2:])
    values = metrics.compute()
    assert values["accuracy"].tolist() == pytest.approx([0.5, 2 / 3])
    assert values["balanced_accuracy"].tolist() == pytest.approx([0.5, (0.5 + 1.0) / 2])
    assert values["f1"].tolist() == pytest.approx([0.5, 2 / 3])
    # AUROC task 0: positives score 3, -3; negatives 1, -1 -> pairs won: (3>1, 3>-1) = 2 of 4
    # task 1: positives 2, -1; negative -2 -> both win: 1.0
    assert values["auroc"].tolist() == pytest.approx([0.5, 1.0])
    metrics.reset()
    metrics.update(logits, targets, mask)
    assert metrics.compute()["accuracy"].tolist() == pytest.approx([0.5, 2 / 3])


def test_balanced_accuracy_with_one_class_present():
    metrics = TaskMetrics(1)
    metrics.update(
        torch.tensor([[1.0], [-1.0]]),
        torch.tensor([[1.0], [1.0]]),
        torch.ones(2, 1, dtype=torch.bool),
    )
    assert metrics.compute()["balanced_accuracy"].item() == pytest.approx(0.5)
    assert not math.isnan(metrics.compute()["f1"].item())


def test_single_task_metrics_keep_the_task_axis():
    metrics = TaskMetrics(1)
    metrics.update(
        torch.tensor([[2.0], [-1.0]]),
        torch.tensor([[1.0], [0.0]]),
        torch.ones(2, 1, dtype=torch.bool),
    )
    values = metrics.compute()
    assert all(value.shape == (1,) for value in values.values())
    assert values["accuracy"].tolist() == [1.0]


def test_gate_vector_switches_a_task_off():
    """A zero gate removes that task's loss, and its head then gets no gradient."""
    from mtl_celeba.models.module import MultiTaskModule
    from mtl_celeba.scheduling.callbacks import TaskGating

    model = MultiTaskModule(["Smiling", "Male"], backbone="resnet18", head_hidden=[8])
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    mask = torch.ones(4, 2, dtype=torch.bool)
    gating = TaskGating()
    gating.gates = torch.tensor([1.0, 0.0])
    gating._active_steps = torch.zeros(2)
    model.task_strategy = gating
    model.on_train_epoch_start()
    torch.manual_seed(0)
    loss = model.training_step((images, targets, mask), 0)
    torch.manual_seed(0)
    sums, counts = masked_task_losses(model(images), targets, mask)
    assert loss.item() == pytest.approx((sums[0] / counts[0]).item(), rel=1e-5)
    assert model.epoch_task_losses()[1] > 0, "the dropped task is still measured"
    assert gating._active_steps.tolist() == [1.0, 0.0], "the applied gates are recorded"
    loss.backward()
    male = model.heads.task_parameters("Male", grad=True)
    smiling = model.heads.task_parameters("Smiling", grad=True)
    assert all(g is None or not g.any() for g in male)
    assert any(g is not None and g.any() for g in smiling)


def test_task_metrics_match_torchmetrics_classes():
    """The vectorised counts and stored-score AUROC equal torchmetrics' multilabel metrics."""
    from torchmetrics.classification import MultilabelAUROC, MultilabelStatScores

    generator = torch.Generator().manual_seed(0)
    tasks = 5
    ours = TaskMetrics(tasks)
    stats = MultilabelStatScores(num_labels=tasks, average="none", ignore_index=-1)
    auroc = MultilabelAUROC(num_labels=tasks, average="none", ignore_index=-1)
    for _ in range(3):
        logits = torch.randn(32, tasks, generator=generator)
        targets = (torch.rand(32, tasks, generator=generator) < 0.4).float()
        mask = torch.rand(32, tasks, generator=generator) < 0.8
        ours.update(logits, targets, mask)
        labels = torch.where(mask, targets.long(), -1)
        stats.update(torch.sigmoid(logits), labels)
        auroc.update(torch.sigmoid(logits), labels)
    tp, fp, tn, fn, _ = stats.compute().float().unbind(-1)
    values = ours.compute()
    torch.testing.assert_close(values["accuracy"], (tp + tn) / (tp + tn + fp + fn))
    torch.testing.assert_close(values["f1"], 2 * tp / (2 * tp + fp + fn))
    torch.testing.assert_close(values["auroc"], auroc.compute().float())


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_get_the_usual_file_mode(tmp_path, umask, mode):
    """Results written atomically (metrics.json, report.md, checkpoints, ...) get the mode any
    file the user writes gets, 0666 less the umask, not mkstemp's owner-only 0600."""
    import os

    from mtl_celeba.io import write_json_atomic, write_text_atomic

    mask = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "report.md", "text")
        write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(mask)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == mode
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == mode
