"""Concurrent jobs on one data root: one builds, the others wait and reuse; dead builders never block."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mtl_celeba.config import PROJECT_ROOT
from mtl_celeba.data import build_lock
from mtl_celeba.data.cache import load_or_build_cache
from mtl_celeba.data.celeba import load_celeba
from mtl_celeba.data.synthetic import ensure_synthetic_celeba
from mtl_celeba.errors import DataError

NUM_IMAGES = 60

#: One job: say it is ready, wait for the start signal, then generate the synthetic CelebA and its train cache.
JOB = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mtl_celeba.data.cache import load_or_build_cache
    from mtl_celeba.data.celeba import load_celeba
    from mtl_celeba.data.synthetic import ensure_synthetic_celeba

    root, go, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    folder = ensure_synthetic_celeba(root, {num_images}, seed=0)
    index = load_celeba(root, ["Smiling"], check_images=False)
    ids = list(index.split("train")[0])
    images = load_or_build_cache(root / ".mtl_cache", "train", folder / "img_align_celeba", ids, 32, workers=1)
    print(images.filename)
    """
)


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def single_process_build(root: Path) -> tuple[Path, Path]:
    folder = ensure_synthetic_celeba(root, NUM_IMAGES, seed=0)
    ids = list(load_celeba(root, ["Smiling"], check_images=False).split("train")[0])
    images = load_or_build_cache(
        root / ".mtl_cache", "train", folder / "img_align_celeba", ids, 32, workers=1
    )
    return folder, Path(images.filename)


def test_three_jobs_started_together_share_one_build(tmp_path: Path) -> None:
    root, go = tmp_path / "shared", tmp_path / "go"
    script = JOB.format(num_images=NUM_IMAGES)
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(root), str(go), str(tmp_path / f"ready{i}")],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("ready*"))) < 3:  # every process has imported: start together
        assert time.monotonic() < deadline and all(job.poll() is None for job in jobs)
        time.sleep(0.05)
    go.touch()
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    caches = {out.strip() for out, _ in outputs}
    assert len(caches) == 1, "every job memory-maps the same cache file"
    log = "".join(err for _, err in outputs)
    assert "Waiting for another job" in log and str(root / "celeba.lock") in log

    reference, reference_cache = single_process_build(tmp_path / "single")
    assert files_of(root / "celeba") == files_of(reference), "byte-identical to one process's build"
    assert Path(caches.pop()).read_bytes() == reference_cache.read_bytes()
    leftovers = [p.name for p in [*root.iterdir(), *(root / ".mtl_cache").iterdir()]]
    assert not [name for name in leftovers if "partial" in name], leftovers


def test_a_killed_builder_does_not_block_the_next(tmp_path: Path) -> None:
    root = tmp_path / "root"
    builder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from mtl_celeba.data.synthetic import ensure_synthetic_celeba; "
            "ensure_synthetic_celeba(sys.argv[1], 3000, seed=0)",
            str(root),
        ],
        cwd=PROJECT_ROOT,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not list(root.glob("celeba.partial-*/img_align_celeba/*.jpg")):
        assert time.monotonic() < deadline and builder.poll() is None, "the builder never started"
        time.sleep(0.05)
    os.killpg(builder.pid, signal.SIGKILL)  # the builder and its rendering pool
    builder.wait()
    assert list(root.glob("celeba.partial-*")), "the killed builder left its partial folder"

    started = time.monotonic()
    folder = ensure_synthetic_celeba(root, NUM_IMAGES, seed=0)
    assert time.monotonic() - started < 60
    assert (folder / "synthetic.json").exists()
    assert not list(root.glob("celeba.partial-*")), "the dead builder's partial folder is removed"


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mtl_celeba.data import build_lock
    build_lock.HEARTBEAT_S = 0.1
    target, seconds, beat = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "beat"
    if beat:
        with build_lock.build_lock(target, "a test build"):
            print("held", flush=True)
            time.sleep(seconds)
    else:  # a hung holder: the lock is held but no heartbeat is ever written
        from filelock import FileLock
        with FileLock(target.with_name(target.name + ".lock")):
            print("held", flush=True)
            time.sleep(seconds)
    """
)


def hold_lock(target: Path, seconds: float, beat: bool) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target), str(seconds), "beat" if beat else "hung"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_hung_lock_without_heartbeat_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(build_lock, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(build_lock, "STALE_AFTER_S", 1.0)
    holder = hold_lock(tmp_path / "celeba", 120, beat=False)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            folder = ensure_synthetic_celeba(tmp_path, NUM_IMAGES, seed=0)
        assert time.monotonic() - started < 60
        assert holder.poll() is None, "the lock was still held while this job built"
    finally:
        holder.kill()
        holder.wait()
    assert (folder / "synthetic.json").exists()
    assert "looks stale" in caplog.text and str(tmp_path / "celeba.lock") in caplog.text


def test_a_live_builder_with_heartbeat_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(build_lock, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(build_lock, "STALE_AFTER_S", 0.5)
    target = tmp_path / "thing"
    holder = hold_lock(target, 2.0, beat=True)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), build_lock.build_lock(target, "a test build"):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 1.0, "the waiter took the lock while its live holder still had it"
    assert "Waiting for another job" in caplog.text and "looks stale" not in caplog.text


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` unwritable; as root (which ignores permissions) inject the OS error instead."""
    folder.chmod(0o555)
    if os.geteuid() == 0:

        class ReadOnlyLock:
            def __init__(self, path: Path) -> None:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        monkeypatch.setattr(build_lock, "FileLock", ReadOnlyLock)


