"""TensorBoard layout: one chart per (split, metric) holding every task's curve."""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.loggers import TensorBoardLogger

from mtl_celeba.run.results import METRIC_NAMES

DST_QUANTITIES = ("activation_probability", "drop_rate", "gate", "loss", "stagnancy_rate")


def task_curves_layout(
    splits: Sequence[str] = ("train", "val", "test"),
) -> dict[str, dict[str, list]]:
    """The CUSTOM SCALARS layout: a category per split, a multiline chart per metric.

    In the format of ``SummaryWriter.add_custom_scalars``: {category: {chart: ["Multiline", [tag regex]]}}.
    """
    layout = {
        f"per-task {split}": {
            name: ["Multiline", [rf"^{split}/{name}/"]] for name in (*METRIC_NAMES, "loss")
        }
        for split in splits
    }
    layout["DST schedule"] = {
        quantity: ["Multiline", [rf"^dst/{quantity}/"]] for quantity in DST_QUANTITIES
    }
    return layout


def add_task_curves_layout(logger: TensorBoardLogger) -> None:
    """Register :func:`task_curves_layout` with a TensorBoard logger (its CUSTOM SCALARS tab)."""
    logger.experiment.add_custom_scalars(task_curves_layout())
