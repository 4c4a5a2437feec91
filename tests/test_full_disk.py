"""A full disk loses nothing and lies about nothing (issue 13 item 9).

Checkpoints are complete or absent, the run ends with one line naming the disk and the
fix, and ``metrics.json`` says ``failed`` even when no new file can be written.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from mtl_celeba.config import PROJECT_ROOT
from mtl_celeba.errors import DiskFullError
from mtl_celeba.run import checkpoint_writer as checkpoint_io
from mtl_celeba.run import results
from mtl_celeba.run.results import write_results


@pytest.fixture
def disk_fills_during_checkpoints(monkeypatch):
    """Checkpoint writes stop half-way with ENOSPC, as on a full disk."""
    real_atomic_open = checkpoint_io.atomic_open

    @contextmanager
    def half_written(path, mode="w", **kwargs):
        with real_atomic_open(path, mode, **kwargs) as handle:

            class Full:
                def write(self, data):
                    handle.write(bytes(data)[: len(data) // 2])
                    raise OSError(errno.ENOSPC, "No space left on device")

            yield Full()

    monkeypatch.setattr(checkpoint_io, "atomic_open", half_written)


def test_checkpoint_save_is_atomic_and_one_line(tmp_path, disk_fills_during_checkpoints):
    target = tmp_path / "run" / "checkpoints" / "epoch000-acc0.7140.ckpt"
    with pytest.raises(DiskFullError) as caught:
        checkpoint_io.AtomicCheckpointIO().save_checkpoint({"epoch": 0}, target)
    message = str(caught.value)
    assert "\n" not in message and str(target) in message
    assert "free space or point hydra.run.dir elsewhere" in message
    assert list(target.parent.iterdir()) == [], (
        "neither a truncated checkpoint nor a temporary file"
    )


def test_checkpoint_save_writes_a_loadable_file(tmp_path):
    import torch

    target = tmp_path / "last.ckpt"
    checkpoint_io.AtomicCheckpointIO().save_checkpoint({"epoch": 3, "w": torch.ones(2)}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_final_status_is_recorded_when_no_new_file_fits(tmp_path, monkeypatch):
    write_results(tmp_path, {"status": "running", "run_dir": str(tmp_path), "config": {}})

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "write_json_atomic", full)
    failed = {"status": "failed", "error": "DiskFullError: ...", "run_dir": str(tmp_path)}
    write_results(tmp_path, {**failed, "config": {"backbone": "resnet18"}})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "failed" and saved["config"] == {"backbone": "resnet18"}
    # too big for the space the file holds: the status, error and run folder alone
    write_results(tmp_path, {**failed, "config": {"big": "x" * 20000}})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "failed" and "config" not in saved
    # other write errors are not hidden
    monkeypatch.setattr(
        results,
        "write_json_atomic",
        lambda p, d: (_ for _ in ()).throw(PermissionError(13, "denied")),
    )
    with pytest.raises(PermissionError):
        write_results(tmp_path, failed)


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["foreground", "background"])
def test_training_on_a_full_disk_fails_cleanly(
    compose_train, tmp_path, disk_fills_during_checkpoints, writer
):
    from test_async_checkpoints import BACKGROUND_CHECKPOINTS

    from mtl_celeba.train import train

    run_dir = tmp_path / "run"
    overrides = ["strategy=mtl", "trainer.max_epochs=1"]
    if writer == "background":  # the GPU configs' writer: the error surfaces after the write
        overrides.append(BACKGROUND_CHECKPOINTS)
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(DiskFullError, match=r"free space or point hydra\.run\.dir elsewhere"):
        train(compose_train(overrides, run_dir=run_dir), run_dir)
    # Lightning skips restoring it when its teardown raises; train() puts it back
    assert signal.getsignal(signal.SIGTERM) is sigterm_handler
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["status"] == "failed" and saved["error"].startswith("DiskFullError: no space left")
    assert list((run_dir / "checkpoints").iterdir()) == []


@contextmanager
def small_tmpfs(path: Path, size: str):
    """Mount a tmpfs of ``size`` at ``path`` (root only; skips the test where not allowed)."""
    path.mkdir(parents=True)
    if shutil.which("mount") is None or sys.platform != "linux":
        pytest.skip("needs Linux mount")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_run_folder_on_a_60mb_filesystem(synthetic_root, tmp_path):
    """The issue's setting: hydra.run.dir on a 60 MB disk, a ResNet18 checkpoint of ~140 MB."""
    with small_tmpfs(tmp_path / "disk", "60m") as disk:
        run_dir = disk / "run"
        command = [
            sys.executable, "-m", "mtl_celeba.train",
            f"data.root={synthetic_root}", "data.num_images=400", "data.image_size=32",
            f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", "strategy=mtl",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 2, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert errors == [done.stderr.strip().splitlines()[-1]]
        assert f"no space left on {disk}" in errors[0]
        assert "free space or point hydra.run.dir elsewhere" in errors[0]
        saved = json.loads((run_dir / "metrics.json").read_text())
        assert saved["status"] == "failed" and "DiskFullError" in saved["error"]
        assert list((run_dir / "checkpoints").iterdir()) == [], "no truncated checkpoint"


def test_disk_full_from_the_start_is_one_line(compose_train, tmp_path, monkeypatch):
    from mtl_celeba.train import train

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir=run_dir)
    monkeypatch.setattr(results, "write_json_atomic", full)
    with pytest.raises(DiskFullError) as caught:
        train(cfg, run_dir)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "no space left on" in str(caught.value) and str(run_dir) in str(caught.value)
