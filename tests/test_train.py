"""End-to-end training on the tiny synthetic CelebA: results, checkpoints, resume, repeatability."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtl_celeba.config import PROJECT_ROOT
from mtl_celeba.evaluate import evaluate
from mtl_celeba.run.results import METRIC_NAMES
from mtl_celeba.train import train

pytestmark = pytest.mark.slow


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_training_writes_results_checkpoints_and_tensorboard(compose_train, tmp_path):
    cfg = compose_train(["strategy=mtl", "attributes=assignment8"])
    run_dir = tmp_path / "run"
    results = train(cfg, run_dir)
    saved = read_metrics(run_dir)
    assert saved == json.loads(json.dumps(results | {"schema_version": 1}, default=str))
    assert saved["status"] == "completed"
    assert saved["attributes"][:2] == ["Eyeglasses", "Male"]
    assert (
        set(saved["samples"]) == {"train", "val", "test"} and sum(saved["samples"].values()) == 400
    )
    for split in ("val", "test"):
        assert set(saved[split]["per_task"]) == set(saved["attributes"])
        for name in METRIC_NAMES:
            values = [saved[split]["per_task"][task][name] for task in saved["attributes"]]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert saved[split]["mean"][name] == pytest.approx(sum(values) / len(values))
    assert saved["config"]["backbone"] == "resnet18" and saved["config"]["strategy"] == "mtl"
    assert saved["config"]["attribute_set"] == "assignment8"
    assert saved["best_epoch"] in (1, 2)  # counted from 1, like the checkpoint's name
    assert Path(saved["best_checkpoint"]).name.startswith(f"epoch{saved['best_epoch']:03d}-")
    # the training majority class, scored on test: high for the rare Eyeglasses
    assert all(0.0 <= v <= 1.0 for v in saved["majority_accuracy"].values())
    assert saved["majority_accuracy"]["Eyeglasses"] > 0.85
    assert saved["task_depths"]["Male"] == 17 + 2  # resnet18 + a one-hidden-layer head
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert Path(saved["best_checkpoint"]).exists()
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "TensorBoard events are written to the run folder"


def test_same_seed_repeats_metrics(compose_train, tmp_path):
    first = train(compose_train(["strategy=mtl", "seed=3"], run_dir=tmp_path / "a"), tmp_path / "a")
    second = train(
        compose_train(["strategy=mtl", "seed=3"], run_dir=tmp_path / "b"), tmp_path / "b"
    )
    assert first["test"] == second["test"]
    assert first["val"] == second["val"]


def test_resume_continues_where_it_stopped(compose_train, tmp_path):
    # T_max fixed, so the cosine schedule of the interrupted run is the full run's
    overrides = ["strategy=dst", "seed=1", "trainer.max_epochs=3", "model.scheduler.T_max=3"]
    full = train(compose_train(overrides, run_dir=tmp_path / "full"), tmp_path / "full")

    # stop after 2 epochs, then resume from last.ckpt up to 3
    train(
        compose_train([*overrides, "trainer.max_epochs=2"], run_dir=tmp_path / "part"),
        tmp_path / "part",
    )
    checkpoint = tmp_path / "part" / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["optimizer_states"] and state["lr_schedulers"]
    resumed_cfg = compose_train(
        [*overrides, f"ckpt_path={checkpoint}"], run_dir=tmp_path / "resumed"
    )
    resumed = train(resumed_cfg, tmp_path / "resumed")

    assert resumed["epochs_trained"] == full["epochs_trained"] == 3
    assert resumed["schedule"] == full["schedule"], "the DST schedule continues exactly"
    history_full = (tmp_path / "full" / "dst_history.csv").read_text()
    history_resumed = (tmp_path / "resumed" / "dst_history.csv").read_text()
    assert history_resumed == history_full
    # the weights at the end equal the uninterrupted run's
    final = torch.load(
        tmp_path / "full" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    again = torch.load(
        tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert final["epoch"] == again["epoch"] == 2
    for name, tensor in final["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][name], tensor, msg=name)


def test_overfit_debug_reaches_full_training_accuracy(compose_train, tmp_path):
    cfg = compose_train(
        [
            "debug=overfit",
            "strategy=mtl",
            "data.batch_size=32",
            "model.head_hidden=[128]",
            "trainer.max_epochs=150",
        ]
    )
    results = train(cfg, tmp_path / "run")
    assert results["status"] == "completed"
    assert results["epochs_trained"] < 150, "stopped early because training accuracy reached 100%"


def test_eval_rewrites_results_from_a_checkpoint(compose_train, tmp_path):
    cfg = compose_train(["strategy=mtl"], run_dir=tmp_path / "run")
    trained = train(cfg, tmp_path / "run")
    # the training run's config is read from RUN/.hydra/config.yaml, as Hydra writes it
    hydra_dir = tmp_path / "run" / ".hydra"
    hydra_dir.mkdir()
    from omegaconf import OmegaConf

    config = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(config, hydra_dir / "config.yaml", resolve=True)
    eval_cfg = compose_train(
        [f"ckpt_path={trained['best_checkpoint']}", "trainer.accelerator=cpu"],
        run_dir=tmp_path / "eval",
        config_name="eval",
    )
    evaluated = evaluate(eval_cfg, tmp_path / "eval")
    assert read_metrics(tmp_path / "eval")["status"] == "completed"
    assert evaluated["test"]["mean"]["accuracy"] == pytest.approx(
        trained["test"]["mean"]["accuracy"], abs=1e-6
    )


def test_mtl_train_cli_fast_debug_run(synthetic_root, tmp_path):
    run_dir = tmp_path / "cli"
    command = [
        sys.executable, "-m", "mtl_celeba.train", "debug=fast",
        f"data.root={synthetic_root}", "data.num_images=400", "data.image_size=32",
        f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "overall" in done.stdout and "tensorboard --logdir" in done.stdout
    assert read_metrics(run_dir)["status"] == "completed"
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_mtl_train_cli_bad_attribute_is_one_line(tmp_path):
    command = [
        sys.executable, "-m", "mtl_celeba.train", "data.attributes=[Smilling]",
        f"hydra.run.dir={tmp_path / 'bad'}", f"data.root={tmp_path / 'nodata'}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Did you mean Smiling" in done.stderr
    assert "Traceback" not in done.stderr
    # the preflight knows the 40 names: it fails before Hydra makes a run folder
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("layout", ["original", "kaggle"])
def test_real_celeba_layouts_train_end_to_end(compose_train, tmp_path, layout):
    from fake_celeba import write_fake_celeba

    root = tmp_path / "celeba_copy"
    write_fake_celeba(root, layout=layout, num_images=48, crlf=True, missing_labels=5)
    cfg = compose_train(
        [
            "data=celeba",
            f"data.root={root}",
            # the fake copy writes its missing labels as 0, a re-export's convention
            "data.label_values=signed_0_missing",
            "data.num_workers=0",
            "strategy=dst",
            "trainer.max_epochs=1",
        ]
    )
    results = train(cfg, tmp_path / "run")
    assert results["status"] == "completed"
    assert results["config"]["data_source"] == "celeba"
    assert sum(results["samples"].values()) == 48
