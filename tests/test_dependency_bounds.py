"""The lower bounds in pyproject.toml are honest: together they resolve, each one exactly.

``uv pip compile --resolution lowest-direct`` (the project's Python) resolves the direct
dependencies at their lowest allowed versions; a bound that cannot be met (a package version
that conflicts with the other bounds, or that no longer exists) resolves higher, and the test
names it. It resolves the core dependencies only (about 30 s): with every extra
(``--all-extras``: Ray, MLflow, W&B) the resolution takes minutes, so the extras' bounds were
set from one such run by hand (``uv pip compile --resolution lowest-direct --all-extras
pyproject.toml``). This checks resolution on PyPI, not that the lowest set installs and
imports (that would download torch 2.4). Needs the network; marked slow.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from mtl_celeba.config import PROJECT_ROOT


def declared_requirements(extras: bool = True) -> list[Requirement]:
    """The project's dependencies, and those of every extra unless ``extras`` is false."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {}).values() if extras else []
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in optional for r in e)]]


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return max(bounds) if bounds else None


def test_every_dependency_has_a_lower_and_an_upper_bound_where_its_api_moved() -> None:
    requirements = {r.name: r for r in declared_requirements()}
    assert all(lower_bound(r) is not None for r in requirements.values()), requirements
    for name, below in [("hydra-core", "1.4"), ("omegaconf", "2.4"), ("torchjd", "0.19")]:
        assert f"<{below}" in str(requirements[name].specifier), requirements[name]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv")
def test_lowest_direct_resolution_meets_every_lower_bound(tmp_path: Path) -> None:
    out = tmp_path / "lowest.txt"
    done = subprocess.run(
        [
            "uv",
            "pip",
            "compile",
            "--quiet",
            "--resolution",
            "lowest-direct",
            "--python-version",
            "3.11",
            "--no-header",
            str(PROJECT_ROOT / "pyproject.toml"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", out.read_text(), re.MULTILINE))
    pins = {canonical(name): version for name, version in pins.items()}
    unmet = {
        r.name: f"declared >={lower_bound(r)}, lowest that resolves {pins.get(canonical(r.name))}"
        for r in declared_requirements(extras=False)
        if Version(pins[canonical(r.name)]) != lower_bound(r)
    }
    assert unmet == {}
