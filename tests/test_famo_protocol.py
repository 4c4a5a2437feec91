"""experiment=famo_celeba40 decodes JPEGs at full size (no libjpeg draft) and trains in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl_celeba.config import instantiate
from mtl_celeba.data.cache import cache_key
from mtl_celeba.data.images import load_face


@pytest.fixture
def detailed_jpeg(tmp_path: Path) -> Path:
    """A 178x218 JPEG full of fine detail, where a DCT-scaled decode loses the most."""
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 178)[None, :, None] * np.ones((218, 1, 3))
    pixels = np.clip(smooth + rng.normal(0, 60, (218, 178, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "000001.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_full_decode_is_plain_pil_and_differs_from_the_draft(detailed_jpeg: Path):
    full = load_face(detailed_jpeg, 64, "squash", "full")
    draft = load_face(detailed_jpeg, 64, "squash", "draft")
    with Image.open(detailed_jpeg) as image:  # FAMO's data.py: open, convert, Resize((64, 64))
        reference = np.array(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    assert np.array_equal(full, reference)
    difference = np.abs(full.astype(int) - draft.astype(int))
    assert difference.max() >= 2, "the draft decode changes pixels"
    assert load_face(detailed_jpeg, 64, "squash").tolist() == draft.tolist()  # draft: default


def test_the_decode_mode_has_its_own_cache(detailed_jpeg: Path):
    ids = [detailed_jpeg.name]
    folder = detailed_jpeg.parent
    assert cache_key(folder, ids, 64, "squash", "full") != cache_key(folder, ids, 64, "squash")
    assert cache_key(folder, ids, 64) == cache_key(folder, ids, 64, "crop", "draft")


def test_famo_protocol_composes_full_decode_and_fp32(compose_train):
    cfg = compose_train(["experiment=famo_celeba40", "trainer=gpu"])
    assert cfg.data.decode == "full" and cfg.data.resize == "squash"
    assert cfg.trainer.precision == "32-true"  # over trainer=gpu's bf16-mixed
    assert instantiate(cfg.data).decode == "full"
    bf16 = compose_train(["experiment=famo_celeba40", "trainer.precision=bf16-mixed"])
    assert bf16.trainer.precision == "bf16-mixed"  # still available
    assert compose_train([]).data.decode == "draft"


def test_a_bad_decode_mode_is_one_config_error(compose_train):
    from mtl_celeba.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.decode is 'fast': use one of draft, full"):
        instantiate(compose_train(["data.decode=fast"]).data)
