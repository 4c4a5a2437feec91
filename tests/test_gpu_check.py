"""make gpu-check: the arguments, the part budgets and the skip rule (a fake clock and fake
parts), the gpu_check.json schema, the no-GPU exit on this machine's real CPU."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtl_celeba.bench import gpu_check as gc
from mtl_celeba.bench.sweep import JobCost, TargetJob

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """A clock that fake parts move forward by their cost."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_runner(clock: FakeClock, cost_s: float, figures: dict | None = None, error: str = ""):
    def run(budget_s: float) -> dict:
        clock.now += min(cost_s, budget_s)  # a real part is killed at its budget
        if error or cost_s > budget_s:
            raise gc.PartError(error or "timeout", f"killed after its budget of {budget_s:.0f} s")
        return figures or {"cost": cost_s}

    return run


def test_the_skip_rule_is_budget_against_time_left():
    assert gc.fits(40, 40) and gc.fits(39.9, 40)
    assert not gc.fits(40.1, 40)


def test_parts_run_while_their_budget_fits_and_are_skipped_with_a_line_after():
    clock = FakeClock()
    parts = [
        gc.Part("a", 40, "A"),
        gc.Part("b", 40, "B"),
        gc.Part("c", 30, "C"),
        gc.Part("d", 5, "D"),
    ]
    runners = {
        "a": fake_runner(clock, 35),
        "b": fake_runner(clock, 40),
        "c": fake_runner(clock, 1),
        "d": fake_runner(clock, 5),
    }
    lines: list[str] = []
    results = gc.run_parts(parts, runners, total_s=100, reserve_s=10, clock=clock, say=lines.append)
    # a: 90 s left; b: 55 s left; c: 15 s left < 30 (skipped); d: 15 s left >= 5
    assert [results[p]["status"] for p in "abcd"] == ["ok", "ok", "skipped", "ok"]
    assert results["c"]["line"] == "c: skipped: its budget 30 s is more than the 15 s left"
    assert results["c"]["line"] in lines and results["c"]["figures"] == {}
    assert results["a"]["seconds"] == 35 and results["a"]["figures"] == {"cost": 35}
    assert clock.now - 1000 == 80


def test_a_part_that_overruns_is_cut_at_its_budget_and_the_next_parts_still_run():
    clock = FakeClock()
    parts = [gc.Part("slow", 50, "S"), gc.Part("broken", 10, "B"), gc.Part("next", 20, "N")]
    runners = {
        "slow": fake_runner(clock, 500),
        "broken": fake_runner(clock, 2, error="failed"),
        "next": fake_runner(clock, 20),
    }
    results = gc.run_parts(
        parts, runners, total_s=200, reserve_s=0, clock=clock, say=lambda _: None
    )
    assert results["slow"]["status"] == "timeout" and results["slow"]["seconds"] == 50
    assert "killed after its budget of 50 s" in results["slow"]["line"]
    assert results["broken"]["status"] == "failed"
    assert results["next"]["status"] == "ok"


def test_the_real_parts_fit_the_eight_minutes_even_when_every_part_overruns():
    assert gc.TOTAL_BUDGET_S == 480
    assert sum(p.budget_s for p in gc.PARTS) <= gc.TOTAL_BUDGET_S - gc.RESERVE_S
    clock = FakeClock()
    runners = {p.name: fake_runner(clock, 10 * p.budget_s) for p in gc.PARTS}
    results = gc.run_parts(gc.PARTS, runners, gc.TOTAL_BUDGET_S, clock=clock, say=lambda _: None)
    assert all(r["status"] == "timeout" for r in results.values())  # every part ran, and was cut
    assert clock.now - 1000 <= gc.TOTAL_BUDGET_S - gc.RESERVE_S


@pytest.mark.parametrize("seed", range(20))
def test_any_costs_and_any_budget_end_within_the_budget(seed):
    rng = random.Random(seed)
    clock = FakeClock()
    total = rng.uniform(30, 600)
    runners = {p.name: fake_runner(clock, rng.uniform(0, 2 * p.budget_s)) for p in gc.PARTS}
    results = gc.run_parts(gc.PARTS, runners, total, clock=clock, say=lambda _: None)
    assert clock.now - 1000 <= total - gc.RESERVE_S
    skipped = [name for name, r in results.items() if r["status"] == "skipped"]
    assert all("skipped: its budget" in results[name]["line"] for name in skipped)


