"""The uint8 image cache: each split decoded and resized once, then memory-mapped.

Decoding 200k JPEGs every epoch cannot feed a GPU, so the fast pipeline decodes each split
once into a ``(N, size, size, 3)`` uint8 ``.npy`` file and serves batches straight from the
memory map. The file name carries a key of everything that determines its content (image
folder, image ids, size, decoder version), so a changed source or size builds a new file.
A build writes to a partial file of its own (``<name>.partial-<host>-<pid>``) and renames it
only when complete, so an interrupted build never looks valid; a ``filelock`` lock lets
parallel jobs, on one machine or many, share one build (:mod:`mtl_celeba.data.build_lock`).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mtl_celeba.data.build_lock import build_lock, partial_path, publish, remove_dead_partials
from mtl_celeba.data.images import CROP_SIDE, load_face
from mtl_celeba.errors import DataError

#: Bump when :func:`load_face` changes the pixels it produces; old caches are then rebuilt.
DECODER_VERSION = 1
_CHUNK = 256


def cache_key(image_dir: Path, image_ids: Sequence[str], size: int, resize: str = "crop") -> str:
    """A short hash of everything that determines a cache file's content.

    The image folder's modification time is included, so adding, removing or renaming
    images rebuilds; overwriting a file in place does not (delete the cache folder then).
    """
    digest = hashlib.sha1()
    image_dir = Path(image_dir).resolve()
    header = f"{image_dir}|{image_dir.stat().st_mtime_ns}|{size}|{CROP_SIDE}|{DECODER_VERSION}|"
    if resize != "crop":  # the default keeps its old key, so existing caches stay valid
        header += f"{resize}|"
    digest.update(header.encode())
    digest.update("\n".join(image_ids).encode())
    return digest.hexdigest()[:16]


def cache_file(
    cache_dir: Path,
    split: str,
    image_dir: Path,
    image_ids: Sequence[str],
    size: int,
    resize: str = "crop",
) -> Path:
    """Where the cache of one split lives."""
    key = cache_key(image_dir, image_ids, size, resize)
    return Path(cache_dir) / f"{split}-{size}px-{len(image_ids)}-{key}.npy"


def _fill_chunk(args: tuple[str, int, int, list[str], str]) -> int:
    """Decode one chunk of images straight into the partial memory map (runs in a worker)."""
    partial, start, size, paths, resize = args
    array = np.load(partial, mmap_mode="r+")
    for offset, path in enumerate(paths):
        array[start + offset] = load_face(path, size, resize)
    array.flush()
    return len(paths)


def build_cache(
    path: Path,
    image_paths: Sequence[Path],
    size: int,
    workers: int | None = None,
    description: str = "caching images",
    resize: str = "crop",
) -> Path:
    """Decode every image into ``path`` (a ``.npy`` of shape (N, size, size, 3), uint8), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(path)
    partial = partial_path(path)  # this process's own file: no other job touches it
    array = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.uint8, shape=(len(image_paths), size, size, 3)
    )
    del array
    jobs = [
        (str(partial), start, size, [str(p) for p in image_paths[start : start + _CHUNK]], resize)
        for start in range(0, len(image_paths), _CHUNK)
    ]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    try:
        with tqdm(total=len(image_paths), desc=description, unit="img", dynamic_ncols=True) as bar:
            if workers == 1:
                for job in jobs:
                    bar.update(_fill_chunk(job))
            else:
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for done in pool.imap_unordered(_fill_chunk, jobs):
                        bar.update(done)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        publish(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load_or_build_cache(
    cache_dir: Path,
    split: str,
    image_dir: Path,
    image_ids: Sequence[str],
    size: int,
    workers: int | None = None,
    resize: str = "crop",
) -> np.ndarray:
    """The memory-mapped uint8 images of one split, building the cache file first if needed.

    ``resize`` is :func:`~mtl_celeba.data.images.load_face`'s mode (crop or squash).
    """
    path = cache_file(cache_dir, split, image_dir, image_ids, size, resize)
    if not path.exists():
        try:
            # Jobs running side by side share a cache: one builds, the others wait and reuse it.
            with build_lock(path, f"the {split} image cache {path.name}"):
                if not path.exists():
                    paths = [Path(image_dir) / image_id for image_id in image_ids]
                    description = f"caching {split} at {size}px"
                    build_cache(path, paths, size, workers, description, resize)
        except OSError as error:
            if path.exists():
                raise
            raise DataError(
                f"cannot write the image cache to {Path(cache_dir)} ({error.strerror or error}): "
                "set data.cache_dir to a writable folder with free space (or data.pipeline=naive)."
            ) from None
    return np.load(path, mmap_mode="r")
