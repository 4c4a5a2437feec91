"""``resume=auto``: which run it continues, and a real SIGKILL mid-training then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mtl_celeba.cli.hydra_app import compose, preflight
from mtl_celeba.cli.validate import validate_train_config
from mtl_celeba.config import PROJECT_ROOT
from mtl_celeba.run.resume import auto_resume_checkpoint, config_hash, find_resumable_run


def fake_run(runs: Path, name: str, cfg_hash: str, status: str, checkpoint: bool = True) -> Path:
    run = runs / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"status": status, "config_hash": cfg_hash}))
    if checkpoint:
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    return run


def test_finds_the_latest_unfinished_run_of_the_same_configuration(tmp_path):
    runs = tmp_path / "runs"
    assert find_resumable_run(runs, "h") is None  # no folder yet
    fake_run(runs, "a", "h", "running")
    newest = fake_run(runs, "b", "h", "failed")
    fake_run(runs, "c", "h", "completed")  # finished: nothing to resume
    fake_run(runs, "d", "other", "running")  # another configuration
    fake_run(runs, "e", "h", "running", checkpoint=False)  # died before its first epoch ended
    os.utime(runs / "a" / "checkpoints" / "last.ckpt", (1, 1))
    assert find_resumable_run(runs, "h") == newest


def test_same_configuration_ignores_only_where_to_start_from():
    base = compose("train", ["seed=1"])
    assert config_hash(base) == config_hash(compose("train", ["seed=1", "resume=auto"]))
    assert config_hash(base) == config_hash(compose("train", ["seed=1", "ckpt_path=/x.ckpt"]))
    assert config_hash(base) == config_hash(compose("train", ["seed=1", "hydra.run.dir=/x"]))
    assert config_hash(base) != config_hash(compose("train", ["seed=2"]))
    assert config_hash(base) != config_hash(compose("train", ["seed=1", "trainer.max_epochs=5"]))


def test_preflight_points_hydra_at_the_run_to_continue(tmp_path, capsys):
    overrides = [f"paths.root_dir={tmp_path}", "resume=auto"]
    cfg = compose("train", overrides)
    runs = tmp_path / "outputs" / "train" / "runs"
    assert preflight("train", overrides, validate_train_config) == []
    assert "no unfinished run of this configuration" in capsys.readouterr().out
    run = fake_run(runs, "2026-01-01_00-00-00", config_hash(cfg), "running")
    assert preflight("train", overrides, validate_train_config) == [f"hydra.run.dir='{run}'"]
    # an explicit folder, a sweep or an explicit checkpoint: no search
    assert preflight("train", [*overrides, f"hydra.run.dir={run}"], validate_train_config) == []
    assert preflight("train", [*overrides, "-m", "seed=0,1"], validate_train_config) == []
    assert preflight("train", [*overrides, "ckpt_path=/x.ckpt"], validate_train_config) == []


def test_auto_resume_inside_the_run_folder(tmp_path):
    cfg = OmegaConf.create({"seed": 0, "resume": "auto", "ckpt_path": None})
    run = fake_run(tmp_path, "run", config_hash(cfg), "running")
    assert auto_resume_checkpoint(cfg, run) == run / "checkpoints" / "last.ckpt"
    assert auto_resume_checkpoint(OmegaConf.merge(cfg, {"resume": None}), run) is None
    assert auto_resume_checkpoint(OmegaConf.merge(cfg, {"seed": 1}), run) is None
    (run / "metrics.json").write_text(
        json.dumps({"status": "completed", "config_hash": config_hash(cfg)})
    )
    assert auto_resume_checkpoint(cfg, run) is None


def tiny_args(synthetic_root: Path, tmp_path: Path) -> list[str]:
    """The overrides of a 2-epoch DST run on the tiny synthetic data (also the SLURM requeue
    test's job)."""
    return [
        f"data.root={synthetic_root}",
        "data.num_images=400",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.image_size=32",
        "data.batch_size=32",
        "data.eval_batch_size=128",
        "data.cache_workers=1",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "model.head_hidden=[16]",
        "strategy=dst",
        "seed=1",
    ]


def tiny_train_command(synthetic_root: Path, tmp_path: Path) -> list[str]:
    """``python -m mtl_celeba.train`` for a 2-epoch DST run on the tiny synthetic data."""
    return [sys.executable, "-m", "mtl_celeba.train", *tiny_args(synthetic_root, tmp_path)]


def signal_after_first_epoch(
    command: list[str], runs: Path, signum: signal.Signals, logs: Path
) -> tuple[int, str, str]:
    """Run ``command``, send ``signum`` once its first epoch has written last.ckpt (the second
    epoch starts); its exit status, stdout and stderr (through files: a full pipe would stall
    the run while nothing reads it)."""
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=stdout, stderr=stderr)
        deadline = time.monotonic() + 1800
        while not list(runs.glob("*/checkpoints/last.ckpt")):
            assert process.poll() is None and time.monotonic() < deadline, "the run ended early"
            time.sleep(0.05)
        process.send_signal(signum)
        returncode = process.wait(timeout=600)
    return returncode, out.read_text(), err.read_text()