# ------------------------------------------------------------------ the command
def fake_bench(size: int, plain: float, model_only: float, fast: float, syncs=0.0) -> dict:
    return {
        "device": "NVIDIA H200",
        "settings": {
            "image_size": size,
            "batch_size": 256,
            "precision": "bf16-mixed",
            "overrides": [],
        },
        "backbones": {
            "resnet18": {
                "model": "resnet18",
                "images_per_s": {"plain": plain, "model_only": model_only, "fast": fast},
                "window_spread": {"plain": 1.01},
                "fast_syncs_per_step": syncs,
                "fast_sync_sites": {},
            }
        },
    }


def test_bench_figures_are_ratios_to_the_plain_loop_of_the_same_run():
    figures = gc.bench_figures(fake_bench(128, 1000.0, 950.0, 900.0))
    assert figures["fast_over_plain"] == pytest.approx(0.9)
    assert figures["model_only_over_plain"] == pytest.approx(0.95)
    assert figures["backbones"]["resnet18"]["over_plain"]["plain"] == 1.0
    assert figures["fast_syncs_per_step"] == 0.0 and figures["image_size"] == 128


def fake_runners(clock: FakeClock, fast_128: float = 900.0) -> dict:
    figures = {
        "bench_128": gc.bench_figures(fake_bench(128, 1000.0, 950.0, fast_128)),
        "bench_64": gc.bench_figures(fake_bench(64, 3000.0, 2500.0, 2100.0)),
        "cuda_tests": {
            "files": ["tests/test_syncs.py"],
            "tests": 2,
            "passed": 2,
            "failed": 0,
            "skipped": 0,
        },
        "sweep": {
            "jobs": 8,
            "jobs_per_hour": 500.0,
            "utilisation": 0.5,
            "wall_s": 57.6,
            "concurrency": 3.1,
            "median_fixed_s": 9.0,
        },
    }
    return {p.name: fake_runner(clock, p.budget_s / 2, figures.get(p.name)) for p in gc.PARTS}


def test_gpu_check_json_schema_and_markdown(tmp_path):
    clock = FakeClock()
    out = tmp_path / "check"
    runners = fake_runners(clock)
    runners["strategies"] = fake_runner(clock, 500)  # overruns its budget: cut, the rest goes on
    code = gc.main(["--out", str(out)], runners=runners, device=lambda: "NVIDIA H200", clock=clock)
    assert code == 0
    doc = json.loads((out / "gpu_check.json").read_text())
    assert set(doc) == {
        "schema_version",
        "device",
        "created",
        "wall_s",
        "budget_s",
        "parts",
        "targets",
    }
    assert doc["schema_version"] == gc.SCHEMA_VERSION and doc["device"] == "NVIDIA H200"
    assert list(doc["parts"]) == list(gc.PART_NAMES)
    for entry in doc["parts"].values():
        assert set(entry) == {"budget_s", "what", "status", "seconds", "line", "figures"}
        assert entry["status"] in {"ok", "failed", "timeout", "skipped"}
    assert doc["parts"]["strategies"]["status"] == "timeout"
    assert doc["wall_s"] <= doc["budget_s"]
    targets = {row["figure"]: row for row in doc["targets"]}
    assert set(targets) == {t[0] for t in gc.TARGETS}
    assert targets["bench_128.fast_over_plain"]["met"] is True  # 900 / 1000 >= 0.90
    assert targets["bench_64.fast_over_plain"]["met"] is False  # 0.70 < 0.80
    assert targets["sweep.utilisation"]["met"] is False
    assert targets["bench_128.fast_syncs_per_step"]["met"] is True
    assert targets["estimate.hours"]["value"] is None and targets["estimate.hours"]["met"] is None
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# make gpu-check on NVIDIA H200")
    assert "| fast/plain at 64 px >= 0.8 | 0.7 | **no** |" in md
    assert "strategies: timeout" in md and "not measured" in md


