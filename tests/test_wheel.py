"""The wheel runs on its own: built, installed into a fresh environment outside the repo, used there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mtl_celeba.config import PROJECT_ROOT

FAST = ["debug=fast", "data.num_images=100", "trainer.enable_progress_bar=false"]


def run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment outside the repo with only the built wheel of mtl-celeba.

    Its third-party packages come from the project's environment through a path entry (no
    download); that environment's editable mtl_celeba is not visible, as its .pth files are
    not processed from a path entry.
    """
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is needed to build the wheel")
    base = tmp_path_factory.mktemp("wheel")
    built = run([uv, "build", "--wheel", "--out-dir", str(base / "dist")], cwd=PROJECT_ROOT)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (base / "dist").glob("mtl_celeba-*.whl")

    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base
        ).stdout.strip()
    )
    (site / "project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = run([uv, "pip", "install", "--no-deps", "--python", str(python), str(wheel)], cwd=base)
    assert done.returncode == 0, done.stderr[-2000:]
    return venv


@pytest.mark.slow
def test_the_installed_wheel_is_the_one_imported(installed: Path, tmp_path: Path) -> None:
    python = installed / "bin" / "python"
    done = run(
        [
            str(python),
            "-c",
            "import mtl_celeba, mtl_celeba.config as c, hydra_plugins.mtl_celeba_launcher.gpu_pool as g;"
            "print(mtl_celeba.__file__); print(g.__file__); print(c.CONFIG_DIR); print(c.PROJECT_ROOT)",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    package, plugin, config_dir, root = done.stdout.split()
    assert Path(package).is_relative_to(installed) and Path(plugin).is_relative_to(installed)
    assert Path(config_dir) == Path(package).parent / "conf"
    assert Path(root) == tmp_path.resolve(), "outputs and data go under the working directory"


@pytest.mark.slow
def test_mtl_train_and_a_gpu_pool_sweep_run_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    train = str(installed / "bin" / "mtl-train")
    single = run([train, *FAST], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    (metrics,) = (tmp_path / "outputs" / "train" / "runs").glob("*/metrics.json")
    assert json.loads(metrics.read_text())["status"] == "completed"
    assert (tmp_path / "data" / "synthetic-n100-s0-noise0.0" / "celeba" / "synthetic.json").exists()

    sweep = run([train, "-m", "hydra/launcher=gpu_pool", *FAST, "seed=0,1"], cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    jobs = sorted((tmp_path / "outputs" / "train" / "multiruns").glob("*/*/metrics.json"))
    assert [json.loads(job.read_text())["status"] for job in jobs] == ["completed"] * 2
    assert "on CPU" in sweep.stdout + sweep.stderr
