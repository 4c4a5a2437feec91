"""Read a real CelebA copy from disk, in any of the three layouts people have.

The layouts, detected from what is in the root folder:

- ``torchvision``: ``ROOT/celeba/{img_align_celeba/, list_attr_celeba.txt,
  list_eval_partition.txt}``, or ROOT pointed at that ``celeba/`` folder itself.
- ``original`` (the authors' release): ``ROOT/Img/img_align_celeba/``,
  ``ROOT/Anno/list_attr_celeba.txt``, ``ROOT/Eval/list_eval_partition.txt``.
- ``kaggle`` (the CSV copy): ``ROOT/list_attr_celeba.csv``, ``ROOT/list_eval_partition.csv``,
  images in ``ROOT/img_align_celeba/img_align_celeba/`` (or un-nested ``ROOT/img_align_celeba/``).

Labels -1/1 become 0.0/1.0 and an empty label is missing (NaN), so partially annotated copies
work and the loss and metrics mask those entries. A 0 is refused unless ``data.label_values``
says what it means (:data:`LABEL_VALUES`): ``signed_0_missing`` reads it as missing,
``binary`` reads a 0/1 re-export. Every task needs both classes among the training images.
Anything wrong with the files ends in one :class:`DataError` sentence that names the file and
the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mtl_celeba.data.attributes import resolve_attributes
from mtl_celeba.errors import DataError, check_choice

#: Partition codes in ``list_eval_partition``, by split name.
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

#: ``data.label_values``: what each value in the attribute file means (1.0 positive, 0.0
#: negative, NaN missing). ``signed`` is CelebA's own -1/1.
LABEL_VALUES: dict[str, dict[int, float]] = {
    "signed": {-1: 0.0, 1: 1.0},
    "signed_0_missing": {-1: 0.0, 0: np.nan, 1: 1.0},
    "binary": {0: 0.0, 1: 1.0},
}

#: How many example names an error message lists.
EXAMPLES = 5


@dataclass(frozen=True)
class CelebALayout:
    """Where one CelebA copy keeps its images and annotation files."""

    name: str  # "torchvision" | "original" | "kaggle"
    root: Path
    image_dir: Path
    attributes_file: Path
    partition_file: Path


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays field-wise is ambiguous
class CelebAIndex:
    """The chosen attributes' labels and the split of every image of one CelebA copy."""

    layout: CelebALayout
    attributes: list[str]  # the chosen attributes, in the order requested
    image_ids: np.ndarray  # (N,) str such as "000001.jpg", in file order
    labels: np.ndarray  # (N, T) float32: 1.0 positive, 0.0 negative, NaN missing
    partition: np.ndarray  # (N,) int8: 0 train, 1 val, 2 test

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The image ids and labels of one split ("train", "val" or "test"), in file order."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; expected one of {', '.join(SPLITS)}.")
        rows = self.partition == SPLITS[name]
        return self.image_ids[rows], self.labels[rows]

    def image_path(self, image_id: str) -> Path:
        """The JPEG file of one image id."""
        return self.layout.image_dir / image_id


def _layout_paths(layout: CelebALayout) -> list[Path]:
    return [layout.image_dir, layout.attributes_file, layout.partition_file]


def _candidate_layouts(root: Path) -> list[tuple[str, CelebALayout]]:
    """Every layout ROOT could hold, with a label for messages, in the order they are tried."""
    kaggle_images = root / "img_align_celeba" / "img_align_celeba"
    if not kaggle_images.is_dir() and (root / "img_align_celeba").is_dir():
        kaggle_images = root / "img_align_celeba"  # some Kaggle downloads unzip un-nested
    torchvision_dir = root / "celeba"
    return [
        (
            "torchvision",
            CelebALayout(
                "torchvision",
                root,
                torchvision_dir / "img_align_celeba",
                torchvision_dir / "list_attr_celeba.txt",
                torchvision_dir / "list_eval_partition.txt",
            ),
        ),
        (
            "torchvision (ROOT = its celeba/ folder)",
            CelebALayout(
                "torchvision",
                root,
                root / "img_align_celeba",
                root / "list_attr_celeba.txt",
                root / "list_eval_partition.txt",
            ),
        ),
        (
            "original",
            CelebALayout(
                "original",
                root,
                root / "Img" / "img_align_celeba",
                root / "Anno" / "list_attr_celeba.txt",
                root / "Eval" / "list_eval_partition.txt",
            ),
        ),
        (
            "kaggle",
            CelebALayout(
                "kaggle",
                root,
                kaggle_images,
                root / "list_attr_celeba.csv",
                root / "list_eval_partition.csv",
            ),
        ),
    ]


