"""Procedural faces for the synthetic CelebA: one aligned 178x218 portrait from 40 labels.

Every attribute a label switches on is drawn as a shape large and contrasted enough to
survive the training pipeline's 178x178 centre crop and resize to 64x64: thick eyebrows
with a clear peak, a dark open mouth, banded hair texture, wrinkle lines, frames around
the eyes. Everything else -- head pose and scale, skin tone, shade of hair colour, hair
volume, background, lighting, blur and sensor noise -- is nuisance drawn from the image's
own random generator, so a model has to find each attribute among variation it should
ignore.

Shapes are described in a fixed nominal frame (the face upright, centred at x=89) and
mapped through the head pose when drawn, so the landmarks come out exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

#: Size of an aligned CelebA image.
WIDTH, HEIGHT = 178, 218

Colour = tuple[int, int, int]
Points = np.ndarray  # (n, 2) x, y in the nominal frame

#: Pose rotates and scales the head about this point (between the eyes and the mouth).
_PIVOT = np.array([89.0, 118.0])

_WHITE: Colour = (255, 255, 255)
#: Shades of CelebA's four named hair colours. Dark blond borders on light brown.
_HAIR_SHADES: dict[str, tuple[Colour, ...]] = {
    "Black_Hair": ((30, 26, 24),),
    "Blond_Hair": ((224, 192, 124), (236, 214, 160), (190, 158, 104)),
    "Brown_Hair": ((112, 72, 42), (98, 64, 40)),
    "Gray_Hair": ((178, 178, 176), (206, 206, 202)),
}
#: Hair of none of the named colours: dark brown (near black), auburn, chestnut, light brown.
_OTHER_HAIR_SHADES: tuple[Colour, ...] = ((52, 38, 28), (132, 58, 32), (88, 52, 34), (160, 120, 76))
_SKIN_LIGHT: Colour = (240, 208, 182)
_SKIN_MID: Colour = (200, 152, 116)
_SKIN_DARK: Colour = (112, 74, 52)
_SKIN_PALE: Colour = (250, 234, 224)
_IRIS_COLOURS: tuple[Colour, ...] = ((70, 45, 25), (40, 30, 20), (60, 100, 150), (70, 110, 70))
_LIPSTICK: tuple[Colour, ...] = ((200, 20, 50), (170, 25, 70), (140, 20, 40), (220, 70, 110))
_EYESHADOW: tuple[Colour, ...] = ((120, 70, 140), (110, 80, 60), (70, 100, 160), (190, 110, 140))
_METALS: tuple[Colour, ...] = ((236, 192, 60), (220, 220, 230), (248, 244, 232), (200, 40, 60))


@dataclass(frozen=True)
class RenderedFace:
    """One drawn face and its annotations in image pixels."""

    image: Image.Image
    #: lefteye_x, lefteye_y, righteye_x, righteye_y, nose_x, nose_y, leftmouth_x, leftmouth_y,
    #: rightmouth_x, rightmouth_y (left = the image's left, as in CelebA).
    landmarks: tuple[int, ...]
    #: x_1, y_1, width, height of the face outline.
    bbox: tuple[int, int, int, int]


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _scale(colour: Colour, factor: float) -> Colour:
    return tuple(min(255, max(0, round(c * factor))) for c in colour)  # type: ignore[return-value]


def _jitter(colour: Colour, rng: np.random.Generator, amount: float) -> Colour:
    factors = (1.0 + rng.uniform(-amount, amount, 3)).tolist()
    return tuple(min(255, max(0, round(c * f))) for c, f in zip(colour, factors, strict=True))  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator, lo: int = 20, hi: int = 235) -> Colour:
    return tuple(rng.integers(lo, hi, 3).tolist())  # type: ignore[return-value]


def _ellipse(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    start: float = 0.0,
    stop: float = 2 * math.pi,
    n: int = 28,
) -> Points:
    """Points on an ellipse from angle ``start`` to ``stop`` (y grows downwards, so pi/2 is the bottom)."""
    return _unit_arc(start, stop, n) * (rx, ry) + (cx, cy)


@functools.cache
def _unit_arc(start: float, stop: float, n: int) -> Points:
    angles = np.linspace(start, stop, n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _linspace(start: float, stop: float, num: int) -> np.ndarray:
    """``np.linspace(start, stop, num)`` for two numbers and num >= 2, without its overhead:
    the same floating-point operations in the same order (NumPy's own code, for scalars)."""
    delta = float(stop) - float(start)
    div = num - 1
    step = delta / div
    y = np.arange(num, dtype=float)
    if step == 0:  # NumPy's handling of steps that underflow
        y /= div
        y *= delta
    else:
        y *= step
    y += start
    y[-1] = stop
    return y


@functools.cache
def _fixed_linspace(start: float, stop: float, num: int, dtype: type = float) -> np.ndarray:
    """``np.linspace`` of constants, computed once (read-only: callers share it)."""
    y = np.linspace(start, stop, num, dtype=dtype)
    y.flags.writeable = False
    return y


def _curve(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray) -> Points:
    return np.array((xs, ys), dtype=float).T


#: Chance that an attribute's cue is drawn at a borderline size, between its typical sizes
#: when on and off, whatever the label says. Like CelebA's, the labels are then not perfectly
#: predictable from the pictures, and the subtler attributes are the harder ones.
BORDERLINE_CHANCE: dict[str, float] = {
    "Arched_Eyebrows": 0.12,
    "Wavy_Hair": 0.25,
    "Big_Nose": 0.2,
    "Big_Lips": 0.15,
    "Young": 0.12,
    "Smiling": 0.12,
    "Mouth_Slightly_Open": 0.1,
}


def _cue(
    rng: np.random.Generator,
    name: str,
    on: bool,
    on_range: tuple[float, float],
    off_range: tuple[float, float],
    borderline_range: tuple[float, float],
) -> tuple[float, bool]:
    """The size of an attribute's visible cue, and whether it was drawn borderline."""
    if rng.random() < BORDERLINE_CHANCE[name]:
        return rng.uniform(*borderline_range), True
    return rng.uniform(*(on_range if on else off_range)), False


class _Canvas:
    """An RGB image with drawing in the nominal frame, mapped through the head pose."""

    def __init__(self, image: Image.Image, angle: float, scale: float, shift: tuple[float, float]):
        self.image = image
        self.draw = ImageDraw.Draw(image, "RGBA")  # RGBA mode blends translucent fills
        self.scale = scale
        cos, sin = math.cos(angle), math.sin(angle)
        self._matrix = scale * np.array([[cos, sin], [-sin, cos]])  # applied to row vectors
        self._offset = _PIVOT + np.asarray(shift) - _PIVOT @ self._matrix

    def map_array(self, points: Points) -> np.ndarray:
        """Image coordinates of nominal points, (..., n, 2)."""
        return points @ self._matrix + self._offset

    def map(self, points: Points) -> list[float]:
        """Image coordinates of nominal points, flat (x0, y0, x1, y1, ...) as PIL takes them."""
        return self.map_array(points).ravel().tolist()

    def box(self, polygons: Sequence[Points], margin: float) -> tuple[float, float, float, float]:
        """A box (x0, y0, x1, y1) in image coordinates around polygons, ``margin`` pixels wider
        on each side than the polygons' points."""
        points = self.map_array(np.concatenate(polygons))
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        return x0 - margin, y0 - margin, x1 + margin, y1 + margin

    def width(self, width: float) -> int:
        return max(1, round(width * self.scale))

    def polygon(self, points: Points, fill: Colour, alpha: int = 255) -> None:
        self.draw.polygon(self.map(points), fill=(*fill, alpha))

    def line(self, points: Points, fill: Colour, width: float, alpha: int = 255) -> None:
        self.draw.line(
            self.map(points), fill=(*fill, alpha), width=self.width(width), joint="curve"
        )

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, fill: Colour, alpha: int = 255
    ) -> None:
        self.polygon(_ellipse(cx, cy, rx, ry), fill, alpha)

    def mask(self, polygons: Sequence[Points]) -> Image.Image:
        # A bilevel mask: pasting through it copies the pixels it covers, as a 0/255 "L" mask
        # does, without blending each channel (about three times faster).
        mask = Image.new("1", self.image.size, 0)
        draw = ImageDraw.Draw(mask)
        for points in polygons:
            draw.polygon(self.map(points), fill=255)
        return mask


