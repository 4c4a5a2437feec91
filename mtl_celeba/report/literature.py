"""Published results shipped with the package (``mtl-report --literature NAME``), read and checked.

``literature/NAME.csv`` holds one row per method: ``strategy`` (this project's strategy name),
``delta_m`` (the published Δm% in the literature's convention: lower is better, the opposite
sign of this report's Δm%) and ``source`` (paper and table). Only numbers read in a paper's
text belong there. ``literature/NAME_stl_f1.csv`` is the matching single-task reference for
``--stl-reference``. No torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mtl_celeba.errors import UserError, check_choice
from mtl_celeba.scheduling.names import STRATEGY_ORDER

LITERATURE_DIR = Path(__file__).with_name("literature")
COLUMNS = ("strategy", "delta_m", "source")
#: The column the report adds beside its own Δm%.
PUBLISHED = "published Δm% (lower is better)"


def available() -> list[str]:
    """The names ``--literature`` accepts: the packaged tables of published Δm%."""
    return sorted(p.stem for p in LITERATURE_DIR.glob("*.csv") if not p.stem.endswith("_stl_f1"))


def read_literature(name_or_path: str | Path) -> pd.DataFrame:
    """The rows of a literature table (a packaged name, or a CSV path), checked.

    Every row needs a known strategy (once), a finite ``delta_m`` and a non-empty ``source``;
    a bad row is refused with its line number.
    """
    path = Path(name_or_path)
    if not path.suffix:
        check_choice(str(name_or_path), "--literature", available(), "a packaged table")
        path = LITERATURE_DIR / f"{name_or_path}.csv"
    try:
        table = pd.read_csv(path, dtype={"strategy": str, "source": str})
    except (OSError, ValueError) as error:
        raise UserError(f"--literature {path} cannot be read as CSV ({error}).") from None
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise UserError(f"{path} has no column {', '.join(missing)}: give {','.join(COLUMNS)}.")
    for index, row in table.iterrows():
        line = int(index) + 2  # the header is line 1
        if row["strategy"] not in STRATEGY_ORDER:
            raise UserError(f"{path} line {line}: unknown strategy {row['strategy']!r}.")
        value = pd.to_numeric(row["delta_m"], errors="coerce")
        if not math.isfinite(value):
            raise UserError(f"{path} line {line}: delta_m is not a number.")
        if not isinstance(row["source"], str) or not row["source"].strip():
            raise UserError(f"{path} line {line}: cite the paper and table in source.")
    repeated = table["strategy"][table["strategy"].duplicated()]
    if not repeated.empty:
        raise UserError(f"{path} has more than one row for {repeated.iloc[0]}: keep one.")
    return table[list(COLUMNS)].astype({"delta_m": float})


def beside(summary: pd.DataFrame, literature: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (the report's one line per configuration) with the published Δm% of its
    strategy beside the measured one ("" where the table has no row)."""
    published = dict(zip(literature["strategy"], literature["delta_m"], strict=True))
    strategy = summary["configuration"].astype(str).str.split(" ").str[0]
    column = strategy.map(lambda s: f"{published[s]:+.2f}" if s in published else "")
    return summary.assign(**{PUBLISHED: column})
