"""The embedded synthetic CelebA: labels, drawn faces and CelebA's five annotation files.

No machine here can download CelebA, so the project writes a stand-in in CelebA's exact
on-disk format (torchvision's layout) that the real-data reader, and torchvision's own
``CelebA`` class, read unchanged. Labels come from a Gaussian copula with real CelebA's
positive rates and pairwise phi (:mod:`mtl_celeba.data.label_model`);
:mod:`mtl_celeba.data.faces` draws each face so its attributes are visible.

Determinism: every random stream is keyed by (seed, purpose[, image index]) through
NumPy's ``SeedSequence``, so the same seed gives byte-identical files whatever the number
of worker processes. An interrupted generation never looks complete: files go to a
temporary sibling folder that is renamed into place after the marker ``synthetic.json``
is written. Concurrent jobs on an empty data root are safe: each builder has its own
temporary folder, and a lock lets one job generate while the others wait
(:mod:`mtl_celeba.data.build_lock`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtl_celeba.data import faces, label_model
from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES
from mtl_celeba.data.build_lock import build_lock, partial_path, publish, remove_dead_partials
from mtl_celeba.errors import ConfigError, DataError, exit_on_user_error
from mtl_celeba.io import write_json_atomic

#: Bumped whenever the labels or the pictures for a given seed change.
GENERATOR_VERSION = 3
#: Written last into a finished dataset folder; holds the settings it was made with.
MARKER = "synthetic.json"
#: CelebA's train / val / test sizes; the synthetic partition keeps their proportions.
CELEBA_SPLIT_SIZES = (162_770, 19_867, 19_962)
#: Quality of the written JPEGs (fixed, so file sizes and artefacts do not vary).
JPEG_QUALITY = 90
MIN_IMAGES, MAX_IMAGES = 10, 999_999  # CelebA names images with six digits
MAX_LABEL_NOISE = 0.5
#: Images a worker renders per task: small enough for a smooth progress bar.
CHUNK_SIZE = 100
LANDMARK_NAMES = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)  # fmt: skip

# Purposes of the random streams derived from the seed.
_LABELS, _LABEL_NOISE, _IDENTITIES, _IMAGES = range(4)


def _stream(seed: int, *key: int) -> np.random.Generator:
    """An independent random generator for one purpose (and image) of a seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def sample_labels(num_images: int, rng: np.random.Generator) -> np.ndarray:
    """Draw CelebA-like attribute vectors: a (num_images, 40) bool array in CelebA's column order.

    A Gaussian copula fitted to real CelebA's positive rates and 40x40 phi matrix, with the
    few rules a drawn face needs (:func:`mtl_celeba.data.label_model.drawable`).
    """
    return label_model.sample_labels(num_images, rng)


#: Per-attribute test accuracy (%) of LNets+ANet on real CelebA: Liu, Luo, Wang, Tang, "Deep
#: Learning Face Attributes in the Wild", ICCV 2015 (arXiv:1411.7766), Table 1; mean 87.3.
#: ``label_noise=celeba`` flips each attribute so its labels have this accuracy and keep the rate.
LNETS_ANET_ACCURACY: dict[str, float] = {
    "5_o_Clock_Shadow": 91, "Arched_Eyebrows": 79, "Attractive": 81, "Bags_Under_Eyes": 79,
    "Bald": 98, "Bangs": 95, "Big_Lips": 68, "Big_Nose": 78, "Black_Hair": 88,
    "Blond_Hair": 95, "Blurry": 84, "Brown_Hair": 80, "Bushy_Eyebrows": 90, "Chubby": 91,
    "Double_Chin": 92, "Eyeglasses": 99, "Goatee": 95, "Gray_Hair": 97, "Heavy_Makeup": 90,
    "High_Cheekbones": 87, "Male": 98, "Mouth_Slightly_Open": 92, "Mustache": 95,
    "Narrow_Eyes": 81, "No_Beard": 95, "Oval_Face": 66, "Pale_Skin": 91, "Pointy_Nose": 72,
    "Receding_Hairline": 89, "Rosy_Cheeks": 90, "Sideburns": 96, "Smiling": 92,
    "Straight_Hair": 73, "Wavy_Hair": 80, "Wearing_Earrings": 82, "Wearing_Hat": 99,
    "Wearing_Lipstick": 93, "Wearing_Necklace": 71, "Wearing_Necktie": 93, "Young": 87,
}  # fmt: skip