@dataclass
class _Face:
    """The nominal geometry and colours shared by the parts of one face."""

    cx: float
    cy: float
    rx: float
    ry: float
    jaw_power: float
    jaw_taper: float
    skin: Colour
    hair: Colour
    eye_y: float
    eye_dx: float
    brow_y: float
    nose_y: float
    nose_width: float
    mouth_y: float
    mouth_half: float
    hairline_y: float
    # sizes of the cues that carry the harder labels (see _cue)
    smile: float  # how far the mouth corners rise
    mouth_gap: float  # height of the dark opening between the lips
    lip_upper: float
    lip_lower: float
    brow_arch: float  # height of the eyebrow's rise
    brow_peak: float  # 1 a sharp peak, 0 a smooth curve
    wave: float  # amplitude of the hair's waves; 0 for none
    wrinkles: float  # strength of the wrinkles; 0 for none

    def outline(self, n: int = 40) -> Points:
        """The face outline: an ellipse on top, a squarer and tapering jaw below."""
        lower, sign_cos, abs_cos, sign_sin, abs_sin = _outline_angles(n)
        power = np.where(lower, 2.0 / self.jaw_power, 1.0)
        x = sign_cos * abs_cos**power
        y = sign_sin * abs_sin**power
        x = x * np.where(lower, 1.0 - self.jaw_taper * y**2, 1.0)
        return _curve(self.cx + self.rx * x, self.cy + self.ry * y)

    def lower_face(self) -> Points:
        """The region a beard covers: the jaw below the cheekbones."""
        outline = self.outline(60)
        jaw = outline[outline[:, 1] > self.nose_y - 4]
        jaw = jaw[np.argsort(np.arctan2(jaw[:, 1] - self.cy, jaw[:, 0] - self.cx))]
        return jaw


@functools.cache
def _outline_angles(n: int) -> tuple[np.ndarray, ...]:
    """For n angles around the outline: which are on the lower half, and the signs and sizes
    of their cosines and sines (the same for every face, so computed once)."""
    angles = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    cos, sin = np.cos(angles), np.sin(angles)
    return sin > 0, np.sign(cos), np.abs(cos), np.sign(sin), np.abs(sin)


@functools.cache
def _cached_noise_tile() -> np.ndarray:
    """A fixed field of unit Gaussian noise; each image takes a random window of it (cheap)."""
    return (
        np.random.default_rng(20240501)
        .standard_normal((HEIGHT + 64, WIDTH + 64, 3))
        .astype(np.float32)
    )


