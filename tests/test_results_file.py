"""One reader of ``metrics.json`` (``results.read_results``) for every module that reads it.

The report, the sweep resumer, ``resume=auto`` and ``mtl-bench --sweep`` must agree on what a
readable results file is; each used to parse the file with its own ``json.loads``.
"""

from __future__ import annotations

import json

import pytest

from mtl_celeba.bench import sweep as sweep_bench
from mtl_celeba.report import runs as report
from mtl_celeba.run import resume as checkpoints
from mtl_celeba.run.layout import RESULTS_FILE
from mtl_celeba.run.results import read_results, write_results
from mtl_celeba.sweeps import gpu_pool as launcher


def test_read_results_returns_what_write_results_wrote(tmp_path):
    write_results(tmp_path, {"status": "completed", "test": {"per_task": {}}})
    assert read_results(tmp_path) == {
        "schema_version": 1,
        "status": "completed",
        "test": {"per_task": {}},
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [(None, FileNotFoundError), ("[1, 2]", ValueError), ('{"status": "comp', ValueError)],
    ids=["missing", "not-an-object", "cut"],
)
def test_read_results_refuses_what_is_not_a_results_file(tmp_path, text, error):
    if text is not None:
        (tmp_path / RESULTS_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(error):
        read_results(tmp_path)


def test_every_reader_treats_a_non_object_file_as_unreadable(tmp_path):
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n", encoding="utf-8")
    (job / RESULTS_FILE).write_text(json.dumps(["completed"]), encoding="utf-8")

    reason, results = report._failure_reason(job)
    assert results is None and "cannot be read" in reason and "JSON object" in reason
    assert checkpoints.read_status(job) == {}
    assert not launcher.completed_run(job, ["seed=0"])
    assert sweep_bench.job_costs(tmp_path) == []

    # the same folder with a completed results file is read by all of them
    write_results(job, {"status": "completed"})
    assert checkpoints.read_status(job)["status"] == "completed"
    assert launcher.completed_run(job, ["seed=0"])
    reason, results = report._failure_reason(job)
    assert results["status"] == "completed" and "without test metrics" in reason
