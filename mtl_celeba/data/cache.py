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

import functools
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mtl_celeba.data.build_lock import build_lock, partial_path, publish, remove_dead_partials
from mtl_celeba.data.images import CROP_SIDE, load_face
from mtl_celeba.errors import DataError

#: Bump when :func:`load_face` changes the pixels it produces; old caches are then rebuilt.
DECODER_VERSION = 1
_CHUNK = 256


def cache_key(
    image_dir: Path,
    image_ids: Sequence[str],
    size: int,
    resize: str = "crop",
    decode: str = "draft",
) -> str:
    """A short hash of everything that determines a cache file's content.

    The image folder's modification time is included, so adding, removing or renaming
    images rebuilds; overwriting a file in place does not (delete the cache folder then).
    """
    digest = hashlib.sha1()
    image_dir = Path(image_dir).resolve()
    header = f"{image_dir}|{image_dir.stat().st_mtime_ns}|{size}|{CROP_SIDE}|{DECODER_VERSION}|"
    if resize != "crop":  # the default keeps its old key, so existing caches stay valid
        header += f"{resize}|"
    if decode != "draft":  # likewise for the default decode
        header += f"decode={decode}|"
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
    decode: str = "draft",
) -> Path:
    """Where the cache of one split lives."""
    key = cache_key(image_dir, image_ids, size, resize, decode)
    return Path(cache_dir) / f"{split}-{size}px-{len(image_ids)}-{key}.npy"


def _fill_chunk(
    array: np.ndarray,
    image_paths: Sequence[Path],
    size: int,
    resize: str,
    decode: str,
    start: int,
) -> int:
    """Decode the images of the chunk at ``start`` into ``array``; returns how many."""
    chunk = image_paths[start : start + _CHUNK]
    for offset, image_path in enumerate(chunk):
        try:
            array[start + offset] = load_face(image_path, size, resize, decode)
        except Image.DecompressionBombError as error:  # not an OSError: load_face lets it by
            raise DataError(
                f"image {image_path} is too large to decode safely ({error}): replace it with "
                "the dataset's own copy (CelebA's aligned images are 178x218) or remove it."
            ) from None
    return len(chunk)


def cache_workers(num_images: int, workers: int | None = None) -> int:
    """Threads for decoding ``num_images``: ``workers`` (default: all cores), but one per
    :data:`_CHUNK` images at most, so a small split is decoded in the calling thread."""
    return max(1, min(workers or os.cpu_count() or 1, -(-num_images // _CHUNK)))


def build_cache(
    path: Path,
    image_paths: Sequence[Path],
    size: int,
    workers: int | None = None,
    description: str = "caching images",
    resize: str = "crop",
    decode: str = "draft",
) -> Path:
    """Decode every image into ``path`` (a ``.npy`` of shape (N, size, size, 3)), atomically.

    Chunks of images are decoded by a pool of threads: Pillow releases the GIL while it
    decodes and resizes, so threads scale like processes here without starting interpreters
    that import the training stack (spawned workers cost tens of seconds each on a small CPU).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(path)
    partial = partial_path(path)  # this process's own file: no other job touches it
    array = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.uint8, shape=(len(image_paths), size, size, 3)
    )

    fill = functools.partial(_fill_chunk, array, image_paths, size, resize, decode)
    starts = range(0, len(image_paths), _CHUNK)
    try:
        with tqdm(total=len(image_paths), desc=description, unit="img", dynamic_ncols=True) as bar:
            threads = cache_workers(len(image_paths), workers)
            if threads == 1:
                for start in starts:
                    bar.update(fill(start))
            else:
                pool = ThreadPoolExecutor(threads, thread_name_prefix="cache")
                try:
                    for done in pool.map(fill, starts):
                        bar.update(done)
                finally:  # on an error or Ctrl-C, drop the chunks not started yet
                    pool.shutdown(wait=True, cancel_futures=True)
        array.flush()
        del array
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
    decode: str = "draft",
) -> np.ndarray:
    """The memory-mapped uint8 images of one split, building the cache file first if needed.

    ``resize`` and ``decode`` are :func:`~mtl_celeba.data.images.load_face`'s modes.
    """
    path = cache_file(cache_dir, split, image_dir, image_ids, size, resize, decode)
    if not path.exists():
        try:
            # Jobs running side by side share a cache: one builds, the others wait and reuse it.
            with build_lock(path, f"the {split} image cache {path.name}"):
                if not path.exists():
                    paths = [Path(image_dir) / image_id for image_id in image_ids]
                    description = f"caching {split} at {size}px"
                    build_cache(path, paths, size, workers, description, resize, decode)
        except OSError as error:
            if path.exists():
                raise
            raise DataError(
                f"cannot write the image cache to {Path(cache_dir)} ({error.strerror or error}): "
                "set data.cache_dir to a writable folder with free space (or data.pipeline=naive)."
            ) from None
    return np.load(path, mmap_mode="r")