@functools.cache
def _unit_grids() -> tuple[np.ndarray, np.ndarray]:
    """x and y from -1 to 1 across the image: a row of x for each colour value of an image row
    (WIDTH * 3,) and a column of y (HEIGHT, 1)."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    xs, ys = (xs - WIDTH / 2) / (WIDTH / 2), (ys - HEIGHT / 2) / (HEIGHT / 2)
    return np.repeat(xs[0], 3), ys[:, :1]


def _background(rng: np.random.Generator) -> Image.Image:
    """A vertical two-colour gradient, sometimes with soft blobs or stripes."""
    top = np.array(_random_colour(rng, 30, 240), np.float32)
    bottom = np.array(_random_colour(rng, 30, 240), np.float32)
    t = _fixed_linspace(0.0, 1.0, HEIGHT, np.float32)[:, None, None]
    column = (top + (bottom - top) * t).astype(np.uint8)
    # widen the one-pixel column by nearest-neighbour resizing: every pixel copies its row's
    # colour (the same pixels as repeating the column, in a fraction of the time)
    image = Image.fromarray(column, "RGB").resize((WIDTH, HEIGHT), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image, "RGBA")
    style = rng.random()
    if style < 0.4:
        for _ in range(rng.integers(2, 6)):
            x, y, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(15, 60)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(*_random_colour(rng), 70))
    elif style < 0.6:
        width = int(rng.integers(6, 20))
        colour = (*_random_colour(rng), 45)
        for x in range(int(rng.integers(0, width)), WIDTH, 2 * width):
            draw.rectangle((x, 0, x + width - 1, HEIGHT), fill=colour)
    return image


def _skin_colour(labels: Mapping[str, bool], rng: np.random.Generator) -> Colour:
    if labels["Pale_Skin"]:
        return _jitter(_SKIN_PALE, rng, 0.02)
    # mostly light skin, as in CelebA; 0 lightest, 1 darkest
    band = rng.choice(3, p=[0.72, 0.2, 0.08])
    tone = rng.uniform(*((0.0, 0.45), (0.45, 0.75), (0.75, 1.0))[band])
    skin = (
        _mix(_SKIN_LIGHT, _SKIN_MID, tone / 0.6)
        if tone < 0.6
        else _mix(_SKIN_MID, _SKIN_DARK, (tone - 0.6) / 0.4)
    )
    return _jitter(skin, rng, 0.04)


def _hair_colour(labels: Mapping[str, bool], rng: np.random.Generator) -> Colour:
    named = [name for name in _HAIR_SHADES if labels[name]]
    shades = _HAIR_SHADES[named[0]] if named else _OTHER_HAIR_SHADES
    colour = _jitter(shades[rng.integers(len(shades))], rng, 0.12)
    if not labels["Young"] and not labels["Gray_Hair"]:
        colour = _mix(colour, (165, 165, 162), rng.uniform(0.0, 0.4))  # salt and pepper
    return colour


def _lines_within(
    draw: ImageDraw.ImageDraw,
    lines: np.ndarray,
    fills: Sequence[Colour],
    width: int,
    box: tuple[float, float, float, float],
) -> None:
    """``draw.line(lines[i], fills[i], width)`` for each i in turn, as far as the pixels inside
    ``box`` go; ``lines`` is (lines, points, 2) in image coordinates.

    Pillow draws each segment of a line wider than one pixel on its own, as a quad around the
    segment between its endpoints (truncated to integers) no more than width / 2 + 1 pixels
    from them; so the segments that stay farther than that from the box are left out, and the
    rest is drawn in runs of consecutive segments, in their order.
    """
    flat = lines.reshape(len(lines), -1).tolist()
    if width < 2:  # one-pixel lines also draw their last point: draw them all
        for points, fill in zip(flat, fills, strict=True):
            draw.line(points, fill=fill, width=width)
        return
    margin = width + 2
    x, y = lines[..., 0], lines[..., 1]
    keep = (
        (np.maximum(x[:, :-1], x[:, 1:]) >= box[0] - margin)
        & (np.minimum(x[:, :-1], x[:, 1:]) <= box[2] + margin)
        & (np.maximum(y[:, :-1], y[:, 1:]) >= box[1] - margin)
        & (np.minimum(y[:, :-1], y[:, 1:]) <= box[3] + margin)
    )
    # segment j joins points j and j + 1; a run of kept segments start..stop-1 of a line is
    # its points start..stop, coordinates 2 * start .. 2 * stop + 1 in its flat list
    padded = np.zeros((len(lines), keep.shape[1] + 2), np.int8)
    padded[:, 1:-1] = keep
    rows, edges = np.nonzero(np.diff(padded, axis=1))  # row by row, each run's start then stop
    rows, edges = rows.tolist(), edges.tolist()
    for row, start, stop in zip(rows[::2], edges[::2], edges[1::2], strict=True):
        draw.line(flat[row][2 * start : 2 * stop + 2], fill=fills[row], width=width)


def _draw_hair_texture(
    canvas: _Canvas,
    face: _Face,
    labels: Mapping[str, bool],
    rng: np.random.Generator,
    hair: Sequence[Points],
) -> Image.Image:
    """A hair-coloured layer with strands: wavy bands, straight sleek lines, or loose texture.

    The layer is only ever pasted through masks of the ``hair`` polygons, so strands are only
    drawn inside a box around them (see _lines_within); the pixels there are the same as if
    every strand were drawn in full.
    """
    layer = Image.new("RGB", canvas.image.size, face.hair)
    draw = ImageDraw.Draw(layer)
    wavy = face.wave > 0
    ys = np.arange(30.0, HEIGHT + 12, 5.0 if wavy else 12.0)
    if wavy:
        amplitude, period, spacing, width = face.wave, rng.uniform(24, 32), 7.0, 4
        contrast = min(1.0, face.wave / 4.0)
    elif labels["Straight_Hair"]:
        amplitude, period, spacing, width = 0.0, 1.0, 5.0, 2
        contrast = 0.8
    else:  # unremarkable hair: faint, loosely curved strands
        amplitude, period, spacing, width = rng.uniform(0.5, 2.5), rng.uniform(40, 70), 6.0, 2
        contrast = 0.4
    light = _mix(face.hair, _WHITE, 0.28 * contrast)
    dark = _scale(face.hair, 1.0 - 0.4 * contrast)
    phase = rng.uniform(0, 2 * math.pi)
    x0 = np.arange(face.cx - 72.0, face.cx + 72.0, spacing)
    # neighbouring wavy strands share their phase, so the waves read as bands; other strands
    # each draw their own (one draw of x0.size values gives the same numbers as x0.size draws)
    phases = np.full(x0.size, phase) if wavy else rng.uniform(0, 2 * math.pi, x0.size)
    # every strand at once, point by point the same arithmetic as one strand at a time;
    # strands[i].T is the (n, 2) layout _curve gives, and a stack of matrices is multiplied
    # one matrix at a time, so the pose maps each strand as it would map it alone
    strands = np.empty((x0.size, 2, ys.size))
    strands[:, 0] = x0[:, None] + amplitude * np.sin(2 * math.pi * ys / period + phases[:, None])
    strands[:, 1] = ys
    strands = strands.transpose(0, 2, 1)
    if hair:  # no hair polygons (bald): nothing of the layer is used
        # 2 pixels of margin cover the polygon fill's rounding; _lines_within adds the lines'
        _lines_within(
            draw,
            canvas.map_array(strands),
            [light if i % 2 == 0 else dark for i in range(len(strands))],
            canvas.width(width),
            canvas.box(hair, 2.0),
        )
    if labels["Straight_Hair"]:
        # a broad vertical sheen: straight hair reflects in a smooth band
        sheen = face.cx + rng.uniform(-25, 25)
        band = _curve([sheen - 5, sheen + 5, sheen + 5, sheen - 5], [30, 30, HEIGHT, HEIGHT])
        ImageDraw.Draw(layer, "RGBA").polygon(canvas.map(band), fill=(*_WHITE, 45))
    return layer


def _wavy_outline(
    points: Points, centre: tuple[float, float], amplitude: float, bumps: float, phase: float
) -> Points:
    """Push points radially in and out so the outline of wavy hair is scalloped."""
    offset = points - np.asarray(centre)
    angle = np.arctan2(offset[:, 1], offset[:, 0])
    radius = np.hypot(offset[:, 0], offset[:, 1])
    radius = radius + amplitude * np.sin(bumps * angle + phase)
    return np.asarray(centre) + np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def _hair_shapes(
    face: _Face, labels: Mapping[str, bool], rng: np.random.Generator
) -> tuple[list[Points], list[Points]]:
    """The hair behind the face (long hair) and in front of it (cap, bangs, sideburns)."""
    cx, cy, rx, ry = face.cx, face.cy, face.rx, face.ry
    male, wavy = labels["Male"], face.wave > 0
    volume = rng.uniform(2.0, 5.0) if male else rng.uniform(5.0, 10.0)
    volume += face.wave * 0.6
    top_volume = volume + rng.uniform(3.0, 8.0)
    long_hair = rng.random() < (0.08 if male else 0.9)
    phase = rng.uniform(0, 2 * math.pi)
    wave = face.wave * 0.5

    back: list[Points] = []
    front: list[Points] = []
    if labels["Bald"]:
        if rng.random() < 0.6:  # a fringe of hair left above the ears
            for side in (-1, 1):
                x = cx + side * (rx - 2)
                front.append(
                    _curve([x - 4, x + 4, x + 4, x - 4], [cy - 24, cy - 24, cy + 2, cy + 2])
                )
        return back, front

    crown = _ellipse(cx, cy - 4, rx + volume, ry + top_volume - 4, math.pi, 2 * math.pi, 32)
    if wavy:
        crown = _wavy_outline(crown, (cx, cy), wave, 14.0, phase)
    if long_hair:
        bottom = rng.uniform(178, 208)
        spread = rx + volume + rng.uniform(4, 12)
        sides_y = _linspace(cy - 4, bottom, 12)
        sway = wave * 1.6 * np.sin(2 * math.pi * sides_y / 26.0 + phase) if wavy else 0.0
        left = _curve(
            cx - (rx + volume) - (spread - rx - volume) * (sides_y - cy) / (bottom - cy) + sway,
            sides_y,
        )
        right = _curve(
            cx + (rx + volume) + (spread - rx - volume) * (sides_y - cy) / (bottom - cy) + sway,
            sides_y,
        )
        back.append(np.concatenate([left[::-1], crown, right]))
        if rng.random() < 0.3:  # locks falling over the ears (and any earrings)
            for side in (-1, 1):
                x = cx + side * (rx + 1)
                front.append(
                    _curve([x - 7, x + 7, x + 8, x - 8], [cy - 22, cy - 22, cy + 30, cy + 30])
                )

    # the cap: outer crown above, the hairline arc below (receding: higher, with temples cut back)
    inner_x = _linspace(cx + rx - 1, cx - rx + 1, 25)
    inner_rel = (inner_x - cx) / (rx - 1)
    inner_y = cy - 8 - (cy - 8 - face.hairline_y) * np.sqrt(np.clip(1 - inner_rel**2, 0, 1))
    if labels["Receding_Hairline"]:
        inner_y = inner_y - 6.0 * np.exp(-(((np.abs(inner_x - cx) - 17.0) / 6.0) ** 2))
    front.append(np.concatenate([crown, _curve(inner_x, inner_y)]))

    if labels["Bangs"]:
        fringe_y = face.brow_y - rng.uniform(5, 8)
        xs = _linspace(cx - rx * 0.95, cx + rx * 0.95, 13)
        edge = fringe_y + (
            2.5 * np.sin(xs * 0.9 + phase) if wavy else rng.uniform(-1.5, 1.5, xs.size)
        )
        top = _curve([cx + rx * 0.95, cx, cx - rx * 0.95], [cy - 22, face.hairline_y - 6, cy - 22])
        front.append(np.concatenate([_curve(xs, edge), top]))
    if labels["Sideburns"]:
        for side in (-1, 1):
            x = cx + side * (rx - 3)
            front.append(_curve([x - 4, x + 4, x + 4, x - 4], [cy - 14, cy - 14, cy + 16, cy + 16]))
    elif male:  # short hair stops at the temples
        for side in (-1, 1):
            x = cx + side * (rx - 2)
            front.append(_curve([x - 3, x + 3, x + 3, x - 3], [cy - 14, cy - 14, cy - 2, cy - 2]))
    return back, front


def _draw_neck_and_clothes(
    canvas: _Canvas, face: _Face, labels: Mapping[str, bool], rng: np.random.Generator
) -> None:
    cx = face.cx
    neck_half = face.rx * rng.uniform(0.42, 0.5)
    neck_top = face.cy + face.ry * 0.55
    canvas.polygon(
        _curve(
            [cx - neck_half, cx + neck_half, cx + neck_half, cx - neck_half],
            [neck_top, neck_top, 200, 200],
        ),
        _scale(face.skin, 0.9),
    )
    clothes = _random_colour(rng, 15, 230)
    canvas.ellipse(cx, 240, rng.uniform(82, 96), 57, clothes)
    if labels["Wearing_Necktie"] or (labels["Male"] and rng.random() < 0.3):
        collar = _jitter((236, 236, 236), rng, 0.05)
        for side in (-1, 1):
            canvas.polygon(
                _curve([cx + side * 3, cx + side * 22, cx + side * 6], [183, 186, 200]), collar
            )
    if labels["Wearing_Necktie"]:
        tie = _random_colour(rng, 20, 220)
        canvas.polygon(
            _curve([cx - 6, cx + 6, cx + 4, cx - 4], [183, 183, 192, 192]), _scale(tie, 0.85)
        )
        canvas.polygon(_curve([cx - 4, cx + 4, cx + 9, cx, cx - 9], [192, 192, 214, 220, 214]), tie)
    if labels["Wearing_Necklace"]:
        colour = _METALS[rng.integers(len(_METALS))]
        half = neck_half + 1
        depth = rng.uniform(10, 22)
        chain = _ellipse(cx, 172, half, depth, 0.05 * math.pi, 0.95 * math.pi, 16)
        canvas.line(chain, colour, rng.uniform(2.0, 3.5))
        if rng.random() < 0.6:
            canvas.ellipse(cx, 172 + depth + 2, 3.5, 4.0, colour)


def _draw_ears(
    canvas: _Canvas, face: _Face, labels: Mapping[str, bool], rng: np.random.Generator
) -> None:
    for side in (-1, 1):
        canvas.ellipse(
            face.cx + side * (face.rx - 1), face.cy - 2, 5.5, 11, _scale(face.skin, 0.93)
        )
    if not labels["Wearing_Earrings"]:
        return
    colour = _METALS[rng.integers(len(_METALS))]
    hoop = rng.random() < 0.5
    for side in (-1, 1):
        x, y = face.cx + side * (face.rx + 1), face.cy + 10
        if hoop:
            canvas.line(_ellipse(x, y + 5, 5.0, 5.5, n=18), colour, 2.5)
        else:
            canvas.ellipse(x, y, 2.8, 2.8, colour)
            canvas.ellipse(x, y + 7, 3.3, 4.5, colour)


def _draw_cheeks(canvas: _Canvas, face: _Face, labels: Mapping[str, bool]) -> None:
    for side in (-1, 1):
        x = face.cx + side * 23
        if labels["High_Cheekbones"]:
            canvas.ellipse(x, face.cy + 3, 10, 5.5, _WHITE, 60)
            canvas.line(
                _ellipse(x, face.cy + 6, 10, 7, 0.15 * math.pi, 0.85 * math.pi, 8),
                _scale(face.skin, 0.78),
                2.5,
                150,
            )
        if labels["Rosy_Cheeks"]:
            canvas.ellipse(x, face.cy + 9, 9.5, 6.5, (232, 88, 100), 100)
        elif labels["Heavy_Makeup"]:
            canvas.ellipse(x, face.cy + 9, 9, 6, (220, 120, 120), 45)


def _draw_facial_hair(
    canvas: _Canvas, face: _Face, labels: Mapping[str, bool], rng: np.random.Generator
) -> None:
    beard = _scale(face.hair, 0.9) if not labels["Bald"] else _mix(face.hair, (60, 50, 45), 0.4)
    full_beard = (
        labels["Male"] and not labels["No_Beard"] and not (labels["Goatee"] or labels["Mustache"])
    )
    if full_beard or labels["5_o_Clock_Shadow"]:
        jaw = face.lower_face()
        alpha = 255 if full_beard else int(rng.uniform(70, 110))
        canvas.polygon(jaw, beard, alpha)
        lo, hi = jaw.min(axis=0), jaw.max(axis=0)
        dots = rng.uniform(lo, hi, size=(260, 2))
        canvas.draw.point(
            canvas.map(dots[_inside_ellipse(dots, face)]), fill=(*_scale(beard, 0.6), 255)
        )
    if labels["Goatee"]:
        top, bottom = face.mouth_y + 4, face.cy + face.ry + 2
        canvas.ellipse(
            face.cx, (top + bottom) / 2, face.mouth_half * 0.7, (bottom - top) / 2, beard
        )


def _inside_ellipse(points: Points, face: _Face) -> np.ndarray:
    return ((points[:, 0] - face.cx) / face.rx) ** 2 + (
        (points[:, 1] - face.cy) / face.ry
    ) ** 2 < 0.95


def _draw_age(
    canvas: _Canvas, face: _Face, labels: Mapping[str, bool], rng: np.random.Generator
) -> None:
    """Wrinkles for the not-Young, bags under the eyes."""
    cx = face.cx
    if face.wrinkles:
        line = _scale(face.skin, 1.0 - 0.5 * face.wrinkles)
        forehead_top = face.hairline_y + 5
        xs = _linspace(cx - face.rx * 0.5, cx + face.rx * 0.5, 7)
        for y in np.arange(forehead_top, face.brow_y - 8, 5.5)[:3]:
            canvas.line(_curve(xs, y + 1.5 * ((xs - cx) / face.rx) ** 2 * 4), line, 3.5)
        for side in (-1, 1):
            corner_x = cx + side * (face.eye_dx + 10)
            for dy in (-3.0, 0.5, 4.0):
                canvas.line(
                    _curve(
                        [corner_x, corner_x + side * 7],
                        [face.eye_y + dy * 0.4, face.eye_y + dy * 1.6],
                    ),
                    line,
                    2.8,
                )
            # nasolabial fold, from the nose wing to past the mouth corner
            start_x = cx + side * (face.nose_width + 3)
            end_x = cx + side * (face.mouth_half + 5)
            ys = _linspace(face.nose_y - 2, face.mouth_y + 7, 6)
            xs = start_x + (end_x - start_x) * _fixed_linspace(0, 1, 6) ** 0.7
            canvas.line(_curve(xs, ys), line, 4.0)
            # marionette line below the mouth corner
            mx = cx + side * (face.mouth_half + 1)
            canvas.line(
                _curve([mx, mx + side * 1.5], [face.mouth_y + 5, face.mouth_y + 14]), line, 2.8
            )
    if labels["Bags_Under_Eyes"]:
        for side in (-1, 1):
            ex = cx + side * face.eye_dx
            canvas.ellipse(ex, face.eye_y + 6, 7.5, 3.2, (110, 70, 90), 55)
            canvas.line(
                _ellipse(ex, face.eye_y + 5, 7.5, 4.0, 0.15 * math.pi, 0.85 * math.pi, 8),
                _scale(face.skin, 0.7),
                2.0,
            )


def _draw_eyes(
    canvas: _Canvas,
    face: _Face,
    labels: Mapping[str, bool],
    rng: np.random.Generator,
    asymmetry: float,
) -> None:
    iris = _jitter(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], rng, 0.1)
    eye_rx = 7.5 + (0.5 if labels["Attractive"] else 0.0)
    eye_ry = 2.2 if labels["Narrow_Eyes"] else 4.1
    eye_ry *= 0.8 if labels["Smiling"] else 1.0
    shadow = _EYESHADOW[rng.integers(len(_EYESHADOW))]
    for side in (-1, 1):
        ex = face.cx + side * face.eye_dx
        ey = face.eye_y + side * asymmetry
        if labels["Heavy_Makeup"]:
            canvas.ellipse(ex, ey - eye_ry - 2.5, 9.5, 4.5, shadow, 150)
        canvas.ellipse(ex, ey, eye_rx, eye_ry, (242, 240, 236))
        canvas.ellipse(ex, ey, 3.4, min(3.4, eye_ry), iris)
        canvas.ellipse(ex, ey, 1.5, min(1.5, eye_ry * 0.6), (15, 12, 12))
        lid = _ellipse(ex, ey, eye_rx, eye_ry, math.pi, 2 * math.pi, 10)
        liner = 2.6 if labels["Heavy_Makeup"] else 1.4
        canvas.line(lid, (25, 20, 20) if labels["Heavy_Makeup"] else _scale(face.skin, 0.45), liner)


def _draw_eyebrows(
    canvas: _Canvas,
    face: _Face,
    labels: Mapping[str, bool],
    rng: np.random.Generator,
    asymmetry: float,
) -> None:
    """Arched brows rise to a sharp peak two thirds of the way out; others are flat or gently curved."""
    darkness = 0.8 if labels["Heavy_Makeup"] else 0.6
    colour = _mix(face.hair, (35, 25, 20), darkness)
    thickness = rng.uniform(6.5, 8.0) if labels["Bushy_Eyebrows"] else rng.uniform(3.6, 5.0)
    if labels["Male"]:
        thickness += 0.6
    t = _fixed_linspace(0.0, 1.0, 11)
    peak = rng.uniform(0.55, 0.7)
    # the tail of a peaked brow drops below its start
    peaked = np.where(t < peak, t / peak, ((1 - t) / (1 - peak)) ** 1.2) - 0.2 * t
    smooth = np.sin(math.pi * t)
    lift = face.brow_arch * (face.brow_peak * peaked + (1 - face.brow_peak) * smooth)
    tilt = rng.uniform(-1.5, 1.5)
    taper = 1.0 - 0.45 * t
    for side in (-1, 1):
        xs = face.cx + side * (6.0 + 23.0 * t)
        ys = face.brow_y + side * asymmetry + tilt * t - lift
        upper = _curve(xs, ys - thickness / 2 * taper)
        lower = _curve(xs, ys + thickness / 2 * taper)
        canvas.polygon(np.concatenate([upper, lower[::-1]]), colour)


def _draw_nose(canvas: _Canvas, face: _Face, labels: Mapping[str, bool]) -> None:
    cx, tip, width = face.cx, face.nose_y, face.nose_width
    shade = _scale(face.skin, 0.84)
    canvas.line(_curve([cx + 4, cx + width * 0.45], [face.eye_y + 3, tip - 5]), shade, 2.2)
    for side in (-1, 1):
        canvas.ellipse(
            cx + side * width * 0.72, tip, width * 0.42, width * 0.34, _scale(face.skin, 0.88)
        )
    if labels["Pointy_Nose"]:
        canvas.polygon(
            _curve([cx - width * 0.45, cx + width * 0.45, cx], [tip - 7, tip - 7, tip + 4]), shade
        )
    else:
        canvas.ellipse(cx, tip - 1, width * 0.55, width * 0.42, _scale(face.skin, 1.04))
    for side in (-1, 1):
        canvas.ellipse(
            cx + side * width * 0.38,
            tip + width * 0.28,
            width * 0.22,
            width * 0.13,
            _scale(face.skin, 0.4),
        )


def _draw_mouth(
    canvas: _Canvas, face: _Face, labels: Mapping[str, bool], rng: np.random.Generator
) -> None:
    """Lips around a centre line that curves up at the corners when smiling; open means a dark
    gap. A full smile (corners up more than 4.5) parts closed lips on a band of teeth."""
    half, centre_y, smile = face.mouth_half, face.mouth_y, face.smile
    xs = _linspace(-half, half, 15)
    base = centre_y - smile * (xs / half) ** 2
    envelope = np.sqrt(np.clip(1 - (xs / half) ** 2, 0, 1))
    upper, lower, gap = face.lip_upper, face.lip_lower, face.mouth_gap
    # lips part on the teeth when a closed mouth smiles fully (at 32 px the teeth are a bright
    # spot where a smile's rising corners are barely a pixel)
    opening = gap if gap else (0.45 * smile if smile > 4.5 else 0.0)
    bow = 1.2 * np.exp(-((xs / 2.5) ** 2))  # Cupid's bow dips the upper lip's middle
    upper_top = base - (opening / 2 + upper) * envelope + bow
    upper_bottom = base - opening / 2 * envelope
    lower_top = base + opening / 2 * envelope
    lower_bottom = base + (opening / 2 + lower) * envelope
    x = face.cx + xs
    if labels["Wearing_Lipstick"]:
        lips = _jitter(_LIPSTICK[rng.integers(len(_LIPSTICK))], rng, 0.08)
    else:
        lips = _mix(face.skin, (185, 85, 90), 0.45)
    if gap:
        canvas.polygon(
            np.concatenate([_curve(x, upper_bottom), _curve(x, lower_top)[::-1]]), (70, 22, 28)
        )
        if labels["Smiling"] and gap > 4:
            teeth = upper_bottom + gap * 0.5 * envelope
            canvas.polygon(
                np.concatenate([_curve(x, upper_bottom), _curve(x, teeth)[::-1]]), (238, 234, 224)
            )
    elif opening:
        canvas.polygon(
            np.concatenate([_curve(x, upper_bottom), _curve(x, lower_top)[::-1]]), (238, 234, 224)
        )
    canvas.polygon(np.concatenate([_curve(x, upper_top), _curve(x, upper_bottom)[::-1]]), lips)
    canvas.polygon(np.concatenate([_curve(x, lower_top), _curve(x, lower_bottom)[::-1]]), lips)
    if not opening:
        canvas.line(_curve(x, base), _scale(lips, 0.5), 1.8)
    if labels["Mustache"]:
        beard = _scale(face.hair, 0.9) if not labels["Bald"] else (70, 60, 55)
        mx = _linspace(-half - 3, half + 3, 9)
        top = centre_y - opening / 2 - upper - 8 - 1.5 * (1 - (mx / half) ** 2).clip(0)
        bottom = (
            centre_y
            - opening / 2
            - upper
            + 0.5
            - smile * (mx / half) ** 2
            + 4 * (np.abs(mx) > half)
        )
        canvas.polygon(
            np.concatenate([_curve(face.cx + mx, top), _curve(face.cx + mx, bottom)[::-1]]), beard
        )


def _draw_glasses(canvas: _Canvas, face: _Face, rng: np.random.Generator) -> None:
    frame = [(22, 20, 20), (90, 52, 30), (40, 44, 70), _random_colour(rng, 20, 120)][
        rng.integers(4)
    ]
    thickness = rng.uniform(3.5, 5.0)
    round_lenses = rng.random() < 0.4
    sunglasses = rng.random() < 0.3
    half_w, half_h = 12.5, rng.uniform(9.0, 11.0)
    for side in (-1, 1):
        ex, ey = face.cx + side * face.eye_dx, face.eye_y + 1
        if round_lenses:
            lens = _ellipse(ex, ey, half_w, half_h, n=24)
        else:
            lens = _curve(
                [ex - half_w, ex + half_w, ex + half_w, ex - half_w],
                [ey - half_h, ey - half_h, ey + half_h * 0.8, ey + half_h * 0.8],
            )
        if sunglasses:
            canvas.polygon(lens, (28, 28, 36), 235)
        canvas.line(np.concatenate([lens, lens[:1]]), frame, thickness)
        canvas.line(
            _curve([ex + side * half_w, face.cx + side * face.rx], [ey - 2, ey - 3]),
            frame,
            thickness * 0.8,
        )
    bridge_x = face.eye_dx - half_w
    canvas.line(
        _curve(
            [face.cx - bridge_x, face.cx, face.cx + bridge_x],
            [face.eye_y - 1, face.eye_y - 3, face.eye_y - 1],
        ),
        frame,
        thickness * 0.8,
    )


def _draw_hat(canvas: _Canvas, face: _Face, rng: np.random.Generator) -> None:
    colour = _random_colour(rng, 15, 230)
    cx, top = face.cx, face.cy - face.ry - rng.uniform(18, 26)
    band_y = face.hairline_y + rng.uniform(2, 8)
    half = face.rx + rng.uniform(7, 12)
    if rng.random() < 0.5:  # brimmed hat
        crown = np.concatenate(
            [
                _curve([cx - half, cx - half * 0.9], [band_y, top + 8]),
                _ellipse(cx, top + 8, half * 0.9, 8, math.pi, 2 * math.pi, 12),
                _curve([cx + half * 0.9, cx + half], [top + 8, band_y]),
            ]
        )
        canvas.polygon(crown, colour)
        canvas.ellipse(
            cx, band_y, half + rng.uniform(16, 26), rng.uniform(5, 8), _scale(colour, 0.8)
        )
    else:  # beanie
        canvas.polygon(_ellipse(cx, band_y, half, band_y - top, math.pi, 2 * math.pi, 20), colour)
        canvas.polygon(
            _curve(
                [cx - half, cx + half, cx + half, cx - half],
                [band_y - 8, band_y - 8, band_y + 2, band_y + 2],
            ),
            _scale(colour, 0.75),
        )


def _finish(
    image: Image.Image, labels: Mapping[str, bool], rng: np.random.Generator
) -> Image.Image:
    """Camera effects: blur, a lighting gradient, colour cast, exposure and sensor noise."""
    if labels["Blurry"]:  # out of focus: shrink and enlarge again (much faster than a Gaussian)
        factor = int(rng.integers(3, 5))
        image = image.reduce(factor).resize(image.size, Image.Resampling.BICUBIC)
    # Each pixel's value goes through the same float32 operations in the same order as
    # ``pixels * light[..., None] * gain + noise * sigma``; the image is viewed as rows of
    # WIDTH * 3 values and the light and gain are laid out per value, so that every operation
    # runs over contiguous memory (broadcasting over the 3 channels is several times slower).
    # The light, 1 + a * x + b * y, is a row (1 + a * x) plus a column (b * y): the same
    # float32 operations per pixel, with one full-size addition instead of four operations.
    xs, ys = _unit_grids()
    direction = rng.uniform(0, 2 * math.pi)
    slope = rng.uniform(0.0, 0.4)
    light = (1.0 + np.float32(slope * math.cos(direction)) * xs) + np.float32(
        slope * math.sin(direction)
    ) * ys
    gain = (rng.uniform(0.72, 1.2) * (1.0 + rng.uniform(-0.07, 0.07, 3))).astype(np.float32)
    noise_x, noise_y = rng.integers(0, 64, 2)
    noise = _cached_noise_tile()[noise_y : noise_y + HEIGHT, noise_x : noise_x + WIDTH]
    pixels = np.asarray(image, dtype=np.float32).reshape(HEIGHT, WIDTH * 3)
    pixels *= light
    pixels *= np.tile(gain, WIDTH)
    noise = noise.reshape(HEIGHT, WIDTH * 3) * np.float32(rng.uniform(2.0, 8.0))
    pixels += noise
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8).reshape(HEIGHT, WIDTH, 3), "RGB")


def _face_geometry(labels: Mapping[str, bool], rng: np.random.Generator) -> _Face:
    male = labels["Male"]
    rx = (42.0 if male else 39.0) + rng.uniform(-1.5, 1.5)
    ry = 52.0 + rng.uniform(-2.0, 2.0)
    jaw_power = rng.uniform(2.6, 3.2) if male else rng.uniform(1.9, 2.2)
    jaw_taper = 0.12 if male else 0.24
    if labels["Chubby"]:
        rx += 6.0
        jaw_power += 0.4
        jaw_taper -= 0.08
    if labels["Oval_Face"]:
        rx -= 2.5
        ry += 4.0
        jaw_power = min(jaw_power, 2.0)
        jaw_taper += 0.06
    cy = 116.0
    smile, _ = _cue(rng, "Smiling", labels["Smiling"], (5.0, 8.0), (-1.5, 1.5), (2.5, 4.5))
    gap, _ = _cue(
        rng,
        "Mouth_Slightly_Open",
        labels["Mouth_Slightly_Open"],
        (8.0, 14.0),
        (0.0, 0.0),
        (2.0, 5.0),
    )
    lip, _ = _cue(rng, "Big_Lips", labels["Big_Lips"], (5.0, 6.5), (2.5, 3.8), (3.6, 5.0))
    nose_width, _ = _cue(rng, "Big_Nose", labels["Big_Nose"], (10.0, 13.5), (6.5, 9.0), (8.5, 10.5))
    arch, borderline = _cue(
        rng, "Arched_Eyebrows", labels["Arched_Eyebrows"], (9.0, 14.0), (0.0, 1.5), (3.0, 7.0)
    )
    brow_peak = 0.5 if borderline else float(labels["Arched_Eyebrows"])
    wave = 0.0
    if not labels["Bald"] and not labels["Straight_Hair"]:
        wave, _ = _cue(rng, "Wavy_Hair", labels["Wavy_Hair"], (4.0, 7.5), (0.0, 0.0), (2.0, 4.0))
    wrinkles, _ = _cue(rng, "Young", not labels["Young"], (0.6, 1.0), (0.0, 0.0), (0.15, 0.4))
    return _Face(
        cx=89.0,
        cy=cy,
        rx=rx,
        ry=ry,
        jaw_power=jaw_power,
        jaw_taper=jaw_taper,
        skin=_skin_colour(labels, rng),
        hair=_hair_colour(labels, rng),
        eye_y=cy - 8 + rng.uniform(-1.0, 1.0),
        eye_dx=17.0 + rng.uniform(-1.0, 1.0),
        brow_y=cy - 19 + rng.uniform(-1.5, 1.0),
        nose_y=cy + 15 + 0.6 * (nose_width - 8.0) + rng.uniform(-1.0, 1.0),
        nose_width=nose_width,
        mouth_y=cy + 30 + rng.uniform(-1.5, 1.5),
        mouth_half=13.0 + 0.8 * smile + rng.uniform(0.0, 3.0),
        hairline_y=cy
        - ry
        + (4.0 if labels["Receding_Hairline"] else 11.0)
        + rng.uniform(-1.5, 1.5),
        smile=smile,
        mouth_gap=gap,
        lip_upper=lip,
        lip_lower=lip * rng.uniform(1.2, 1.45),
        brow_arch=arch,
        brow_peak=brow_peak,
        wave=wave,
        wrinkles=wrinkles,
    )


def render_face(labels: Mapping[str, bool], rng: np.random.Generator) -> RenderedFace:
    """Draw the face that ``labels`` (CelebA attribute name -> bool) describe.

    ``rng`` supplies all nuisance: pose, scale, colours, background, lighting, noise.
    """
    face = _face_geometry(labels, rng)
    angle = math.radians(rng.uniform(-12.0, 12.0))
    shift = (rng.uniform(-8, 8), rng.uniform(-6, 6))
    canvas = _Canvas(_background(rng), angle, rng.uniform(0.88, 1.1), shift)
    asymmetry = 0.0 if labels["Attractive"] else rng.uniform(-1.8, 1.8)

    back_hair, front_hair = _hair_shapes(face, labels, rng)
    hair_layer = _draw_hair_texture(canvas, face, labels, rng, back_hair + front_hair)
    if back_hair:
        canvas.image.paste(hair_layer, (0, 0), canvas.mask(back_hair))
    _draw_neck_and_clothes(canvas, face, labels, rng)
    _draw_ears(canvas, face, labels, rng)
    outline = face.outline()
    if labels["Double_Chin"]:
        chin_y = face.cy + face.ry
        canvas.ellipse(face.cx, chin_y + 2, face.rx * 0.45, 7, _scale(face.skin, 0.95))
        canvas.line(
            _ellipse(face.cx, chin_y + 2, face.rx * 0.45, 7, 0.15 * math.pi, 0.85 * math.pi, 10),
            _scale(face.skin, 0.72),
            2.2,
        )
    canvas.polygon(outline, face.skin)
    if labels["Bald"]:
        canvas.ellipse(face.cx - 8, face.cy - face.ry + 14, 14, 7, _WHITE, 70)
    _draw_cheeks(canvas, face, labels)
    _draw_facial_hair(canvas, face, labels, rng)
    _draw_age(canvas, face, labels, rng)
    _draw_eyes(canvas, face, labels, rng, asymmetry)
    _draw_eyebrows(canvas, face, labels, rng, asymmetry)
    _draw_nose(canvas, face, labels)
    _draw_mouth(canvas, face, labels, rng)
    if front_hair:
        canvas.image.paste(hair_layer, (0, 0), canvas.mask(front_hair))
    if labels["Eyeglasses"]:
        _draw_glasses(canvas, face, rng)
    if labels["Wearing_Hat"]:
        _draw_hat(canvas, face, rng)

    image = _finish(canvas.image, labels, rng)
    smile_y = face.mouth_y - face.smile
    nominal = _curve(
        [
            face.cx - face.eye_dx,
            face.cx + face.eye_dx,
            face.cx,
            face.cx - face.mouth_half,
            face.cx + face.mouth_half,
        ],
        [face.eye_y, face.eye_y, face.nose_y, smile_y, smile_y],
    )
    landmarks = tuple(round(v) for v in canvas.map(nominal))
    corners = np.reshape(canvas.map(outline), (-1, 2))
    x1, y1 = np.floor(corners.min(axis=0)).astype(int).tolist()
    x2, y2 = np.ceil(corners.max(axis=0)).astype(int).tolist()
    return RenderedFace(image=image, landmarks=landmarks, bbox=(x1, y1, x2 - x1, y2 - y1))
