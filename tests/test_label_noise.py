"""data.label_noise=celeba: per-attribute flip rates calibrated from published CelebA accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES, CELEBA_POSITIVE_RATES
from mtl_celeba.data.celeba import load_celeba
from mtl_celeba.data.synthetic import (
    LNETS_ANET_ACCURACY,
    add_label_noise,
    generate_synthetic_celeba,
    label_noise_rates,
    main,
    sample_labels,
)
from mtl_celeba.errors import ConfigError


def test_published_table_is_complete() -> None:
    assert set(LNETS_ANET_ACCURACY) == set(CELEBA_ATTRIBUTES)
    # the paper's reported CelebA average for LNets+ANet is 87%
    assert np.mean(list(LNETS_ANET_ACCURACY.values())) == pytest.approx(87, abs=0.5)


def _real_rates() -> np.ndarray:
    return np.array([CELEBA_POSITIVE_RATES[name] for name in CELEBA_ATTRIBUTES])


def test_the_preset_keeps_every_rate_at_the_stated_accuracy() -> None:
    n = 200_000
    truth = sample_labels(n, np.random.default_rng(1))
    written = add_label_noise(truth, "celeba", np.random.default_rng(2))
    rates = _real_rates()
    stated = np.array([LNETS_ANET_ACCURACY[name] / 100 for name in CELEBA_ATTRIBUTES])
    # a labeller can flip at most every minority label (and as many majority ones): where the
    # stated accuracy asks for more errors, it is the majority rate's (always answering the majority)
    feasible = 1 - stated <= 2 * np.minimum(rates, 1 - rates)
    assert [n for n, ok in zip(CELEBA_ATTRIBUTES, feasible, strict=True) if not ok] == [
        "Blurry", "Pale_Skin", "Wearing_Necklace"
    ]  # fmt: skip
    expected = np.where(feasible, stated, np.maximum(rates, 1 - rates))
    accuracy = (written == truth).mean(axis=0)
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(accuracy - expected) < 5 * sigma + 1e-9), accuracy - expected
    # the rates stay where they were (and CelebA's): no drift towards 0.5
    assert np.abs(written.mean(axis=0) - truth.mean(axis=0)).max() < 0.005
    assert np.abs(written.mean(axis=0) - rates).max() < 0.01
    # the flips are asymmetric: a rare positive is flipped more often than a negative
    blurry = CELEBA_ATTRIBUTES.index("Blurry")
    positives = truth[:, blurry]
    assert (~written[positives, blurry]).mean() > 5 * written[~positives, blurry].mean()


def test_a_single_fraction_is_unchanged() -> None:
    truth = sample_labels(500, np.random.default_rng(0))
    old = truth ^ (np.random.default_rng(3).random(truth.shape) < 0.1)  # the rule before presets
    assert np.array_equal(add_label_noise(truth, 0.1, np.random.default_rng(3)), old)
    p01, p10 = label_noise_rates(0.1)
    assert p01.tolist() == p10.tolist() == [0.1] * 40


def test_dataset_written_with_the_preset(tmp_path: Path) -> None:
    # enough images that every attribute has a positive in the train split (the reader checks)
    folder = generate_synthetic_celeba(tmp_path, 400, seed=5, label_noise="celeba", progress=False)
    assert json.loads((folder / "synthetic.json").read_text())["label_noise"] == "celeba"
    clean = generate_synthetic_celeba(tmp_path / "clean", 400, seed=5, progress=False)
    noisy_labels = load_celeba(tmp_path, CELEBA_ATTRIBUTES).labels
    clean_labels = load_celeba(tmp_path / "clean", CELEBA_ATTRIBUTES).labels
    assert (noisy_labels != clean_labels).any()
    assert (folder / "img_align_celeba" / "000001.jpg").read_bytes() == (
        clean / "img_align_celeba" / "000001.jpg"
    ).read_bytes(), "the pictures show the true attributes"
    with pytest.raises(ConfigError, match=r"choose a fraction .* or a preset: celeba"):
        generate_synthetic_celeba(tmp_path / "x", 60, seed=5, label_noise="celebA")


def test_cli_accepts_the_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(
        ["--out", str(tmp_path), "--num-images", "20", "--label-noise", "celeba", "--workers", "1"]
    )
    assert "Wrote 20" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "b"), "--num-images", "20", "--label-noise", "lots"])
    assert stop.value.code == 2
    assert "--label-noise is 'lots'" in capsys.readouterr().err


def test_train_config_accepts_the_preset(compose_train) -> None:
    cfg = compose_train(["data.label_noise=celeba"])
    assert cfg.data.label_noise == "celeba"
