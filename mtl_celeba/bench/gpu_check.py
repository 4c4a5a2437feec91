"""``make gpu-check``: every GPU figure of the project in one command, within 8 minutes.

GPU time is scarce and short, so this runs a fixed list of parts, each a real call of the
existing bench code (``mtl-bench``, ``mtl-bench --sweep``, pytest), each with its own time
budget. A part starts only when its budget fits in the time left (:func:`fits`), and is killed
when it overruns its budget, so the whole run ends within ``--budget-s`` by construction
(:func:`run_parts`), and a partial run still writes the figures it has: ``gpu_check.json``
and a short ``gpu_check.md``, the device named, each figure beside its target.

Only the standard library is imported at the top: the arguments and the packages are checked
first, then whether a CUDA GPU is there (none: one line, exit 2). The file also runs as a plain
script (``python mtl_celeba/bench/gpu_check.py``, what ``make gpu-check`` does), so a machine
without some of the project's packages gets one line naming them rather than a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: The hydra_plugins namespace (the gpu_pool launcher, the grids sweeper) in a source checkout.
PLUGINS = REPO / "mtl_celeba" / "_hydra_plugins"
TOTAL_BUDGET_S = 480.0
#: Kept free of parts: this process's own start, the Hydra compositions, writing the report.
RESERVE_S = 20.0
SCHEMA_VERSION = 1
#: Synthetic CelebA size of every part (generated once, then shared by all of them).
NUM_IMAGES = 30_000
#: Timed steps of the throughput parts (mtl-bench's GPU default is 30 + 5 x 30).
BENCH_STEPS = ("--warmup-steps", "20", "--window-steps", "20", "--windows", "5")
STRATEGY_STEPS = ("--warmup-steps", "5", "--window-steps", "10", "--windows", "3")
#: The strategies whose step uses the Gramian of the per-task gradients (a test keeps it so).
GRAMIAN_METHODS = (
    "gradnorm",
    "mgda",
    "pcgrad",
    "cagrad",
    "imtlg",
    "nashmtl",
    "alignedmtl",
    "upgrad",
    "fairgrad",
    "gradvac",
    "config",
    "dbmtl",
)
#: The packages the parts import: {module name: pip name}.
REQUIRED_MODULES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime==4.9.3",
    "lightning": "lightning",
    "lightning_utilities": "lightning-utilities",
    "torchmetrics": "torchmetrics",
    "torchjd": "torchjd",
    "tabulate": "tabulate",
    "pandas": "pandas",
    "scipy": "scipy",
    "filelock": "filelock",
    "cloudpickle": "cloudpickle",
    "tensorboard": "tensorboard",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "packaging": "packaging",
    "pytest": "pytest",
}


@dataclass(frozen=True)
class Part:
    """One measurement: its name, its time budget (it is killed past it) and what it measures."""

    name: str
    budget_s: float
    what: str


#: In the order they run: the training step first, the sweep and the methods after.
PARTS = (
    Part("bench_128", 100, "mtl-bench plain/model_only/fast, resnet18, 128 px, batch 256, 8 tasks"),
    Part("bench_64", 45, "mtl-bench plain/model_only/fast, resnet18, 64 px, batch 256, 8 tasks"),
    Part("bench_all40", 45, "mtl-bench plain/model_only/fast, resnet18, 128 px, attributes=all40"),
    Part("bench_vgg16", 30, "mtl-bench fast, vgg16, 128 px, batch 256 (the estimate's VGG cost)"),
    Part("cuda_tests", 35, "the suite's CUDA-only tests (host-device syncs per step)"),
    Part("sweep", 110, "mtl-bench --sweep: 8 jobs, 2 epochs, 64 px, gpu_pool 4 jobs per GPU"),
    Part("strategies", 80, "mtl-bench --strategies: DST, MTL and every Gramian method, 128 px"),
    Part("estimate", 15, "make reproduce CELEBA=... estimated from the measured figures"),
)
PART_NAMES = tuple(part.name for part in PARTS)

#: The targets: (figure, comparison, threshold, what).
TARGETS = (
    ("bench_128.fast_over_plain", ">=", 0.90, "fast/plain at 128 px"),
    ("bench_64.fast_over_plain", ">=", 0.80, "fast/plain at 64 px"),
    ("bench_all40.fast_over_plain", ">=", 0.85, "fast/plain with all40 at 128 px"),
    ("bench_128.fast_syncs_per_step", "<=", 0.0, "host-device syncs per step"),
    ("cuda_tests.failed", "<=", 0.0, "CUDA-only tests failing"),
    ("sweep.utilisation", ">=", 0.80, "mean GPU utilisation in the packed sweep"),
    ("estimate.hours", "<=", 1.0, "make reproduce CELEBA=... estimated hours"),
)


class PartError(Exception):
    """A part that ran but gave no figures: ``status`` is ``failed`` or ``timeout``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ the plan
