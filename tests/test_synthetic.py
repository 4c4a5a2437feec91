"""The synthetic CelebA: exact file formats, determinism, safe reuse, label model, CLI."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image
from scipy import stats

from mtl_celeba.data import faces, label_model, synthetic
from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES, CELEBA_POSITIVE_RATES
from mtl_celeba.data.celeba import load_celeba
from mtl_celeba.data.synthetic import (
    CELEBA_SPLIT_SIZES,
    add_label_noise,
    ensure_synthetic_celeba,
    generate_synthetic_celeba,
    main,
    partition_sizes,
    sample_labels,
)
from mtl_celeba.errors import ConfigError, DataError

TEXT_FILES = (
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)


def lines_of(folder: Path, name: str) -> list[str]:
    data = (folder / name).read_bytes()
    assert b"\r" not in data and data.endswith(b"\n")
    return data.decode("ascii").splitlines()


def written_labels(folder: Path) -> np.ndarray:
    """The attribute file's values as a (N, 40) array of -1/1, parsed by hand."""
    rows = lines_of(folder, "list_attr_celeba.txt")[2:]
    return np.array([[int(v) for v in row.split()[1:]] for row in rows])


def all_files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images, seed 5, drawn in this process."""
    out = tmp_path_factory.mktemp("small")
    return generate_synthetic_celeba(out, num_images=60, seed=5, workers=1, progress=False)


# ------------------------------------------------------------------ formats
def test_attribute_file_has_celebas_exact_layout(synthetic_root: Path) -> None:
    folder = synthetic_root / "celeba"
    lines = lines_of(folder, "list_attr_celeba.txt")
    count = int(lines[0])
    assert lines[1] == " ".join(CELEBA_ATTRIBUTES) + " "  # CelebA's trailing space
    assert len(lines) == count + 2
    row = re.compile(r"^\d{6}\.jpg( -1|  1){40}$")  # each value right-aligned in width 2
    assert all(row.match(line) for line in lines[2:])
    assert [line[:10] for line in lines[2:]] == [f"{i:06d}.jpg" for i in range(1, count + 1)]


def test_partition_is_contiguous_in_celebas_proportions(synthetic_root: Path) -> None:
    lines = lines_of(synthetic_root / "celeba", "list_eval_partition.txt")
    assert re.match(r"^000001\.jpg 0$", lines[0])
    splits = np.array([int(line.split(" ")[1]) for line in lines])
    assert np.all(np.diff(splits) >= 0) and set(splits) == {0, 1, 2}
    assert tuple(np.bincount(splits)) == partition_sizes(len(lines))
    assert partition_sizes(sum(CELEBA_SPLIT_SIZES)) == CELEBA_SPLIT_SIZES
    assert partition_sizes(10) == (8, 1, 1)


def test_identity_bbox_and_landmark_files(synthetic_root: Path) -> None:
    folder = synthetic_root / "celeba"
    identities = lines_of(folder, "identity_CelebA.txt")
    assert all(re.match(r"^\d{6}\.jpg [1-9]\d*$", line) for line in identities)
    splits = [line.split()[1] for line in lines_of(folder, "list_eval_partition.txt")]
    split_of_identity: dict[str, set[str]] = {}
    for line, split in zip(identities, splits, strict=True):
        split_of_identity.setdefault(line.split()[1], set()).add(split)
    assert all(len(found) == 1 for found in split_of_identity.values())  # never across splits

    boxes = lines_of(folder, "list_bbox_celeba.txt")
    assert boxes[0] == str(len(identities)) and boxes[1] == "image_id x_1 y_1 width height"
    for line in boxes[2:]:
        x, y, w, h = map(int, line.split()[1:])
        assert min(x, y) >= 0 and x + w <= 178 and y + h <= 218 and min(w, h) > 50

    landmarks = lines_of(folder, "list_landmarks_align_celeba.txt")
    assert landmarks[0] == str(len(identities))
    assert landmarks[1] == (
        "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
        "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    )
    for line in landmarks[2:]:
        points = np.array(list(map(int, line.split()[1:]))).reshape(5, 2)
        left_eye, right_eye, nose, left_mouth, right_mouth = points
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
        eyes_y, mouth_y = (left_eye[1] + right_eye[1]) / 2, (left_mouth[1] + right_mouth[1]) / 2
        assert eyes_y < nose[1] < mouth_y  # heads tilt, but never upside down
        assert np.all((points >= 20) & (points < 198))  # inside the centre square


def test_images_are_178_by_218_rgb_jpegs(small: Path) -> None:
    names = sorted(path.name for path in (small / "img_align_celeba").iterdir())
    assert names == [f"{i:06d}.jpg" for i in range(1, 61)]
    for name in names[:5]:
        with Image.open(small / "img_align_celeba" / name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (178, 218))
    marker = json.loads((small / "synthetic.json").read_text())
    assert marker == {
        "num_images": 60,
        "seed": 5,
        "label_noise": 0.0,
        "generator_version": synthetic.GENERATOR_VERSION,
    }


def test_torchvision_and_project_reader_parse_the_files(
    synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision checks the MD5 sums of the original files; its own tests patch that out too
    monkeypatch.setattr(torchvision.datasets.CelebA, "_check_integrity", lambda self: True)
    written = written_labels(synthetic_root / "celeba")
    index = load_celeba(synthetic_root, CELEBA_ATTRIBUTES)
    np.testing.assert_array_equal(index.labels, (written + 1) // 2)
    start = 0
    for split, size in zip(("train", "valid", "test"), partition_sizes(len(written)), strict=True):
        dataset = torchvision.datasets.CelebA(
            root=synthetic_root,
            split=split,
            target_type=["attr", "identity", "bbox", "landmarks"],
            download=False,
        )
        assert len(dataset) == size
        np.testing.assert_array_equal(
            dataset.attr.numpy(), (written[start : start + size] + 1) // 2
        )
        start += size
        image, (attr, identity, bbox, landmarks) = dataset[0]
        assert image.size == (178, 218) and attr.shape == (40,)
        assert int(identity) >= 1 and bbox.shape == (4,) and landmarks.shape == (10,)
    assert dataset.attr_names[:40] == list(CELEBA_ATTRIBUTES)


# ------------------------------------------------------------- determinism
def test_same_seed_gives_identical_files_whatever_the_workers(small: Path, tmp_path: Path) -> None:
    again = generate_synthetic_celeba(tmp_path / "a", 60, seed=5, workers=2, progress=False)
    assert all_files(again) == all_files(small)
    other = generate_synthetic_celeba(tmp_path / "b", 60, seed=6, workers=1, progress=False)
    other_files, small_files = all_files(other), all_files(small)
    assert other_files["list_attr_celeba.txt"] != small_files["list_attr_celeba.txt"]
    assert other_files["img_align_celeba/000001.jpg"] != small_files["img_align_celeba/000001.jpg"]


def test_written_labels_are_the_sampled_labels(small: Path) -> None:
    sampled = sample_labels(60, synthetic._stream(5, synthetic._LABELS))
    np.testing.assert_array_equal(written_labels(small), np.where(sampled, 1, -1))


def test_label_noise_flips_the_written_labels_not_the_pictures(small: Path, tmp_path: Path) -> None:
    noisy = generate_synthetic_celeba(tmp_path, 60, seed=5, label_noise=0.2, progress=False)
    flipped = np.mean(written_labels(noisy) != written_labels(small))
    assert 0.16 < flipped < 0.24
    clean_files, noisy_files = all_files(small), all_files(noisy)
    images = [name for name in clean_files if name.endswith(".jpg")]
    assert all(clean_files[name] == noisy_files[name] for name in images)

    labels = np.zeros((5000, 40), dtype=bool)
    rate = add_label_noise(labels, 0.1, np.random.default_rng(0)).mean()
    assert rate == pytest.approx(0.1, abs=0.005)


# -------------------------------------------------- interruption and reuse
def test_interrupted_generation_never_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_render = faces.render_face
    calls = []

    def render_then_fail(labels, rng):
        calls.append(1)
        if len(calls) == 15:
            raise KeyboardInterrupt
        return real_render(labels, rng)

    monkeypatch.setattr(faces, "render_face", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_celeba(tmp_path, 30, seed=0, workers=1, progress=False)
    # neither celeba/ nor the partial folder nor the lock file
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(faces, "render_face", real_render)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"celeba.partial-{socket.gethostname()}-{dead.pid}"  # a killed builder's
    left.mkdir()
    (left / "000001.jpg").write_bytes(b"half")
    folder = generate_synthetic_celeba(tmp_path, 30, seed=0, workers=1, progress=False)
    assert (folder / synthetic.MARKER).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["celeba"]


def test_ensure_reuses_a_matching_folder_without_regenerating(
    small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rendering(*args, **kwargs):
        raise AssertionError("regenerated a folder it should have reused")

    monkeypatch.setattr(synthetic, "_render_all", no_rendering)
    assert ensure_synthetic_celeba(small.parent, 60, seed=5) == small


def test_ensure_refuses_a_folder_made_otherwise(small: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        ensure_synthetic_celeba(small.parent, 61, seed=5)
    message = str(error.value)
    assert str(small) in message and "num_images=60" in message and "num_images=61" in message
    assert "delete" in message and "data.root" in message
    with pytest.raises(DataError, match="seed=7"):
        ensure_synthetic_celeba(small.parent, 60, seed=7)

    (tmp_path / "celeba").mkdir()
    (tmp_path / "celeba" / "list_attr_celeba.txt").write_text("a real CelebA, say\n")
    with pytest.raises(DataError, match=re.escape("no readable synthetic.json")):
        ensure_synthetic_celeba(tmp_path, 60, seed=5)


def test_ensure_checks_its_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("data.num_images")):
        ensure_synthetic_celeba(tmp_path, 5, seed=0)
    with pytest.raises(ConfigError, match=re.escape("data.label_noise")):
        ensure_synthetic_celeba(tmp_path, 100, seed=0, label_noise=0.6)
    with pytest.raises(ConfigError, match=re.escape("data.seed")):
        ensure_synthetic_celeba(tmp_path, 100, seed=-1)


# -------------------------------------------------------------------- CLI
def test_cli_writes_reuses_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--num-images", "12", "--seed", "1", "--workers", "1"]
    main(args)
    assert "Wrote 12 synthetic CelebA images to" in capsys.readouterr().out
    main(args)
    assert "already holds" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:-2], "--seed", "2"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "seed=1" in error and "--out" in error


@pytest.mark.parametrize(
    ("flag", "value"), [("--num-images", "9"), ("--label-noise", "0.7"), ("--workers", "0")]
)
def test_cli_rejects_bad_arguments_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--num-images", "20", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and flag in error
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- label model
@pytest.fixture(scope="module")
def labels() -> dict[str, np.ndarray]:
    sampled = sample_labels(20_000, np.random.default_rng(0))
    return dict(zip(CELEBA_ATTRIBUTES, sampled.T, strict=True))


def _real_statistics() -> tuple[np.ndarray, np.ndarray]:
    """Real CelebA's rates and phi, from the package's copies of the real files."""
    return label_model.read_positive_rates(), label_model.read_matrix(label_model.PHI_FILE)


def test_the_shipped_statistics_are_celebas() -> None:
    rates, phi = _real_statistics()
    assert rates.tolist() == [CELEBA_POSITIVE_RATES[name] for name in CELEBA_ATTRIBUTES]
    assert np.array_equal(phi, phi.T) and np.all(np.diag(phi) == 1.0)
    assert np.abs(phi[np.triu_indices(40, 1)]).max() < 0.9


def test_positive_rates_match_celebas(labels: dict[str, np.ndarray]) -> None:
    rates, _ = _real_statistics()
    got = np.array([labels[name].mean() for name in CELEBA_ATTRIBUTES])
    far = {
        n: (g, r)
        for n, g, r in zip(CELEBA_ATTRIBUTES, got, rates, strict=True)
        if abs(g - r) > 0.01
    }
    assert not far


def test_pairwise_phi_matches_celebas(labels: dict[str, np.ndarray]) -> None:
    _, phi = _real_statistics()
    got = np.corrcoef(np.stack([labels[name] for name in CELEBA_ATTRIBUTES]))
    upper = np.triu_indices(40, 1)
    assert len(upper[0]) == 780
    real, sampled = phi[upper], got[upper]
    pairs = [f"{CELEBA_ATTRIBUTES[i]}-{CELEBA_ATTRIBUTES[j]}" for i, j in zip(*upper, strict=True)]
    far = {p: (r, s) for p, r, s in zip(pairs, real, sampled, strict=True) if abs(r - s) > 0.05}
    assert not far
    strong = np.abs(real) > 0.2
    assert strong.sum() == 117
    assert np.all(np.sign(sampled[strong]) == np.sign(real[strong]))


def test_labels_are_deterministic_for_a_seed() -> None:
    first = sample_labels(500, synthetic._stream(3, synthetic._LABELS))
    assert np.array_equal(first, sample_labels(500, synthetic._stream(3, synthetic._LABELS)))
    assert not np.array_equal(first, sample_labels(500, synthetic._stream(4, synthetic._LABELS)))


def test_orthant_is_the_bivariate_normal() -> None:
    for rate_a, rate_b, rho in [
        (0.1, 0.3, 0.5),
        (0.8, 0.02, -0.7),
        (0.6, 0.7, 0.2),
        (0.4, 0.05, 0.9),
    ]:
        h, k = stats.norm.ppf(rate_a), stats.norm.ppf(rate_b)
        expected = stats.multivariate_normal.cdf([h, k], cov=[[1, rho], [rho, 1]])
        got = label_model.orthant(np.array(rate_a), np.array(rate_b), np.array(rho))
        assert float(got) == pytest.approx(expected, abs=1e-6)


def test_nearest_correlation_repairs_an_impossible_matrix() -> None:
    impossible = np.array([[1.0, -0.9, -0.9], [-0.9, 1.0, -0.9], [-0.9, -0.9, 1.0]])
    repaired = label_model.nearest_correlation(impossible)
    assert np.allclose(np.diag(repaired), 1.0) and np.linalg.eigvalsh(repaired).min() > 0
    assert np.allclose(repaired[0, 1], -0.5, atol=0.01)  # three equal correlations: -1/2 at least
    valid = np.array([[1.0, 0.3], [0.3, 1.0]])
    assert np.allclose(label_model.nearest_correlation(valid), valid, atol=1e-4)


@pytest.mark.slow
def test_the_shipped_copula_is_a_fresh_fit() -> None:
    shipped_rates, shipped = label_model.read_copula()
    fresh_rates, fresh = label_model.fit_copula(*_real_statistics())
    assert np.abs(fresh_rates - shipped_rates).max() < 2e-3
    assert np.abs(fresh - shipped).max() < 2e-2


def test_labels_keep_celebas_constraints_and_correlations(labels: dict[str, np.ndarray]) -> None:
    named_colours = sum(
        labels[name].astype(int) for name in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
    )
    assert named_colours.max() == 1
    bald = labels["Bald"]
    assert not np.any(bald & (labels["Wavy_Hair"] | labels["Straight_Hair"] | labels["Bangs"]))
    assert not np.any(labels["Wavy_Hair"] & labels["Straight_Hair"])
    assert not np.any(labels["No_Beard"] & (labels["Goatee"] | labels["Mustache"]))
    male = labels["Male"]
    assert np.all(labels["No_Beard"][~male])
    assert labels["No_Beard"][male].mean() < 0.7  # men without goatee or moustache can have a beard
    assert (
        labels["Wearing_Lipstick"][male].mean()
        < 0.05
        < 0.7
        < labels["Wearing_Lipstick"][~male].mean()
    )
    assert labels["Heavy_Makeup"][male].mean() < 0.02

    def correlation(a: str, b: str) -> float:
        return float(np.corrcoef(labels[a], labels[b])[0, 1])

    assert correlation("Smiling", "Mouth_Slightly_Open") > 0.35
    assert correlation("Smiling", "High_Cheekbones") > 0.5
    assert correlation("Young", "Gray_Hair") < -0.2
    assert correlation("Young", "Bags_Under_Eyes") < -0.15
