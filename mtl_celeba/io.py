"""Atomic file writes: results are either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates the file owner-only (0600); results are meant to be shared like any file
    # the user writes, so give it the mode open() would: 0666 less the umask
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


#: How :func:`atomic_open` names its temporary files: ``.<name>.<random>.tmp``.
TEMPORARY_GLOB = ".*.tmp"


def remove_leftover_temporaries(*folders: str | Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left in ``folders``
    (a SIGKILL skips :func:`atomic_open`'s clean-up); returns the files removed.

    Call only where no other process is writing, e.g. a run folder its own run is starting in.
    """
    removed = []
    for folder in folders:
        for path in sorted(Path(folder).glob(TEMPORARY_GLOB)):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def overwrite_in_place(path: str | Path, text: str) -> bool:
    """Overwrite an existing small file in place; for when the disk is full.

    An atomic write needs room for a second copy; overwriting blocks the file already owns
    (and truncating it) needs none on ordinary filesystems. Not atomic, so only a last
    resort. Returns False if ``text`` is longer than the space the file holds.
    """
    path = Path(path)
    data = text.encode("utf-8")
    allocated = path.stat().st_blocks * 512
    if len(data) > max(allocated, path.stat().st_size):
        return False
    with open(path, "r+b") as handle:
        handle.write(data)
        handle.truncate(len(data))
        handle.flush()
        os.fsync(handle.fileno())
    return True


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_figure(figure: Figure, path: Path, dpi: int = 120) -> None:
    """Render a matplotlib ``figure`` to PNG with Agg (no pyplot, no display) and write it
    atomically: to a temporary file in the same folder, renamed onto ``path`` once complete."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