def fits(budget_s: float, remaining_s: float) -> bool:
    """The skip rule: a part runs only if its whole budget fits in the time left."""
    return budget_s <= remaining_s


def run_parts(
    parts: Sequence[Part],
    runners: Mapping[str, Callable[[float], dict[str, Any]]],
    total_s: float,
    reserve_s: float = RESERVE_S,
    clock: Callable[[], float] = time.monotonic,
    say: Callable[[str], None] = print,
    after_part: Callable[[dict[str, dict[str, Any]]], None] = lambda results: None,
) -> dict[str, dict[str, Any]]:
    """Run each part whose budget fits in what is left of ``total_s - reserve_s``, else skip it.

    A runner gets its part's budget (its timeout) and returns the part's figures, or raises
    :class:`PartError` (any other exception also marks the part ``failed``). Since a part only
    starts when its budget fits and never runs past it, the parts end within
    ``total_s - reserve_s`` of the start. ``after_part`` sees the results after every part.
    """
    started = clock()
    results: dict[str, dict[str, Any]] = {}
    for part in parts:
        remaining = total_s - reserve_s - (clock() - started)
        entry: dict[str, Any] = {"budget_s": part.budget_s, "what": part.what}
        if not fits(part.budget_s, remaining):
            entry.update(
                status="skipped",
                seconds=0.0,
                line=f"{part.name}: skipped: its budget {part.budget_s:.0f} s is more than the "
                f"{max(remaining, 0):.0f} s left",
                figures={},
            )
        else:
            say(
                f"{part.name}: running (budget {part.budget_s:.0f} s, {remaining:.0f} s left): {part.what}"
            )
            part_start = clock()
            try:
                figures = runners[part.name](part.budget_s)
                status, line = "ok", f"{part.name}: ok"
            except PartError as error:
                figures, status, line = {}, error.status, f"{part.name}: {error.status}: {error}"
            except Exception as error:  # a bug in reading one part must not lose the others
                figures, status = {}, "failed"
                line = f"{part.name}: failed: {type(error).__name__}: {error}"
            seconds = clock() - part_start
            entry.update(
                status=status,
                seconds=round(seconds, 1),
                line=f"{line} ({seconds:.0f} s)",
                figures=figures,
            )
        say(entry["line"])
        results[part.name] = entry
        after_part(results)
    return results