@pytest.mark.slow
def test_sigkill_in_the_second_epoch_then_resume_auto_matches_an_uninterrupted_run(
    synthetic_root, tmp_path
):
    command = tiny_train_command(synthetic_root, tmp_path)

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*command, *extra], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1800
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    reference_dir = tmp_path / "reference"
    run(f"hydra.run.dir={reference_dir}")
    reference = json.loads((reference_dir / "metrics.json").read_text())

    # the same configuration with resume=auto; its runs go to ROOT/outputs/train/runs/<time>
    auto = [f"paths.root_dir={tmp_path / 'project'}", "resume=auto"]
    runs = tmp_path / "project" / "outputs" / "train" / "runs"
    _, first_output, _ = signal_after_first_epoch([*command, *auto], runs, signal.SIGKILL, tmp_path)
    assert "resume=auto: no unfinished run of this configuration" in first_output
    (killed,) = runs.iterdir()
    assert json.loads((killed / "metrics.json").read_text())["status"] == "running"
    state = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0, "killed during the second epoch"

    done = run(*auto)
    assert f"resume=auto: resuming {killed} from last.ckpt (1 of 2 epochs done)" in done.stdout
    assert list(runs.iterdir()) == [killed], "the run continues in its own folder"
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["resumed_from"] == str(killed / "checkpoints" / "last.ckpt")
    for key in ("test", "val", "best_epoch", "epochs_trained", "schedule"):
        assert resumed[key] == reference[key], key
    assert (killed / "dst_history.csv").read_text() == (
        reference_dir / "dst_history.csv"
    ).read_text()
    leftovers = [p.name for p in (killed / "checkpoints").iterdir() if not p.name.endswith(".ckpt")]
    assert leftovers == [], "no temporary checkpoint files are left"
    # TensorBoard: the killed attempt's events moved into the resumed one's, none drawn twice;
    # from the checkpoint's step on, every point of the uninterrupted run (before it, what
    # SIGKILL caught unwritten, around the checkpoint's save, is lost with the process)
    # (Lightning itself logs `epoch` beside the train and the val metrics: twice a step)
    points = Counter(tensorboard_points(killed))
    expected = Counter(tensorboard_points(reference_dir))
    assert all(count <= expected[point] for point, count in points.items()), "none twice"
    resume_step = state["global_step"]
    later = {point: count for point, count in expected.items() if point[1] >= resume_step}
    assert all(points[point] == count for point, count in later.items())
    assert any(step < resume_step for _, step in points), "the killed attempt's events were kept"
    assert len(list((killed / "tensorboard").glob("events.out.tfevents.*"))) == len(
        list((reference_dir / "tensorboard").glob("events.out.tfevents.*"))
    ), "no extra event file"
    log = (killed / "train.log").read_text()
    assert log.count("resumed: this attempt continues the one logged above") == 1


