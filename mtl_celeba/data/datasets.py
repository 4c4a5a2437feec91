"""The two map-style datasets behind the DataModule: cached uint8 batches, or per-image JPEGs.

Both yield ``(images, targets, mask)``: ``targets`` is float 0/1 with missing labels set to 0,
and ``mask`` is true where a label exists, so the loss and the metrics skip missing labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
        decode: str = "draft",
    ) -> None:
        self.image_paths = list(image_paths)
        self.decode = decode
        self.size = size
        self.transform = transform
        self.resize = resize
        self.targets, self.mask = split_labels(labels)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Batch:
        image = self.transform(
            load_face(self.image_paths[index], self.size, self.resize, self.decode)
        )
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

    def permutation(self) -> Tensor:
        """This epoch's order of the sample indices, as an int64 tensor."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self):
        return iter(self.permutation().tolist())


def to_device_in_chunks(images: np.ndarray, device: torch.device, chunk: int = 4096) -> Tensor:
    """Copy a (memory-mapped) uint8 array into one tensor on ``device``, ``chunk`` rows at a time,
    so a split larger than the free host memory never sits in RAM whole on the way to a GPU."""
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk]))
        out[start : start + chunk].copy_(block)
    return out


class DeviceBatches:
    """A split held on the device as one uint8 tensor, batches gathered there (``data.device_cache``).

    Yields what a DataLoader over :class:`CachedFaces` with the same ``sampler`` and batch
    size yields (the same samples in the same batches, each batch's indices sorted, images
    as channels_last NCHW views), but every step is a few device-side gathers: no workers,
    no host copies, no pinned-memory transfers. ``sampler`` is an :class:`EpochShuffle` (on
    which Lightning calls ``set_epoch``, as for a DataLoader) or None for the split's order.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mask: Tensor,
        batch_size: int,
        sampler: EpochShuffle | None = None,
    ) -> None:
        if not len(images) == len(targets) == len(mask):
            raise ValueError(f"{len(images)} images but {len(targets)} label rows")
        self.images = images
        self.targets = targets.to(images.device)
        self.mask = mask.to(images.device)
        self.batch_size = batch_size
        # read by Lightning as on a DataLoader: set_epoch goes to the sampler every epoch
        self.sampler = sampler
        self.batch_sampler = None

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        device = self.images.device
        if self.sampler is None:
            order = torch.arange(len(self.images), device=device)
        else:  # one host-to-device copy per epoch
            order = self.sampler.permutation().to(device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size].sort().values
            pixels = self.images.index_select(0, index).permute(0, 3, 1, 2)
            yield pixels, self.targets.index_select(0, index), self.mask.index_select(0, index)
