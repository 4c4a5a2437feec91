"""A newcomer's first seconds: ``--help`` and ``--cfg`` of every entry point import no heavy stack.

torch, Lightning, pandas and matplotlib take 5-30 s to import on a small CPU; the entry points
import them only when a run starts, so help, the composed config and every config mistake
answer in about a second (the config mistakes are covered in test_bad_inputs.py).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

import pytest

from mtl_celeba.config import PROJECT_ROOT

HEAVY = ("torch", "lightning", "torchvision", "pandas", "matplotlib", "scipy", "torchjd")
SCRIPTS = {
    ep.name: ep.value
    for ep in importlib.metadata.entry_points(group="console_scripts")
    if ep.name.startswith("mtl-")
}


def imported_by(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run a console script's entry point in a fresh interpreter; the heavy modules it imported."""
    code = textwrap.dedent(
        f"""
        import atexit, importlib.metadata, sys
        heavy = {HEAVY!r}
        atexit.register(lambda: print("HEAVY:" + ",".join(m for m in heavy if m in sys.modules)))
        (ep,) = [e for e in importlib.metadata.entry_points(group="console_scripts")
                 if e.name == {script!r}]
        sys.argv = [{script!r}, *{list(args)!r}]
        ep.load()()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY:"), done.stdout + done.stderr
    return done, {m for m in last.removeprefix("HEAVY:").split(",") if m}


def test_every_entry_point_is_covered():
    assert set(SCRIPTS) == {
        "mtl-train", "mtl-eval", "mtl-report", "mtl-bench", "mtl-explore", "mtl-predict",
        "mtl-synth",
    }, "a new entry point: add it to the cases below"  # fmt: skip


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("mtl-train", ["--help"]),
        ("mtl-train", ["--cfg", "job"]),
        ("mtl-eval", ["--help"]),
        ("mtl-report", ["--help"]),
        ("mtl-bench", ["--help"]),
        ("mtl-explore", ["--help"]),
        ("mtl-predict", ["--help"]),
        ("mtl-synth", ["--help"]),
    ],
)
def test_help_and_config_import_no_heavy_stack(script: str, args: list[str]):
    done, heavy = imported_by(script, *args)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower() or "strategy:" in done.stdout, done.stdout[:500]
    assert not heavy, f"{script} {' '.join(args)} imported {sorted(heavy)}"


def test_usage_errors_exit_2_before_heavy_imports():
    done, heavy = imported_by("mtl-bench", "--windows")  # argparse: missing value
    assert done.returncode == 2 and not heavy, (done.stderr, heavy)
