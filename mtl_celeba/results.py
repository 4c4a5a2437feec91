"""The run's results file (``metrics.json``) and the final console table.

``metrics.json`` is what ``mtl-report`` reads; its fields are documented in the README.
It is written atomically at the start (status ``running``), and again at the end
(``completed`` or ``failed`` with the error), so a sweep folder always says how each run went.
On a full disk the final status overwrites the small start file in place (which needs no
free space), so a run that failed for lack of space still says ``failed``.

pandas and the metric names (torch) are imported where used: the entry points import this
module before they validate the config, which must take a second, not half a minute.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtl_celeba.errors import NO_SPACE
from mtl_celeba.io import overwrite_in_place, write_json_atomic

if TYPE_CHECKING:
    import pandas as pd

RESULTS_FILE = "metrics.json"
SCHEMA_VERSION = 1


def split_results(tasks: Sequence[str], values: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """``{metric: [per task]}`` -> ``{"per_task": {task: {metric: v}}, "mean": {metric: v}}``."""
    from mtl_celeba.models.metrics import METRIC_NAMES

    per_task = {
        task: {name: float(values[name][i]) for name in METRIC_NAMES}
        for i, task in enumerate(tasks)
    }
    mean = {name: float(sum(values[name]) / len(tasks)) for name in METRIC_NAMES}
    return {"per_task": per_task, "mean": mean}


def evaluation_results(model: Any, datamodule: Any) -> dict[str, Any]:
    """The data and metric fields of ``metrics.json`` from a tested module and its DataModule."""
    tasks = list(model.tasks)

    def per_task(values: Sequence[Any]) -> dict[str, Any]:
        return {
            task: value.item() if hasattr(value, "item") else value
            for task, value in zip(tasks, values, strict=True)
        }

    return {
        "attributes": tasks,
        "samples": datamodule.split_sizes(),
        "label_counts": per_task(datamodule.label_counts("train")),
        "task_depths": per_task(model.task_depths),
        "majority_accuracy": per_task(datamodule.majority_accuracy("test")),
        **{
            split: split_results(tasks, model.results[split])
            for split in ("val", "test")
            if split in model.results
        },
    }


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``metrics.json`` as a dict: the one reader of the file.

    Raises ``FileNotFoundError`` when the run has none, ``OSError`` when it cannot be read and
    ``ValueError`` when it is not a JSON object (a run killed mid-write never leaves one: writes
    are atomic, but a file copied by hand may be cut).
    """
    path = Path(run_dir) / RESULTS_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def write_results(run_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as the run's ``metrics.json``, atomically; returns the path.

    If the disk is full, a final status is written in place over the existing file: all of
    ``results`` if it fits in the space the file holds, else its status, error and run folder.
    """
    path = Path(run_dir) / RESULTS_FILE
    data = {"schema_version": SCHEMA_VERSION, **results}
    try:
        write_json_atomic(path, data)
    except OSError as error:
        if error.errno not in NO_SPACE or not path.is_file():
            raise
        short = {k: data[k] for k in ("schema_version", "status", "run_dir") if k in data}
        short["error"] = str(data.get("error", ""))[:500]
        for record in (data, short):
            if overwrite_in_place(path, json.dumps(record, default=str) + "\n"):
                return path
        raise
    return path


def results_table(results: Mapping[str, Any], split: str = "test") -> pd.DataFrame:
    """Per-task metrics of ``split`` with the majority-class baseline (and DST drop rates) + overall row."""
    import pandas as pd

    from mtl_celeba.models.metrics import METRIC_NAMES

    per_task = results[split]["per_task"]
    table = pd.DataFrame.from_dict(per_task, orient="index")[list(METRIC_NAMES)]
    table["majority"] = pd.Series(results.get("majority_accuracy", {}))
    schedule = results.get("schedule") or {}
    if "mean_drop_rate" in schedule:
        table["drop_rate"] = pd.Series(schedule["mean_drop_rate"])
        table["active_epochs"] = pd.Series(schedule["active_epochs"])
    table.loc["overall"] = table.mean(numeric_only=True)
    table.index.name = "task"
    return table


def format_table(table: pd.DataFrame) -> str:
    """Fixed-width text for the console."""
    return table.to_string(float_format=lambda value: f"{value:.4f}")
