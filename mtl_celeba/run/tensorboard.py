"""TensorBoard layout: one chart per (split, metric) holding every task's curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
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
    layout["gradient conflicts"] = {
        "mean pairwise cosine": ["Multiline", [r"^conflicts/(mean_cosine|conflicting_pairs)$"]],
        "gradient norm per task": ["Multiline", [r"^conflicts/norm/"]],
    }
    return layout


def add_task_curves_layout(logger: TensorBoardLogger) -> None:
    """Register :func:`task_curves_layout` with a TensorBoard logger (its CUSTOM SCALARS tab)."""
    logger.experiment.add_custom_scalars(task_curves_layout())


#: The tag of the CUSTOM SCALARS layout's event.
LAYOUT_TAG = "custom_scalars__config__"
#: How TensorBoard's writers name their event files.
EVENT_FILES = "events.out.tfevents.*"


def merge_earlier_events(logger: TensorBoardLogger, resume_step: int) -> int:
    """A run resumed in its own folder: move the killed attempt's events before ``resume_step``
    (the checkpoint's global step) into this attempt's event file and delete the old files.

    TensorBoard merges every event file of a folder: the killed attempt's events of the epoch
    it did not finish would be drawn a second time beside the resumed attempt's (duplicated
    curves). Returns the number of events carried over.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    folder = Path(logger.log_dir)
    earlier = sorted(folder.glob(EVENT_FILES))
    if not earlier:
        return 0
    writer = logger.experiment  # opens this attempt's event file
    file_writer = writer._get_file_writer()
    carried = 0
    for path in earlier:
        for event in EventFileLoader(str(path)).Load():
            if event.WhichOneof("what") == "file_version" or event.step >= resume_step:
                continue
            if any(value.tag == LAYOUT_TAG for value in event.summary.value):
                continue  # this attempt writes the layout again
            file_writer.add_event(event)
            carried += 1
    writer.flush()  # the events are safe in the new file before the old ones go
    for path in earlier:
        path.unlink(missing_ok=True)
    return carried


def conflict_heatmap_image(cosines: np.ndarray, cell: int = 8) -> np.ndarray:
    """A (T x T) cosine matrix as an (H, W, 3) uint8 image for ``add_image(dataformats="HWC")``.

    Diverging and centred at 0: -1 red, 0 white, +1 blue; NaN (not measured) grey; each
    entry a ``cell`` x ``cell`` block. Plain numpy, so training imports no plotting library;
    the tasks run top to bottom and left to right in the run's task order.
    """
    values = np.clip(np.asarray(cosines, dtype=np.float64), -1.0, 1.0)
    red, blue, white = np.array([0.79, 0.0, 0.13]), np.array([0.02, 0.19, 0.38]), np.ones(3)
    weight = np.abs(np.nan_to_num(values))[..., None]
    colour = np.where((values < 0)[..., None], red, blue)
    rgb = white + weight * (colour - white)
    rgb[np.isnan(values)] = 0.6
    image = np.kron(rgb, np.ones((cell, cell, 1)))
    return (image * 255).round().astype(np.uint8)
