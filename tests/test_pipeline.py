"""The uint8 cache and the device-side transform (the fast pipeline) against the naive path."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl_celeba.data import cache as cache_module
from mtl_celeba.data.augment import (
    device_transform,
    naive_transform,
    normalize_uint8,
    random_flip,
    random_shift,
)
from mtl_celeba.data.cache import build_cache, cache_file, load_or_build_cache
from mtl_celeba.data.datasets import CachedFaces, JpegFaces
from mtl_celeba.data.images import load_face
from mtl_celeba.errors import DataError


@pytest.fixture
def jpeg_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(12):
        pixels = rng.integers(0, 255, size=(218, 178, 3), dtype=np.uint8)
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        names.append(name)
    return folder, names


def test_load_face_crops_centre_square_and_resizes(tmp_path: Path):
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[:20] = 255  # the strip above the centre square is white, the square black
    pixels[198:] = 255
    Image.fromarray(pixels).save(tmp_path / "a.png")
    face = load_face(tmp_path / "a.png", 32)
    assert face.shape == (32, 32, 3) and face.dtype == np.uint8
    assert face.max() < 10  # nothing of the white strips leaks into the square


def test_load_face_names_unreadable_file(tmp_path: Path):
    bad = tmp_path / "000007.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=r"000007\.jpg"):
        load_face(bad, 32)


def test_cache_builds_reuses_and_rebuilds(jpeg_folder, tmp_path: Path, monkeypatch):
    folder, names = jpeg_folder
    cache_dir = tmp_path / "cache"
    images = load_or_build_cache(cache_dir, "train", folder, names, 24, workers=1)
    assert images.shape == (12, 24, 24, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3], load_face(folder / names[3], 24))

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(cache_module, "build_cache", fail)
    again = load_or_build_cache(cache_dir, "train", folder, names, 24, workers=1)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(images))
    monkeypatch.undo()

    # another size, another id list, or a changed image folder each build a new file
    assert cache_file(cache_dir, "train", folder, names, 32) != cache_file(
        cache_dir, "train", folder, names, 24
    )
    assert cache_file(cache_dir, "train", folder, names[:-1], 24) != cache_file(
        cache_dir, "train", folder, names, 24
    )
    before = cache_file(cache_dir, "train", folder, names, 24)
    (folder / names[0]).rename(folder / "renamed.jpg")
    (folder / "renamed.jpg").rename(folder / names[0])
    assert cache_file(cache_dir, "train", folder, names, 24) != before


def test_cache_build_in_parallel_matches_serial(jpeg_folder, tmp_path: Path, monkeypatch):
    folder, names = jpeg_folder
    paths = [folder / n for n in names]
    serial = np.load(build_cache(tmp_path / "serial.npy", paths, 20, workers=1))
    monkeypatch.setattr(cache_module, "_CHUNK", 3)  # several chunks, so the threads share work
    threads = []
    decode = cache_module.load_face

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return decode(*args, **kwargs)

    monkeypatch.setattr(cache_module, "load_face", spy)
    parallel = np.load(build_cache(tmp_path / "parallel.npy", paths, 20, workers=2))
    np.testing.assert_array_equal(serial, parallel)
    assert all(name.startswith("cache") for name in threads), "decoded by the pool's threads"


def test_cache_worker_count_follows_the_split_size():
    assert cache_module.cache_workers(100, 8) == 1, "a small split needs no pool"
    assert cache_module.cache_workers(1000, 8) == 4, "one thread per 256 images at most"
    assert cache_module.cache_workers(100_000, 8) == 8
    assert cache_module.cache_workers(100_000) == (os.cpu_count() or 1)


def test_failed_parallel_cache_build_leaves_nothing(jpeg_folder, tmp_path: Path, monkeypatch):
    folder, names = jpeg_folder
    (folder / names[7]).write_bytes(b"broken")
    monkeypatch.setattr(cache_module, "_CHUNK", 3)
    with pytest.raises(DataError, match=names[7]):
        build_cache(tmp_path / "cache" / "c.npy", [folder / n for n in names], 16, workers=2)
    assert list((tmp_path / "cache").iterdir()) == [], "no cache and no partial file"


def test_interrupted_cache_build_leaves_no_valid_cache(jpeg_folder, tmp_path: Path):
    folder, names = jpeg_folder
    (folder / names[5]).write_bytes(b"broken")  # the build fails part-way through
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError, match=names[5]):
        load_or_build_cache(cache_dir, "train", folder, names, 16, workers=1)
    assert not list(cache_dir.glob("*.npy")), (
        "a failed build must not leave a file that looks complete"
    )
    assert not list(cache_dir.glob("*partial*")), "the partial file is cleaned up"


def test_cached_dataset_yields_channels_last_uint8_batches():
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    labels = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0], [np.nan, 1]], dtype=np.float32)
    dataset = CachedFaces(images, labels)
    batch, targets, mask = dataset.__getitems__([4, 1, 2])
    assert batch.shape == (3, 3, 4, 4) and batch.dtype == torch.uint8
    assert batch.is_contiguous(memory_format=torch.channels_last)
    # indices are served sorted: 1, 2, 4
    np.testing.assert_array_equal(batch[0].permute(1, 2, 0).numpy(), images[1])
    assert mask.tolist() == [[True, False], [True, True], [False, True]]
    assert targets.tolist() == [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]


def test_device_transform_matches_torchvision_naive_transform(jpeg_folder):
    folder, names = jpeg_folder
    faces = np.stack([load_face(folder / n, 32) for n in names[:4]])
    uint8_batch = torch.from_numpy(faces).permute(0, 3, 1, 2)

    # no augmentation: the normalisation alone
    naive_eval = torch.stack([naive_transform(32, train=False)(face) for face in faces])
    torch.testing.assert_close(
        device_transform(uint8_batch, train=False), naive_eval, atol=1e-5, rtol=1e-5
    )

    # flips: the same decisions give the same images
    flip = torch.tensor([True, False, True, False])
    flipped = torch.stack(
        [torch.flip(naive_eval[i], dims=[-1]) if flip[i] else naive_eval[i] for i in range(4)]
    )
    torch.testing.assert_close(
        random_flip(normalize_uint8(uint8_batch), flip), flipped, atol=1e-5, rtol=1e-5
    )


def test_random_shift_moves_pixels_with_replicated_edges():
    image = torch.zeros(1, 1, 6, 6)
    image[0, 0, 2, 3] = 1.0
    generator = torch.Generator().manual_seed(0)
    shifted = random_shift(image, 2, generator)
    assert shifted.shape == image.shape
    assert (
        shifted.sum() >= 1.0
    )  # the bright pixel survives (edges are replicated, nothing is lost inside)
    assert torch.equal(random_shift(image, 0), image)


def test_training_transform_flips_about_half():
    batch = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2).repeat(200, 1, 1, 1)
    out = device_transform(batch, train=True, generator=torch.Generator().manual_seed(1))
    reference = normalize_uint8(batch)
    flipped = (out != reference).flatten(1).any(1).float().mean().item()
    assert 0.35 < flipped < 0.65


def test_jpeg_dataset_matches_cached_dataset(jpeg_folder):
    folder, names = jpeg_folder
    labels = np.zeros((len(names), 1), dtype=np.float32)
    naive = JpegFaces([folder / n for n in names], labels, 16, naive_transform(16, train=False))
    faces = np.stack([load_face(folder / n, 16) for n in names])
    cached = CachedFaces(faces, labels)
    image, _, _ = naive[2]
    uint8_image, _, _ = cached[2]
    torch.testing.assert_close(image, normalize_uint8(uint8_image[None])[0], atol=1e-5, rtol=1e-5)


def build_in_process(cache_dir: str, folder: str, names: list[str]) -> str:
    """One of two processes that want the same cache at once."""
    images = load_or_build_cache(Path(cache_dir), "train", Path(folder), names, 16, workers=1)
    return str(images.filename)


def test_parallel_jobs_share_one_cache_build(jpeg_folder, tmp_path: Path):
    import multiprocessing

    folder, names = jpeg_folder
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        files = pool.starmap(build_in_process, [(str(tmp_path / "cache"), str(folder), names)] * 2)
    assert files[0] == files[1]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert not list((tmp_path / "cache").glob("*partial*"))


def test_squash_and_crop_caches_are_separate_files(synthetic_root, tmp_path):
    """The cache key holds the resize mode: a squashed split never reuses a cropped one."""
    import numpy as np

    from mtl_celeba.data.cache import cache_file, load_or_build_cache
    from mtl_celeba.data.images import load_face

    image_dir = synthetic_root / "celeba" / "img_align_celeba"
    ids = sorted(p.name for p in image_dir.glob("*.jpg"))[:3]
    crop = cache_file(tmp_path, "train", image_dir, ids, 32)
    squash = cache_file(tmp_path, "train", image_dir, ids, 32, "squash")
    assert crop != squash
    images = load_or_build_cache(tmp_path, "train", image_dir, ids, 32, workers=1, resize="squash")
    expected = np.stack([load_face(image_dir / i, 32, resize="squash") for i in ids])
    np.testing.assert_array_equal(images, expected)