def find_layout(root: str | Path) -> CelebALayout:
    """Detect which CelebA layout ``root`` holds.

    A layout is found when its image folder and both annotation files exist. When none is
    complete, the error names what is missing from each layout whose annotation files are
    partly there, or else every path that was looked for.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root {root} is not a folder: set data.root to the folder that holds your "
            "CelebA copy (see docs/data.md, 'Real CelebA')."
        )
    candidates = _candidate_layouts(root)
    for _, layout in candidates:
        if all(path.exists() for path in _layout_paths(layout)):
            return layout
    partial = [
        f"{label}: missing "
        + ", ".join(str(path) for path in _layout_paths(layout) if not path.exists())
        for label, layout in candidates
        if layout.attributes_file.exists() or layout.partition_file.exists()
    ]
    if partial:
        raise DataError(
            f"data.root {root} holds an incomplete CelebA copy ({'; '.join(partial)}): "
            "add the missing files or folder from your CelebA download."
        )
    looked_for = "; ".join(
        f"{label}: " + ", ".join(str(path.relative_to(root)) for path in _layout_paths(layout))
        for label, layout in candidates
    )
    raise DataError(
        f"data.root {root} holds no CelebA layout (looked for {looked_for}): "
        "point data.root at the folder of your CelebA copy."
    )


def _read_header_lines(path: Path, count: int) -> list[str]:
    """The first ``count`` lines of a text file, without line endings."""
    with open(path, encoding="utf-8-sig", newline=None) as file:
        lines = [file.readline().rstrip("\r\n") for _ in range(count)]
    if not lines[-1]:
        raise DataError(f"{path} ends before its header is complete: replace it with a good copy.")
    return lines


def attribute_names(path: str | Path) -> list[str]:
    """The attribute names of an attribute file's header, read without its rows (for the
    preflight): the second line of ``list_attr_celeba.txt``, the first of Kaggle's ``.csv``."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return [name.strip() for name in _read_header_lines(path, 1)[0].split(",")][1:]
    return _read_header_lines(path, 2)[1].split()


def split_sizes(partition_file: str | Path) -> dict[str, int]:
    """How many images each split has in ``list_eval_partition`` (txt or csv), by split name;
    a line's last field is its partition code. Fast enough for the preflight: a file of
    CelebA's 202,599 lines took 0.36 s on the 2-core CPU, under load from parallel work."""
    path = Path(partition_file)
    counts = dict.fromkeys(SPLITS.values(), 0)
    with open(path, encoding="utf-8-sig") as file:
        if path.suffix.lower() == ".csv":
            file.readline()  # image_id,partition
        for line in file:
            code = line.replace(",", " ").split()[-1:] or [""]
            if code[0].isdigit() and int(code[0]) in counts:
                counts[int(code[0])] += 1
    return {name: counts[code] for name, code in SPLITS.items()}


def _read_rows(path: Path, skiprows: int, sep: str) -> pd.DataFrame:
    """The data rows of an annotation file, columns numbered from 0 (the image id).

    Headers are read separately so that a row with a field too many or too few cannot
    shift columns silently: pandas rejects longer rows, and the callers check the width.
    """
    try:
        return pd.read_csv(path, sep=sep, header=None, skiprows=skiprows, dtype={0: str})
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} has no data rows: replace it with a good copy.") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as error:
        reason = str(error).replace("Error tokenizing data. C error: ", "").strip()
        raise DataError(f"Cannot parse {path} ({reason}): replace it with a good copy.") from None


def _check_shape(path: Path, rows: pd.DataFrame, names: Sequence[str]) -> None:
    if rows.shape[1] != len(names) + 1:
        raise DataError(
            f"{path} has {rows.shape[1] - 1} values per row but its header names {len(names)} "
            "columns: replace it with a good copy."
        )


