"""The DataModule's batches, summary and label hiding, on the synthetic and the fake real layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_celeba import write_fake_celeba

from mtl_celeba.data.datamodule import CelebADataModule, hide_labels
from mtl_celeba.errors import ConfigError

TASKS = ["Smiling", "Male", "Eyeglasses"]


def make_datamodule(root, tmp_path, **kwargs) -> CelebADataModule:
    settings = {
        "root": str(root),
        "attributes": TASKS,
        "image_size": 32,
        "batch_size": 16,
        "cache_dir": str(tmp_path / "cache"),
        "cache_workers": 1,
    }
    return CelebADataModule(**{**settings, **kwargs})


@pytest.mark.parametrize("pipeline", ["cached", "naive"])
def test_batches_hold_images_targets_and_mask(tmp_path, pipeline):
    fake = write_fake_celeba(
        tmp_path / "real", layout="original", num_images=40, missing_labels=6, crlf=True
    )
    datamodule = make_datamodule(
        tmp_path / "real", tmp_path, pipeline=pipeline, label_values="signed_0_missing"
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    images, targets, mask = next(iter(datamodule.val_dataloader()))
    assert images.shape[1:] == (3, 32, 32)
    assert targets.shape == mask.shape == (len(images), 3)
    assert images.dtype == (torch.uint8 if pipeline == "cached" else torch.float32)
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
    # the mask is false exactly where the files have no label
    expected = fake.labels(TASKS)[fake.partition == 1]
    np.testing.assert_array_equal(mask.numpy(), ~np.isnan(expected[: len(mask)]))
    sizes = datamodule.split_sizes()
    assert sum(sizes.values()) == 40 and sizes["train"] > sizes["val"]


def test_cached_and_naive_pipelines_give_the_same_normalised_images(tmp_path):
    write_fake_celeba(tmp_path / "real", num_images=30)
    batches = {}
    for pipeline in ("cached", "naive"):
        datamodule = make_datamodule(tmp_path / "real", tmp_path, pipeline=pipeline)
        datamodule.prepare_data()
        datamodule.setup("test")
        batch = next(iter(datamodule.test_dataloader()))
        batches[pipeline] = datamodule.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(
        batches["cached"][0].contiguous(), batches["naive"][0], atol=1e-5, rtol=1e-5
    )
    assert torch.equal(batches["cached"][1], batches["naive"][1])


def test_summary_and_statistics(tmp_path, synthetic_root):
    datamodule = make_datamodule(synthetic_root, tmp_path, source="synthetic", num_images=400)
    datamodule.prepare_data()
    datamodule.setup("fit")
    summary = datamodule.summary()
    assert "torchvision layout" in summary and "Smiling" in summary and "train 322" in summary
    rates = datamodule.positive_rates("train")
    assert rates.shape == (3,) and ((rates > 0) & (rates < 1)).all()
    assert (datamodule.label_counts("train") == 322).all()
    majority = datamodule.majority_accuracy("test")
    assert ((majority >= 0) & (majority <= 1)).all()


def test_training_order_depends_only_on_seed_and_epoch(tmp_path, synthetic_root):
    datamodule = make_datamodule(
        synthetic_root, tmp_path, source="synthetic", num_images=400, shuffle_seed=3
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    first = list(loader.sampler)
    loader.sampler.set_epoch(1)
    second = list(loader.sampler)
    loader.sampler.set_epoch(0)
    assert list(loader.sampler) == first and first != second and sorted(first) == list(range(322))


def test_hide_labels_is_seeded_per_task():
    labels = np.ones((1000, 2), dtype=np.float32)
    hidden = hide_labels(labels, ["Smiling", "Male"], {"Smiling": 0.3}, seed=0)
    assert np.isnan(hidden[:, 0]).mean() == pytest.approx(0.3, abs=0.05)
    assert not np.isnan(hidden[:, 1]).any()
    again = hide_labels(labels[:, :1], ["Smiling"], 0.3, seed=0)
    np.testing.assert_array_equal(np.isnan(again[:, 0]), np.isnan(hidden[:, 0]))


def test_hidden_labels_never_share_a_stream_between_tasks():
    """Every attribute has its own stream (a seed from the byte sum of the name made Gray_Hair
    and Pale_Skin, both 886, hide exactly the same samples)."""
    from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES

    labels = np.ones((2000, len(CELEBA_ATTRIBUTES)), dtype=np.float32)
    hidden = np.isnan(hide_labels(labels, list(CELEBA_ATTRIBUTES), 0.5, seed=0))
    patterns = {column.tobytes() for column in hidden.T}
    assert len(patterns) == len(CELEBA_ATTRIBUTES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pipeline": "fast"}, "data.pipeline"),
        ({"source": "imagenet"}, "data.source"),
        ({"image_size": 8}, "data.image_size"),
        ({"attributes": ["Smilling"]}, "Did you mean Smiling"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_datamodule(tmp_path, tmp_path, **kwargs)


def test_hide_labels_rejects_unknown_tasks_and_bad_fractions():
    labels = np.ones((10, 1), dtype=np.float32)
    with pytest.raises(ConfigError, match=r"data\.hide_labels"):
        hide_labels(labels, ["Smiling"], {"Male": 0.5}, seed=0)
    with pytest.raises(ConfigError, match=r"data\.hide_labels"):
        hide_labels(labels, ["Smiling"], 1.0, seed=0)
