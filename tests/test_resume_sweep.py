"""Resumable sweeps: SIGKILL a sweep's launcher mid-way, rerun the same command, only the missing jobs run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mtl_celeba.config import PROJECT_ROOT


def statuses(sweep: Path) -> dict[str, str]:
    found = {}
    for metrics in sweep.glob("*/metrics.json"):
        try:
            found[metrics.parent.name] = json.loads(metrics.read_text())["status"]
        except (OSError, ValueError):
            found[metrics.parent.name] = "unreadable"
    return found


@pytest.mark.slow
def test_killed_sweep_reruns_exactly_the_missing_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "mtl_celeba.train", "-m",
        "hydra/launcher=gpu_pool", "hydra.launcher.cpu_jobs=2", "hydra.launcher.skip_completed=true",
        f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}",  # an empty data root
        "data.num_images=200", "data.image_size=32", "data.cache_workers=1",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "model.head_hidden=[16]",
        "strategy=mtl,dst", "seed=0,1",
    ]  # fmt: skip
    first = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 500
    while "completed" not in statuses(sweep).values():
        assert first.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "no job completed in time"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and its running jobs
    first.wait()
    before = statuses(sweep)
    completed = sorted(job for job, status in before.items() if status == "completed")
    assert 1 <= len(completed) < 4, before
    kept = {job: (sweep / job / "metrics.json").read_bytes() for job in completed}

    second = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert f"skipping {len(completed)} completed jobs" in log
    started = sorted(re.findall(r"#(\d+) on CPU", log))
    assert started == sorted(set(map(str, range(4))) - set(completed)), (
        "exactly the missing jobs ran"
    )
    assert statuses(sweep) == dict.fromkeys(map(str, range(4)), "completed")
    assert all((sweep / job / "metrics.json").read_bytes() == kept[job] for job in completed)
    assert re.search(r"#\d+ completed on CPU: started \S+ \S+, wall time [\d.]+ s", log)

    report = subprocess.run(
        [sys.executable, "-m", "mtl_celeba.report", str(sweep)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    table = pd.read_csv(sweep / "report.csv")
    assert sorted(table["strategy"]) == ["dst", "mtl"]
    assert list(table["runs"]) == [2, 2], "every configuration counted once per seed"
    assert "runs with seed" not in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_killed_plain_sweep_reruns_only_the_missing_work(synthetic_root: Path, tmp_path: Path):
    """A plain ``-m`` sweep (the default sweeper, the basic launcher) killed in its second job's
    second (last) epoch: the rerun skips the completed job and resumes the killed one from last.ckpt."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "mtl_celeba.train", "-m", f"hydra.sweep.dir={sweep}",
        f"data.root={synthetic_root}", "data.num_images=400", f"data.cache_dir={tmp_path / 'c'}",
        "data.image_size=32", "data.batch_size=32", "data.cache_workers=1",
        "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "model.head_hidden=[16]", "strategy=mtl",
        "seed=0,1",
    ]  # fmt: skip
    logs = tmp_path / "first.txt"
    with logs.open("w") as output:
        first = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=output, stderr=output)
        deadline = time.monotonic() + 2400  # a shared 2-core machine can be very slow
        while not (sweep / "1" / "checkpoints" / "last.ckpt").is_file():
            assert first.poll() is None, logs.read_text()[-3000:]
            assert time.monotonic() < deadline, "job 1 wrote no last.ckpt in time"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert statuses(sweep) == {"0": "completed", "1": "running"}
    kept = (sweep / "0" / "metrics.json").read_bytes()

    second = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=2400)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "skipping 1 completed jobs" in log
    assert "sweep rerun: resuming" in log and "from last.ckpt" in log
    assert statuses(sweep) == {"0": "completed", "1": "completed"}
    assert (sweep / "0" / "metrics.json").read_bytes() == kept, "the completed job was kept"
    resumed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert resumed["resumed_from"] == str(sweep / "1" / "checkpoints" / "last.ckpt")
    assert resumed["epochs_trained"] == 2
    names = [path.name for path in (sweep / "1" / "checkpoints").iterdir()]
    assert not [name for name in names if "-v" in name], names  # no duplicate best checkpoints
