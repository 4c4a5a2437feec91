"""``mtl-explore``: look at a CelebA copy's 40 attributes before choosing what to train on.

Writes, into ``--out``:

- ``heatmap.png``: the 40x40 phi coefficient (Pearson correlation of two binary labels)
  between attributes, rows and columns in hierarchical-clustering order so that related
  attributes sit together;
- ``positive_rates.csv`` and ``phi.csv``: the numbers behind it;
- ``samples_<Attribute>.png``: positives beside negatives, for each chosen attribute;
- ``summary.md``: positive rates per split, the most correlated and anti-correlated pairs,
  and the selection with its criterion.

``--select K`` picks K attributes by a stated criterion and writes them as the preset
``conf/attributes/<NAME>.yaml``, usable as ``mtl-train attributes=NAME``. Every file is
written atomically. Any data root the training reads works: a real CelebA copy in any
layout, or a synthetic one made by ``mtl-synth``.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from mtl_celeba.config import CONFIG_DIR
from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES, resolve_attributes
from mtl_celeba.data.celeba import SPLITS, CelebAIndex, load_celeba
from mtl_celeba.data.images import load_face
from mtl_celeba.errors import ConfigError, DataError, check_choice
from mtl_celeba.io import save_figure, write_text_atomic

log = logging.getLogger(__name__)

#: How each selection criterion is stated in the summary.
CRITERION_TEXT = {
    "balanced": (
        "the K attributes whose positive rate on the train split is closest to 50% "
        "(ties: CelebA column order)"
    ),
    "least_correlated": (
        "greedy: start with the attribute whose train positive rate is closest to 50%, then "
        "repeatedly add the attribute whose largest |phi| with those already chosen is smallest "
        "(ties: closest to 50%)"
    ),
}
HEATMAP = "heatmap.png"
SUMMARY = "summary.md"
PRESET_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class Exploration:
    """What the explorer computes from one CelebA copy's labels."""

    phi: pd.DataFrame  # (40, 40) phi coefficient, CelebA column order
    order: list[str]  # the attributes in clustering order
    rates: (
        pd.DataFrame
    )  # positive rate per attribute (rows) and split (columns: train, val, test, all)


# --------------------------------------------------------------------------- the numbers


def phi_matrix(labels: pd.DataFrame) -> pd.DataFrame:
    """Phi coefficient between every pair of 0/1 columns (NaN labels left out pair by pair).

    Phi of two binary variables is their Pearson correlation. A constant column has no
    defined correlation; it gets 0 off the diagonal (and 1 on it) so that clustering works.
    """
    phi = labels.astype(float).corr(method="pearson", min_periods=2)
    values = phi.to_numpy(copy=True)
    values[np.isnan(values)] = 0.0
    np.fill_diagonal(values, 1.0)
    return pd.DataFrame(values, index=phi.index, columns=phi.columns)


def cluster_order(phi: pd.DataFrame) -> list[str]:
    """The attributes in the leaf order of average-linkage clustering on 1 - |phi|.

    Strongly related attributes, positively or negatively, end up next to each other.
    """
    distance = 1.0 - np.abs(phi.to_numpy())
    distance = (distance + distance.T) / 2  # exactly symmetric for squareform
    np.fill_diagonal(distance, 0.0)
    tree = hierarchy.linkage(squareform(distance, checks=False), method="average")
    leaves = hierarchy.leaves_list(hierarchy.optimal_leaf_ordering(tree, squareform(distance)))
    return [str(phi.index[i]) for i in leaves]


def positive_rates(index: CelebAIndex) -> pd.DataFrame:
    """Positive rate per attribute and split (missing labels left out), plus over all images."""
    columns = {split: index.split(split)[1] for split in SPLITS} | {"all": index.labels}
    # pandas' mean skips NaN and gives NaN for an empty split, without numpy's warnings
    return pd.DataFrame(
        {split: pd.DataFrame(labels).mean(axis=0).to_numpy() for split, labels in columns.items()},
        index=index.attributes,
    )


