"""`make reproduce` without CelebA: the CPU scale (the Makefile's REPRODUCE_SCALE) applied to
both canonical grids is big enough for its answer to mean something, and runs the same grids
(strategies, controls, DST variants, STL reference) as the CelebA protocol; at that scale the
models learn every task and DST drops some (one seed, slow)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra_plugins.mtl_celeba_launcher.grids import GridUnionSweeper

from mtl_celeba.bench.sweep import REPRODUCE_EXPERIMENTS
from mtl_celeba.config import CONFIG_DIR, PROJECT_ROOT, VERSION_BASE
from mtl_celeba.data.synthetic import partition_sizes
from mtl_celeba.train import train


def makefile_scales() -> tuple[list[str], list[str]]:
    """The Makefile's two REPRODUCE_SCALE values (without CelebA, with CELEBA=...), as words."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    synthetic, celeba = re.findall(r"REPRODUCE_SCALE := (.*?)\n(?=\S)", makefile, re.S)
    words = [w for w in celeba.replace("\\\n", " ").split() if "$(CELEBA)" not in w]
    return synthetic.replace("\\\n", " ").split(), words


@pytest.fixture(scope="module")
def hydra_configs() -> Iterator[None]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
        yield
    GlobalHydra.instance().clear()


def composed_jobs(experiment: str, scale: list[str]) -> list:
    """Every job of ``experiment``'s grids under ``scale``, composed as mtl-train composes it."""
    base = [f"experiment={experiment}", *scale]
    cfg = compose("train", overrides=base, return_hydra_config=True)
    jobs = GridUnionSweeper(grids=cfg.hydra.sweeper.grids).jobs(scale)
    return [compose("train", overrides=[f"experiment={experiment}", *job]) for job in jobs]


def configuration(cfg) -> tuple:
    """What a job compares, without its seed, backbone and scale: strategy, DST metrics, STL task."""
    strategy = cfg.strategy
    metrics = tuple(sorted(strategy.metrics)) if "metrics" in strategy else None
    return (strategy.name, metrics, strategy.get("task"))


def test_the_cpu_scale_is_big_enough_and_runs_the_celeba_grids(hydra_configs):
    synthetic, celeba = makefile_scales()
    cpu_total, gpu_total = 0, 0
    for experiment in REPRODUCE_EXPERIMENTS:
        cpu = composed_jobs(experiment, synthetic)
        gpu = composed_jobs(experiment, celeba)
        cpu_total, gpu_total = cpu_total + len(cpu), gpu_total + len(gpu)
        for cfg in cpu:
            # one test image is at most 0.1 point of accuracy
            assert partition_sizes(int(cfg.data.num_images))[2] >= 1000
            # gates are drawn after each epoch but the last: at least 6 epochs with gates
            assert int(cfg.trainer.max_epochs) - 1 >= 6
            assert cfg.model.backbone == "cpu_cnn" and cfg.data.source == "synthetic"
        seeds = Counter(configuration(cfg) for cfg in cpu)
        assert min(seeds.values()) >= 5, f"{experiment}: fewer than 5 seeds for some configuration"
        for config in seeds:
            paired = {cfg.seed for cfg in cpu if configuration(cfg) == config}
            assert paired == set(range(5)), f"{experiment}: {config} is not on seeds 0-4"
        # the same comparisons as on CelebA; CelebA runs them on each of its backbones
        assert set(seeds) == {configuration(cfg) for cfg in gpu}
        backbones = {cfg.model.backbone for cfg in gpu}
        assert len(gpu) == len(cpu) * len(backbones)
    # one backbone on the CPU: the grids' resnet18,vgg16 list does not double the jobs
    assert cpu_total < gpu_total


def _protocol_run(compose_config, strategy: str, root: Path, run_dir: Path) -> dict:
    """One seed-0 job at the Makefile's CPU scale, trained and tested in this process."""
    synthetic, _ = makefile_scales()
    overrides = [
        f"strategy={strategy}",
        "seed=0",
        f"data.root={root}",
        f"data.cache_dir={root / 'cache'}",
        *synthetic,
        "trainer.enable_model_summary=false",
    ]
    return train(compose_config(overrides, run_dir), run_dir)


@pytest.mark.slow
def test_at_the_cpu_scale_mtl_learns_every_task_and_dst_drops(
    compose_config, tmp_path: Path
) -> None:
    """`make reproduce`'s CPU protocol means something: at its scale (seed 0) MTL is 10 points
    over the majority rate with every task's balanced accuracy at least 0.70, and DST draws its
    gates in at least 6 epochs and drops some task-epochs."""
    root = tmp_path / "data"
    mtl = _protocol_run(compose_config, "mtl", root, tmp_path / "mtl")
    majority = sum(mtl["majority_accuracy"].values()) / len(mtl["majority_accuracy"])
    assert mtl["test"]["mean"]["accuracy"] >= majority + 0.10
    balanced = {task: m["balanced_accuracy"] for task, m in mtl["test"]["per_task"].items()}
    assert min(balanced.values()) >= 0.70, balanced
    dst = _protocol_run(compose_config, "dst", root, tmp_path / "dst")
    schedule = dst["schedule"]
    assert schedule["epochs"] - 1 >= 6  # gates are drawn after each epoch but the last
    assert sum(schedule["realised_drop_rate"].values()) > 0, schedule["realised_drop_rate"]
