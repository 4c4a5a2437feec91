"""The package's layout is its architecture: the rooms, the layering rule, the map, the names.

The rule (README, 'Map'): the top of ``mtl_celeba/`` holds only the console scripts' homes
and the ground floor; every other module lives in a room; a module imports only from its own
room, from lower rooms and from the ground floor; ``cli/`` is imported only by the homes; no
module imports a home; and there is no import cycle, counting imports inside functions too.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtl_celeba.config import CONFIG_DIR
from mtl_celeba.scheduling.names import BASELINE, REFERENCE, STRATEGY_ORDER

PACKAGE = Path(__file__).resolve().parents[1] / "mtl_celeba"
README = PACKAGE.parent / "README.md"

#: The console scripts' homes (each also runs as ``python -m mtl_celeba.<home>``).
HOMES = ("train", "evaluate", "predict", "explore")
#: The rooms' own entry points: ``python -m mtl_celeba.report`` and ``python -m mtl_celeba.bench``.
ROOM_ENTRIES = ("report.__main__", "bench.__main__")
GROUND = ("config", "errors", "io", "rng")
#: Rooms from the highest to the lowest: a module may import from its own room and below.
ROOMS = ("cli", "bench", "report", "sweeps", "models", "scheduling", "data", "run")


def module_files() -> dict[str, Path]:
    """``{dotted name relative to mtl_celeba: file}`` for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] == "_hydra_plugins":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere in it (inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
            base = node.module
        elif isinstance(node, ast.Import):
            targets, base = [alias.name for alias in node.names], None
        else:
            continue
        for target in targets:
            name = target if target.removeprefix("mtl_celeba.") in modules else base or target
            if name and name.startswith("mtl_celeba."):
                names.add(name.removeprefix("mtl_celeba."))
    return {name for name in names if name in modules}


def layer(module: str) -> tuple[int, str]:
    """(rank, room): homes and room entries highest (0), then the rooms, the ground floor last."""
    if module in HOMES or module in ROOM_ENTRIES:
        return 0, "entry"
    room = module.split(".")[0]
    if room in ROOMS:
        return 1 + ROOMS.index(room), room
    assert module in GROUND, (
        f"mtl_celeba/{module}.py is neither a home, a room nor the ground floor"
    )
    return 1 + len(ROOMS), "ground"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_the_top_holds_only_homes_and_the_ground_floor() -> None:
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == set(HOMES) | set(GROUND)
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set(ROOMS)


def test_imports_go_down_only(graph: dict[str, set[str]]) -> None:
    upward = []
    for module, targets in graph.items():
        rank, room = layer(module)
        for target in targets:
            target_rank, target_room = layer(target)
            if target_room != room and target_rank <= rank:
                upward.append(f"{module} -> {target}")
    assert not upward, f"imports into a higher or sibling room: {upward}"


def test_cli_is_imported_only_by_the_homes_and_no_one_imports_a_home(
    graph: dict[str, set[str]],
) -> None:
    for module, targets in graph.items():
        if module not in HOMES and not module.startswith("cli"):
            assert not {t for t in targets if t.startswith("cli")}, module
        assert not targets & {*HOMES, *ROOM_ENTRIES}, f"{module} imports an entry point"


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles


def test_the_visitors_own_check_sees_an_upward_import_and_a_cycle() -> None:
    """The checks above can fail: a made-up graph with both faults is caught by the same rules."""
    assert layer("run.results") > layer("models.module") > layer("cli.validate")
    fake = {"run.results": {"models.module"}, "models.module": {"run.results"}}
    upward = [f"{m}->{t}" for m, ts in fake.items() for t in ts if layer(t)[0] <= layer(m)[0]]
    assert upward == ["run.results->models.module"]


def readme_map() -> set[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Map\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Map' section"
    block = re.search(r"```[a-z]*\n(.*?)```", match.group(1), re.S)
    assert block, "README's Map holds no code block"
    return set(re.findall(r"mtl_celeba/[\w/]+\.py", block.group(1)))


def test_every_module_is_on_the_readme_map() -> None:
    on_disk = {
        f"mtl_celeba/{path.relative_to(PACKAGE).as_posix()}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and "_hydra_plugins" not in path.parts
    }
    listed = readme_map()
    assert not on_disk - listed, f"missing from README's Map: {sorted(on_disk - listed)}"
    assert not listed - on_disk, (
        f"on README's Map but not in the package: {sorted(listed - on_disk)}"
    )


def test_strategy_names_have_one_source() -> None:
    """conf/strategy/NAME.yaml says ``name: NAME``; every name has its place in STRATEGY_ORDER."""
    names = []
    for path in sorted((CONFIG_DIR / "strategy").glob("*.yaml")):
        name = OmegaConf.load(path).name
        assert name == path.stem, f"{path.name} says name: {name}"
        names.append(name)
    assert set(names) == set(STRATEGY_ORDER)
    assert STRATEGY_ORDER[0] == BASELINE and STRATEGY_ORDER[-1] == REFERENCE


def test_each_strategy_callback_records_its_config_name(compose_train) -> None:
    from mtl_celeba.config import instantiate

    for name in STRATEGY_ORDER:
        cfg = compose_train([f"strategy={name}"])
        callback = instantiate(cfg.strategy.callback)
        assert callback.results_summary()["strategy"] == name


@pytest.mark.parametrize(
    "module", [*(f"mtl_celeba.{home}" for home in HOMES), "mtl_celeba.report", "mtl_celeba.bench"]
)
def test_python_dash_m_runs_each_command(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower() or "powered by hydra" in done.stdout.lower()