# ------------------------------------------------------------------ reading the parts' output
def bench_figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One ``mtl-bench`` bench.json as figures: per backbone the images/s and each variant's
    ratio to the plain loop of the same run, the syncs per step; the first backbone's at the top."""
    backbones = {}
    for name, entry in doc["backbones"].items():
        ips = entry["images_per_s"]
        plain = ips.get("plain")
        backbones[name] = {
            "model": entry.get("model", name),
            "images_per_s": ips,
            "over_plain": {v: value / plain for v, value in ips.items()} if plain else {},
            "window_spread": entry.get("window_spread", {}),
            "fast_syncs_per_step": entry.get("fast_syncs_per_step"),
            "fast_sync_sites": entry.get("fast_sync_sites", {}),
        }
    first = next(iter(backbones.values()))
    settings = doc.get("settings", {})
    return {
        "device": doc.get("device"),
        "image_size": settings.get("image_size"),
        "batch_size": settings.get("batch_size"),
        "precision": settings.get("precision"),
        "overrides": settings.get("overrides", []),
        "fast_over_plain": first["over_plain"].get("fast"),
        "model_only_over_plain": first["over_plain"].get("model_only"),
        "fast_syncs_per_step": first["fast_syncs_per_step"],
        "backbones": backbones,
    }


def strategies_figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``mtl-bench --strategies``: each strategy's images/s and step time relative to plain MTL."""
    name, entry = next(iter(doc["backbones"].items()))
    return {
        "backbone": entry.get("model", name),
        "image_size": doc.get("settings", {}).get("image_size"),
        "strategies": entry.get("strategies", {}),
    }


def junit_figures(text: str) -> dict[str, Any]:
    """pytest's ``--junitxml`` report: tests, passed, failed (failures and errors), skipped."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(text)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    failed = count["failures"] + count["errors"]
    return {
        "tests": count["tests"],
        "passed": count["tests"] - failed - count["skipped"],
        "failed": failed,
        "skipped": count["skipped"],
    }


def sweep_figures(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``mtl-bench --sweep``'s sweep.json, the figures this report keeps."""
    keys = (
        "jobs", "jobs_per_hour", "utilisation", "samples", "concurrency", "wall_s",
        "median_fixed_s", "median_job_s", "epoch_ms_per_image", "measured_settings", "estimates",
        "returncode", "command",
    )  # fmt: skip
    return {key: doc.get(key) for key in keys}


