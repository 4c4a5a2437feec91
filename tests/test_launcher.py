"""Sweep jobs on GPU slots (GPUs simulated through CUDA_VISIBLE_DEVICES): pinning and packing."""

import os
import time

import pytest

from mtl_celeba.errors import ConfigError
from mtl_celeba.launcher import job_slots, run_on_slots


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
