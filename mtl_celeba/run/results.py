"""The run's results file (``metrics.json``) and the final console table.

``metrics.json`` is what ``mtl-report`` reads; its fields are listed in the documentation
(see docs/run-folder.md, 'metrics.json').
It is written atomically at the start (status ``running``), and again at the end
(``completed`` or ``failed`` with the error), so a sweep folder always says how each run went.
On a full disk the final status overwrites the small start file in place (which needs no
free space), so a run that failed for lack of space still says ``failed``.

pandas is imported where used: the entry points import this module before they validate the
config, which must take a second, not half a minute.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from mtl_celeba.config import CONFIG_DIR
from mtl_celeba.errors import NO_SPACE
from mtl_celeba.io import overwrite_in_place, write_json_atomic
from mtl_celeba.run.layout import RESULTS_FILE

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
#: The metrics every run records per task and split (computed by mtl_celeba.models.metrics).
METRIC_NAMES = ("accuracy", "balanced_accuracy", "f1", "auroc")
#: Written for a setting a run's record does not have (an older metrics.json).
UNKNOWN = "unknown"


@dataclass(frozen=True)
class RunConfig:
    """The ``config`` block of metrics.json: the settings the report groups and labels runs by.

    Written by mtl-train (and by mtl-eval, from the evaluated checkpoint's training run) and
    read by mtl-report and ``mtl-bench --sweep`` through :meth:`from_dict`, never as a raw dict.
    """

    strategy: str = UNKNOWN
    backbone: str = UNKNOWN
    seed: int | None = None
    #: the pretrained weights, the frozen part and BackboneFinetuning's 0-based unfreeze epoch
    weights: str | None = None
    freeze: str | int | None = None
    finetune: int | None = None
    #: DST's enabled metrics (None for other strategies)
    drop_metrics: list[str] | None = None
    #: the ``attributes`` preset's name when data.attributes is its list, else ``custom[A,B,...]``
    attribute_set: str = UNKNOWN
    experiment: str | None = None
    data_source: str = UNKNOWN
    data_root: str | None = None
    image_size: int | None = None
    precision: str | None = None
    max_epochs: int | None = None
    #: the synthetic data's image count (None for real CelebA, whose splits are fixed)
    num_images: int | None = None
    #: ``data.label_noise`` as written (a rate, or a named preset such as ``celeba``)
    label_noise: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_training(cls, cfg: DictConfig, choices: Mapping[str, Any]) -> RunConfig:
        """The main choices of a training run (its composed config and Hydra's group choices), as
        the report groups runs by them."""
        strategy = cfg.strategy
        return cls(
            backbone=cfg.model.backbone,
            weights=cfg.model.weights,
            freeze=cfg.model.freeze,
            # BackboneFinetuning (callbacks=finetune): the epoch the backbone is unfrozen at
            finetune=OmegaConf.select(
                cfg, "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch", default=None
            ),
            strategy=strategy.name,
            drop_metrics=list(strategy.metrics) if "metrics" in strategy else None,
            attribute_set=attribute_set_name(
                choices.get("attributes"), cfg.data.attributes, strategy.get("task")
            ),
            experiment=choices.get("experiment"),
            data_source=cfg.data.source,
            data_root=str(cfg.data.root),
            image_size=cfg.data.image_size,
            seed=cfg.seed,
            precision=str(cfg.trainer.precision),  # mtl-train records trainer.precision
            max_epochs=cfg.trainer.max_epochs,
            num_images=OmegaConf.select(cfg, "data.num_images", default=None)
            if cfg.data.source == "synthetic"
            else None,
            label_noise=str(OmegaConf.select(cfg, "data.label_noise", default=0.0)),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunConfig:
        """A record's ``config`` block; keys it lacks take their defaults, unknown keys are ignored."""
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in (data or {}).items() if key in names})


def attribute_set_name(
    preset: str | None, attributes: Sequence[str], single_task: str | None = None
) -> str:
    """``preset`` when ``attributes`` is that preset's list (``conf/attributes/PRESET.yaml``),
    else ``custom[A,B,...]``: runs on different task lists never share a name.

    A single-task run (``strategy.task``, one of ``experiment=stl``'s jobs) belongs to the
    preset when its task is one of the preset's, so its jobs form one configuration.
    """
    attributes = [str(name) for name in attributes]
    if preset:
        path = CONFIG_DIR / "attributes" / f"{preset}.yaml"
        try:
            listed = OmegaConf.select(OmegaConf.load(path), "attributes", default=None)
        except (OSError, ValueError):
            listed = None
        listed = None if listed is None else [str(name) for name in listed]
        if listed == attributes or (single_task is not None and single_task in (listed or [])):
            return str(preset)
    return f"custom[{','.join(attributes)}]"


def _defined(value: Any) -> float | None:
    """A metric as a float, or None (JSON null, 'n/a') where it is undefined (NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def split_results(tasks: Sequence[str], values: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """``{metric: [per task]}`` -> ``{"per_task": {task: {metric: v}}, "mean": {metric: v}}``.

    An undefined value (NaN: e.g. AUROC of a task without both classes in the split) is
    recorded as null and left out of its mean; ``undefined`` then counts, per metric, the tasks
    left out. A metric undefined for every task has a null mean.
    """
    per_task = {
        task: {name: _defined(values[name][i]) for name in METRIC_NAMES}
        for i, task in enumerate(tasks)
    }
    mean: dict[str, float | None] = {}
    undefined: dict[str, int] = {}
    for name in METRIC_NAMES:
        defined = [v[name] for v in per_task.values() if v[name] is not None]
        mean[name] = sum(defined) / len(defined) if defined else None
        if len(defined) < len(tasks):
            undefined[name] = len(tasks) - len(defined)
    result: dict[str, Any] = {"per_task": per_task, "mean": mean}
    if undefined:
        result["undefined"] = undefined
    return result


def undefined_note(results: Mapping[str, Any], split: str = "test") -> str | None:
    """A line saying which metrics' means leave out undefined tasks, or None."""
    undefined = (results.get(split) or {}).get("undefined") or {}
    if not undefined:
        return None
    counts = ", ".join(f"{name} of {count}" for name, count in undefined.items())
    return (
        f"n/a: undefined on the {split} split (a task without both classes there), left out of "
        f"the means: {counts} task(s)."
    )


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
        # the same baseline on the split the curves show (curves.png)
        "val_majority_accuracy": per_task(datamodule.majority_accuracy("val")),
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

    per_task = results[split]["per_task"]
    table = pd.DataFrame.from_dict(per_task, orient="index")[list(METRIC_NAMES)].astype(float)
    table["majority"] = pd.Series(results.get("majority_accuracy", {}))
    schedule = results.get("schedule") or {}
    if "mean_drop_rate" in schedule:
        table["drop_rate"] = pd.Series(schedule["mean_drop_rate"])
        table["active_epochs"] = pd.Series(schedule["active_epochs"])
    table.loc["overall"] = table.mean(numeric_only=True)  # skips n/a (NaN)
    table.index.name = "task"
    note = undefined_note(results, split)
    if note:
        table.attrs["note"] = note
    return table


def format_table(table: pd.DataFrame) -> str:
    """Fixed-width text for the console (n/a for undefined values, then the table's note)."""
    text = table.to_string(float_format=lambda value: f"{value:.4f}", na_rep="n/a")
    note = table.attrs.get("note")
    return f"{text}\n{note}" if note else text