def tensorboard_points(run_dir: Path) -> list[tuple[str, int]]:
    """Every (tag, step) of the scalars in a run's TensorBoard event files, sorted."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    points = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            points += [(value.tag, event.step) for value in event.summary.value]
    return sorted(points)


@pytest.mark.slow
def test_sigterm_stops_the_run_with_status_143_and_a_failed_metrics_json(synthetic_root, tmp_path):
    """A scheduler's SIGTERM (preemption, time limit) must not look like a finished job:
    Lightning raises a SystemExit without a code, which would exit 0."""
    runs = tmp_path / "project" / "outputs" / "train" / "runs"
    command = [
        *tiny_train_command(synthetic_root, tmp_path),
        f"paths.root_dir={tmp_path / 'project'}",
    ]
    returncode, _, stderr = signal_after_first_epoch(command, runs, signal.SIGTERM, tmp_path)
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    (stopped,) = runs.iterdir()
    saved = json.loads((stopped / "metrics.json").read_text())
    assert saved["status"] == "failed" and "SIGTERM" in saved["error"]
    assert (stopped / "checkpoints" / "last.ckpt").is_file(), "resume=auto can continue it"


def test_ctrl_c_is_recorded_as_interrupted_with_exit_130_and_how_to_resume(tmp_path, caplog):
    from mtl_celeba.run.lifecycle import RunRecord

    def lightning_style_exit() -> None:  # what Lightning raises after a Ctrl-C in fit
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    for name, work in (("plain", lambda: (_ for _ in ()).throw(KeyboardInterrupt)),
                       ("lightning", lightning_style_exit)):  # fmt: skip
        run_dir = tmp_path / name
        run_dir.mkdir()
        with pytest.raises(SystemExit) as caught, RunRecord(run_dir, "h"):
            work()
        assert caught.value.code == 130, name
        saved = json.loads((run_dir / "metrics.json").read_text())
        assert saved["status"] == "interrupted" and "Ctrl-C" in saved["error"], name
        assert f"Interrupted: {run_dir} keeps" in caplog.text and "resume=auto" in caplog.text
        caplog.clear()
    # an interrupted run is one resume=auto continues
    (tmp_path / "plain" / "checkpoints").mkdir()
    (tmp_path / "plain" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert find_resumable_run(tmp_path, "h") == tmp_path / "plain"


def test_a_sweep_job_rerun_resumes_only_where_the_sweeper_skips_completed_jobs(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from mtl_celeba.config import CONFIG_DIR

    cfg = OmegaConf.create({"seed": 0, "resume": None, "ckpt_path": None})
    run = fake_run(tmp_path, "0", config_hash(cfg), "running")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            for skip, expected in ((True, run / "checkpoints" / "last.ckpt"), (False, None)):
                hydra_cfg = hydra_compose(
                    "train",
                    ["hydra.mode=MULTIRUN", f"hydra.sweeper.skip_completed={skip}"],
                    return_hydra_config=True,
                )
                HydraConfig.instance().set_config(hydra_cfg)
                assert auto_resume_checkpoint(cfg, run) == expected, skip
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
    assert auto_resume_checkpoint(cfg, run) is None, "a single run resumes only with resume=auto"


def test_starting_over_removes_the_earlier_attempts_files(tmp_path):
    from mtl_celeba.run.resume import clear_earlier_attempt

    run = fake_run(tmp_path, "0", "h", "failed")
    (run / "checkpoints" / "epoch001-acc0.5.ckpt").write_bytes(b"x")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    (run / "curves.png").write_bytes(b"x")
    (run / ".hydra").mkdir()
    assert clear_earlier_attempt(run) == ["checkpoints", "tensorboard", "curves.png"]
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "metrics.json"]
