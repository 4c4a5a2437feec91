"""Reading run folders: every ``metrics.json`` below the given folders as one table (one row
per run x task), with the labels tables and plots name configurations by, and the failed runs;
and the runs' gradient-conflict matrices (``gradient_conflicts.json``)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from mtl_celeba.errors import UserError
from mtl_celeba.run.layout import GRADIENT_CONFLICTS, HYDRA_DIR, OVERRIDES_YAML, RESULTS_FILE
from mtl_celeba.run.results import RunConfig, read_results
from mtl_celeba.scheduling.dst import DST_METRICS

# --------------------------------------------------------------------------- finding runs


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Every run folder (one holding ``metrics.json`` or ``.hydra/``) at any depth below ``paths``."""
    run_dirs: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(
                f"{path} does not exist: pass a sweep folder such as outputs/train/multiruns/<time>."
            )
        if not path.is_dir():
            raise UserError(
                f"{path} is not a folder: pass a sweep folder such as outputs/train/multiruns/<time>."
            )
        found = {p.parent for p in path.rglob(RESULTS_FILE) if p.is_file()}
        found |= {p.parent for p in path.rglob(HYDRA_DIR) if p.is_dir()}
        if not found:
            raise UserError(
                f"{path} holds no run folders (none has a {RESULTS_FILE} or a .hydra/ folder): "
                "pass the folder a sweep wrote, such as outputs/train/multiruns/<time>."
            )
        run_dirs |= {p.resolve() for p in found}
    return sorted(run_dirs, key=natural_key)


