"""metrics.json's ``timing``: a job's wall time split into set-up, epochs and after-fit."""

from __future__ import annotations

import pytest

from mtl_celeba.run.timing import JobTimer
from mtl_celeba.train import train


def test_summary_splits_the_wall_time():
    timer = JobTimer(started=100.0)
    timer.epoch_starts = [103.0, 110.0, 118.5]
    timer.fit_ended = 126.0
    summary = timer.summary(finished=130.0)
    assert summary == {
        "setup_s": 3.0,
        "epoch_s": [7.0, 8.5, 7.5],
        "after_fit_s": 4.0,
        "fixed_s": 7.0,
    }
    assert summary["fixed_s"] + sum(summary["epoch_s"]) == 130.0 - 100.0


def test_a_job_that_never_trained_has_only_setup():
    assert JobTimer(started=5.0).summary(finished=6.5) == {"setup_s": 1.5, "epoch_s": []}


def test_training_records_its_timing(compose_train, tmp_path):
    results = train(compose_train(["strategy=mtl", "trainer.max_epochs=2"]), tmp_path / "run")
    timing = results["timing"]
    assert len(timing["epoch_s"]) == 2 and all(s > 0 for s in timing["epoch_s"])
    assert timing["setup_s"] > 0 and timing["after_fit_s"] > 0
    total = timing["fixed_s"] + sum(timing["epoch_s"])
    assert total == pytest.approx(results["wall_time_s"], abs=0.05)
