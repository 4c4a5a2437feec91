"""The drawn faces: the same pictures for the same seed, whatever is done to draw them faster."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mtl_celeba.data import faces, synthetic
from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES

#: Images of the synthetic CelebA with seed 3 and 300 images: SHA-256 of each drawn image's RGB
#: pixels followed by repr((landmarks, bbox)). Generator version 2's were computed with the
#: generator as it was before it was made faster (commit 4aa1d39), and the faster one drew them
#: byte for byte; version 3 enlarged the cues of Smiling, Mouth_Slightly_Open, Arched_Eyebrows
#: and Young, and these are its pictures. The images were picked to cover what the speed-ups touch:
#: wavy, straight and plain hair, long and short hair, bald heads with and without a fringe of
#: hair, blur, glasses, a hat, beards, stubble, moustache, goatee, wrinkles, bangs, a receding
#: hairline, an open smile, jewellery, a tie, a double chin, pale skin, make-up, bags.
SEED = 3
REFERENCE_DIGESTS = {
    2: "05b7978b930e2f28f7b425b441dbfd5bafe824617a647b50c86dd894d7644c83",
    6: "66acc92100213878095e82b574a4430d088a1ae708c264db06d6f11e79af7416",
    12: "9a5ac10d0a83a91d9c3a1490f7d850b23cfa2b1d74862d26dec96d92c03ff946",
    36: "c7b6585f00a1e556154d4811e1a9b5a34aea37b5221e9d020b4f0013938bf4c7",
    39: "b7a065eaf8c2f74ab4afac89efb6a6c0864d76291664f0cc8b66a99aa833cba8",
    72: "6806de6d5f7b8549fb2b046a7df381f7a31cf50273426356235f5151a0fe9c40",
    144: "1455a348ac443e7fd998080d0702291dd2a322640953a179c0b06075e51be65a",
    163: "41412c92e3bf60068da9580065e32ab3c06e885f24e79a832fdf06e377766601",
}
#: The positive attributes of those images, as generator version 1 drew them for seed 3 (the
#: pictures depend on the labels and on the image's own random stream, which did not change
#: when version 2 changed the label model).
REFERENCE_LABELS = {
    2: ("Arched_Eyebrows", "Black_Hair", "Heavy_Makeup", "Mouth_Slightly_Open", "Narrow_Eyes",
        "No_Beard", "Pale_Skin", "Pointy_Nose", "Young"),
    6: ("5_o_Clock_Shadow", "Bald", "Bushy_Eyebrows", "Goatee", "High_Cheekbones", "Male",
        "Mouth_Slightly_Open", "Oval_Face", "Pointy_Nose", "Smiling"),
    12: ("Attractive", "Big_Lips", "Black_Hair", "Blurry", "No_Beard", "Receding_Hairline",
         "Straight_Hair", "Wearing_Earrings", "Wearing_Lipstick", "Wearing_Necklace", "Young"),
    36: ("Bags_Under_Eyes", "Bald", "Big_Nose", "Male", "Oval_Face", "Sideburns"),
    39: ("Attractive", "Bags_Under_Eyes", "Bald", "Male", "Mouth_Slightly_Open", "Sideburns",
         "Wearing_Hat"),
    72: ("5_o_Clock_Shadow", "Big_Nose", "Bushy_Eyebrows", "Eyeglasses", "Male",
         "Mouth_Slightly_Open", "No_Beard", "Oval_Face", "Receding_Hairline", "Smiling",
         "Straight_Hair", "Young"),
    144: ("Bags_Under_Eyes", "Bangs", "Big_Lips", "Brown_Hair", "Double_Chin", "Heavy_Makeup",
          "High_Cheekbones", "No_Beard", "Oval_Face", "Pointy_Nose", "Smiling",
          "Wearing_Earrings", "Wearing_Lipstick"),
    163: ("Arched_Eyebrows", "Big_Nose", "Brown_Hair", "Male", "Mouth_Slightly_Open", "Mustache",
          "Sideburns", "Wavy_Hair", "Wearing_Necktie", "Young"),
}  # fmt: skip


def _labels(index: int) -> dict[str, bool]:
    return {name: name in REFERENCE_LABELS[index] for name in CELEBA_ATTRIBUTES}


def _digest(face: faces.RenderedFace) -> str:
    data = face.image.tobytes() + repr((face.landmarks, face.bbox)).encode()
    return hashlib.sha256(data).hexdigest()


def test_reference_images_cover_what_the_speed_ups_touch() -> None:
    labels = [_labels(index) for index in REFERENCE_DIGESTS]
    for name in (
        "Wavy_Hair",
        "Straight_Hair",
        "Bald",
        "Blurry",
        "Eyeglasses",
        "Wearing_Hat",
        "Mustache",
        "Goatee",
        "5_o_Clock_Shadow",
        "Bangs",
    ):
        assert any(image[name] for image in labels), name
    assert any(
        not (image["Wavy_Hair"] or image["Straight_Hair"] or image["Bald"]) for image in labels
    )
    assert any(not image["Young"] for image in labels)


@pytest.mark.parametrize("index", sorted(REFERENCE_DIGESTS))
def test_drawn_faces_are_the_reference_pictures(index: int) -> None:
    """Byte for byte the pixels, landmarks and box of generator version 3's pictures: making
    the drawing faster never changes a dataset that a version writes."""
    face = faces.render_face(_labels(index), synthetic._stream(SEED, synthetic._IMAGES, index))
    assert _digest(face) == REFERENCE_DIGESTS[index]


def test_camera_effects_are_the_plain_float32_formula() -> None:
    """_finish lays the light and the gain out per colour value to run over contiguous memory;
    each value must still be clip(pixel * light * gain + noise * sigma) in float32, in that order
    (the formula as first written, below), with the same random draws."""
    rng = np.random.default_rng(0)
    for seed in range(12):
        image = Image.fromarray(rng.integers(0, 256, (faces.HEIGHT, faces.WIDTH, 3), np.uint8))
        got = faces._finish(image, {"Blurry": False}, np.random.default_rng(seed))

        draws = np.random.default_rng(seed)
        ys, xs = np.mgrid[0 : faces.HEIGHT, 0 : faces.WIDTH].astype(np.float32)
        xs, ys = (
            (xs - faces.WIDTH / 2) / (faces.WIDTH / 2),
            (ys - faces.HEIGHT / 2) / (faces.HEIGHT / 2),
        )
        direction, slope = draws.uniform(0, 2 * math.pi), draws.uniform(0.0, 0.4)
        light = (
            1.0
            + np.float32(slope * math.cos(direction)) * xs
            + np.float32(slope * math.sin(direction)) * ys
        )
        gain = draws.uniform(0.72, 1.2) * (1.0 + draws.uniform(-0.07, 0.07, 3))
        noise_x, noise_y = draws.integers(0, 64, 2)
        tile = faces._cached_noise_tile()
        noise = tile[noise_y : noise_y + faces.HEIGHT, noise_x : noise_x + faces.WIDTH]
        pixels = np.asarray(image, dtype=np.float32)
        pixels *= light[..., None]
        pixels *= gain.astype(np.float32)
        pixels += noise * np.float32(draws.uniform(2.0, 8.0))
        np.clip(pixels, 0, 255, out=pixels)
        assert got.tobytes() == pixels.astype(np.uint8).tobytes()


def test_lines_drawn_near_a_box_leave_the_box_as_lines_drawn_in_full() -> None:
    """The hair strands are drawn only near the hair (_lines_within): inside the box every pixel
    must be what drawing each line in full gives, for every width, including segments that leave
    and re-enter the box and lines that miss it."""
    rng = np.random.default_rng(1)
    for trial in range(300):
        count, points = int(rng.integers(1, 6)), int(rng.integers(2, 30))
        # wandering lines over and beyond the image, some with repeated points
        lines = rng.uniform(-30, 40, (count, 1, 2)) + np.cumsum(
            rng.uniform(-25, 25, (count, points, 2)), axis=1
        )
        lines[:, 1::7] = lines[:, 0::7][:, : lines[:, 1::7].shape[1]]
        x0, y0 = rng.uniform(-20, 150, 2)
        box = (x0, y0, x0 + rng.uniform(0, 90), y0 + rng.uniform(0, 90))
        fills = [tuple(rng.integers(0, 256, 3).tolist()) for _ in range(count)]
        width = int(rng.integers(1, 7))
        full = Image.new("RGB", (faces.WIDTH, faces.HEIGHT), (9, 9, 9))
        draw = ImageDraw.Draw(full)
        for line, fill in zip(lines, fills, strict=True):
            draw.line(line.ravel().tolist(), fill=fill, width=width)
        near = Image.new("RGB", (faces.WIDTH, faces.HEIGHT), (9, 9, 9))
        faces._lines_within(ImageDraw.Draw(near), lines, fills, width, box)
        inside = (
            max(0, math.ceil(box[0])),
            max(0, math.ceil(box[1])),
            min(faces.WIDTH, math.floor(box[2]) + 1),
            min(faces.HEIGHT, math.floor(box[3]) + 1),
        )
        if inside[0] < inside[2] and inside[1] < inside[3]:
            assert full.crop(inside).tobytes() == near.crop(inside).tobytes(), trial


def test_hair_masks_stay_inside_the_box_around_the_hair() -> None:
    """The strands are kept within _Canvas.box(hair, 2) of the hair polygons: every pixel of
    their mask must lie inside it."""
    rng = np.random.default_rng(2)
    for _ in range(200):
        canvas = faces._Canvas(
            Image.new("RGB", (faces.WIDTH, faces.HEIGHT)),
            rng.uniform(-0.2, 0.2),
            rng.uniform(0.88, 1.1),
            tuple(rng.uniform(-8, 8, 2).tolist()),
        )
        polygons = [
            rng.uniform(-10, 220, (1, 2)) + rng.uniform(-40, 40, (int(rng.integers(3, 30)), 2))
            for _ in range(int(rng.integers(1, 4)))
        ]
        mask_box = canvas.mask(polygons).getbbox()  # (left, upper, right + 1, lower + 1)
        if mask_box is None:
            continue
        x0, y0, x1, y1 = canvas.box(polygons, 2.0)
        assert x0 <= mask_box[0] and mask_box[2] - 1 <= x1
        assert y0 <= mask_box[1] and mask_box[3] - 1 <= y1


def test_linspace_shortcut_is_numpys_linspace() -> None:
    """_linspace repeats np.linspace's arithmetic without its overhead: the same numbers, for
    rising, falling and empty ranges and NumPy or Python floats."""
    rng = np.random.default_rng(3)
    for trial in range(5000):
        start, stop = rng.uniform(-300, 300, 2)
        if trial % 5 == 0:
            stop = start
        if trial % 2:
            start, stop = float(start), float(stop)
        num = int(rng.integers(2, 40))
        np.testing.assert_array_equal(
            faces._linspace(start, stop, num), np.linspace(start, stop, num)
        )
