"""data.device_cache: batches gathered from a device-resident split equal the cached pipeline's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_celeba.data.datamodule import CelebADataModule
from mtl_celeba.data.datasets import DeviceBatches, EpochShuffle
from mtl_celeba.errors import ConfigError

ATTRIBUTES = ["Smiling", "Male", "Young"]


def datamodule(root: Path, tmp_path: Path, **kwargs) -> CelebADataModule:
    module = CelebADataModule(
        root=str(root),
        attributes=ATTRIBUTES,
        source="synthetic",
        num_images=400,
        image_size=32,
        batch_size=48,
        eval_batch_size=64,
        cache_dir=str(tmp_path / "cache"),
        cache_workers=1,
        shuffle_seed=7,
        hide_labels=0.3,  # missing labels, so the masks differ between samples
        **kwargs,
    )
    module.prepare_data()
    module.setup("fit")
    return module


def assert_same_batches(expected, got, count: int) -> None:
    pairs = list(zip(expected, got, strict=True))
    assert len(pairs) >= count
    for want, have in pairs[:count]:
        for want_tensor, have_tensor in zip(want, have, strict=True):
            assert want_tensor.dtype == have_tensor.dtype
            assert torch.equal(want_tensor, have_tensor)
        assert have[0].is_contiguous(memory_format=torch.channels_last)


def test_device_batches_equal_the_cached_pipeline(synthetic_root: Path, tmp_path: Path) -> None:
    cached = datamodule(synthetic_root, tmp_path)
    on_device = datamodule(synthetic_root, tmp_path, device_cache=True)
    loader = on_device.train_dataloader()
    assert isinstance(loader, DeviceBatches) and loader.images.device.type == "cpu"
    reference = cached.train_dataloader()
    assert len(loader) == len(reference)
    for epoch in (0, 3):  # Lightning calls set_epoch on the sampler of either
        reference.sampler.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        assert_same_batches(list(reference), list(loader), len(reference))
    assert_same_batches(list(cached.val_dataloader()), list(on_device.val_dataloader()), 1)
    # the split is copied to the device once
    assert on_device.train_dataloader() is loader


def test_device_batches_follow_the_epoch_permutation() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 2, 2, 3).clone()
    labels = torch.arange(10, dtype=torch.float32).view(10, 1)
    sampler = EpochShuffle(10, seed=1)
    batches = DeviceBatches(images, labels, torch.ones(10, 1, dtype=torch.bool), 4, sampler)
    sampler.set_epoch(2)
    order = sampler.permutation()
    got = [batch[1].flatten() for batch in batches]
    assert [len(b) for b in got] == [4, 4, 2]
    expected = [order[i : i + 4].sort().values.float() for i in range(0, 10, 4)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert torch.equal(order, torch.tensor(list(sampler)))


def test_device_cache_needs_the_cached_pipeline(synthetic_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.device_cache=true needs data\.pipeline=cached"):
        CelebADataModule(str(synthetic_root), ATTRIBUTES, pipeline="naive", device_cache=True)


@pytest.mark.slow
def test_training_on_device_batches_repeats_the_cached_run(compose_train, tmp_path: Path) -> None:
    """Same seed, same batches: the same trained model (flips off: they draw random numbers)."""
    from mtl_celeba.train import train

    common = ["strategy=mtl", "seed=3", "data.flip=false", "test=false"]
    cached = train(compose_train(common, run_dir=tmp_path / "a"), tmp_path / "a")
    on_device = train(
        compose_train([*common, "data.device_cache=true"], run_dir=tmp_path / "b"), tmp_path / "b"
    )
    assert on_device["val"] == cached["val"]