def test_read_only_data_root_names_the_key_to_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    folder, _ = single_process_build(tmp_path / "made")
    root.mkdir()
    (root / "celeba").symlink_to(folder)  # a finished dataset in a folder this job cannot write
    ids = list(load_celeba(root, ["Smiling"], check_images=False).split("train")[0])
    try:
        read_only(monkeypatch, root)
        with pytest.raises(DataError, match=r"image cache .*set data\.cache_dir to a writable"):
            load_or_build_cache(root / ".mtl_cache", "train", folder / "img_align_celeba", ids, 16)
        empty = tmp_path / "empty"
        empty.mkdir()
        read_only(monkeypatch, empty)
        with pytest.raises(DataError, match=r"synthetic CelebA .*set data\.root to a writable"):
            ensure_synthetic_celeba(empty, NUM_IMAGES, seed=0)
    finally:
        root.chmod(0o755)
        if (tmp_path / "empty").exists():
            (tmp_path / "empty").chmod(0o755)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores a read-only folder's permissions")
def test_mtl_train_on_a_read_only_root_prints_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o555)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mtl_celeba.train", f"data.root={root}", "debug=fast"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        root.chmod(0o755)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "error: cannot write the synthetic CelebA" in done.stderr and "data.root" in done.stderr


def test_builds_are_reused_without_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A finished dataset and cache are read without touching the lock (read-only roots work)."""
    folder, cache = single_process_build(tmp_path)
    monkeypatch.setattr(build_lock, "FileLock", None)  # any use of the lock would fail
    assert ensure_synthetic_celeba(tmp_path, NUM_IMAGES, seed=0) == folder
    ids = list(load_celeba(tmp_path, ["Smiling"], check_images=False).split("train")[0])
    images = load_or_build_cache(
        tmp_path / ".mtl_cache", "train", folder / "img_align_celeba", ids, 32
    )
    assert np.array_equal(images, np.load(cache))


@pytest.mark.slow
def test_four_job_sweep_on_an_empty_data_root_completes_every_job(tmp_path: Path) -> None:
    """The issue's failure: every job of the first wave generating the same data at once."""
    sweep, root = tmp_path / "sweep", tmp_path / "empty"
    command = [
        sys.executable, "-m", "mtl_celeba.train", "-m",
        "hydra/launcher=gpu_pool", "hydra.launcher.cpu_jobs=2",
        f"hydra.sweep.dir={sweep}", f"data.root={root}", "data.image_size=32",
        "debug=fast", "data.num_images=200", "trainer.enable_progress_bar=false",
        "strategy=mtl,dst", "seed=0,1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    statuses = [
        json.loads((sweep / str(job) / "metrics.json").read_text())["status"] for job in range(4)
    ]
    assert statuses == ["completed"] * 4
    assert not [path for path in root.rglob("*partial*")], "no partial build left behind"
