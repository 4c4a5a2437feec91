"""Decode an aligned CelebA JPEG into the square training image.

CelebA's aligned images are 178 wide and 218 high with the face centred. We take the
centred 178x178 square (rows 20..197), the usual choice for CelebA attribute models,
then resize it to ``size`` x ``size`` with PIL's antialiased bilinear filter. The cached
(fast) and the per-image (naive) pipelines both call :func:`load_face`, so they see the
same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mtl_celeba.errors import DataError

#: Side of the centred square cut from each 178x218 aligned CelebA image.
CROP_SIDE = 178
#: ``crop``: the centred square, resized (the default); ``squash``: the whole image resized to a
#: square, its aspect ratio lost (FAMO's CelebA protocol, torchvision's ``Resize((64, 64))``).
RESIZE_MODES = ("crop", "squash")
#: ``draft``: JPEGs decoded with libjpeg's DCT scaling when the target is 2x smaller or more (the
#: default, several times faster; pixels differ from a full decode by a few levels);
#: ``full``: decoded at full size before the resize (FAMO's protocol: PIL open, then resize).
DECODE_MODES = ("draft", "full")


def centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of the centred square of an image."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_face(
    path: str | Path, size: int, resize: str = "crop", decode: str = "draft"
) -> np.ndarray:
    """Read one image as a (size, size, 3) uint8 RGB array: centre square, then resize
    (``resize="squash"``: the whole image resized, see :data:`RESIZE_MODES`).

    With ``decode="draft"`` JPEG decoding uses libjpeg's DCT scaling (``Image.draft``) when the
    target is at least 2x smaller, which makes decoding several times faster at training
    resolutions; ``decode="full"`` decodes every pixel first (see :data:`DECODE_MODES`).
    An unreadable or truncated file raises :class:`DataError` naming it.
    """
    try:
        with Image.open(path) as image:
            if decode == "draft":
                image.draft("RGB", (size, size))
            box = centre_square(*image.size)  # in the draft's (possibly reduced) pixel grid
            image = image.convert("RGB")
            if resize == "crop":
                image = image.crop(box)
            face = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(face, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(
            f"Cannot decode image {path} ({error}); replace it with a good copy or remove the "
            "dataset folder and fetch it again."
        ) from None