#: Named label-noise settings: per-attribute (p01, p10) flip rates in CelebA's column order.
#: ``celeba``: each attribute keeps CelebA's positive rate, and its labels are right at the
#: published LNets+ANet accuracy (see :func:`mtl_celeba.data.label_model.flip_rates`).
LABEL_NOISE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "celeba": tuple(
        tuple(np.round(rates, 4).tolist())
        for rates in label_model.flip_rates(
            label_model.read_positive_rates(),
            np.array([LNETS_ANET_ACCURACY[name] / 100 for name in CELEBA_ATTRIBUTES]),
        )
    ),
}


def label_noise_rates(label_noise: float | str) -> tuple[np.ndarray, np.ndarray]:
    """Each of the 40 attributes' flip rates (p01: negative to positive, p10: positive to
    negative): one fraction for all, or a named preset's."""
    if isinstance(label_noise, str):
        p01, p10 = LABEL_NOISE_PRESETS[label_noise]
        return np.array(p01), np.array(p10)
    same = np.full(len(CELEBA_ATTRIBUTES), float(label_noise))
    return same, same


def add_label_noise(
    labels: np.ndarray, fraction: float | str, rng: np.random.Generator
) -> np.ndarray:
    """Flip each label independently (the picture keeps the truth): with probability ``fraction``,
    or per attribute and class with a preset's rates (``"celeba"``; ``labels`` then has CelebA's
    40 columns)."""
    draw = rng.random(labels.shape)
    if not isinstance(fraction, str):
        return labels ^ (draw < fraction)
    p01, p10 = label_noise_rates(fraction)
    return labels ^ (draw < np.where(labels, p10, p01))


def partition_sizes(num_images: int) -> tuple[int, int, int]:
    """Train / val / test sizes in CelebA's proportions (each at least one image)."""
    total = sum(CELEBA_SPLIT_SIZES)
    val = max(1, round(num_images * CELEBA_SPLIT_SIZES[1] / total))
    test = max(1, round(num_images * CELEBA_SPLIT_SIZES[2] / total))
    return num_images - val - test, val, test


def sample_identities(num_images: int, rng: np.random.Generator) -> np.ndarray:
    """Identity numbers in contiguous runs (about 20 images each, as in CelebA) that never straddle a split.

    They fill the identity file's format only: images of one identity are not the same drawn face.
    """
    identities = np.empty(num_images, dtype=np.int64)
    start, next_id = 0, 0
    for size in partition_sizes(num_images):
        end = start + size
        while start < end:
            run = int(min(end - start, rng.integers(5, 36)))
            identities[start : start + run] = next_id
            start, next_id = start + run, next_id + 1
    # CelebA's identity numbers are not in image order; shuffle the names, keep the runs
    return rng.permutation(next_id)[identities] + 1


