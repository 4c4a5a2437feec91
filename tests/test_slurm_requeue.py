"""SLURM requeue: the launcher config, submitit's checkpoint hook, and a job signalled mid-run
on submitit's local executor that is requeued and ends with an uninterrupted run's metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra_plugins.mtl_celeba_launcher.requeue import RequeueLocalLauncher, RequeueSlurmLauncher
from test_resume import tiny_args  # the same tiny DST job as the SIGKILL-and-resume test

from mtl_celeba.cli.hydra_app import compose
from mtl_celeba.config import PROJECT_ROOT
from mtl_celeba.run import lifecycle
from mtl_celeba.run.lifecycle import RunRecord, note_requeue
from mtl_celeba.sweeps.gpu_pool import completed_run
from mtl_celeba.sweeps.requeue import cluster_plugins, with_resume_auto


@pytest.fixture
def no_requeue():
    """Forget a requeue noted by a test (the flag lives for the process)."""
    yield
    lifecycle._requeue_reason = None


def test_slurm_launcher_asks_for_a_signal_and_requeues():
    launcher = compose("train", ["hydra/launcher=slurm"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.mtl_celeba_launcher.requeue.RequeueSlurmLauncher"
    assert launcher.max_num_timeout > 0
    assert 0 < launcher.signal_delay_s < launcher.timeout_min * 60
    local = compose("train", ["hydra/launcher=slurm_local"]).hydra.launcher
    assert local._target_ == "hydra_plugins.mtl_celeba_launcher.requeue.RequeueLocalLauncher"


def test_checkpoint_hook_resubmits_the_job_with_resume_auto(no_requeue):
    launcher = RequeueSlurmLauncher()
    delayed = launcher.checkpoint(["seed=1", "resume=null"], "hydra.sweep.dir", 3, "job_3", {})
    assert delayed.function is launcher
    assert delayed.args == (["seed=1", "resume=auto"], "hydra.sweep.dir", 3, "job_3", {})
    assert lifecycle._requeue_reason is not None
    assert with_resume_auto(["resume=auto", "a=1"]) == ["a=1", "resume=auto"]  # once
    local = RequeueLocalLauncher()
    assert local.checkpoint([], "k", 0, "j", {}).function is local


def test_a_requeued_run_is_recorded_as_requeued_with_submitits_exit(tmp_path, no_requeue):
    with pytest.raises(SystemExit) as stopped, RunRecord(tmp_path, "h"):
        note_requeue("timed out")
        raise SystemExit(3)  # what submitit's handler raises after requeuing
    assert stopped.value.code == 3
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "requeued" and "last.ckpt" in saved["error"]


def test_a_sweep_rerun_skips_a_completed_requeued_job(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "completed"}))
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=1\n- resume=auto\n")
    assert completed_run(tmp_path, ["seed=1"])
    assert not completed_run(tmp_path, ["seed=2"])


def test_lightning_auto_requeue_is_off_in_submitit_slurm_jobs(monkeypatch):
    assert cluster_plugins() == [] or os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "mtl")
    (environment,) = cluster_plugins()
    assert environment.auto_requeue is False
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert cluster_plugins() == []


def submitit_task_pids(sweep: Path) -> list[int]:
    """The processes running a submitit job of ``sweep`` (``python -m submitit.core._submit``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in words and any(str(sweep).encode() in w for w in words):
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job's process in /proc")
def test_a_job_signalled_in_its_second_epoch_is_requeued_and_matches_an_uninterrupted_run(
    synthetic_root, tmp_path
):
    args = tiny_args(synthetic_root, tmp_path)
    train = [sys.executable, "-m", "mtl_celeba.train"]
    reference_dir = tmp_path / "reference"
    done = subprocess.run(
        [*train, *args, f"hydra.run.dir={reference_dir}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference = json.loads((reference_dir / "metrics.json").read_text())

    # a sweeper that resumes nothing by itself: only the hook's resume=auto can
    sweep = tmp_path / "sweep"
    command = [
        *train,
        "-m",
        *args,
        "hydra/launcher=slurm_local",
        "hydra.sweeper.skip_completed=false",
        f"hydra.sweep.dir={sweep}",
    ]
    job = sweep / "0"
    with (tmp_path / "out.txt").open("w") as out, (tmp_path / "err.txt").open("w") as err:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=out, stderr=err)
        deadline = time.monotonic() + 1800
        while not (job / "checkpoints" / "last.ckpt").is_file():
            assert process.poll() is None and time.monotonic() < deadline, "the job ended early"
            time.sleep(0.05)
        (task,) = submitit_task_pids(sweep)
        os.kill(task, signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit
        returncode = process.wait(timeout=1800)
    assert returncode == 0, (tmp_path / "err.txt").read_text()[-3000:]

    logs = "\n".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs
    assert "requeued: the next attempt resumes from" in logs
    assert f"resume=auto: resuming {job} from last.ckpt (1 of 2 epochs done)" in logs
    assert "resume=auto" in (job / ".hydra" / "overrides.yaml").read_text()
    resumed = json.loads((job / "metrics.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["resumed_from"] == str(job / "checkpoints" / "last.ckpt")
    for key in ("test", "val", "best_epoch", "epochs_trained", "schedule"):
        assert resumed[key] == reference[key], key
    state = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1, "the requeued attempt trained the second epoch"