def top_pairs(phi: pd.DataFrame, count: int, negative: bool = False) -> pd.DataFrame:
    """The ``count`` most correlated (or anti-correlated) attribute pairs: columns a, b, phi."""
    upper = np.triu_indices(len(phi), k=1)
    pairs = pd.DataFrame(
        {
            "a": phi.index[upper[0]],
            "b": phi.columns[upper[1]],
            "phi": phi.to_numpy()[upper],
        }
    )
    return pairs.sort_values("phi", ascending=negative, kind="stable").head(count)


def select_attributes(
    phi: pd.DataFrame, train_rates: pd.Series, count: int, criterion: str
) -> list[str]:
    """Pick ``count`` attributes among ``train_rates``' index by ``criterion`` (see CRITERION_TEXT)."""
    check_choice(criterion, "--criterion", CRITERION_TEXT)
    candidates = list(train_rates.index)
    if not 1 <= count <= len(candidates):
        raise ConfigError(f"--select is {count}: choose between 1 and {len(candidates)}.")
    imbalance = (train_rates - 0.5).abs().fillna(1.0)
    by_balance = sorted(candidates, key=lambda name: (imbalance[name], candidates.index(name)))
    if criterion == "balanced":
        return by_balance[:count]
    chosen = [by_balance[0]]
    while len(chosen) < count:
        rest = [name for name in by_balance if name not in chosen]
        worst = {name: phi.loc[name, chosen].abs().max() for name in rest}
        # min() keeps the first of equal values: rest is in balance order, the tie-break
        chosen.append(min(rest, key=lambda name: worst[name]))
    return chosen


def explore(index: CelebAIndex) -> Exploration:
    """Correlations, clustering order and positive rates of an index holding all 40 attributes."""
    labels = pd.DataFrame(index.labels, columns=index.attributes)
    phi = phi_matrix(labels)
    return Exploration(phi=phi, order=cluster_order(phi), rates=positive_rates(index))


# --------------------------------------------------------------------------- the pictures


def plot_heatmap(phi: pd.DataFrame, order: Sequence[str], path: Path, title: str) -> None:
    """The phi matrix as a heatmap, in ``order``, diverging colours from -1 to 1."""
    ordered = phi.loc[list(order), list(order)]
    size = max(4.0, 0.22 * len(order) + 2.5)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(ordered.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ticks = np.arange(len(order))
    axis.set_xticks(ticks, list(order), rotation=90, fontsize=7)
    axis.set_yticks(ticks, list(order), fontsize=7)
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, shrink=0.6, label="phi coefficient")
    save_figure(figure, path)


def _readable_faces(
    index: CelebAIndex, image_ids: Sequence[str], count: int, size: int
) -> list[np.ndarray]:
    """Up to ``count`` decoded faces from ``image_ids`` in order; unreadable ones are skipped."""
    faces = []
    for image_id in image_ids:
        if len(faces) == count:
            break
        try:
            faces.append(load_face(index.image_path(image_id), size))
        except DataError as error:
            log.warning("skipped in the sample grid: %s", error)
    return faces