def natural_key(path: Path) -> list[Any]:
    """Sort job folders 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def drop_metrics_label(metrics: Sequence[str] | None) -> str:
    """A short name for an enabled DST metric set: ``all``, ``all but stagnancy``, ``depth+count``."""
    if not metrics:
        return "-"
    enabled = [m for m in DST_METRICS if m in metrics] + sorted(set(metrics) - set(DST_METRICS))
    missing = [m for m in DST_METRICS if m not in metrics]
    if not missing:
        return "all"
    if len(missing) == 1 and len(enabled) == len(DST_METRICS) - 1:
        return f"all but {missing[0]}"
    return "+".join(enabled)


def transfer_label(config: RunConfig) -> str:
    """How a run uses a pretrained backbone: ``-`` (trained from scratch, nothing frozen),
    ``linear probe from DEFAULT``, ``last 2 blocks from resnet18.pth``, ``full fine-tune from ...``,
    ``two-stage (backbone from epoch 3) from ...`` (metrics.json ``weights``, ``freeze``, ``finetune``;
    ``finetune`` is Lightning's 0-based ``unfreeze_backbone_at_epoch``, the label counts from 1)."""
    weights, freeze, finetune = config.weights, config.freeze, config.finetune
    if str(freeze).strip().lower() == "none":
        freeze = None
    if weights is None and freeze is None and finetune is None:
        return "-"
    if finetune is not None:
        mode = f"two-stage (backbone from epoch {int(finetune) + 1})"
    elif str(freeze).lower() == "all":
        mode = "linear probe"
    elif freeze is not None:
        mode = f"last {freeze} blocks"
    else:
        mode = "full fine-tune"
    return f"{mode} from {'scratch' if weights is None else Path(str(weights)).name}"


def configuration_label(strategy: str, drop_metrics: str, transfer: str = "-") -> str:
    """``dst (all)``, ``random_drop``, ``mtl · linear probe from DEFAULT``: how tables and plots
    name a configuration."""
    label = strategy if drop_metrics == "-" else f"{strategy} ({drop_metrics})"
    return label if transfer == "-" else f"{label} · {transfer}"


#: Overrides the report already groups by (or that change how fast, not what, a run trains):
#: everything else a job overrides outside its strategy is part of its scale label.
GROUPED_OVERRIDES = (
    "strategy", "seed", "model", "attributes", "experiment", "hydra", "data", "trainer",
    "callbacks", "paths", "logger", "resume", "test", "debug",
    "data.source", "data.root", "data.num_images", "data.image_size", "data.label_noise",
    "data.attributes", "data.num_workers", "data.pipeline", "data.device_cache",
    "data.cache_dir", "data.cache_workers", "data.pin_memory", "data.check_images",
    "data.eval_batch_size", "trainer.max_epochs", "trainer.precision", "trainer.accelerator",
    "trainer.devices", "trainer.enable_progress_bar", "model.backbone", "model.weights",
    "model.freeze",
)  # fmt: skip


def experiment_overrides(run_dir: Path) -> str:
    """The job's overrides that change the experiment but are neither its strategy, seed,
    backbone, attribute set nor a setting the scale label names already ('' if none)."""
    path = run_dir / OVERRIDES_YAML
    if not path.is_file():
        return ""
    try:
        overrides = [str(o) for o in OmegaConf.load(path)]
    except Exception:  # an unreadable record only costs this part of the label
        return ""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in GROUPED_OVERRIDES or key.split(".", 1)[0] in (
            "strategy",
            "hydra",
            "paths",
            "logger",
        ):
            continue
        if key.startswith("callbacks."):
            continue
        kept.append(override.lstrip("+"))
    return " ".join(sorted(kept))


#: Precision as the scale label says it.
PRECISION_WORDS = {
    "32": "fp32", "32-true": "fp32", "16-mixed": "fp16 mixed", "bf16-mixed": "bf16 mixed",
    "bf16-true": "bf16", "16-true": "fp16", "64": "fp64", "64-true": "fp64",
}  # fmt: skip


def scale_label(config: RunConfig, samples: dict[str, Any] | None, overrides: str = "") -> str:
    """The run's scale in words, e.g. ``synthetic CelebA, 800 images (643 train), 32 px, 3 epochs,
    fp32``: runs that differ in it are reported in separate sections, never paired."""
    samples = samples or {}
    train = samples.get("train")
    total = sum(int(v) for v in samples.values()) if samples else config.num_images
    if config.data_source == "synthetic":
        data = "synthetic CelebA"
        if total is not None:
            data += f", {int(total):,} images"
            data += f" ({int(train):,} train)" if train is not None else ""
    elif config.data_source == "celeba":
        data = "real CelebA" + (f", {int(train):,} train" if train is not None else "")
    else:
        data = f"data source {config.data_source}"
    parts = [data]
    if config.image_size is not None:
        parts.append(f"{config.image_size} px")
    if config.max_epochs is not None:
        parts.append(f"{config.max_epochs} epochs")
    if config.precision is not None:
        parts.append(PRECISION_WORDS.get(str(config.precision), str(config.precision)))
    noise = config.label_noise
    if noise is not None and noise not in ("0", "0.0", "None"):
        parts.append(f"label noise {noise}")
    if overrides:
        parts.append(f"with {overrides}")
    return ", ".join(parts)


def _overrides(run_dir: Path) -> str:
    """The job's command-line overrides from Hydra's ``.hydra/overrides.yaml`` ('' if none)."""
    path = run_dir / OVERRIDES_YAML
    if not path.is_file():
        return ""
    try:
        return " ".join(str(o) for o in OmegaConf.load(path))
    except Exception:  # a damaged file only costs the description of a failed run
        return ""


def _run_rows(run_dir: Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task of a completed run: its configuration and test metrics."""
    config = RunConfig.from_dict(results.get("config"))
    strategy = str(config.strategy)
    drop_metrics = drop_metrics_label(config.drop_metrics)
    transfer = transfer_label(config)
    run = {
        "run": str(run_dir),
        "strategy": strategy,
        "drop_metrics": drop_metrics,
        "transfer": transfer,
        "configuration": configuration_label(strategy, drop_metrics, transfer),
        "backbone": str(config.backbone),
        "attribute_set": str(config.attribute_set),
        "seed": config.seed,
        "data_source": str(config.data_source),
        "data_root": config.data_root,
        "image_size": config.image_size,
        "max_epochs": config.max_epochs,
        "precision": config.precision,
        "experiment": config.experiment,
        "epochs_trained": results.get("epochs_trained"),
        "scale": scale_label(config, results.get("samples"), experiment_overrides(run_dir)),
        "test_images": (results.get("samples") or {}).get("test", np.nan),
        **_schedule_columns(results.get("schedule"), len(results["test"]["per_task"])),
    }
    majority = results.get("majority_accuracy") or {}
    return [
        {
            **run,
            "task": task,
            **metrics,
            "majority_accuracy": majority.get(task, np.nan),
        }
        for task, metrics in results["test"]["per_task"].items()
    ]


def _schedule_columns(schedule: dict[str, Any] | None, tasks: int) -> dict[str, Any]:
    """What a gating strategy did: ``drop_rate`` (share of task-epochs it dropped, realised),
    ``gates`` (gates drawn: epochs x tasks, or NaN for per-step gates) and ``gate_every``."""
    schedule = schedule or {}
    realised = schedule.get("realised_drop_rate")
    if not realised:
        return {"drop_rate": np.nan, "gates": np.nan, "gate_every": None}
    every = schedule.get("gate_every", "epoch")
    epochs = schedule.get("epochs", np.nan)
    return {
        "drop_rate": float(np.mean(list(realised.values()))),
        "gates": epochs * tasks if every == "epoch" else np.nan,
        "gate_every": every,
    }


def _failure_reason(run_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """Why a run cannot be reported (None if it can), and its parsed results if readable."""
    try:
        results = read_results(run_dir)
    except FileNotFoundError:
        return f"no {RESULTS_FILE}: the job stopped before training started", None
    except (OSError, ValueError) as error:
        return f"{RESULTS_FILE} cannot be read ({error})", None
    status = results.get("status")
    if status == "failed":
        return results.get("error") or "failed without an error message", results
    if status == "running":
        return (
            "never finished: status is still 'running' (killed, out of memory or timed out)",
            results,
        )
    if status == "requeued":
        return "requeued at a time limit or preemption: its next attempt has not finished", results
    if status != "completed":
        return f"unknown status {status!r}", results
    per_task = (results.get("test") or {}).get("per_task")
    if not per_task:
        return "completed without test metrics (run with test=false?)", results
    return None, results


#: The columns of the run x task table besides the metrics (those in the runs' metrics.json).
RUN_COLUMNS = [
    "run", "strategy", "drop_metrics", "transfer", "configuration", "backbone", "attribute_set", "seed",
    "data_source", "data_root", "image_size", "max_epochs", "precision", "experiment",
    "epochs_trained", "scale", "test_images", "drop_rate", "gates", "gate_every", "task",
    "majority_accuracy",
]  # fmt: skip

#: What makes two runs the same job: a run repeating all of them (the same configuration and
#: seed in two grids) is counted once.
RUN_IDENTITY = (
    "strategy", "drop_metrics", "transfer", "backbone", "attribute_set", "scale", "seed",
)  # fmt: skip


def drop_repeats(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the first run (in folder order) of each configuration and seed; returns (scores,
    repeats) with ``repeats`` one row per run left out: ``run``, ``kept`` (the run counted),
    ``configuration``, ``seed`` and, for STL, ``task``."""
    columns = ["run", "kept", "configuration", "seed", "task"]
    if scores.empty:
        return scores, pd.DataFrame(columns=columns)
    runs = scores.drop_duplicates("run")
    # STL runs of one seed differ by their task; a seedless run is never a repeat
    identity = [*RUN_IDENTITY, "stl_task"]
    runs = runs.assign(
        stl_task=[
            ",".join(scores.loc[scores["run"] == run, "task"]) if strategy == "stl" else ""
            for run, strategy in zip(runs["run"], runs["strategy"], strict=True)
        ]
    )
    seeded = runs[runs["seed"].notna()]
    first = seeded.groupby(identity, sort=False, dropna=False)["run"].transform("first")
    repeated = seeded[seeded["run"] != first]
    repeats = pd.DataFrame(
        {
            "run": repeated["run"],
            "kept": first[repeated.index],
            "configuration": repeated["configuration"],
            "seed": repeated["seed"],
            "task": repeated["stl_task"],
        }
    ).reset_index(drop=True)
    return scores[~scores["run"].isin(set(repeats["run"]))].reset_index(drop=True), repeats


def collect_runs(run_dirs: Iterable[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read run folders into (scores, failed).

    ``scores`` has one row per completed run x task: the configuration, the task and its test
    metrics. ``failed`` has one row per run that cannot be reported: ``run``, ``overrides``
    (the job's Hydra overrides) and ``reason``.
    """
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for run_dir in run_dirs:
        reason, results = _failure_reason(run_dir)
        if reason is None and results is not None:
            rows.extend(_run_rows(run_dir, results))
        else:
            failed.append(
                {"run": str(run_dir), "overrides": _overrides(run_dir), "reason": str(reason)}
            )
    scores = pd.DataFrame(rows) if rows else pd.DataFrame(columns=RUN_COLUMNS)
    return scores, pd.DataFrame(failed, columns=["run", "overrides", "reason"])


# --------------------------------------------------------------------------- gradient conflicts

#: What groups the conflict matrices of several runs (one heatmap per configuration and group).
CONFLICT_KEYS = ("scale", "backbone", "attribute_set", "configuration")


def read_conflicts(scores: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every reported run's ``gradient_conflicts.json``, one row per run: its
    :data:`CONFLICT_KEYS`, ``seed``, ``tasks``, ``cosine`` (the (T, T) mean over its epochs,
    NaN where never measured), ``gradients``, ``source`` and ``drop_rate`` (each task's
    realised drop rate from ``metrics.json``, or None for a strategy that drops nothing).
    Also {run: why it was left out} for a file that cannot be read; a run without the file
    (nothing was measured) or with one task (STL: no pair) is simply absent."""
    columns = [*CONFLICT_KEYS, "seed", "tasks", "cosine", "gradients", "source", "drop_rate"]
    rows, skipped = [], {}
    for run in scores.drop_duplicates("run").itertuples(index=False):
        path = Path(run.run) / GRADIENT_CONFLICTS
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            tasks = [str(task) for task in record["tasks"]]
            epochs = [np.array(e["cosine"], dtype=float) for e in record["epochs"]]
            if not epochs or any(e.shape != (len(tasks), len(tasks)) for e in epochs):
                raise ValueError("no epoch, or a matrix not tasks x tasks")
        except (OSError, ValueError, KeyError, TypeError) as error:
            skipped[run.run] = f"{GRADIENT_CONFLICTS} cannot be read ({error})"
            continue
        if len(tasks) < 2:  # a single-task run has no pair of tasks
            continue
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a pair never measured: NaN
            cosine = np.nanmean(np.stack(epochs), axis=0)
        realised = (read_results(Path(run.run)).get("schedule") or {}).get("realised_drop_rate")
        rows.append(
            {
                **{key: getattr(run, key) for key in CONFLICT_KEYS},
                "seed": run.seed,
                "tasks": tasks,
                "cosine": cosine,
                "gradients": record.get("gradients"),
                "source": record.get("source"),
                "drop_rate": [realised.get(task, np.nan) for task in tasks] if realised else None,
            }
        )
    return pd.DataFrame(rows, columns=columns), skipped
