"""Write tiny fake CelebA copies in each real on-disk layout, for tests.

The annotation files follow the real formats byte for byte (count line, header with a
trailing space, values right-aligned in runs of spaces, Kaggle's CSV headers), so a reader
that passes on these reads the real files. Options produce the defects seen in the wild or
that the reader must reject: CRLF line endings, an empty first CSV header cell, missing
labels, a missing or corrupt image, and partition ids that disagree with the attribute file.

Import it from a test with ``from fake_celeba import write_fake_celeba``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES

LAYOUTS = ("torchvision", "original", "kaggle")
LANDMARK_NAMES = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)  # fmt: skip
BBOX_NAMES = ("x_1", "y_1", "width", "height")
WIDTH, HEIGHT = 178, 218


@dataclass(frozen=True)
class FakeCelebA:
    """What was written: the paths and the values, for tests to compare against."""

    root: Path  # pass this as data.root
    image_dir: Path
    attributes_file: Path
    partition_file: Path
    attributes: tuple[str, ...]  # the attribute columns written, in file order
    image_ids: list[str]  # in attribute-file order
    values: np.ndarray  # (N, A) int8 as written: -1, 1, or 0 where the label is missing
    partition: np.ndarray  # (N,) int8 as written for each image id

    def labels(self, attributes: Sequence[str]) -> np.ndarray:
        """The labels the reader should return: (N, T) float32, 1/0, NaN where missing."""
        columns = self.values[:, [self.attributes.index(name) for name in attributes]]
        return np.where(columns == 0, np.nan, (columns + 1) / 2).astype(np.float32)


def _paths(root: Path, layout: str) -> tuple[Path, Path, str]:
    """The image folder, the annotation folder and the annotation suffix of a layout."""
    if layout == "torchvision":
        return root / "celeba" / "img_align_celeba", root / "celeba", ".txt"
    if layout == "original":
        return root / "Img" / "img_align_celeba", root / "Anno", ".txt"
    if layout == "kaggle":
        return root / "img_align_celeba" / "img_align_celeba", root, ".csv"
    raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")


def _write_lines(path: Path, lines: list[str], crlf: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = "\r\n" if crlf else "\n"
    path.write_bytes((ending.join(lines) + ending).encode("ascii"))


def _txt_table(
    ids: list[str], rows: np.ndarray, header: Sequence[str] | None, width: int
) -> list[str]:
    """CelebA's txt table: count line, header with a trailing space, right-aligned values."""
    head = [str(len(ids)), " ".join(header) + " "] if header is not None else []
    body = [
        image_id + "".join(f" {value:{width}d}" for value in row)
        for image_id, row in zip(ids, rows, strict=True)
    ]
    return head + body


def _csv_table(
    ids: list[str], rows: np.ndarray, header: Sequence[str], first_cell: str
) -> list[str]:
    return [",".join([first_cell, *header])] + [
        ",".join([image_id, *map(str, row)]) for image_id, row in zip(ids, rows, strict=True)
    ]