def _mosaic(faces: Sequence[np.ndarray], columns: int, size: int) -> np.ndarray:
    """Faces tiled row by row on a white canvas of ``columns`` columns."""
    rows = max(1, -(-len(faces) // columns))
    canvas = np.full((rows * size, columns * size, 3), 255, dtype=np.uint8)
    for i, face in enumerate(faces):
        row, column = divmod(i, columns)
        canvas[row * size : (row + 1) * size, column * size : (column + 1) * size] = face
    return canvas


def plot_samples(
    index: CelebAIndex,
    attribute: str,
    path: Path,
    count: int = 8,
    size: int = 96,
    seed: int = 0,
) -> tuple[int, int]:
    """Positives (left) beside negatives (right) of one attribute, drawn at random with ``seed``.

    Returns how many positives and negatives are shown (fewer when the copy has fewer).
    """
    column = index.labels[:, index.attributes.index(attribute)]
    rng = np.random.default_rng(seed)
    shown = []
    figure = Figure(figsize=(8.5, 2.6), layout="constrained")
    axes = figure.subplots(1, 2)
    columns = max(1, -(-count // 2))
    for axis, value, label in zip(axes, (1.0, 0.0), ("positive", "negative"), strict=True):
        ids = index.image_ids[column == value]
        faces = _readable_faces(index, rng.permutation(ids), count, size)
        shown.append(len(faces))
        axis.imshow(_mosaic(faces, columns, size))
        axis.set_title(f"{attribute}: {label} ({len(faces)} of {len(ids)})", fontsize=9)
        axis.axis("off")
    save_figure(figure, path)
    return shown[0], shown[1]


# --------------------------------------------------------------------------- outputs


def preset_yaml(name: str, attributes: Sequence[str], criterion: str, root: str) -> str:
    """A ``conf/attributes/`` preset holding ``attributes`` (package ``data``, like the built-in ones)."""
    listed = "\n".join(f"  - {name}" for name in attributes)
    return (
        "# @package data\n"
        f"# `mtl-train attributes={name}`: {len(attributes)} attributes chosen by mtl-explore\n"
        f"# with --criterion {criterion} on {root}.\n"
        f"attributes:\n{listed}\n"
    )


def write_preset(
    preset_dir: Path, name: str, attributes: Sequence[str], criterion: str, root: str, force: bool
) -> Path:
    """Write the preset file; an existing preset is replaced only with ``force``."""
    if not PRESET_NAME.match(name):
        raise ConfigError(
            f"--name is {name!r}: use letters, digits, '_' or '-' (it becomes attributes=NAME)."
        )
    path = preset_dir / f"{name}.yaml"
    if path.exists() and not force:
        raise ConfigError(
            f"{path} already exists: choose another --name, or pass --force to replace it."
        )
    write_text_atomic(path, preset_yaml(name, attributes, criterion, root))
    return path


def _percent(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.1f}"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False)


def summary_markdown(
    index: CelebAIndex,
    found: Exploration,
    selection: list[str],
    criterion: str | None,
    preset: Path | None,
    samples: dict[str, tuple[int, int]],
    pairs: int,
) -> str:
    """The short markdown summary of one exploration."""
    counts = {split: int((index.partition == code).sum()) for split, code in SPLITS.items()}
    lines = [
        "# Attribute exploration",
        "",
        f"Data: `{index.layout.root}` ({index.layout.name} layout), {len(index.image_ids)} images: "
        + ", ".join(f"{split} {n}" for split, n in counts.items())
        + ".",
        "",
        f"![phi heatmap]({HEATMAP})",
        "",
        "Phi coefficient (the correlation of two 0/1 labels) between every pair of attributes, "
        "in the leaf order of average-linkage clustering on 1 - |phi|.",
        "",
    ]
    if selection:
        lines += ["## Selection", ""]
        if criterion is not None:
            lines += [f"Criterion `{criterion}`: {CRITERION_TEXT[criterion]}.", ""]
        chosen_phi = found.phi.loc[selection, selection].abs().to_numpy(copy=True)
        np.fill_diagonal(chosen_phi, np.nan)
        rows = [
            {
                "attribute": name,
                "train positive %": _percent(found.rates.loc[name, "train"]),
                "max |phi| to the others chosen": (
                    "n/a" if len(selection) == 1 else f"{np.nanmax(chosen_phi[i]):.3f}"
                ),
                "samples (pos / neg)": "{} / {}".format(*samples.get(name, (0, 0))),
            }
            for i, name in enumerate(selection)
        ]
        lines += [_table(pd.DataFrame(rows)), ""]
        if preset is not None:
            lines += [
                f"Preset written: `{preset}`; train on it with `mtl-train attributes={preset.stem}`.",
                "",
            ]
        lines += [f"![{name}](samples_{name}.png)" for name in selection] + [""]
    for title, negative in (("Most correlated pairs", False), ("Most anti-correlated pairs", True)):
        table = top_pairs(found.phi, pairs, negative=negative)
        table["phi"] = table["phi"].map(lambda v: f"{v:+.3f}")
        lines += [f"## {title}", "", _table(table), ""]
    rates = found.rates.map(_percent).reset_index(names="attribute")
    lines += ["## Positive rate per split (%)", "", _table(rates), ""]
    return "\n".join(lines)


def run(
    root: Path,
    out: Path,
    select: int | None = None,
    criterion: str = "least_correlated",
    name: str | None = None,
    preset_dir: Path = CONFIG_DIR / "attributes",
    attributes: Sequence[str] | None = None,
    samples: int = 8,
    image_size: int = 96,
    pairs: int = 10,
    seed: int = 0,
    force: bool = False,
) -> dict[str, object]:
    """Explore ``root`` and write every output into ``out``; returns what was chosen and written."""
    candidates = (
        resolve_attributes(attributes, key="--attributes")
        if attributes
        else list(CELEBA_ATTRIBUTES)
    )
    if not Path(root).is_dir():
        raise DataError(
            f"--root {root} is not a folder: pass a CelebA copy (the data.root of training) or "
            "the --out folder of mtl-synth."
        )
    index = load_celeba(root, CELEBA_ATTRIBUTES, check_images=False)
    found = explore(index)
    out.mkdir(parents=True, exist_ok=True)
    title = f"phi coefficient, {len(index.image_ids):,} images ({index.layout.name} layout)"
    plot_heatmap(found.phi, found.order, out / HEATMAP, title)
    write_text_atomic(out / "phi.csv", found.phi.loc[found.order, found.order].to_csv())
    write_text_atomic(out / "positive_rates.csv", found.rates.to_csv(index_label="attribute"))

    preset = None
    if select is not None:
        selection = select_attributes(
            found.phi, found.rates.loc[candidates, "train"], select, criterion
        )
        preset_name = name or f"explore{select}_{criterion}"
        preset = write_preset(preset_dir, preset_name, selection, criterion, str(root), force=force)
    else:
        selection = list(attributes or [])
    shown = {
        attribute: plot_samples(
            index, attribute, out / f"samples_{attribute}.png", samples, image_size, seed
        )
        for attribute in selection
    }
    summary = summary_markdown(
        index, found, selection, criterion if select is not None else None, preset, shown, pairs
    )
    write_text_atomic(out / SUMMARY, summary)
    return {"selection": selection, "preset": preset, "out": out}


# --------------------------------------------------------------------------- command line


def run_command(args: argparse.Namespace) -> None:
    """``mtl-explore`` (parsed by :mod:`mtl_celeba.explore`): explore a data root."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    attributes = (
        [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else None
    )
    for key, value in (
        ("--samples", args.samples),
        ("--image-size", args.image_size),
        ("--pairs", args.pairs),
    ):
        if value < 1:
            raise ConfigError(f"{key} is {value}: choose 1 or more.")
    done = run(
        args.root,
        args.out,
        select=args.select,
        criterion=args.criterion,
        name=args.name,
        preset_dir=args.preset_dir,
        attributes=attributes,
        samples=args.samples,
        image_size=args.image_size,
        pairs=args.pairs,
        seed=args.seed,
        force=args.force,
    )
    if done["selection"]:
        print("Selected: " + ", ".join(done["selection"]))  # type: ignore[arg-type]
    if done["preset"] is not None:
        print(f"Preset:   {done['preset']} (mtl-train attributes={Path(done['preset']).stem})")  # type: ignore[arg-type]
    print(f"Summary:  {args.out / SUMMARY}")
