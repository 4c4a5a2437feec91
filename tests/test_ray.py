"""Ray as a second sweep engine (hydra-ray-launcher, the `ray` extra): a local Ray instance on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mtl_celeba.config import CONFIG_DIR, PROJECT_ROOT

pytest.importorskip("ray", reason="the ray extra is not installed (uv sync --extra ray)")
pytest.importorskip(
    "hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed"
)


def test_ray_pool_composes_with_one_gpu_per_job_where_there_are_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=ray_pool"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert launcher.ray.remote.num_gpus == 1 and launcher.ray.remote.max_calls == 1
    assert launcher.ray.init.address is None, "a local Ray instance unless an address is given"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launcher.ray.remote.num_gpus == 0, "no GPU request on a machine without one"


@pytest.mark.slow
def test_two_job_sweep_on_local_ray(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "mtl_celeba.train", "-m",
        "hydra/launcher=ray_pool", "hydra.launcher.ray.init.num_cpus=2",
        f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}",
        "debug=fast", "data.num_images=100", "trainer.enable_progress_bar=false", "seed=0,1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "Ray Launcher is launching 2 jobs" in log
    statuses = [json.loads((sweep / job / "metrics.json").read_text())["status"] for job in "01"]
    assert statuses == ["completed", "completed"]
    assert "automatic_schema_matching" not in log, "no Hydra deprecation warning"