def cuda_only_tests(tests_dir: Path) -> list[str]:
    """The test files with a test or module marker ``skipif(not torch.cuda.is_available()...)``
    at the start of a line: the tests that are skipped without CUDA."""
    pattern = re.compile(
        r"^\s*(?:pytestmark\s*=\s*|@)pytest\.mark\.skipif\(\s*not\s+torch\.cuda\.is_available\(\)",
        re.M,
    )
    return sorted(
        path.relative_to(tests_dir.parent).as_posix()
        for path in tests_dir.glob("test_*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    )


def scale_factors(
    fast_ips: Mapping[tuple[str, int], float], measured_at: tuple[str, int]
) -> dict[tuple[str, int], float]:
    """Per (backbone, image size): its step cost per image over that of ``measured_at``,
    from the fast pipeline's images/s (a time per image is 1 / images per second)."""
    if measured_at not in fast_ips:
        return {}
    return {key: fast_ips[measured_at] / ips for key, ips in fast_ips.items() if ips > 0}


def scaled_estimate(
    costs: Sequence[Any],
    concurrency: float,
    targets: Sequence[Any],
    factors: Mapping[tuple[str, int], float],
) -> dict[str, Any]:
    """The sweep estimator (:func:`~mtl_celeba.bench.sweep.estimate_wall_s`) for targets at other
    settings than the sweep's: each target setting's jobs from the sweep's job costs, their
    epoch seconds scaled by that setting's measured step-cost factor. Settings without a factor
    are left out (the estimate is then a lower bound, ``complete`` false)."""
    from mtl_celeba.bench.sweep import describe, estimate_wall_s

    seconds, scaled, unmeasured, no_strategy = 0.0, [], [], set()
    for setting in sorted({t.setting for t in targets}):
        factor = factors.get((setting[0], setting[1]))
        if factor is None:
            unmeasured.append(describe(setting))
            continue
        jobs = [t for t in targets if t.setting == setting]
        moved = [
            replace(c, epoch_s=[s * factor for s in c.epoch_s], setting=setting) for c in costs
        ]
        part, missing = estimate_wall_s(moved, concurrency, jobs)
        seconds += part
        no_strategy.update(missing)
        scaled.append(f"{describe(setting)} (x{factor:.2f})")
    return {
        "jobs": len(targets),
        "hours": round(seconds / 3600, 2),
        "complete": not unmeasured,
        "scaled_settings": scaled,
        "settings_not_measured": unmeasured,
        "strategies_not_measured": sorted(no_strategy),
    }


def figure(results: Mapping[str, Any], path: str) -> Any:
    """``results[part]['figures'][key]`` for ``path`` = ``part.key``, or None."""
    part, key = path.split(".", 1)
    return results.get(part, {}).get("figures", {}).get(key)


def check_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured value and whether it is met (None: not measured)."""
    rows = []
    for path, op, threshold, what in TARGETS:
        value = figure(results, path)
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        rows.append(
            {
                "figure": path,
                "what": what,
                "target": f"{op} {threshold:g}",
                "value": value,
                "met": met,
            }
        )
    return rows


def report(
    device: str, results: dict[str, Any], started: str, wall_s: float, budget_s: float
) -> dict[str, Any]:
    """The gpu_check.json document."""
    return {
        "schema_version": SCHEMA_VERSION,
        "device": device,
        "created": started,
        "wall_s": round(wall_s, 1),
        "budget_s": budget_s,
        "parts": results,
        "targets": check_targets(results),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def markdown(doc: Mapping[str, Any]) -> str:
    """gpu_check.md: the device, each part's line, the targets, the main figures."""
    lines = [
        f"# make gpu-check on {doc['device']}",
        "",
        f"{doc['created']}, {doc['wall_s']:.0f} s of a {doc['budget_s']:.0f} s budget.",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    for row in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(f"| {row['what']} {row['target']} | {_fmt(row['value'])} | {met} |")
    lines += ["", "## Parts", ""]
    lines += [f"- {part['line']}" for part in doc["parts"].values()]
    bench = [(n, p) for n, p in doc["parts"].items() if "backbones" in p["figures"]]
    if bench:
        lines += ["", "## Throughput (images/s, and over the plain loop of the same run)", ""]
        lines += ["| part | backbone | plain | model_only | fast | fast/plain | model_only/plain |"]
        lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
        for name, part in bench:
            for backbone, entry in part["figures"]["backbones"].items():
                ips, over = entry["images_per_s"], entry["over_plain"]
                cells = [_fmt(ips.get(v)) for v in ("plain", "model_only", "fast")]
                ratios = [_fmt(over.get(v)) for v in ("fast", "model_only")]
                lines.append(
                    f"| {name} | {backbone} | {' | '.join(cells)} | {' | '.join(ratios)} |"
                )
    strategies = doc["parts"].get("strategies", {}).get("figures", {}).get("strategies")
    if strategies:
        lines += ["", "## Step time relative to plain MTL", ""]
        lines += ["| strategy | images/s | step time vs MTL |", "| --- | --- | --- |"]
        lines += [
            f"| {name} | {_fmt(entry['images_per_s'])} | {_fmt(entry['step_time_vs_mtl'])} |"
            for name, entry in strategies.items()
        ]
    sweep = doc["parts"].get("sweep", {}).get("figures", {})
    if "jobs_per_hour" in sweep:
        lines += [
            "",
            f"Sweep: {_fmt(sweep.get('jobs'))} jobs in {_fmt(sweep.get('wall_s'))} s, "
            f"{_fmt(sweep.get('jobs_per_hour'))} jobs/hour, {_fmt(sweep.get('concurrency'))} at "
            f"once, mean GPU utilisation {_fmt(sweep.get('utilisation'))}, median fixed cost "
            f"{_fmt(sweep.get('median_fixed_s'))} s.",
        ]
    estimate = doc["parts"].get("estimate", {}).get("figures", {})
    if "hours" in estimate:
        note = (
            ""
            if estimate["complete"]
            else " (lower bound: " + ", ".join(estimate["settings_not_measured"]) + " not measured)"
        )
        lines += [
            "",
            f"make reproduce CELEBA=...: {estimate['jobs']} jobs, {estimate['hours']} h estimated{note}; "
            f"scaled from the sweep by {', '.join(estimate['scaled_settings'])}.",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ running the parts
def child_env() -> dict[str, str]:
    """The environment of the parts' processes: the checkout and its Hydra plugins importable
    even where the package is not installed."""
    env = dict(os.environ)
    paths = [str(REPO), str(PLUGINS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_process(command: Sequence[str], timeout_s: float, log: Path) -> None:
    """Run ``command`` (its output into ``log``); kill its whole process group past
    ``timeout_s`` (:class:`PartError` ``timeout``); a non-zero exit is ``failed``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=child_env(),
            start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise PartError(
                "timeout", f"killed after its budget of {timeout_s:.0f} s (log: {log.name})"
            ) from None
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise PartError("failed", f"exit status {code} (log: {log.name}): {tail[0][:200]}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PartError("failed", f"no readable {path.name} ({error})") from None


#: The packed sweep: 8 jobs (4 strategies x 2 seeds), 2 epochs, 64 px, 4 jobs per GPU, with
#: conf/data/celeba.yaml's batch sizes and workers (the synthetic defaults are for a CPU).
SWEEP_OVERRIDES = (
    "~experiment",
    "strategy=mtl,dst,random_drop,dst_uniform",
    "seed=0,1",
    "trainer.max_epochs=2",
    "data.image_size=64",
    "data.batch_size=256",
    "data.eval_batch_size=512",
    "data.num_workers=null",
    "hydra/launcher=gpu_pool",
    "hydra.launcher.jobs_per_gpu=4",
)


def part_commands(out: Path, num_images: int) -> dict[str, list[str]]:
    """The ``mtl-bench`` arguments of each mtl-bench part (after ``python -m mtl_celeba.bench``)."""
    common = ["--num-images", str(num_images), "--batch-size", "256"]
    three = [
        "--backbones",
        "resnet18",
        "--variants",
        "plain,model_only,fast",
        *common,
        *BENCH_STEPS,
    ]
    strategies = ",".join(("mtl", "dst", *GRAMIAN_METHODS))
    return {
        "bench_128": [*three, "--image-size", "128", "--out", str(out / "bench_128.json")],
        "bench_64": [*three, "--image-size", "64", "--out", str(out / "bench_64.json")],
        "bench_all40": [
            *three, "--image-size", "128", "--out", str(out / "bench_all40.json"), "attributes=all40"
        ],
        "bench_vgg16": [
            "--backbones", "vgg16", "--variants", "fast", *common, *BENCH_STEPS,
            "--image-size", "128", "--out", str(out / "bench_vgg16.json"),
        ],
        "sweep": [
            "--sweep", "--sweep-dir", str(out / "sweep-runs"), "--out", str(out / "sweep_bench.json"),
            *SWEEP_OVERRIDES, f"data.num_images={num_images}",
        ],
        "strategies": [
            "--backbones", "resnet18", "--variants", "fast", "--strategies", strategies, *common,
            *STRATEGY_STEPS, "--image-size", "128", "--out", str(out / "strategies.json"),
        ],
    }  # fmt: skip


def fast_throughputs(state: Mapping[str, dict[str, Any]]) -> dict[tuple[str, int], float]:
    """{(backbone, image size): the fast pipeline's images/s} of the 8-task bench parts run."""
    return {
        (entry["model"], int(figures["image_size"])): entry["images_per_s"]["fast"]
        for name in ("bench_128", "bench_64", "bench_vgg16")
        if (figures := state.get(name)) and not figures["overrides"]
        for entry in figures["backbones"].values()
        if "fast" in entry["images_per_s"]
    }


def part_runners(out: Path, num_images: int) -> dict[str, Callable[[float], dict[str, Any]]]:
    """The real parts: each a run of the project's own bench code with its arguments."""
    python = [sys.executable, "-m"]
    commands = part_commands(out, num_images)
    state: dict[str, Any] = {}

    def mtl_bench(name: str) -> Callable[[float], dict[str, Any]]:
        def run(budget_s: float) -> dict[str, Any]:
            (out / f"{name}.json").unlink(missing_ok=True)  # never an earlier run's figures
            run_process(
                [*python, "mtl_celeba.bench", *commands[name]], budget_s, out / f"{name}.log"
            )
            state[name] = figures = bench_figures(_read_json(out / f"{name}.json"))
            return figures

        return run

    def cuda_tests(budget_s: float) -> dict[str, Any]:
        tests = cuda_only_tests(REPO / "tests")
        if not tests:
            raise PartError("failed", "no CUDA-only test file found under tests/")
        xml = out / "cuda_tests.xml"
        pytest = [*python, "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *tests]
        try:
            run_process(pytest, budget_s, out / "cuda_tests.log")
        except PartError as error:
            if error.status == "timeout" or not xml.exists():
                raise  # a failing test still gives its counts
        return {"files": tests, **junit_figures(xml.read_text())}

    def sweep(budget_s: float) -> dict[str, Any]:
        shutil.rmtree(out / "sweep-runs", ignore_errors=True)  # only this run's jobs count
        (out / "sweep.json").unlink(missing_ok=True)
        run_process([*python, "mtl_celeba.bench", *commands["sweep"]], budget_s, out / "sweep.log")
        return sweep_figures(_read_json(out / "sweep.json"))

    def estimate(budget_s: float) -> dict[str, Any]:
        from mtl_celeba.bench.sweep import job_costs, reproduce_targets

        costs = job_costs(out / "sweep-runs")
        if not costs or not (out / "sweep.json").exists():
            raise PartError(
                "failed", "no completed sweep to estimate from (the sweep part did not finish)"
            )
        concurrency = float(_read_json(out / "sweep.json")["concurrency"])
        measured = costs[0].setting
        factors = scale_factors(fast_throughputs(state), (measured[0], measured[1]))
        if not factors:
            raise PartError(
                "failed", f"no fast-pipeline images/s at the sweep's setting {measured}"
            )
        return {
            **scaled_estimate(costs, concurrency, reproduce_targets(celeba=True), factors),
            "sweep_setting": list(measured),
            "concurrency": concurrency,
        }

    def strategies(budget_s: float) -> dict[str, Any]:
        (out / "strategies.json").unlink(missing_ok=True)
        run_process(
            [*python, "mtl_celeba.bench", *commands["strategies"]], budget_s, out / "strategies.log"
        )
        return strategies_figures(_read_json(out / "strategies.json"))

    return {
        **{
            name: mtl_bench(name)
            for name in ("bench_128", "bench_64", "bench_all40", "bench_vgg16")
        },
        "cuda_tests": cuda_tests,
        "sweep": sweep,
        "strategies": strategies,
        "estimate": estimate,
    }


# ------------------------------------------------------------------ the command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu-check",
        description="Every GPU figure in one run of at most --budget-s seconds: the training "
        "step against a plain loop, syncs, a packed sweep, the methods' step cost, and the make "
        "reproduce CELEBA=... estimate; writes gpu_check.json and gpu_check.md.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "outputs" / "gpu_check",
        help="folder of the results (default outputs/gpu_check)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=TOTAL_BUDGET_S,
        help=f"seconds for the whole run (default {TOTAL_BUDGET_S:.0f})",
    )
    p.add_argument(
        "--parts",
        default=",".join(PART_NAMES),
        help=f"comma-separated parts, run in the fixed order (default all: {','.join(PART_NAMES)})",
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=NUM_IMAGES,
        help=f"synthetic CelebA size of every part (default {NUM_IMAGES})",
    )
    p.add_argument(
        "--budgets",
        default="",
        help="other part budgets in seconds, e.g. bench_128=120,sweep=150 (the others keep theirs)",
    )
    return p


class UsageError(Exception):
    """A bad argument or a missing requirement: one line, exit status 2."""


def check_arguments(args: argparse.Namespace) -> list[Part]:
    """The selected parts; a bad value raises :class:`UsageError` naming the option and the fix."""
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PART_NAMES]
    if unknown or not names:
        raise UsageError(
            f"--parts {args.parts!r}: choose from {','.join(PART_NAMES)}, comma-separated."
        )
    if not args.budget_s > RESERVE_S:
        raise UsageError(
            f"--budget-s is {args.budget_s:g}: use more than {RESERVE_S:.0f} (the default is {TOTAL_BUDGET_S:.0f})."
        )
    if args.num_images < 1000:
        raise UsageError(
            f"--num-images is {args.num_images}: use 1000 or more (the default is {NUM_IMAGES})."
        )
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file: give a folder.")
    budgets = {}
    for item in filter(None, (i.strip() for i in args.budgets.split(","))):
        name, _, seconds = item.partition("=")
        try:
            budgets[name.strip()] = float(seconds)
        except ValueError:
            budgets[name.strip()] = -1.0
        if name.strip() not in PART_NAMES or not budgets[name.strip()] > 0:
            raise UsageError(
                f"--budgets {item!r}: write PART=SECONDS, SECONDS above 0, PART one of "
                f"{','.join(PART_NAMES)}."
            )
    return [
        replace(part, budget_s=budgets.get(part.name, part.budget_s))
        for part in PARTS
        if part.name in names
    ]


def missing_packages() -> list[str]:
    """The pip names of the required packages this Python cannot import."""
    return [
        pip for module, pip in REQUIRED_MODULES.items() if importlib.util.find_spec(module) is None
    ]


def cuda_device() -> str | None:
    """The first CUDA GPU's name, or None without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main(
    argv: Sequence[str] | None = None,
    runners: Mapping[str, Callable[[float], dict[str, Any]]] | None = None,
    device: Callable[[], str | None] = cuda_device,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """``make gpu-check``: check the arguments, the packages and the GPU, run the parts that fit,
    write gpu_check.json and gpu_check.md. Returns the exit status (2: bad input or no GPU)."""
    args = parser().parse_args(argv)
    try:
        parts = check_arguments(args)
        missing = missing_packages()
        if missing:
            raise UsageError(
                f"this Python lacks {', '.join(missing)}: install them (without internet, from "
                "wheels: see docs/performance.md, 'GPU check: make gpu-check')."
            )
        if str(PLUGINS) not in sys.path:
            sys.path[:0] = [str(REPO), str(PLUGINS)]
        name = device()
        if name is None:
            raise UsageError(
                "gpu-check: no CUDA GPU found (torch.cuda.is_available() is false): nothing to measure."
            )
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = clock()
    created = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {name}: {len(parts)} parts, {args.budget_s:.0f} s budget, into {args.out}")

    def write(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """gpu_check.json and .md of the parts so far (after each part: a run cut short keeps them)."""
        doc = report(name, results, created, clock() - started, args.budget_s)
        (args.out / "gpu_check.json").write_text(json.dumps(doc, indent=2) + "\n")
        (args.out / "gpu_check.md").write_text(markdown(doc))
        return doc

    runners = runners or part_runners(args.out, args.num_images)
    doc = write(run_parts(parts, runners, args.budget_s, clock=clock, after_part=write))
    for row in doc["targets"]:
        met = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
        print(f"  {row['what']} {row['target']}: {_fmt(row['value'])} ({met})")
    print(f"Results: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file: the checkout's package importable
        sys.path.insert(0, str(REPO))
    sys.exit(main())
