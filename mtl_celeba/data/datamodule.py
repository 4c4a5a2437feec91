"""The LightningDataModule: CelebA's official splits, any subset of its 40 attributes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.data import suggested_max_num_workers
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES, resolve_attributes
from mtl_celeba.data.augment import device_transform, naive_transform
from mtl_celeba.data.cache import load_or_build_cache
from mtl_celeba.data.celeba import CelebAIndex, load_celeba
from mtl_celeba.data.datasets import (
    CachedFaces,
    DeviceBatches,
    EpochShuffle,
    JpegFaces,
    keep_batch,
    to_device_in_chunks,
)
from mtl_celeba.data.images import DECODE_MODES, RESIZE_MODES
from mtl_celeba.data.synthetic import ensure_synthetic_celeba
from mtl_celeba.errors import ConfigError, check_choice

SPLITS = ("train", "val", "test")
PIPELINES = ("cached", "naive")
SOURCES = ("synthetic", "celeba")


def hide_labels(
    labels: np.ndarray, attributes: Sequence[str], fraction: float | Mapping[str, float], seed: int
) -> np.ndarray:
    """Mark a fixed random ``fraction`` of each task's labels as missing (NaN).

    On CelebA every image carries every label, so DST's label-count term is 1 for all tasks;
    hiding labels per task (a float for all, or a mapping task -> fraction) recreates the
    paper's setting of unequal label counts. Seeded per task, so a task's hidden samples do
    not change when other tasks are added: task t's stream is seeded by ``(seed, i)`` with i
    its column among CelebA's 40 attributes, so no two attributes ever share one.
    """
    fractions = fraction if isinstance(fraction, Mapping) else dict.fromkeys(attributes, fraction)
    unknown = sorted(set(fractions) - set(attributes))
    if unknown:
        raise ConfigError(
            f"data.hide_labels names {', '.join(unknown)}, which are not among data.attributes; "
            "list only chosen attributes."
        )
    labels = labels.copy()
    for column, name in enumerate(attributes):
        share = float(fractions.get(name, 0.0))
        if not 0.0 <= share < 1.0:
            raise ConfigError(f"data.hide_labels for {name} is {share}: use a fraction in [0, 1).")
        if share == 0.0:
            continue
        task_seed = [seed, CELEBA_ATTRIBUTES.index(name)]
        hidden = np.random.default_rng(task_seed).random(len(labels)) < share
        labels[hidden, column] = np.nan
    return labels


#: Under this many val or test images a run warns that its metrics are noise.
MIN_EVAL_IMAGES = 20


class CelebADataModule(L.LightningDataModule):
    """Train/val/test loaders for the chosen CelebA attributes.

    Images are the centred 178x178 square resized to ``image_size`` (see
    :mod:`mtl_celeba.data.images`). With ``pipeline="cached"`` (the default) each split is
    decoded once into a uint8 memory map and batches are normalised and flipped on the
    device; ``pipeline="naive"`` decodes every image in the workers with torchvision
    transforms. Batches are ``(images, targets, mask)``, the mask false for missing labels.
    """

    def __init__(
        self,
        root: str,
        attributes: Sequence[str],
        source: str = "celeba",
        num_images: int = 12_000,
        seed: int = 0,
        label_noise: float = 0.0,
        image_size: int = 64,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | None = 0,
        pipeline: str = "cached",
        cache_dir: str | None = None,
        cache_workers: int | None = None,
        flip: bool = True,
        max_shift: int = 0,
        pin_memory: bool = True,
        check_images: bool = True,
        hide_labels: float | Mapping[str, float] = 0.0,
        hide_labels_seed: int = 0,
        shuffle_seed: int = 0,
        device_cache: bool = False,
        resize: str = "crop",
        decode: str = "draft",
        normalize: bool = True,
        label_values: str = "signed",
    ) -> None:
        super().__init__()
        check_choice(resize, "data.resize", RESIZE_MODES)
        check_choice(decode, "data.decode", DECODE_MODES)
        check_choice(source, "data.source", SOURCES)
        check_choice(pipeline, "data.pipeline", PIPELINES)
        if device_cache and pipeline != "cached":
            raise ConfigError(
                "data.device_cache=true needs data.pipeline=cached (it holds the uint8 cache on "
                "the device): set one of them differently."
            )
        if image_size < 16:
            raise ConfigError(f"data.image_size is {image_size}: use at least 16 pixels.")
        self.attributes = resolve_attributes(attributes)
        self.root = Path(root)
        self.source = source
        self.num_images = num_images
        self.seed = seed
        self.label_noise = label_noise
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pipeline = pipeline
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".mtl_cache"
        self.cache_workers = cache_workers
        self.flip = flip
        self.max_shift = max_shift
        self.pin_memory = pin_memory
        self.check_images = check_images
        self.hidden_label_fraction = hide_labels
        self.hide_labels_seed = hide_labels_seed
        self.shuffle_seed = shuffle_seed
        self.device_cache = device_cache
        self._device_splits: dict[str, DeviceBatches] = {}
        self.resize = resize
        self.decode = decode
        self.normalize = normalize
        self.label_values = label_values
        self.index: CelebAIndex | None = None
        self.datasets: dict[str, Dataset] = {}
        self.split_labels: dict[str, np.ndarray] = {}
        self._augment = True
        self._augment_generator: torch.Generator | None = None
        self._augment_key: tuple[str, int] | None = None

    # ----------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        """Generate the synthetic CelebA and build the image caches (one process per node).

        Lightning calls this on local rank zero only and makes the other ranks wait, so DDP
        ranks never write the same files; :meth:`setup` then only reads them.
        """
        if self.source == "synthetic":
            ensure_synthetic_celeba(self.root, self.num_images, self.seed, self.label_noise)
        if self.pipeline == "cached":
            index = self._load_index()
            for split in SPLITS:
                image_ids, _ = index.split(split)
                self._cached_images(index, split, image_ids)

    def setup(self, stage: str | None = None) -> None:
        """Read the annotations once and build the three split datasets."""
        if self.index is not None:
            return
        self.index = self._load_index()
        for split in SPLITS:
            image_ids, labels = self.index.split(split)
            if split == "train" and self.hidden_label_fraction:
                labels = hide_labels(
                    labels, self.attributes, self.hidden_label_fraction, self.hide_labels_seed
                )
            self.split_labels[split] = labels
            self.datasets[split] = self._dataset(split, image_ids, labels)
        rank_zero_info(self.summary())
        for message in self.split_warnings():
            rank_zero_warn(message)

    def split_warnings(self) -> list[str]:
        """One line per evaluation split and task without both classes, and one for tiny splits.

        Such a task's AUROC and F1 are undefined there (recorded as n/a and left out of the
        means); the training split's classes are checked when the labels are read.
        """
        messages = []
        for split in ("val", "test"):
            labels = self.split_labels[split]
            for column, task in enumerate(self.attributes):
                for value, kind in ((1.0, "positive"), (0.0, "negative")):
                    if not (labels[:, column] == value).any():
                        messages.append(
                            f"The {split} split has no {kind} {task} label: its {split} AUROC "
                            "and F1 are undefined (n/a) and left out of the means."
                        )
        tiny = {
            split: len(self.split_labels[split])
            for split in ("val", "test")
            if len(self.split_labels[split]) < MIN_EVAL_IMAGES
        }
        if tiny:
            sizes = ", ".join(f"{split} {count}" for split, count in tiny.items())
            messages.append(
                f"Tiny evaluation splits ({sizes} images, under {MIN_EVAL_IMAGES}): their "
                "metrics are too noisy to compare runs; use more images."
            )
        return messages

    def _load_index(self) -> CelebAIndex:
        if self.source == "synthetic":
            ensure_synthetic_celeba(self.root, self.num_images, self.seed, self.label_noise)
        return load_celeba(
            self.root,
            self.attributes,
            check_images=self.check_images,
            label_values=self.label_values,
        )

    def _cached_images(self, index: CelebAIndex, split: str, image_ids: np.ndarray) -> np.ndarray:
        return load_or_build_cache(
            self.cache_dir,
            split,
            index.layout.image_dir,
            list(image_ids),
            self.image_size,
            self.cache_workers,
            self.resize,
            self.decode,
        )

    def _dataset(self, split: str, image_ids: np.ndarray, labels: np.ndarray) -> Dataset:
        assert self.index is not None
        if self.pipeline == "cached":
            images = load_or_build_cache(
                self.cache_dir,
                split,
                self.index.layout.image_dir,
                list(image_ids),
                self.image_size,
                self.cache_workers,
                self.resize,
                self.decode,
            )
            return CachedFaces(images, labels)
        transform = naive_transform(
            self.image_size,
            train=split == "train",
            flip=self.flip,
            max_shift=self.max_shift,
            normalize=self.normalize,
        )
        paths = [self.index.image_path(image_id) for image_id in image_ids]
        return JpegFaces(
            paths, labels, self.image_size, transform, resize=self.resize, decode=self.decode
        )

    # ----------------------------------------------------------- statistics
    @property
    def num_tasks(self) -> int:
        return len(self.attributes)

    def split_sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {split: len(labels) for split, labels in self.split_labels.items()}

    def label_counts(self, split: str = "train") -> np.ndarray:
        """Number of samples carrying a label, per task (DST's c_t on the training split)."""
        return (~np.isnan(self.split_labels[split])).sum(axis=0)

    def positive_rates(self, split: str = "train") -> np.ndarray:
        """Share of positives among the labelled samples, per task."""
        with np.errstate(invalid="ignore"):
            return np.nanmean(self.split_labels[split], axis=0)

    def majority_accuracy(self, split: str = "test") -> np.ndarray:
        """Accuracy on ``split`` of always predicting each task's majority class in training."""
        train_majority = self.positive_rates("train") >= 0.5
        rates = self.positive_rates(split)
        return np.where(train_majority, rates, 1.0 - rates)

    def summary(self) -> str:
        """A one-screen description: layout, samples per split, positive rate per attribute."""
        assert self.index is not None
        table = pd.DataFrame(
            {split: self.positive_rates(split) for split in SPLITS},
            index=pd.Index(self.attributes, name="attribute"),
        )
        sizes = ", ".join(f"{split} {count:,}" for split, count in self.split_sizes().items())
        header = (
            f"CelebA ({self.index.layout.name} layout) at {self.index.layout.root}: {sizes} images; "
            f"{self.image_size}px, {self.pipeline} pipeline.\nPositive rate per attribute:"
        )
        return header + "\n" + table.to_string(float_format=lambda value: f"{value:.3f}")

    # ---------------------------------------------------------- dataloaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader | DeviceBatches:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for a dataloader")
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        if self.device_cache:
            device_batches = self._device_batches(split, batch_size, shuffle)
            if device_batches is not None:
                return device_batches
        cached = self.pipeline == "cached"
        dataset = self.datasets[split]
        workers = self.loader_workers()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(len(dataset), self.shuffle_seed) if shuffle else None,
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            collate_fn=keep_batch if cached else None,
        )

    def loader_workers(self) -> int:
        """``data.num_workers``, or for ``null`` (the default) what fits the machine: the
        number Lightning suggests (the CPU cores available per device, minus one for the
        main process, at least 1), at most 4. Neither torch (more workers than cores) nor
        Lightning (too few workers) then warns."""
        if self.num_workers is not None:
            return self.num_workers
        devices = self.trainer.num_devices if self.trainer is not None else 1
        return min(4, suggested_max_num_workers(devices))

    def _device_batches(self, split: str, batch_size: int, shuffle: bool) -> DeviceBatches | None:
        """``split`` held on the trainer's device (the CPU without a trainer), or None (with a
        warning) when it would take more than half of the GPU's free memory."""
        if split in self._device_splits:
            return self._device_splits[split]
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            raise ConfigError(
                "data.device_cache=true serves one device; with several (DDP) set "
                "data.device_cache=false."
            )
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        dataset = self.datasets[split]
        assert isinstance(dataset, CachedFaces)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if dataset.images.nbytes > free // 2:
                rank_zero_warn(
                    f"data.device_cache: the {split} split ({dataset.images.nbytes / 2**30:.1f} "
                    f"GiB) would take more than half of the GPU's free memory "
                    f"({free / 2**30:.1f} GiB); loading it from the host instead."
                )
                return None
        sampler = EpochShuffle(len(dataset), self.shuffle_seed) if shuffle else None
        images = to_device_in_chunks(dataset.images, device)
        batches = DeviceBatches(images, dataset.targets, dataset.mask, batch_size, sampler)
        self._device_splits[split] = batches
        return batches

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise (and on training batches flip/shift) uint8 images on the device.

        Flips and shifts draw from the datamodule's own generator, seeded by
        ``(shuffle_seed, epoch)``, never from the global one: every strategy run with the same
        seed sees the same augmented batches, whatever the strategy draws or measures.
        """
        images, targets, mask = batch
        if images.dtype == torch.uint8:
            training = self.trainer is not None and self.trainer.training and self._augment
            images = device_transform(
                images,
                train=training,
                flip=self.flip,
                max_shift=self.max_shift,
                generator=self._epoch_generator(images.device) if training else None,
                normalize=self.normalize,
            )
        return images, targets, mask

    def _epoch_generator(self, device: torch.device) -> torch.Generator:
        """The augmentation generator of the current training epoch (reseeded when it changes)."""
        assert self.trainer is not None
        key = (str(device), self.trainer.current_epoch)
        if self._augment_generator is None or self._augment_key != key:
            seed = np.random.SeedSequence([self.shuffle_seed, key[1], 1]).generate_state(1)[0]
            self._augment_generator = torch.Generator(device=device)
            self._augment_generator.manual_seed(int(seed))
            self._augment_key = key
        return self._augment_generator

    @contextmanager
    def unaugmented(self) -> Iterator[None]:
        """Serve training batches without flips or shifts (and without drawing from the
        augmentation generator): for measurement passes such as DST's initial losses."""
        self._augment = False
        try:
            yield
        finally:
            self._augment = True
