"""Experiment grids, sweepers and launchers: every config composes, grids expand as documented."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra_plugins.mtl_celeba_launcher.grids import GridUnionSweeper

from mtl_celeba.config import CONFIG_DIR, PROJECT_ROOT
from mtl_celeba.data.attributes import ATTRIBUTE_PRESETS

EXPERIMENTS = sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = compose_train([f"experiment={experiment}"])
    assert cfg.data.attributes and cfg.strategy.name


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_grid_experiment_resumes(experiment):
    """Rerunning a named grid into its sweep folder skips the jobs that completed there."""
    cfg = compose_train([f"experiment={experiment}"])
    if cfg.hydra.sweeper.get("grids") is not None:
        assert cfg.hydra.sweeper.skip_completed is True


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("gpu_pool", "hydra_plugins.mtl_celeba_launcher.gpu_pool.GpuPoolLauncher"),
        ("slurm", "hydra_plugins.mtl_celeba_launcher.requeue.RequeueSlurmLauncher"),
    ],
)
def test_launchers_compose(launcher, target):
    cfg = compose_train([f"hydra/launcher={launcher}", "experiment=dst_vs_baselines"])
    assert cfg.hydra.launcher._target_ == target
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.tasks_per_node == 1


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp"])
def test_trainer_configs_compose(trainer):
    cfg = compose_train([f"trainer={trainer}"])
    if trainer in ("gpu", "ddp"):
        assert cfg.trainer.precision == "bf16-mixed"


def grid_jobs(experiment: str, overrides: list[str] = ()) -> list[list[str]]:
    cfg = compose_train([f"experiment={experiment}", *overrides])
    sweeper = GridUnionSweeper(grids=cfg.hydra.sweeper.grids)
    return sweeper.jobs([])


def test_dst_vs_baselines_grid():
    jobs = grid_jobs("dst_vs_baselines")
    multi = [job for job in jobs if "strategy=stl" not in job]
    single = [job for job in jobs if "strategy=stl" in job]
    strategies = ("mtl", "random_drop", "dst", "dst_shuffled", "dst_uniform", "dst_norm_only")
    assert len(multi) == len(strategies) * 2 * 5
    assert {j[0] for j in multi} == {f"strategy={name}" for name in strategies}
    assert {j[2] for j in multi} == {f"seed={seed}" for seed in range(5)}
    tasks = ATTRIBUTE_PRESETS["assignment8"]
    assert len(single) == len(tasks) * 2 * 5  # STL on the same seeds: Delta_m% pairs by seed
    assert {j[3] for j in single} == {f"seed={seed}" for seed in range(5)}
    assert {job[1] for job in single} == {f"strategy.task={task}" for task in tasks}
    # the STL grid follows the chosen attribute set
    heatmap = grid_jobs("dst_vs_baselines", ["attributes=heatmap8"])
    assert {j[1] for j in heatmap if "strategy=stl" in j} == {
        f"strategy.task={t}" for t in ATTRIBUTE_PRESETS["heatmap8"]
    }


def test_drop_metrics_grid_has_singles_all_and_leave_one_out():
    jobs = grid_jobs("drop_metrics")
    metric_sets = list(dict.fromkeys(job[0].split("=", 1)[1] for job in jobs))
    assert len(metric_sets) == 5 + 1 + 5
    # every metric set on the five seeds of dst_vs_baselines, so each pairs with MTL
    assert len(jobs) == len(metric_sets) * 5
    assert {job[1] for job in jobs} == {f"seed={seed}" for seed in range(5)}
    assert "[stagnancy]" in metric_sets
    assert "[regularization,depth,count,incompleteness,stagnancy]" in metric_sets
    assert "[regularization,depth,count,incompleteness]" in metric_sets


STRATEGIES = sorted(path.stem for path in (CONFIG_DIR / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_config_composes_and_instantiates(strategy):
    from mtl_celeba.config import instantiate
    from mtl_celeba.scheduling.strategy import TaskStrategy

    cfg = compose_train([f"strategy={strategy}"])
    assert cfg.strategy.name == strategy
    callback = instantiate(cfg.strategy.callback)
    assert isinstance(callback, TaskStrategy)
    assert callback.name == strategy or strategy == "stl"


def test_mtl_methods_grid_has_every_strategy_and_stl():
    jobs = grid_jobs("mtl_methods")
    multi = [job for job in jobs if "strategy=stl" not in job]
    strategies = {job[0].split("=", 1)[1] for job in multi}
    assert strategies == set(STRATEGIES) - {"stl", "random_drop"}
    assert len(multi) == len(strategies) * 5
    assert {job[1] for job in multi} == {f"seed={seed}" for seed in range(5)}
    single = [job for job in jobs if "strategy=stl" in job]
    assert {job[1] for job in single} == {
        f"strategy.task={task}" for task in ATTRIBUTE_PRESETS["assignment8"]
    }


def test_command_line_sweeps_apply_to_every_grid():
    sweeper = GridUnionSweeper(grids=[{"a": "1,2"}, {"b": "x"}])
    assert sweeper.jobs(["seed=0,1"]) == [
        ["a=1", "seed=0"], ["a=1", "seed=1"], ["a=2", "seed=0"], ["a=2", "seed=1"],
        ["b=x", "seed=0"], ["b=x", "seed=1"],
    ]  # fmt: skip


@pytest.mark.slow
def test_multirun_on_gpu_pool_with_a_failing_job_and_report(synthetic_root, tmp_path):
    """A real sweep: two jobs at once on the CPU, one job fails, the others finish, the report lists it."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "mtl_celeba.train", "-m",
        "hydra/launcher=gpu_pool", "hydra.launcher.cpu_jobs=2", f"hydra.sweep.dir={sweep}",
        f"data.root={synthetic_root}", "data.num_images=400", "data.image_size=32",
        f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "strategy=mtl,dst", "model.head_dropout=0.0,2.0",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, "the sweep reports that a job failed"
    statuses = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        metrics = json.loads((job / "metrics.json").read_text())
        statuses[job.name] = metrics["status"]
    assert sorted(statuses.values()) == ["completed", "completed", "failed", "failed"], done.stderr[
        -2000:
    ]
    assert "on CPU" in done.stdout + done.stderr

    report = subprocess.run(
        [sys.executable, "-m", "mtl_celeba.report", str(sweep)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    text = (sweep / "report.md").read_text()
    assert "head_dropout" in text and "Failed" in text
