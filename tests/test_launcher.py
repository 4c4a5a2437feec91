"""Sweep jobs on GPU slots (GPUs simulated through CUDA_VISIBLE_DEVICES): pinning and packing."""

import itertools
import json
import os
import time

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.mtl_celeba_launcher.grids import GridUnionSweeper

from mtl_celeba.errors import ConfigError
from mtl_celeba.sweeps.gpu_pool import completed_run, job_slots, run_on_slots


def report_device(duration: float) -> tuple[str | None, int, float, float]:
    """A job: which GPU it was given, in which process, and when it ran."""
    start = time.monotonic()
    time.sleep(duration)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid(), start, time.monotonic()


def failing_job() -> None:
    raise RuntimeError("boom")


def test_job_slots_from_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert job_slots("auto") == ["2", "3"]
    assert job_slots("auto", jobs_per_gpu=2) == ["2", "2", "3", "3"]
    assert job_slots([0, 1, 5]) == ["0", "1", "5"]


def test_job_slots_without_gpu_use_cpu_jobs(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert job_slots("auto") == [None]
    assert job_slots("auto", cpu_jobs=3) == [None, None, None]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"jobs_per_gpu": 0}, "jobs_per_gpu"),
        ({"cpu_jobs": 0}, "cpu_jobs"),
        ({"gpus": "all"}, "gpus"),
    ],
)
def test_job_slots_bad_settings(kwargs, key):
    kwargs = {"gpus": [0], **kwargs}
    with pytest.raises(ConfigError, match=f"hydra.launcher.{key}"):
        job_slots(**kwargs)


def test_each_job_gets_one_gpu_and_its_own_process():
    slots = job_slots(["0", "1"], jobs_per_gpu=1)
    started = []
    results = run_on_slots(
        report_device, [(0.4,)] * 4, slots, on_start=lambda i, s: started.append((i, s))
    )
    gpus = [gpu for gpu, *_ in results]
    assert sorted(gpus) == ["0", "0", "1", "1"]
    assert len({pid for _, pid, *_ in results}) == 4, "a fresh process for every job"
    assert os.getpid() not in {pid for _, pid, *_ in results}
    assert [i for i, _ in sorted(started)] == [0, 1, 2, 3]
    # never more than one job on a GPU at a time
    for gpu in ("0", "1"):
        spans = sorted((start, end) for g, _, start, end in results if g == gpu)
        assert spans[0][1] <= spans[1][0]


def test_packing_runs_k_jobs_per_gpu_at_once():
    slots = job_slots(["7"], jobs_per_gpu=2)
    results = run_on_slots(report_device, [(0.8,)] * 2, slots)
    (_, _, start_a, end_a), (_, _, start_b, end_b) = results
    assert {gpu for gpu, *_ in results} == {"7"}
    assert max(start_a, start_b) < min(end_a, end_b), "the two jobs overlapped on the one GPU"


def crashing_job() -> None:
    os._exit(3)  # the process dies without raising


def test_failing_job_does_not_stop_the_others():
    results = run_on_slots(pick_job, [("fail",), ("crash",), ("ok",)], [None])
    assert isinstance(results[0], RuntimeError) and "boom" in str(results[0])
    assert isinstance(results[1], Exception)
    assert results[2] == "ok"


def pick_job(kind: str) -> str:
    if kind == "fail":
        failing_job()
    if kind == "crash":
        crashing_job()
    return kind


def test_stagger_spaces_job_starts_and_each_job_is_timed():
    timings = {}
    results = run_on_slots(
        report_device,
        [(0.2,)] * 3,
        [None] * 3,
        on_finish=lambda i, result, timing: timings.setdefault(i, timing),
        stagger_s=0.6,
    )
    assert sorted(timings) == [0, 1, 2]
    starts = [timings[i].started for i in range(3)]
    assert all(later - earlier >= 0.55 for earlier, later in itertools.pairwise(starts))
    assert all(t.slot is None and t.wall_s >= 0.2 for t in timings.values())
    assert [gpu for gpu, *_ in results] == [None, None, None]


def test_negative_stagger_is_a_config_error():
    with pytest.raises(ConfigError, match=r"hydra\.launcher\.stagger_s"):
        run_on_slots(report_device, [(0.0,)], [None], stagger_s=-1)


def write_job(folder, status: str, overrides: list[str]) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"status": status}))
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_completed_run_needs_completed_status_and_the_same_overrides(tmp_path):
    write_job(tmp_path / "0", "completed", ["strategy=mtl", "seed=0"])
    write_job(tmp_path / "1", "failed", ["strategy=dst", "seed=0"])
    write_job(tmp_path / "2", "running", ["strategy=dst", "seed=1"])
    assert completed_run(tmp_path / "0", ["strategy=mtl", "seed=0"])
    assert completed_run(tmp_path / "0", ["seed=0", "strategy=mtl"]), "order does not matter"
    assert not completed_run(tmp_path / "0", ["strategy=dst", "seed=0"]), "the grid changed"
    assert not completed_run(tmp_path / "1", ["strategy=dst", "seed=0"])
    assert not completed_run(tmp_path / "2", ["strategy=dst", "seed=1"])
    assert not completed_run(tmp_path / "3", ["strategy=dst", "seed=1"]), "never started"
    (tmp_path / "0" / ".hydra" / "overrides.yaml").unlink()
    assert not completed_run(tmp_path / "0", ["strategy=mtl", "seed=0"])


class RecordingLauncher:
    """A launcher without job numbers of its own (as Hydra's basic and submitit launchers)."""

    def __init__(self):
        self.calls = []

    def launch(self, job_overrides, initial_job_idx):
        self.calls.append((initial_job_idx, [list(o) for o in job_overrides]))
        return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED) for o in job_overrides]


def test_grids_sweeper_launches_runs_of_consecutive_job_numbers():
    sweeper = GridUnionSweeper()
    sweeper.launcher = RecordingLauncher()
    batch = [(0, ["a=0"]), (1, ["a=1"]), (3, ["a=3"]), (4, ["a=4"]), (7, ["a=7"])]
    returns = sweeper._launch(batch)
    assert sweeper.launcher.calls == [
        (0, [["a=0"], ["a=1"]]),
        (3, [["a=3"], ["a=4"]]),
        (7, [["a=7"]]),
    ]
    assert [r.overrides for r in returns] == [o for _, o in batch]