def test_a_missed_128_px_target_reads_missed(tmp_path):
    clock = FakeClock()
    gc.main(
        ["--out", str(tmp_path)],
        runners=fake_runners(clock, fast_128=410.0),
        device=lambda: "H100",
        clock=clock,
    )
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    row = next(r for r in doc["targets"] if r["figure"] == "bench_128.fast_over_plain")
    assert row["value"] == pytest.approx(0.41) and row["met"] is False


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--parts", "bench_128,nope"], "--parts"),
        (["--parts", ","], "--parts"),
        (["--budget-s", "10"], "--budget-s"),
        (["--num-images", "50"], "--num-images"),
        (["--budgets", "sweep=0"], "--budgets"),
        (["--budgets", "sweep=abc"], "--budgets"),
        (["--budgets", "swep=100"], "--budgets"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2_before_looking_for_a_gpu(argv, names, capsys):
    def no_device():
        raise AssertionError("the arguments are checked first")

    assert gc.main(argv, runners={}, device=no_device) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {names}")


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert gc.main(["--out", str(target)], runners={}, device=lambda: "H100") == 2
    assert "--out" in capsys.readouterr().err


def test_a_missing_package_is_named_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(gc.REQUIRED_MODULES, "no_such_module_xyz", "no-such-wheel")
    assert gc.main([], runners={}, device=lambda: "H100") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks no-such-wheel" in err[0] and "docs/performance.md" in err[0]


def test_selected_parts_run_in_the_fixed_order(tmp_path):
    clock = FakeClock()
    gc.main(
        ["--out", str(tmp_path), "--parts", "sweep,bench_64"],
        runners=fake_runners(clock),
        device=lambda: "H100",
        clock=clock,
    )
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(doc["parts"]) == ["bench_64", "sweep"]


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2():
    """This machine's real CPU: torch finds no CUDA GPU (``-m`` and the plain-file form)."""
    for command in (["-m", "mtl_celeba.bench.gpu_check"], ["mtl_celeba/bench/gpu_check.py"]):
        done = subprocess.run(
            [sys.executable, *command, "--budget-s", "60"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            "error: gpu-check: no CUDA GPU found (torch.cuda.is_available() is false): nothing to measure."
        ]
        assert done.stdout == ""


def test_the_file_form_checks_its_arguments_too():
    done = subprocess.run(
        [sys.executable, "mtl_celeba/bench/gpu_check.py", "--parts", "x"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: --parts 'x'")


# ------------------------------------------------------------------ the parts' inputs
def test_the_cuda_only_tests_are_found(tmp_path):
    assert gc.cuda_only_tests(ROOT / "tests") == ["tests/test_syncs.py"]
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text(
        "pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='x')\n"
    )
    (tests / "test_b.py").write_text("def test_b(): pass\n")
    (tests / "test_c.py").write_text(
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='x')\n"
    )
    (tests / "test_d.py").write_text("text = 'pytest.mark.skipif(not torch.cuda.is_available()'\n")
    assert gc.cuda_only_tests(tests) == ["tests/test_a.py", "tests/test_c.py"]


def test_junit_counts():
    xml = (
        '<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">'
        "</testsuite></testsuites>"
    )
    assert gc.junit_figures(xml) == {"tests": 5, "passed": 2, "failed": 2, "skipped": 1}


def test_the_gramian_methods_are_those_that_need_the_gramian():
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from mtl_celeba.config import CONFIG_DIR

    def target(name: str) -> str:
        """The callback class of conf/strategy/NAME.yaml, through its defaults (dst_shuffled: dst's)."""
        cfg = OmegaConf.load(CONFIG_DIR / "strategy" / f"{name}.yaml")
        if "_target_" in cfg.get("callback", {}):
            return cfg.callback._target_
        return target(next(d for d in cfg.defaults if d != "_self_"))

    names = sorted(path.stem for path in (CONFIG_DIR / "strategy").glob("*.yaml"))
    needs = [name for name in names if getattr(get_class(target(name)), "needs_gramian", False)]
    assert sorted(needs) == sorted(gc.GRAMIAN_METHODS)


SETTING = ("resnet18", 64, "bf16-mixed")


def test_the_reproduce_estimate_scales_the_sweep_by_the_measured_step_costs():
    # sweep at 64 px: 10 ms per image-epoch, 5 s fixed; resnet18 at 128 px is 3x slower per
    # image (3000 -> 1000 images/s), vgg16_bn at 128 px 6x (500 images/s)
    costs = [JobCost("mtl", 100, [1.0, 1.0], 5.0, 7.0, SETTING)]
    r128, vgg = ("resnet18", 128, "bf16-mixed"), ("vgg16_bn", 128, "bf16-mixed")
    targets = [TargetJob("mtl", 2, 1000, r128), TargetJob("mtl", 2, 1000, vgg)]
    factors = gc.scale_factors(
        {("resnet18", 64): 3000.0, ("resnet18", 128): 1000.0, ("vgg16_bn", 128): 500.0},
        ("resnet18", 64),
    )
    assert factors[("resnet18", 128)] == pytest.approx(3.0)
    estimate = gc.scaled_estimate(costs, 2.0, targets, factors)
    expected_s = ((5 + 2 * 1000 * 0.03) + (5 + 2 * 1000 * 0.06)) / 2.0
    assert estimate["hours"] == round(expected_s / 3600, 2) and estimate["complete"]
    partial = gc.scaled_estimate(
        costs, 2.0, targets, {k: v for k, v in factors.items() if k[0] != "vgg16_bn"}
    )
    assert not partial["complete"] and partial["settings_not_measured"] == [
        "vgg16_bn, 128 px, bf16-mixed"
    ]
    assert gc.scale_factors({("resnet18", 128): 1.0}, ("resnet18", 64)) == {}


def test_the_makefile_and_readme_name_the_target():
    makefile = (ROOT / "Makefile").read_text()
    assert "\ngpu-check:" in makefile and "mtl_celeba/bench/gpu_check.py" in makefile
    help_text = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert "make gpu-check" in help_text.stdout
    assert "| `make gpu-check" in (ROOT / "README.md").read_text()


# ------------------------------------------------------------------ the real parts' commands
def first_choices(overrides):
    """One job of a multirun's overrides: each comma list's first value (``~key`` kept)."""
    return [o if o.startswith("~") else o.split(",", 1)[0] for o in overrides]


def test_every_mtl_bench_command_is_accepted_by_mtl_bench_on_a_gpu(tmp_path):
    from mtl_celeba.bench.__main__ import bench_parser
    from mtl_celeba.bench.throughput import plan_runs, resolve_settings

    commands = gc.part_commands(tmp_path, gc.NUM_IMAGES)
    assert set(commands) == {
        "bench_128",
        "bench_64",
        "bench_all40",
        "bench_vgg16",
        "sweep",
        "strategies",
    }
    for name, argv in commands.items():
        args = bench_parser().parse_args(argv)
        assert Path(args.out).parent == tmp_path, name
        if name == "sweep":
            continue
        settings = resolve_settings(args, cuda=True)
        assert settings.batch_size == 256 and settings.precision == "bf16-mixed"
        plan = plan_runs(settings)  # composes every run's config, as on the GPU
        cfg = next(iter(next(iter(plan.values())).values()))
        assert cfg.trainer.accelerator == "gpu"
        expected_tasks = 40 if name == "bench_all40" else 8
        assert len(cfg.data.attributes) == expected_tasks, name
        if name == "strategies":
            assert settings.strategies == ["mtl", "dst", *gc.GRAMIAN_METHODS]
        else:
            assert settings.image_size == (64 if name == "bench_64" else 128)


def test_the_sweep_is_8_packed_jobs_at_64_px_on_the_gpu_pool(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mtl_celeba.bench.__main__ import bench_parser
    from mtl_celeba.bench.sweep import DEFAULT_SWEEP, GPU_SCALE, merge_overrides
    from mtl_celeba.config import CONFIG_DIR, VERSION_BASE

    args = bench_parser().parse_args(gc.part_commands(tmp_path, gc.NUM_IMAGES)["sweep"])
    assert args.sweep and args.sweep_dir == tmp_path / "sweep-runs"
    overrides = merge_overrides([*DEFAULT_SWEEP, *GPU_SCALE], args.overrides)  # what --sweep runs
    assert "experiment=dst_vs_baselines" not in overrides
    jobs = 1
    for override in overrides:
        jobs *= len(override.split("=", 1)[-1].split(",")) if "," in override else 1
    assert jobs == 8
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
        cfg = compose("train", overrides=first_choices(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.data.image_size == 64 and cfg.trainer.max_epochs == 2
    assert cfg.data.batch_size == 256 and cfg.data.num_workers is None  # as conf/data/celeba.yaml
    assert cfg.hydra.launcher.jobs_per_gpu == 4 and "GpuPool" in cfg.hydra.launcher._target_
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.backbone == "resnet18"


def test_a_part_process_is_killed_with_its_children_at_its_budget(tmp_path):
    started = time.monotonic()
    with pytest.raises(gc.PartError) as caught:
        gc.run_process(["sh", "-c", "sleep 30 & sleep 30"], 0.5, tmp_path / "slow.log")
    assert caught.value.status == "timeout" and time.monotonic() - started < 10
    with pytest.raises(gc.PartError) as caught:
        gc.run_process(
            ["sh", "-c", "echo first; echo 'the last line' >&2; exit 3"], 10, tmp_path / "bad.log"
        )
    assert caught.value.status == "failed" and "exit status 3" in str(caught.value)
    assert str(caught.value).endswith("the last line")


def test_the_fast_throughputs_come_from_the_8_task_parts():
    state = {
        "bench_128": gc.bench_figures(fake_bench(128, 1000.0, 950.0, 900.0)),
        "bench_64": gc.bench_figures(fake_bench(64, 3000.0, 2500.0, 2100.0)),
    }
    all40 = fake_bench(128, 1.0, 1.0, 1.0)
    all40["settings"]["overrides"] = ["attributes=all40"]
    state["bench_all40"] = gc.bench_figures(all40)
    assert gc.fast_throughputs(state) == {("resnet18", 128): 900.0, ("resnet18", 64): 2100.0}


def test_a_part_that_breaks_unexpectedly_is_failed_and_the_json_is_written_after_each_part(
    tmp_path,
):
    clock = FakeClock()
    runners = fake_runners(clock)
    seen = []

    def broken(budget_s):
        seen.append(json.loads((tmp_path / "gpu_check.json").read_text())["parts"])
        raise KeyError("backbones")

    runners["bench_64"] = broken
    assert (
        gc.main(["--out", str(tmp_path)], runners=runners, device=lambda: "H100", clock=clock) == 0
    )
    assert list(seen[0]) == ["bench_128"]  # written before bench_64 started
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["parts"]["bench_64"]["status"] == "failed"
    assert "KeyError" in doc["parts"]["bench_64"]["line"]
    assert doc["parts"]["sweep"]["status"] == "ok"


def test_budgets_can_be_changed_per_part_and_the_skip_rule_uses_them(tmp_path):
    clock = FakeClock()
    argv = [
        "--out",
        str(tmp_path),
        "--budgets",
        "bench_128=300,sweep=150",
        "--parts",
        "bench_128,sweep",
    ]
    gc.main(argv, runners=fake_runners(clock), device=lambda: "H100", clock=clock)
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (
        doc["parts"]["bench_128"]["budget_s"] == 300 and doc["parts"]["bench_128"]["status"] == "ok"
    )
    # the fake bench_128 takes 50 s, so 410 s are left: the sweep's 150 fit (it takes 55 s)
    assert doc["parts"]["sweep"]["status"] == "ok" and doc["parts"]["sweep"]["budget_s"] == 150
    clock = FakeClock()
    argv = [
        "--out",
        str(tmp_path),
        "--budgets",
        "bench_128=200,sweep=300",
        "--parts",
        "bench_128,sweep",
    ]
    gc.main(argv, runners=fake_runners(clock), device=lambda: "H100", clock=clock)
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    # 460 - 50 = 410 s left: a 300 s sweep fits; with bench_128 cut at 200 s it would not
    assert doc["parts"]["sweep"]["status"] == "ok"
    runners = fake_runners(clock)
    runners["bench_128"] = fake_runner(clock, 1000)
    gc.main(argv, runners=runners, device=lambda: "H100", clock=clock)
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["parts"]["bench_128"]["status"] == "timeout"
    assert (
        doc["parts"]["sweep"]["line"]
        == "sweep: skipped: its budget 300 s is more than the 260 s left"
    )


def test_the_sweep_figures_read_what_mtl_bench_sweep_writes():
    from mtl_celeba.bench.sweep import sweep_summary

    costs = [
        JobCost("mtl", 100, [1.0, 1.0], 5.0, 7.0, SETTING),
        JobCost("dst", 100, [2.0], 4.0, 6.0, SETTING),
    ]
    sweep = {
        "command": "mtl-train -m ...",
        "returncode": 0,
        "log": "sweep.log",
        "wall_s": 10.0,
        "utilisation": 0.62,
        "samples": 20,
    }
    doc = {
        **sweep_summary(sweep, costs),
        "measured_settings": ["resnet18, 64 px, bf16-mixed"],
        "estimates": {},
    }
    figures = gc.sweep_figures(doc)
    assert None not in figures.values(), figures
    assert (
        figures["jobs"] == 2
        and figures["jobs_per_hour"] == 720.0
        and figures["utilisation"] == 0.62
    )
    assert figures["concurrency"] == 1.3
