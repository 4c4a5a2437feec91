"""mtl-explore: phi and clustering, the selector's rule, the preset, sample grids, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from mtl_celeba.config import CONFIG_DIR, PROJECT_ROOT
from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES
from mtl_celeba.data.celeba import load_celeba
from mtl_celeba.data.explore import cluster_order, phi_matrix, run, select_attributes
from mtl_celeba.errors import ConfigError
from mtl_celeba.explore import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_phi_is_the_correlation_of_binary_labels() -> None:
    a = np.array([1, 1, 0, 0, 1, 0, 1, 0], float)
    b = np.array([1, 1, 0, 0, 0, 1, 1, 0], float)
    labels = pd.DataFrame({"A": a, "B": b, "notA": 1 - a, "C": np.ones(8)})
    phi = phi_matrix(labels)
    # phi by its 2x2-table formula: (n11 n00 - n10 n01) / sqrt(n1. n0. n.1 n.0)
    n11, n00, n10, n01 = 3, 3, 1, 1
    assert phi.loc["A", "B"] == pytest.approx((n11 * n00 - n10 * n01) / np.sqrt(4 * 4 * 4 * 4))
    assert phi.loc["A", "notA"] == pytest.approx(-1.0)
    assert phi.loc["A", "C"] == 0.0 and phi.loc["C", "C"] == 1.0  # constant column
    # anti-correlated attributes cluster together, as do correlated ones
    order = cluster_order(phi)
    assert abs(order.index("A") - order.index("notA")) == 1


def test_selector_rules_by_hand() -> None:
    names = ["W", "X", "Y", "Z"]
    phi = pd.DataFrame(
        [
            [1.0, 0.9, 0.1, -0.3],
            [0.9, 1.0, 0.2, 0.05],
            [0.1, 0.2, 1.0, 0.4],
            [-0.3, 0.05, 0.4, 1.0],
        ],
        index=names,
        columns=names,
    )
    rates = pd.Series({"W": 0.48, "X": 0.45, "Y": 0.1, "Z": 0.7})
    assert select_attributes(phi, rates, 3, "balanced") == ["W", "X", "Z"]
    # start at W (closest to 50%); then Y (|phi| 0.1 to W); then max(|phi| to W, Y):
    # X 0.9, Z max(0.3, 0.4) = 0.4 -> Z
    assert select_attributes(phi, rates, 3, "least_correlated") == ["W", "Y", "Z"]
    with pytest.raises(ConfigError, match="--select is 5"):
        select_attributes(phi, rates, 5, "balanced")


@pytest.fixture(scope="module")
def explored(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("explore")
    done = run(
        synthetic_root,
        tmp / "out",
        select=5,
        criterion="least_correlated",
        name="picked5",
        preset_dir=tmp / "attributes",
        samples=4,
        image_size=32,
    )
    return done | {"tmp": tmp}


def test_writes_heatmap_samples_and_summary(explored: dict) -> None:
    out = explored["out"]
    assert (out / "heatmap.png").read_bytes()[:8] == PNG
    for name in explored["selection"]:
        assert (out / f"samples_{name}.png").read_bytes()[:8] == PNG
    summary = (out / "summary.md").read_text()
    assert "greedy" in summary and "closest to 50%" in summary
    assert "## Most anti-correlated pairs" in summary and "Male" in summary
    assert "mtl-train attributes=picked5" in summary
    rates = pd.read_csv(out / "positive_rates.csv", index_col="attribute")
    assert list(rates.columns) == ["train", "val", "test", "all"]
    assert set(rates.index) == set(CELEBA_ATTRIBUTES)
    assert not list(out.glob(".*.tmp"))


def test_selection_follows_the_stated_rule(explored: dict, synthetic_root: Path) -> None:
    """Recompute phi with numpy and check every greedy step of the selection."""
    index = load_celeba(synthetic_root, CELEBA_ATTRIBUTES)
    phi = np.corrcoef(index.labels.T)
    train = index.labels[index.partition == 0].mean(axis=0)
    position = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
    chosen = [position[name] for name in explored["selection"]]
    assert len(chosen) == 5
    assert chosen[0] == int(np.argmin(np.abs(train - 0.5)))
    for step in range(1, len(chosen)):
        rest = [i for i in range(40) if i not in chosen[:step]]
        worst = {i: np.abs(phi[i, chosen[:step]]).max() for i in rest}
        assert worst[chosen[step]] == pytest.approx(min(worst.values()))


def test_preset_composes_as_attributes_name(explored: dict) -> None:
    preset = explored["tmp"] / "attributes" / "picked5.yaml"
    assert explored["preset"] == preset
    assert OmegaConf.load(preset).attributes == explored["selection"]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[f"hydra.searchpath=[file://{explored['tmp']}]", "attributes=picked5"],
            )
    finally:
        GlobalHydra.instance().clear()
    assert list(cfg.data.attributes) == explored["selection"]


def test_existing_preset_needs_force(explored: dict, synthetic_root: Path) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        run(
            synthetic_root,
            explored["tmp"] / "again",
            select=2,
            name="picked5",
            preset_dir=explored["tmp"] / "attributes",
            samples=1,
        )


def test_corrupt_image_is_skipped_in_samples(tmp_path: Path) -> None:
    from fake_celeba import write_fake_celeba

    copy = write_fake_celeba(tmp_path / "copy", layout="kaggle", num_images=30, corrupt_image=True)
    done = run(copy.root, tmp_path / "out", attributes=["Smiling"], samples=30, image_size=16)
    assert done["selection"] == ["Smiling"] and done["preset"] is None
    smiling = copy.values[:, copy.attributes.index("Smiling")]
    positives, negatives = int((smiling == 1).sum()), int((smiling == -1).sum())
    if smiling[0] == 1:  # the first image is the corrupt one
        positives -= 1
    else:
        negatives -= 1
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"| {positives} / {negatives} " in summary
    assert (tmp_path / "out" / "samples_Smiling.png").is_file()


def test_bad_root_and_attribute_are_one_line(
    tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--root", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: --root {tmp_path / 'nope'} is not a folder")
    with pytest.raises(SystemExit) as stop:
        main(["--root", str(synthetic_root), "--out", str(tmp_path), "--attributes", "Smilling"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --attributes has unknown attribute 'Smilling'")
    assert "Did you mean Smiling" in error and error.count("\n") == 1


@pytest.mark.slow
def test_cli_end_to_end(synthetic_root: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "mtl_celeba.explore", "--root", str(synthetic_root),
        "--out", str(tmp_path / "out"), "--select", "3", "--criterion", "balanced",
        "--preset-dir", str(tmp_path), "--samples", "2", "--image-size", "24",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mtl-train attributes=explore3_balanced" in done.stdout
    assert (tmp_path / "explore3_balanced.yaml").is_file()
