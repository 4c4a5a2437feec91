"""``mtl-predict``: per-image attribute probabilities and decisions from a trained checkpoint.

    mtl-predict ckpt_path=RUN/checkpoints/last.ckpt images=photos/ [batch_size=64] [device=cpu]

Each image gets the checkpoint run's own preprocessing (its ``.hydra/config.yaml``): the
centred square, resized to the run's ``data.image_size`` (:func:`load_face`, as training
reads CelebA), then ImageNet normalisation (:func:`normalize_uint8`). Writes, into the run
folder of this command, ``predictions.csv`` (per image: ``<task>_prob`` and the 0/1 decision
``<task>``) and ``predictions.png`` (the first images, each with its predicted attributes).
An image that cannot be decoded is named on one line and skipped.


numpy, pandas, torch and matplotlib are imported once the command line is checked
(:func:`mtl_celeba.cli.hydra_app.hydra_entry`), so a mistake there fails in about a second.
"""

from __future__ import annotations

import glob
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from mtl_celeba.cli.hydra_app import hydra_entry
from mtl_celeba.cli.validate import validate_predict_config
from mtl_celeba.errors import ConfigError, DataError
from mtl_celeba.io import save_figure, write_text_atomic
from mtl_celeba.run.layout import training_config

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from mtl_celeba.models.module import MultiTaskModule

log = logging.getLogger(__name__)

#: File name endings taken from a folder (a glob takes whatever it matches).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_PNG = "predictions.png"


def find_images(images: str | Path) -> list[Path]:
    """The image files of a folder (by suffix, sorted) or of a glob pattern (sorted)."""
    folder = Path(str(images)).expanduser()
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        found = sorted(Path(p) for p in glob.glob(str(folder), recursive=True) if Path(p).is_file())
    if not found:
        raise ConfigError(
            f"images={images} matches no image file: pass a folder of images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}) or a quoted glob such as 'photos/**/*.jpg'."
        )
    return found


def choose_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; other names are checked to exist."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device={name} is not a device: use auto, cpu, cuda or cuda:N."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here: use device=cpu.")
    return device


def read_faces(
    paths: Sequence[Path], size: int, batch_size: int
) -> Iterator[tuple[list[Path], np.ndarray]]:
    """Batches of (paths, (B, size, size, 3) uint8 faces); undecodable files are reported and skipped."""
    import numpy as np
    from PIL import Image

    from mtl_celeba.data.images import load_face

    batch: list[Path] = []
    faces: list[np.ndarray] = []
    for path in paths:
        try:
            faces.append(load_face(path, size))
        except DataError as error:
            print(f"skipped: {error}", file=sys.stderr)
            continue
        except Image.DecompressionBombError as error:  # not an OSError: load_face lets it by
            print(f"skipped: image {path} is too large to decode safely ({error})", file=sys.stderr)
            continue
        batch.append(path)
        if len(batch) == batch_size:
            yield batch, np.stack(faces)
            batch, faces = [], []
    if batch:
        yield batch, np.stack(faces)


def probabilities(model: MultiTaskModule, faces: np.ndarray, device: torch.device) -> np.ndarray:
    """(B, T) sigmoid outputs for (B, H, W, 3) uint8 faces, normalised as in training."""
    import torch

    from mtl_celeba.data.augment import normalize_uint8

    with torch.inference_mode():
        images = torch.from_numpy(faces).permute(0, 3, 1, 2).to(device)
        return torch.sigmoid(model(normalize_uint8(images)).float()).cpu().numpy()


def prediction_table(
    paths: Sequence[Path], probs: np.ndarray, tasks: Sequence[str], threshold: float
) -> pd.DataFrame:
    """One row per image: ``image``, then ``<task>_prob`` and the decision ``<task>`` (0/1) per task."""
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({"image": [str(p) for p in paths]})
    for i, task in enumerate(tasks):
        table[f"{task}_prob"] = np.round(probs[:, i], 6)
        table[task] = (probs[:, i] > threshold).astype(int)
    return table


def plot_predictions(
    faces: Sequence[np.ndarray], table: pd.DataFrame, tasks: Sequence[str], path: Path
) -> None:
    """A grid of the faces, each captioned with its file name and the tasks predicted present."""
    from matplotlib.figure import Figure

    columns = min(6, len(faces))
    rows = -(-len(faces) // columns)
    figure = Figure(figsize=(2.3 * columns, (2.3 + 0.16 * len(tasks)) * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flat
    for axis, face, row in zip(axes, faces, table.itertuples(index=False), strict=False):
        values = row._asdict()
        present = [f"{task} {values[f'{task}_prob']:.2f}" for task in tasks if values[task]]
        axis.imshow(face)
        axis.set_title(Path(values["image"]).name, fontsize=7)
        axis.set_xlabel("\n".join(present) or "(none)", fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes)[len(faces) :]:
        axis.set_visible(False)
    save_figure(figure, path)


def predict(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    """Predict every task for ``cfg.images`` with ``cfg.ckpt_path``; writes the CSV and the grid."""
    import numpy as np

    from mtl_celeba.cli.checkpoints import load_model

    checkpoint = Path(str(cfg.ckpt_path))
    paths = find_images(cfg.images)
    device = choose_device(str(cfg.device))
    model = load_model(checkpoint)  # missing, damaged or foreign: one line naming the file
    size = int(training_config(checkpoint).data.image_size)
    model.eval().to(device)
    tasks = list(model.tasks)
    kept: list[Path] = []
    probs: list[np.ndarray] = []
    shown: list[np.ndarray] = []
    for batch, faces in read_faces(paths, size, int(cfg.batch_size)):
        kept += batch
        probs.append(probabilities(model, faces, device))
        shown += list(faces[: max(0, int(cfg.grid_images) - len(shown))])
    if not kept:
        raise DataError(f"None of the {len(paths)} files of images={cfg.images} could be decoded.")
    table = prediction_table(kept, np.concatenate(probs), tasks, float(cfg.threshold))
    write_text_atomic(out_dir / PREDICTIONS_CSV, table.to_csv(index=False))
    if shown:
        plot_predictions(shown, table.head(len(shown)), tasks, out_dir / PREDICTIONS_PNG)
    print(
        f"Predicted {len(tasks)} tasks for {len(kept)} of {len(paths)} images "
        f"({size}x{size}, {device})."
    )
    return table


@hydra_entry("predict", validate_predict_config)
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``mtl-predict``: predict, then say where the files are."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    predict(cfg, out_dir)  # a UserError ends the command with one line (hydra_entry)
    log.info("Predictions: %s", out_dir / PREDICTIONS_CSV)
    log.info("Grid:        %s", out_dir / PREDICTIONS_PNG)


if __name__ == "__main__":
    main()