def _write_image(path: Path, rng: np.random.Generator) -> None:
    """A 178x218 RGB JPEG: a flat background with a coloured block, cheap but not blank."""
    pixels = np.full((HEIGHT, WIDTH, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    top, left = rng.integers(20, 120), rng.integers(20, 100)
    pixels[top : top + 60, left : left + 50] = rng.integers(0, 256, 3)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_fake_celeba(
    root: str | Path,
    layout: str = "torchvision",
    num_images: int = 24,
    seed: int = 0,
    *,
    crlf: bool = False,
    empty_first_header_cell: bool = False,
    missing_labels: int = 0,
    missing_images: int = 0,
    corrupt_image: bool = False,
    mismatched_ids: int = 0,
    attributes: Sequence[str] = CELEBA_ATTRIBUTES,
) -> FakeCelebA:
    """Write a fake CelebA of ``num_images`` images under ``root`` in ``layout``.

    - ``crlf``: every annotation file ends its lines with CRLF.
    - ``empty_first_header_cell``: the CSV headers start with ``,`` instead of ``image_id,``.
    - ``missing_labels``: that many label cells are missing; the txt files write them as 0,
      the CSV files alternate an empty cell and 0 so both spellings occur.
    - ``missing_images``: the last that many listed images are not written.
    - ``corrupt_image``: the first image is cut short, so it cannot be decoded.
    - ``mismatched_ids``: the partition file renames that many of the last ids (9xxxxx.jpg).
    - ``attributes``: the attribute columns written (CelebA's 40 by default).

    The partition is contiguous like CelebA's: 60% train, then 20% val, then test.
    The same arguments always give the same values and pixels.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    image_dir, anno_dir, suffix = _paths(root, layout)
    image_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}.jpg" for i in range(1, num_images + 1)]
    attributes = tuple(attributes)

    values = rng.choice(np.array([-1, 1], dtype=np.int8), size=(num_images, len(attributes)))
    missing = rng.choice(values.size, size=missing_labels, replace=False)
    values.flat[missing] = 0
    train_end, val_end = round(0.6 * num_images), round(0.8 * num_images)
    partition = np.repeat(
        np.array([0, 1, 2], dtype=np.int8),
        [train_end, val_end - train_end, num_images - val_end],
    )
    partition_ids = ids[: num_images - mismatched_ids] + [
        f"9{image_id[1:]}" for image_id in ids[num_images - mismatched_ids :]
    ]
    identity = rng.integers(1, 10_178, size=(num_images, 1))
    bbox = rng.integers(50, 400, size=(num_images, 4))
    landmarks = rng.integers(60, 160, size=(num_images, 10))

    if suffix == ".txt":
        eval_dir = root / "Eval" if layout == "original" else anno_dir
        _write_lines(
            anno_dir / "list_attr_celeba.txt", _txt_table(ids, values, attributes, 2), crlf
        )
        _write_lines(
            eval_dir / "list_eval_partition.txt",
            _txt_table(partition_ids, partition[:, None], None, 0),
            crlf,
        )
        _write_lines(anno_dir / "identity_CelebA.txt", _txt_table(ids, identity, None, 0), crlf)
        _write_lines(
            anno_dir / "list_bbox_celeba.txt",
            _txt_table(ids, bbox, ("image_id", *BBOX_NAMES), 4),
            crlf,
        )
        _write_lines(
            anno_dir / "list_landmarks_align_celeba.txt",
            _txt_table(ids, landmarks, LANDMARK_NAMES, 4),
            crlf,
        )
        attributes_file = anno_dir / "list_attr_celeba.txt"
        partition_file = eval_dir / "list_eval_partition.txt"
    else:
        first = "" if empty_first_header_cell else "image_id"
        cells = values.astype(str).astype(object)
        blank = np.isin(np.arange(values.size), missing[::2]).reshape(values.shape)
        cells[blank] = ""
        _write_lines(
            anno_dir / "list_attr_celeba.csv", _csv_table(ids, cells, attributes, first), crlf
        )
        _write_lines(
            anno_dir / "list_eval_partition.csv",
            _csv_table(partition_ids, partition[:, None], ("partition",), first),
            crlf,
        )
        _write_lines(
            anno_dir / "list_bbox_celeba.csv", _csv_table(ids, bbox, BBOX_NAMES, first), crlf
        )
        _write_lines(
            anno_dir / "list_landmarks_align_celeba.csv",
            _csv_table(ids, landmarks, LANDMARK_NAMES, first),
            crlf,
        )
        attributes_file = anno_dir / "list_attr_celeba.csv"
        partition_file = anno_dir / "list_eval_partition.csv"

    for image_id in ids[: num_images - missing_images]:
        _write_image(image_dir / image_id, rng)
    if corrupt_image:
        first_image = image_dir / ids[0]
        first_image.write_bytes(first_image.read_bytes()[:300])

    return FakeCelebA(
        root=root,
        image_dir=image_dir,
        attributes_file=attributes_file,
        partition_file=partition_file,
        attributes=attributes,
        image_ids=ids,
        values=values,
        partition=partition,
    )