def _index_by_image_id(path: Path, rows: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    rows = rows.set_axis(["image_id", *names], axis=1).set_index("image_id")
    rows.index = rows.index.astype(str)
    duplicated = rows.index[rows.index.duplicated()]
    if len(duplicated):
        examples = ", ".join(duplicated[:EXAMPLES])
        raise DataError(
            f"{path} lists {len(duplicated)} image ids more than once (e.g. {examples}): "
            "replace it with a good copy."
        )
    return rows


def _checked_values(path: Path, frame: pd.DataFrame, allowed: Sequence[int]) -> np.ndarray:
    """The cells of ``frame`` as float32 (NaN where empty), after checking each is allowed.

    Raises naming the first cell, row by row, that is neither empty nor one of ``allowed``.
    Columns that pandas already parsed as numbers skip the slow text conversion.
    """
    numbers = frame
    if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes):
        numbers = frame.apply(pd.to_numeric, errors="coerce")
    values = numbers.to_numpy(dtype=np.float32)
    valid = np.isnan(values)
    unreadable = valid & frame.notna().to_numpy()  # text that is not a number
    for value in allowed:
        valid |= values == value
    bad = ~valid | unreadable
    if bad.any():
        row, column = np.argwhere(bad)[0]
        value = frame.iat[row, column]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise DataError(
            f"{path} has value {shown} for image {frame.index[row]} in column "
            f"{frame.columns[column]}; allowed values are {', '.join(map(str, allowed))} or "
            "empty: fix that row."
        )
    return values


def read_attribute_file(path: str | Path, label_values: str = "signed") -> pd.DataFrame:
    """Read ``list_attr_celeba.txt`` or Kaggle's ``list_attr_celeba.csv``.

    Returns one row per image (index ``image_id``, in file order) and one float32 column per
    attribute in the file: 1.0 positive, 0.0 negative, NaN missing (empty, or what
    ``label_values`` maps to NaN; see :data:`LABEL_VALUES`). The txt file's count line must
    match its rows.
    """
    check_choice(label_values, "data.label_values", LABEL_VALUES)
    path = Path(path)
    if path.suffix.lower() == ".csv":
        header = _read_header_lines(path, 1)[0]
        names = [name.strip() for name in header.split(",")][1:]  # first cell: image_id or empty
        rows = _read_rows(path, skiprows=1, sep=",")
        _check_shape(path, rows, names)
    else:
        count_line, header = _read_header_lines(path, 2)
        if not count_line.strip().isdigit():
            raise DataError(
                f"{path} should start with a line holding the image count, not {count_line!r}: "
                "replace it with a good copy."
            )
        names = header.split()
        rows = _read_rows(path, skiprows=2, sep=r"\s+")
        _check_shape(path, rows, names)
        if int(count_line) != len(rows):
            raise DataError(
                f"{path} says it holds {int(count_line)} images but has {len(rows)} rows: "
                "the file is truncated or edited; replace it with a good copy."
            )
        short = rows.iloc[:, 1:].isna().any(axis=1).to_numpy()
        if short.any():  # whitespace-separated rows cannot hold an empty value, only a short row
            raise DataError(
                f"{path} has a row with fewer values than the header names, for image "
                f"{rows.iat[int(np.argmax(short)), 0]}: write 0 for a missing label and set "
                "data.label_values=signed_0_missing."
            )
    frame = _index_by_image_id(path, rows, names)
    meaning = LABEL_VALUES[label_values]
    values = _checked_values(path, frame, (-1, 0, 1))
    _check_label_values(path, frame, values, label_values)
    labels = np.full(values.shape, np.nan, dtype=np.float32)
    for value, label in meaning.items():
        labels[values == value] = label
    return pd.DataFrame(labels, index=frame.index, columns=frame.columns)


def _check_label_values(
    path: Path, frame: pd.DataFrame, values: np.ndarray, label_values: str
) -> None:
    """Refuse a value ``label_values`` gives no meaning to, naming the setting that would."""
    allowed = LABEL_VALUES[label_values]
    has_zero, has_minus = bool((values == 0).any()), bool((values == -1).any())
    if has_zero and 0 not in allowed:
        row, column = np.argwhere(values == 0)[0]
        where = f"(e.g. image {frame.index[row]}, column {frame.columns[column]})"
        if not has_minus:
            raise DataError(
                f"{path} holds 0/1 labels {where}, but CelebA's attribute files hold -1/1: "
                "set data.label_values=binary to read 0 as negative."
            )
        raise DataError(
            f"{path} holds 0 labels {where} besides CelebA's -1/1: set "
            "data.label_values=signed_0_missing if 0 means missing, or fix those rows."
        )
    if has_minus and -1 not in allowed:
        row, column = np.argwhere(values == -1)[0]
        raise DataError(
            f"{path} holds -1 labels (e.g. image {frame.index[row]}, column "
            f"{frame.columns[column]}) but data.label_values=binary expects 0/1: set "
            "data.label_values=signed for CelebA's -1/1."
        )