def _image_name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _render_chunk(task: tuple[Path, int, int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Draw and save images ``start..start+len(labels)-1``; return their landmarks and boxes."""
    image_dir, seed, start, labels = task
    landmarks = np.empty((len(labels), 10), dtype=np.int64)
    boxes = np.empty((len(labels), 4), dtype=np.int64)
    for offset, row in enumerate(labels):
        index = start + offset
        named = dict(zip(CELEBA_ATTRIBUTES, row.tolist(), strict=True))
        face = faces.render_face(named, _stream(seed, _IMAGES, index))
        face.image.save(image_dir / _image_name(index), format="JPEG", quality=JPEG_QUALITY)
        landmarks[offset] = face.landmarks
        boxes[offset] = face.bbox
    return landmarks, boxes


def _render_all(
    image_dir: Path, seed: int, labels: np.ndarray, workers: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    tasks = [
        (image_dir, seed, start, labels[start : start + CHUNK_SIZE])
        for start in range(0, len(labels), CHUNK_SIZE)
    ]
    bar = tqdm(total=len(labels), desc="synthetic CelebA", unit="img", disable=not progress)

    def collect(results: Iterator[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        landmarks, boxes = [], []
        for chunk_landmarks, chunk_boxes in results:
            landmarks.append(chunk_landmarks)
            boxes.append(chunk_boxes)
            bar.update(len(chunk_landmarks))
        return np.concatenate(landmarks), np.concatenate(boxes)

    with bar:
        if workers == 1:
            return collect(map(_render_chunk, tasks))
        with multiprocessing.Pool(workers) as pool:
            rendered = collect(pool.imap(_render_chunk, tasks))
            # let the workers exit on their own: the context manager's terminate() relies on
            # SIGTERM, which a worker forked from a process that catches it would ignore
            pool.close()
            pool.join()
            return rendered


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="ascii", newline="\n")


def _write_annotations(
    folder: Path,
    labels: np.ndarray,
    identities: np.ndarray,
    landmarks: np.ndarray,
    boxes: np.ndarray,
) -> None:
    """The five text files, byte for byte in the layout of CelebA's originals."""
    n = len(labels)
    names = [_image_name(i) for i in range(n)]
    values = np.where(labels, 1, -1)
    _write_lines(
        folder / "list_attr_celeba.txt",
        [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
        + [
            name + "".join(f" {v:2d}" for v in row)
            for name, row in zip(names, values.tolist(), strict=True)
        ],
    )
    split = np.repeat([0, 1, 2], partition_sizes(n))
    _write_lines(
        folder / "list_eval_partition.txt",
        [f"{name} {s}" for name, s in zip(names, split, strict=True)],
    )
    _write_lines(
        folder / "identity_CelebA.txt",
        [f"{name} {i}" for name, i in zip(names, identities, strict=True)],
    )
    _write_lines(
        folder / "list_bbox_celeba.txt",
        [str(n), "image_id x_1 y_1 width height"]
        + [
            f"{name} {x:5d} {y:3d} {w:3d} {h:3d}"
            for name, (x, y, w, h) in zip(names, boxes.tolist(), strict=True)
        ],
    )
    _write_lines(
        folder / "list_landmarks_align_celeba.txt",
        [str(n), " ".join(LANDMARK_NAMES)]
        + [
            f"{name} " + "".join(f"{v:5d}" for v in row)
            for name, row in zip(names, landmarks.tolist(), strict=True)
        ],
    )


def _settings(num_images: int, seed: int, label_noise: float | str) -> dict[str, int | float | str]:
    return {
        "num_images": int(num_images),
        "seed": int(seed),
        "label_noise": label_noise if isinstance(label_noise, str) else float(label_noise),
        "generator_version": GENERATOR_VERSION,
    }


def _describe(settings: dict) -> str:
    return ", ".join(
        f"{key}={settings.get(key)}"
        for key in ("num_images", "seed", "label_noise", "generator_version")
    )


def _existing(folder: Path, settings: dict[str, int | float], fix: str) -> bool:
    """True if ``folder`` is a finished synthetic CelebA made with ``settings``; False if absent.

    Anything else there (other settings, no marker) raises :class:`DataError`: a dataset is
    never reused or overwritten silently.
    """
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return False
    marker = folder / MARKER
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DataError(
            f"{folder} exists but is not a finished synthetic CelebA (no readable {MARKER}) while "
            f"the settings ask for {_describe(settings)}: {fix}."
        ) from None
    if found != settings:
        raise DataError(
            f"{folder} holds a synthetic CelebA made with {_describe(found)}, but the settings ask "
            f"for {_describe(settings)}: {fix}."
        )
    return True


def _check_arguments(
    num_images: int, seed: int, label_noise: float | str, keys: tuple[str, str, str]
) -> None:
    size_key, seed_key, noise_key = keys
    if not MIN_IMAGES <= num_images <= MAX_IMAGES:
        raise ConfigError(
            f"{size_key} is {num_images}: choose between {MIN_IMAGES} and {MAX_IMAGES} images."
        )
    if seed < 0:
        raise ConfigError(f"{seed_key} is {seed}: choose a seed of 0 or more.")
    if isinstance(label_noise, str):
        if label_noise not in LABEL_NOISE_PRESETS:
            raise ConfigError(
                f"{noise_key} is {label_noise!r}: choose a fraction of flipped labels between 0 "
                f"and {MAX_LABEL_NOISE}, or a preset: {', '.join(LABEL_NOISE_PRESETS)}."
            )
    elif not 0.0 <= label_noise <= MAX_LABEL_NOISE:
        raise ConfigError(
            f"{noise_key} is {label_noise}: choose a fraction of flipped labels between 0 and "
            f"{MAX_LABEL_NOISE}, or a preset: {', '.join(LABEL_NOISE_PRESETS)}."
        )


def generate_synthetic_celeba(
    out: str | Path,
    num_images: int,
    seed: int,
    label_noise: float | str = 0.0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthetic CelebA in torchvision's layout under ``out/celeba`` and return that folder.

    ``label_noise`` flips that fraction of the written labels (the faces show the true ones).
    ``workers`` processes draw the images (default: all CPU cores); the files do not depend on it.
    A folder already made with the same settings is returned as is; one made otherwise raises
    :class:`DataError`.
    """
    _check_arguments(num_images, seed, label_noise, ("num_images", "seed", "label_noise"))
    target = Path(out) / "celeba"
    fix = "delete that folder or choose another output folder"
    _generate_or_explain(target, num_images, seed, label_noise, workers, progress, fix, "out")
    return target


def _generate(
    target: Path,
    num_images: int,
    seed: int,
    label_noise: float | str,
    workers: int | None,
    progress: bool,
    fix: str,
) -> bool:
    """Generate into ``target`` unless it already holds these settings; True if it generated."""
    settings = _settings(num_images, seed, label_noise)
    if _existing(target, settings, fix):
        return False
    # Concurrent jobs: one generates, the others wait and reuse (see mtl_celeba.data.build_lock).
    with build_lock(target, f"the synthetic CelebA {target}"):
        if _existing(target, settings, fix):
            return False  # another job generated it while this one waited
        remove_dead_partials(target)
        partial = partial_path(target)  # this process's own folder: no other job touches it
        shutil.rmtree(partial, ignore_errors=True)
        try:
            _write_dataset(partial, num_images, seed, label_noise, workers, progress, settings)
            published = publish(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    if not published:  # another builder published first (a stale lock was broken)
        _existing(target, settings, fix)
    return published


def _generate_or_explain(
    target: Path,
    num_images: int,
    seed: int,
    label_noise: float,
    workers: int | None,
    progress: bool,
    fix: str,
    key: str,
) -> bool:
    """:func:`_generate`, with a folder that cannot be written (read-only, full) named in one line."""
    try:
        return _generate(target, num_images, seed, label_noise, workers, progress, fix)
    except OSError as error:
        raise DataError(
            f"cannot write the synthetic CelebA to {target.parent} ({error.strerror or error}): "
            f"set {key} to a writable folder with free space."
        ) from None


def _write_dataset(
    folder: Path,
    num_images: int,
    seed: int,
    label_noise: float,
    workers: int | None,
    progress: bool,
    settings: dict[str, int | float],
) -> None:
    """Write every image and annotation file into ``folder``, the marker last."""
    workers = max(1, workers or os.cpu_count() or 1)
    image_dir = folder / "img_align_celeba"
    image_dir.mkdir(parents=True)
    labels = sample_labels(num_images, _stream(seed, _LABELS))
    landmarks, boxes = _render_all(image_dir, seed, labels, workers, progress)
    written = add_label_noise(labels, label_noise, _stream(seed, _LABEL_NOISE))
    identities = sample_identities(num_images, _stream(seed, _IDENTITIES))
    _write_annotations(folder, written, identities, landmarks, boxes)
    write_json_atomic(folder / MARKER, settings)  # last: only a finished folder has it


def ensure_synthetic_celeba(
    root: str | Path, num_images: int, seed: int, label_noise: float | str = 0.0
) -> Path:
    """Return ``root/celeba``, generating it first (with a progress bar) if it is not there.

    Used by the DataModule on first use. A folder made with other settings, or not by the
    generator, raises :class:`DataError`: it is never used or overwritten silently.
    """
    keys = ("data.num_images", "data.seed", "data.label_noise")
    _check_arguments(num_images, seed, label_noise, keys)
    target = Path(root) / "celeba"
    fix = "delete that folder or choose another data.root"
    _generate_or_explain(target, num_images, seed, label_noise, None, True, fix, "data.root")
    return target


def _label_noise_argument(value: str) -> float | str:
    """``--label-noise``: a number, or a preset name (checked with the other arguments)."""
    try:
        return float(value)
    except ValueError:
        return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-synth",
        description="Write a synthetic CelebA (torchvision's layout, CelebA's exact file formats) to OUT/celeba.",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="folder to write into (OUT/celeba is created)"
    )
    parser.add_argument(
        "--num-images", type=int, default=5_000, help="number of images (default 5000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--label-noise",
        type=_label_noise_argument,
        default=0.0,
        help="fraction of written labels flipped (0..0.5), or celeba (per-attribute rates, "
        "see docs/data.md, 'Noisy labels like CelebA')",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="processes drawing images (default: all cores)"
    )
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """``mtl-synth``: generate a synthetic CelebA from the command line."""
    args = _parser().parse_args(argv)
    _check_arguments(
        args.num_images, args.seed, args.label_noise, ("--num-images", "--seed", "--label-noise")
    )
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers is {args.workers}: choose 1 or more processes.")
    started = time.perf_counter()
    target = args.out / "celeba"
    fix = "delete that folder or choose another --out"
    generated = _generate_or_explain(
        target, args.num_images, args.seed, args.label_noise, args.workers, True, fix, "--out"
    )
    if generated:
        elapsed = time.perf_counter() - started
        print(f"Wrote {args.num_images} synthetic CelebA images to {target} in {elapsed:.1f} s.")
    else:
        print(f"{target} already holds this synthetic CelebA; nothing to do.")


if __name__ == "__main__":
    main()
