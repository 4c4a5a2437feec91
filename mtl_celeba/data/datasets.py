"""The two map-style datasets behind the DataModule: cached uint8 batches, or per-image JPEGs.

Both yield ``(images, targets, mask)``: ``targets`` is float 0/1 with missing labels set to 0,
and ``mask`` is true where a label exists, so the loss and the metrics skip missing labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from mtl_celeba.data.images import load_face

Batch = tuple[Tensor, Tensor, Tensor]


def split_labels(labels: np.ndarray) -> tuple[Tensor, Tensor]:
    """(N, T) float with NaN for missing -> (targets with NaN as 0, boolean mask of present labels)."""
    labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
    mask = ~torch.isnan(labels)
    return torch.nan_to_num(labels, nan=0.0), mask


class CachedFaces(Dataset[Batch]):
    """Serves whole batches from a memory-mapped ``(N, S, S, 3)`` uint8 cache.

    The DataLoader's batch sampler hands :meth:`__getitems__` all the indices of a batch at
    once; they are sorted (order within a batch does not matter to SGD) so the memory map is
    read front to back, and the batch leaves as one uint8 NHWC block viewed as NCHW, i.e. a
    channels_last tensor. Use :func:`keep_batch` as the DataLoader's ``collate_fn``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} cached images but {len(labels)} label rows")
        self.images = images
        self.targets, self.mask = split_labels(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        order = np.sort(np.asarray(indices, dtype=np.int64))
        pixels = torch.from_numpy(np.ascontiguousarray(self.images[order]))
        index = torch.from_numpy(order)
        return pixels.permute(0, 3, 1, 2), self.targets[index], self.mask[index]

    def __getitem__(self, index: int) -> Batch:
        images, targets, mask = self.__getitems__([index])
        return images[0], targets[0], mask[0]


def keep_batch(batch: Batch) -> Batch:
    """``collate_fn`` for :class:`CachedFaces`, whose ``__getitems__`` already returns a batch."""
    return batch


class JpegFaces(Dataset[Batch]):
    """The naive pipeline: decode, crop and resize one JPEG per item, then a per-image transform."""

    def __init__(
        self,
        image_paths: Sequence[Path],
        labels: np.ndarray,
        size: int,
        transform: Callable[[np.ndarray], Tensor],
        resize: str = "crop",
    ) -> None:
        self.image_paths = list(image_paths)
        self.size = size
        self.transform = transform
        self.resize = resize
        self.targets, self.mask = split_labels(labels)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Batch:
        image = self.transform(load_face(self.image_paths[index], self.size, self.resize))
        return image, self.targets[index], self.mask[index]


class EpochShuffle(Sampler[int]):
    """A random permutation per epoch that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every training epoch, so a run resumed from a
    checkpoint sees the same order of samples as an uninterrupted one (torch's RandomSampler
    draws from the global generator instead, whose state a checkpoint does not pin down).
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())