def read_partition_file(path: str | Path) -> pd.Series:
    """Read ``list_eval_partition.txt`` (no header) or Kaggle's ``.csv`` (``image_id,partition``).

    Returns the partition of every image (index ``image_id``, in file order) as int8:
    0 train, 1 val, 2 test.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        _read_header_lines(path, 1)
        rows = _read_rows(path, skiprows=1, sep=",")
    else:
        rows = _read_rows(path, skiprows=0, sep=r"\s+")
    _check_shape(path, rows, ["partition"])
    frame = _index_by_image_id(path, rows, ["partition"])
    values = _checked_values(path, frame, tuple(SPLITS.values()))[:, 0]
    if np.isnan(values).any():
        image_id = frame.index[np.isnan(values)][0]
        raise DataError(f"{path} has no partition for image {image_id}: write 0, 1 or 2 there.")
    return pd.Series(values.astype(np.int8), index=frame.index, name="partition")


def _check_same_images(
    attributes_file: Path, partition_file: Path, attr_ids: pd.Index, part_ids: pd.Index
) -> None:
    only_attr = attr_ids.difference(part_ids, sort=False)
    only_part = part_ids.difference(attr_ids, sort=False)
    if len(only_attr) or len(only_part):
        details = [
            f"{len(ids)} only in {path.name}, e.g. {', '.join(ids[:EXAMPLES])}"
            for path, ids in ((attributes_file, only_attr), (partition_file, only_part))
            if len(ids)
        ]
        raise DataError(
            f"{attributes_file} and {partition_file} disagree on image ids "
            f"({'; '.join(details)}): use both files from the same CelebA copy."
        )


def _check_images_exist(image_dir: Path, image_ids: np.ndarray) -> None:
    """Raise naming the listed images that are not in ``image_dir`` (one directory scan)."""
    with os.scandir(image_dir) as entries:
        present = {entry.name for entry in entries}
    missing = [image_id for image_id in image_ids if image_id not in present]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(image_ids)} listed images are missing from {image_dir} "
            f"(e.g. {', '.join(missing[:EXAMPLES])}): extract the full image archive there, "
            "or set data.check_images=false to skip this check."
        )


def _check_both_classes(path: Path, attributes: Sequence[str], train_labels: np.ndarray) -> None:
    """Raise naming the first task whose training labels lack a class."""
    for column, name in enumerate(attributes):
        labels = train_labels[:, column]
        for value, kind in ((1.0, "positive"), (0.0, "negative")):
            if not (labels == value).any():
                raise DataError(
                    f"{path}: attribute {name} has no {kind} label among the "
                    f"{len(labels)} training images, so it cannot be learnt: drop it from "
                    "data.attributes or use more images (data.num_images for synthetic data)."
                )


def load_celeba(
    root: str | Path,
    attributes: Sequence[str],
    check_images: bool = True,
    label_values: str = "signed",
) -> CelebAIndex:
    """Find the layout under ``root`` and read the chosen attributes' labels and the splits.

    ``attributes`` are checked against CelebA's 40 names (key ``data.attributes``) and kept in
    the order given; each needs both classes among the training images. With
    ``check_images`` every listed image must be in the image folder. ``label_values`` says
    what the file's values mean (:data:`LABEL_VALUES`).
    """
    attributes = resolve_attributes(attributes, key="data.attributes")
    layout = find_layout(root)
    labels = read_attribute_file(layout.attributes_file, label_values)
    absent = [name for name in attributes if name not in labels.columns]
    if absent:
        raise DataError(
            f"{layout.attributes_file} has no column {', '.join(absent)} named in data.attributes: "
            "choose among the file's columns or use a complete attribute file."
        )
    partition = read_partition_file(layout.partition_file)
    _check_same_images(layout.attributes_file, layout.partition_file, labels.index, partition.index)
    image_ids = labels.index.to_numpy(dtype=str)
    if check_images:
        _check_images_exist(layout.image_dir, image_ids)
    chosen = labels[attributes].to_numpy(dtype=np.float32)
    splits = partition.reindex(labels.index).to_numpy(dtype=np.int8)
    _check_both_classes(layout.attributes_file, attributes, chosen[splits == SPLITS["train"]])
    return CelebAIndex(
        layout=layout, attributes=attributes, image_ids=image_ids, labels=chosen, partition=splits
    )
