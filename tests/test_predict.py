"""mtl-predict: a tiny checkpoint's predictions on a folder with one corrupt image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from mtl_celeba.errors import ConfigError
from mtl_celeba.predict import choose_device, find_images, prediction_table

PNG = b"\x89PNG\r\n\x1a\n"


def test_find_images_folder_and_glob(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jpg").write_bytes(b"x")
    assert [p.name for p in find_images(tmp_path)] == ["a.PNG", "b.jpg"]
    assert [p.name for p in find_images(f"{tmp_path}/**/*.jpg")] == ["b.jpg", "c.jpg"]
    with pytest.raises(ConfigError, match=r"images=.* matches no image file"):
        find_images(tmp_path / "*.gif")


def test_device_and_table() -> None:
    assert choose_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="device=nonsense"):
        choose_device("nonsense")
    table = prediction_table([Path("x.jpg")], np.array([[0.7, 0.5]]), ["A", "B"], 0.5)
    assert table.columns.tolist() == ["image", "A_prob", "A", "B_prob", "B"]
    assert table.loc[0, ["A", "B"]].tolist() == [1, 0]  # above the threshold only, as the metrics


@pytest.mark.slow
def test_predict_folder_with_a_corrupt_image(
    compose_train, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtl_celeba.data.celeba import load_celeba
    from mtl_celeba.predict import predict
    from mtl_celeba.train import train

    cfg = compose_train(["strategy=mtl", "trainer.max_epochs=1"], run_dir=tmp_path / "run")
    trained = train(cfg, tmp_path / "run")
    (tmp_path / "run" / ".hydra").mkdir()  # as Hydra writes it beside checkpoints/
    config = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(config, tmp_path / "run" / ".hydra" / "config.yaml", resolve=True)

    # the run's validation images, plus one corrupt file and one that is not an image
    index = load_celeba(synthetic_root, trained["attributes"])
    val_ids, val_labels = index.split("val")
    folder = tmp_path / "photos"
    folder.mkdir()
    for image_id in val_ids:
        shutil.copy(index.image_path(image_id), folder / image_id)
    (folder / "000000_bad.jpg").write_bytes(index.image_path(val_ids[0]).read_bytes()[:200])
    (folder / "readme.txt").write_text("not an image")

    predict_cfg = compose_train(
        [
            f"ckpt_path={trained['best_checkpoint']}",
            f"images={folder}",
            "batch_size=7",
            "device=cpu",
        ],
        run_dir=tmp_path / "predict",
        config_name="predict",
    )
    capsys.readouterr()
    table = predict(predict_cfg, tmp_path / "predict")
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("skipped: Cannot decode image")
    assert "000000_bad.jpg" in errors[0]

    saved = pd.read_csv(tmp_path / "predict" / "predictions.csv")
    assert len(saved) == len(val_ids)
    assert [Path(p).name for p in saved["image"]] == list(val_ids)
    assert (tmp_path / "predict" / "predictions.png").read_bytes()[:8] == PNG
    # the run's own preprocessing: the decisions score exactly the run's validation accuracy
    for i, task in enumerate(trained["attributes"]):
        assert saved[f"{task}_prob"].between(0, 1).all()
        accuracy = float((saved[task].to_numpy() == val_labels[:, i]).mean())
        assert accuracy == pytest.approx(trained["val"]["per_task"][task]["accuracy"], abs=1e-6)
    assert table.shape == saved.shape
