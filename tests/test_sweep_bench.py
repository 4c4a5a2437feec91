"""mtl-bench --sweep: utilisation sampling, job costs, the make-reproduce estimate, one tiny sweep."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

import pytest

from mtl_celeba.bench import sweep as sweep_bench
from mtl_celeba.bench.__main__ import main as bench
from mtl_celeba.bench.sweep import (
    JobCost,
    TargetJob,
    cpu_busy_share,
    estimate_wall_s,
    images_per_epoch,
    merge_overrides,
    parse_nvidia_smi,
    reproduce_targets,
    utilisation,
)
from mtl_celeba.config import PROJECT_ROOT
from mtl_celeba.data.synthetic import partition_sizes

SETTING = ("cpu_cnn", 32, "32-true")


def test_cpu_busy_share_from_proc_stat_lines():
    # user nice system idle iowait irq softirq: 60 busy and 40 idle (30 idle + 10 iowait) ticks
    before = [100, 0, 50, 1000, 20, 0, 0]
    after = [140, 0, 70, 1030, 30, 0, 0]
    assert cpu_busy_share(before, after) == pytest.approx(0.6)
    assert cpu_busy_share(before, before) == 0.0


def test_nvidia_smi_samples_parse():
    assert parse_nvidia_smi("87\n") == pytest.approx(0.87)
    assert parse_nvidia_smi(" 5 %") == pytest.approx(0.05)
    assert parse_nvidia_smi("[N/A]") is None


def test_gpu_utilisation_is_read_from_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 40\necho 80\necho '[N/A]'\nsleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with utilisation(cuda=True) as samples:
        deadline = time.monotonic() + 10
        while len(samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert samples == [pytest.approx(0.4), pytest.approx(0.8)]


def test_cpu_utilisation_samples_while_the_block_runs():
    with utilisation(cuda=False, interval_s=0.05) as samples:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pass  # keep one core busy
    assert len(samples) >= 3 and all(0.0 <= s <= 1.0 for s in samples)
    assert max(samples) > 0.2, "a busy loop shows"


def cost(strategy: str, train: int, epochs: list[float], fixed: float) -> JobCost:
    return JobCost(strategy, train, epochs, fixed, fixed + sum(epochs), SETTING)


def test_estimate_from_measured_costs():
    costs = [
        cost("mtl", 100, [1.0, 1.0], 4.0),  # 10 ms per image and epoch
        cost("mtl", 100, [3.0, 3.0], 6.0),  # 30 ms
        cost("dst", 100, [4.0, 4.0], 8.0),  # 40 ms
    ]
    targets = [TargetJob("mtl", 3, 1000, SETTING), TargetJob("dst", 2, 1000, SETTING)]
    # fixed: median 6 s; mtl: median 20 ms per image-epoch; dst: 40 ms
    expected = (6 + 3 * 1000 * 0.020) + (6 + 2 * 1000 * 0.040)
    seconds, unmeasured = estimate_wall_s(costs, 2.0, targets)
    assert seconds == pytest.approx(expected / 2.0) and unmeasured == []
    # a strategy never measured takes the median of all jobs (30 ms), and is named
    seconds, unmeasured = estimate_wall_s(costs, 1.0, [TargetJob("famo", 1, 100, SETTING)])
    assert seconds == pytest.approx(6 + 100 * 0.030) and unmeasured == ["famo"]


def test_an_epoch_counts_the_batches_that_limit_train_batches_keeps():
    assert images_per_epoch(8195, 128, None) == 8195
    assert images_per_epoch(8195, 128, 24) == 24 * 128
    assert images_per_epoch(1000, 128, 24) == 1000, "a limit above the split keeps it whole"
    assert images_per_epoch(8195, 128, 0.5) == 32 * 128, "a fraction of the 65 batches"
    assert images_per_epoch(8195, 128, 1.0) == 8195


def test_user_overrides_replace_the_defaults_of_the_same_key():
    merged = merge_overrides(["experiment=dst_vs_baselines", "seed=0"], ["experiment=stl"])
    assert merged == ["seed=0", "experiment=stl"]


def test_reproduce_targets_are_make_reproduces_grids():
    targets = reproduce_targets(celeba=False)
    # cpu_cnn only without CelebA: dst_vs_baselines 6 strategies x 5 seeds + 8 STL tasks x 5
    # seeds (the same seeds, for paired Δm% intervals), and drop_metrics' 11 DST runs x 5 seeds
    assert len(targets) == 6 * 5 + 8 * 5 + 11 * 5
    num_images = next(
        int(o.split("=")[1]) for o in sweep_bench.REPRODUCE_SYNTHETIC if "num_images" in o
    )
    limit = next(
        int(o.split("=")[1]) for o in sweep_bench.REPRODUCE_SYNTHETIC if "limit_train_batches" in o
    )
    batch = next(int(o.split("=")[1]) for o in sweep_bench.REPRODUCE_SYNTHETIC if "batch_size" in o)
    # an epoch is the first limit_train_batches batches of the training split
    assert limit * batch < partition_sizes(num_images)[0]
    assert {t.train_images for t in targets} == {limit * batch}
    assert {t.epochs for t in targets} == {8} and {t.setting for t in targets} == {SETTING}
    assert sum(t.strategy == "stl" for t in targets) == 8 * 5
    celeba = reproduce_targets(celeba=True)
    assert {t.train_images for t in celeba} == {162_770} and {t.epochs for t in celeba} == {15}
    assert len(celeba) > len(targets), "both backbones on CelebA"


def test_the_scales_match_the_makefile():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    synthetic, celeba = re.findall(r"REPRODUCE_SCALE := (.*?)\n(?=\S)", makefile, re.S)
    assert synthetic.replace("\\\n", " ").split() == list(sweep_bench.REPRODUCE_SYNTHETIC)
    celeba_words = [w for w in celeba.replace("\\\n", " ").split() if "$(CELEBA)" not in w]
    assert celeba_words == list(sweep_bench.REPRODUCE_CELEBA)
    for experiment in sweep_bench.REPRODUCE_EXPERIMENTS:
        assert f"experiment={experiment}" in makefile


@pytest.mark.slow
def test_a_tiny_sweep_is_timed_and_estimated(synthetic_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "bench.json"
    bench(
        [
            "--sweep",
            "--sweep-dir", str(tmp_path / "sweep"),
            "--out", str(out),
            "experiment=stl",
            "data.attributes=[Male,Smiling]",
            f"data.root={synthetic_root}",
            "data.num_images=400",
            "data.cache_workers=1",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["jobs"] == 2 and summary["returncode"] == 0
    assert summary["jobs_per_hour"] > 0 and 0 < summary["concurrency"] <= 1.05
    assert 0.0 <= summary["utilisation"] <= 1.0
    assert set(summary["epoch_ms_per_image"]) == {"stl"}
    estimate = summary["estimates"]["make reproduce"]
    assert estimate["jobs"] == 6 * 5 + 8 * 5 + 11 * 5 and estimate["hours"] > 0
    assert estimate["strategies_not_measured"], "only STL was measured here"
    assert "Estimated make reproduce: 125 jobs" in printed
    assert "NOT comparable" in printed, "measured at 32 px here; CelebA runs at 128 px"
