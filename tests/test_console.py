"""A console a person reads, and the run folder's log file that repeats it (issue 14).

Lightning's tips and known harmless warnings are filtered at their source, messages and the
final table go through logging (one stream, and ``RUN/train.log``), epochs count from 1
everywhere a person reads them, README sections that messages name exist, user mistakes
exit 2 (sweeps included), and a failed ``mtl-eval`` leaves no run folder.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mtl_celeba.config import PROJECT_ROOT
from mtl_celeba.run.console import ConsoleHandler, configure_lightning_output

#: What the console used to show and must not any more.
NOISE = (
    "litlogger",  # Lightning's "💡 Tip" advertisement
    "Tip:",
    "LeafSpec",  # torch's deprecation, raised by Lightning's _pytree helper
    "log_every_n_steps",  # Lightning's warning for epochs of few batches
    "INFO:",  # Lightning's own stderr handler, which repeated every message
    "worker processes in total",  # torch: more DataLoader workers than cores
    "does not have many workers",  # Lightning: fewer workers than it suggests
    "Epoch 0",  # Lightning's 0-based progress bar
)


def readme_headings() -> set[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def test_readme_sections_named_in_messages_exist() -> None:
    """Every ``(see README, 'Section')`` in the package names a heading of README.md."""
    named = {
        name: path.relative_to(PROJECT_ROOT)
        for path in (PROJECT_ROOT / "mtl_celeba").rglob("*.py")
        for name in re.findall(r"README,\s*'([^']+)'", path.read_text())
    }
    assert named, "the pattern finds the messages' references (e.g. data/celeba.py)"
    headings = readme_headings()
    assert {name: str(path) for name, path in named.items() if name not in headings} == {}


def test_lightning_tips_are_dropped_and_other_messages_kept(caplog) -> None:
    configure_lightning_output()
    with caplog.at_level(logging.INFO):
        for name in (
            "lightning.pytorch.utilities.rank_zero",
            "lightning.fabric.utilities.rank_zero",
        ):
            logger = logging.getLogger(name)
            logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
            logger.info("GPU available: False, used: False")
    assert "litlogger" not in caplog.text
    assert caplog.text.count("GPU available") == 2


def test_known_warnings_are_filtered_narrowly_and_others_logged(caplog) -> None:
    """Filtered by message and module; any other warning becomes a log record."""
    leafspec = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(...)` instead."
    interval = "The number of training batches (2) is smaller than the logging interval 10."
    with warnings.catch_warnings():
        logging.captureWarnings(False)  # an earlier test may have left it half set
        configure_lightning_output()
        try:
            with caplog.at_level(logging.WARNING, logger="py.warnings"):
                pytree = "lightning.pytorch.utilities._pytree"
                warnings.warn_explicit(leafspec, FutureWarning, "_pytree.py", 21, module=pytree)
                loop = "lightning.pytorch.loops.fit_loop"
                warnings.warn_explicit(interval, UserWarning, "fit_loop.py", 321, module=loop)
                # the same module's other warnings, and the same message from elsewhere, stay
                warnings.warn_explicit("other", FutureWarning, "_pytree.py", 30, module=pytree)
                warnings.warn_explicit(leafspec, FutureWarning, "mine.py", 1, module="mine")
        finally:
            logging.captureWarnings(False)
    assert "smaller than the logging interval" not in caplog.text
    assert "_pytree.py:30: FutureWarning: other" in caplog.text
    assert caplog.text.count("LeafSpec") == 1 and "mine.py:1" in caplog.text


def test_console_handler_writes_plain_lines() -> None:
    stream = io.StringIO()
    handler = ConsoleHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(
        logging.LogRecord("x", logging.INFO, __file__, 1, "Run folder: %s", ("r",), None)
    )
    assert stream.getvalue() == "Run folder: r\n"


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (3, 2), (5, 4), (64, 4)])
def test_default_loader_workers_fit_the_machine(monkeypatch, tmp_path, cores, workers) -> None:
    """``data.num_workers=null``: min(4, cores - 1), at least 1; an explicit count is kept."""
    from mtl_celeba.data.datamodule import CelebADataModule

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert CelebADataModule(str(tmp_path), ["Male"], num_workers=None).loader_workers() == workers
    assert CelebADataModule(str(tmp_path), ["Male"], num_workers=0).loader_workers() == 0


def test_final_table_counts_epochs_from_one() -> None:
    from mtl_celeba.run.results import METRIC_NAMES
    from mtl_celeba.train import summary_text

    scores = dict.fromkeys(METRIC_NAMES, 0.5)
    results = {
        "test": {"per_task": {"Male": scores}, "mean": scores},
        "best_checkpoint": "RUN/checkpoints/epoch002-acc0.5000.ckpt",
        "best_epoch": 2,
        "epochs_trained": 2,
    }
    text = summary_text(results, Path("RUN"))
    assert text.startswith("Test metrics (best checkpoint, epoch 2 of 2):")
    assert "overall" in text and "Run folder:  RUN" in text


def test_remove_empty_run_folder_keeps_other_files(tmp_path: Path) -> None:
    from mtl_celeba.evaluate import remove_empty_run_folder

    for run, extra in (("empty", None), ("kept", "notes.txt")):
        folder = tmp_path / run
        (folder / ".hydra").mkdir(parents=True)
        for name in ("config", "hydra", "overrides"):
            (folder / ".hydra" / f"{name}.yaml").write_text("{}")
        (folder / "evaluate.log").write_text("")
        if extra:
            (folder / extra).write_text("mine")
        remove_empty_run_folder(folder)
    assert not (tmp_path / "empty").exists()
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["notes.txt"]


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_failed_mtl_eval_leaves_no_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "eval"
    done = run_module(
        "mtl_celeba.evaluate", f"ckpt_path={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={run_dir}"
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ckpt_path") and done.stderr.count("\n") == 1
    assert not run_dir.exists(), "Hydra's folder of the failed evaluation is removed"


def test_sweep_of_bad_values_exits_2_with_one_line_per_job(tmp_path: Path) -> None:
    """Values that differ per job are checked in each job: each failed job says one line (and
    records it), the sweep ends with status 2 as a single run would, without a traceback."""
    sweep = tmp_path / "sweep"
    done = run_module(
        "mtl_celeba.train",
        "-m",
        "model.head_dropout=1.5,2.0",
        f"hydra.sweep.dir={sweep}",
        f"data.root={tmp_path / 'nodata'}",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert [e.split(":")[1] for e in errors] == [
        " model.head_dropout is 1.5",
        " model.head_dropout is 2.0",
    ]
    assert "Traceback" not in done.stderr
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "failed"
        assert "error: model.head_dropout is" in (sweep / job / "train.log").read_text()


@pytest.mark.slow
def test_tiny_training_console_and_log_file(synthetic_root: Path, tmp_path: Path) -> None:
    """A real run with the default console: no noise, the table on stdout and in train.log,
    epochs counted from 1 in the progress bar, the table, metrics.json and checkpoint names."""
    run_dir = tmp_path / "run"
    done = run_module(
        "mtl_celeba.train",
        f"data.root={synthetic_root}",
        "data.num_images=400",
        "data.image_size=32",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.cache_workers=1",
        "trainer.max_epochs=2",
        "model.head_hidden=[16]",
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert [noise for noise in NOISE if noise in console] == []
    assert console.count("Restoring states from the checkpoint") == 1
    assert "Epoch 1/2" in console and "Epoch 2/2" in console

    results = json.loads((run_dir / "metrics.json").read_text())
    best = results["best_epoch"]
    assert best in (1, 2) and results["epochs_trained"] == 2
    assert Path(results["best_checkpoint"]).name.startswith(f"epoch{best:03d}-acc")

    # messages and the table on stdout (plain, no timestamps), the same lines in train.log
    title = f"Test metrics (best checkpoint, epoch {best} of 2):"
    assert title in done.stdout and "Test metrics" not in done.stderr
    table = done.stdout[done.stdout.index(title) : done.stdout.index("TensorBoard:")]
    assert "overall" in table and not re.search(r"^\[\d{4}-", done.stdout, re.MULTILINE)
    log = (run_dir / "train.log").read_text()
    missing = [line for line in table.splitlines() if line.rstrip() not in log]
    assert missing == []
    for message in ("Positive rate per attribute", "Restoring states", "TensorBoard:"):
        assert message in log
    assert [noise for noise in NOISE if noise in log] == []

    # a data key the training run does not have: one line, exit 2, and no eval folder left
    eval_dir = tmp_path / "eval"
    done = run_module(
        "mtl_celeba.evaluate",
        f"ckpt_path={results['best_checkpoint']}",
        "+data.imagesize=32",
        f"hydra.run.dir={eval_dir}",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Did you mean data.image_size?" in done.stderr and "Traceback" not in done.stderr
    assert not eval_dir.exists()
