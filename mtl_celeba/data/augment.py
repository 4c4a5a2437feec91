"""Image normalisation and augmentation, on the device per batch (fast) or per image (naive).

The fast pipeline ships uint8 batches and calls :func:`device_transform` after the batch
reaches the accelerator; the naive pipeline applies the equivalent torchvision transforms
to each image in the DataLoader workers. Both use ImageNet's mean and std, so pretrained
torchvision weights see the statistics they were trained with.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.cache
def _uint8_statistics(device: torch.device) -> tuple[Tensor, Tensor]:
    """ImageNet's mean and std on the 0..255 scale as (1, 3, 1, 1) tensors on ``device``.

    Made once per device: building a tensor from Python numbers on a GPU is a blocking copy
    that would make every batch wait for the GPU to finish the previous step.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    return mean, std


def normalize_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) uint8 -> float32 normalised with ImageNet's statistics; keeps the memory format."""
    mean, std = _uint8_statistics(images.device)
    return (images.float() - mean).div_(std)


def random_flip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images whose entry in the boolean vector ``flip`` is true."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def random_shift(
    images: Tensor, max_shift: int, generator: torch.Generator | None = None
) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, edges replicated.

    The device-side form of "pad and random crop": one ``grid_sample`` for the whole batch.
    """
    if max_shift <= 0:
        return images
    batch, _, height, width = images.shape
    shifts = torch.randint(
        -max_shift, max_shift + 1, (batch, 2), device=images.device, generator=generator
    )
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shifts[:, 0].to(images.dtype) * 2.0 / width
    theta[:, 1, 2] = shifts[:, 1].to(images.dtype) * 2.0 / height
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="border", align_corners=False)


def device_transform(
    images: Tensor,
    train: bool,
    flip: bool = True,
    max_shift: int = 0,
    generator: torch.Generator | None = None,
    normalize: bool = True,
) -> Tensor:
    """The fast pipeline's per-batch transform: normalise, then (training only) flip and shift.

    ``normalize=False`` only scales to [0, 1] (torchvision's ``ToTensor``, FAMO's protocol).
    """
    images = normalize_uint8(images) if normalize else images.float().div_(255.0)
    if train and flip:
        coin = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
        images = random_flip(images, coin)
    if train and max_shift:
        images = random_shift(images, max_shift, generator)
    return images


def naive_transform(
    size: int, train: bool, flip: bool = True, max_shift: int = 0, normalize: bool = True
) -> v2.Compose:
    """The torchvision-style per-image transform of the naive pipeline (uint8 HWC array in)."""
    steps: list[v2.Transform] = [v2.ToImage()]
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    if train and max_shift:
        steps.append(v2.RandomCrop(size, padding=max_shift, padding_mode="edge"))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)
