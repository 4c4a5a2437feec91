"""The trackers, checked by reading back what they wrote: TensorBoard's HParams data with its
event reader, MLflow's SQLite store with MLflow's client; W&B (offline) by composition."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mtl_celeba.errors import ConfigError
from mtl_celeba.train import final_metrics, instantiate_loggers, train

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def hparams_plugin_data(event_dir: Path) -> tuple[dict, dict[str, float]]:
    """The HParams tab's data in a TensorBoard log folder: (the session's hparams, the last
    value of each scalar tag), through TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    hparams = {key: value for key, value in start.hparams.items()}
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    scalars = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    return {"hparams": hparams, "metric_tags": metric_tags}, scalars


@pytest.mark.slow
def test_tensorboard_hparams_hold_the_final_metrics(compose_train, tmp_path):
    """The HParams tab compares a sweep's runs: the config as hparams, the final val/test
    metrics (mean and per task) as its metrics, equal to metrics.json's."""
    run_dir = tmp_path / "run"
    results = train(compose_train(["strategy=mtl", "logger=tensorboard"]), run_dir)
    data, scalars = hparams_plugin_data(run_dir / "tensorboard")
    expected = final_metrics(results)
    assert "hp/test/accuracy/mean" in expected and "hp/val/accuracy/Male" in expected
    assert data["metric_tags"] == set(expected)
    for tag, value in expected.items():
        assert scalars[tag] == pytest.approx(value, abs=1e-6), tag
    assert data["hparams"]["strategy"].string_value == "mtl"
    assert data["hparams"]["backbone"].string_value == "resnet18"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason="the mlflow extra is not installed")
def test_mlflow_run_is_read_back_from_the_sqlite_store(compose_train, tmp_path):
    """logger=mlflow: one run in a SQLite database, with the per-task metrics, the config as
    params and the checkpoint as an artifact, as MLflow's client reads them back."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    cfg = compose_train(
        [
            "strategy=mtl",
            "logger=mlflow",
            f"logger.mlflow.tracking_uri={store}",
            f"logger.mlflow.artifact_location={tmp_path / 'artifacts'}",
        ]
    )
    results = train(cfg, run_dir)
    assert (tmp_path / "mlflow.db").stat().st_size > 0
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["run_dir"] == str(run_dir)
    assert run.data.params["strategy"] == "mtl" and run.data.params["backbone"] == "resnet18"
    for task, values in results["test"]["per_task"].items():
        assert run.data.metrics[f"test/accuracy/{task}"] == pytest.approx(values["accuracy"])
    epochs = client.get_metric_history(run.info.run_id, "val/accuracy/mean")
    # one value per epoch, then the best checkpoint's final validation
    assert len(epochs) == cfg.trainer.max_epochs + 1
    artifacts = [
        f.path
        for folder in client.list_artifacts(run.info.run_id)
        for f in (
            client.list_artifacts(run.info.run_id, folder.path) if folder.is_dir else [folder]
        )
    ]
    assert any(path.endswith("last.ckpt") for path in artifacts), artifacts
    assert (run_dir / "csv" / "metrics.csv").exists()  # the CSV log stays beside it


def test_wandb_logger_is_offline(compose_train):
    """logger=wandb composes to an offline WandbLogger (plus the CSV log); no account needed."""
    cfg = compose_train(["logger=wandb"])
    assert set(cfg.logger) == {"wandb", "csv"}
    assert cfg.logger.wandb._target_ == "lightning.pytorch.loggers.WandbLogger"
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.log_model is False
    assert Path(cfg.logger.wandb.save_dir) == Path(cfg.hydra.runtime.output_dir)


@pytest.mark.skipif(HAS_WANDB, reason="checks the message for a missing wandb package")
def test_missing_wandb_names_the_extra(compose_train):
    with pytest.raises(ConfigError, match=r"logger.wandb needs the wandb package.*--extra wandb"):
        instantiate_loggers(compose_train(["logger=wandb"]))


def test_mlflow_logger_composes_to_a_local_sqlite_store(compose_train):
    cfg = compose_train(["logger=mlflow"])
    assert set(cfg.logger) == {"mlflow", "csv"}
    uri = cfg.logger.mlflow.tracking_uri
    assert uri.startswith("sqlite:///") and uri.endswith("/outputs/mlflow.db")
    assert cfg.logger.mlflow.log_model is True
