"""User-facing errors: one clear sentence instead of a deep traceback."""

from __future__ import annotations

import difflib
import errno
import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """An error the user caused and can fix: bad config, missing file, unknown name.

    The message must name the file or key at fault and say what to do.
    Entry points print it on one line and exit with status 2.
    """


class DataError(UserError):
    """A dataset on disk is missing, malformed or inconsistent."""


class ConfigError(UserError):
    """A config key has a value that cannot work."""


class DiskFullError(UserError):
    """A write failed because the disk (or the user's quota) is full."""


#: How close a misspelling must be for a suggestion (difflib's ratio), everywhere.
SUGGESTION_CUTOFF = 0.6


def did_you_mean(word: object, candidates: Iterable[object], n: int = 1, prefix: str = "") -> str:
    """`` Did you mean X?`` for the closest candidates (a different case counts as closest), or ``""``.

    The one suggestion rule of the project: every "no such name" message uses it. ``prefix``
    is put before each suggestion (a config key's parent: ``data.``).
    """
    names = [str(candidate) for candidate in candidates]
    same_but_case = [name for name in names if name.lower() == str(word).lower()]
    close = same_but_case or difflib.get_close_matches(
        str(word), names, n=n, cutoff=SUGGESTION_CUTOFF
    )
    return f" Did you mean {', '.join(prefix + name for name in close[:n])}?" if close else ""


def check_choice(value: object, key: str, choices: Iterable[object], what: str = "") -> None:
    """Raise a one-line :class:`ConfigError` unless ``value`` is one of ``choices``.

    ``key`` names the setting (``data.resize``, ``--metric``), ``what`` optionally says what
    the choices are. As torchvision's ``verify_str_arg``, one helper for every "use one of" check.
    """
    options = list(choices)
    if value in options:
        return
    shown = f"{value!r}" if isinstance(value, str) else f"{value}"
    listed = ", ".join(str(option) for option in options)
    raise ConfigError(
        f"{key} is {shown}: use one of {what + ': ' if what else ''}{listed}.{did_you_mean(value, options)}"
    )


#: errno values that mean "no space left".
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def mount_point(path: str | os.PathLike[str]) -> str:
    """The mount point of the filesystem holding ``path`` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def disk_full_error(
    error: BaseException,
    folder: str | os.PathLike[str],
    target: str | os.PathLike[str] | None = None,
) -> DiskFullError | None:
    """A one-line :class:`DiskFullError` if ``error``, or an error it was raised from or while
    handling, is "no space left on device"; ``None`` otherwise.

    ``folder`` is the run folder, ``target`` the file being written (if known).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE:
            where = current.filename or target or folder
            mount = mount_point(where)
            size = shutil.disk_usage(mount).total / 2**20
            return DiskFullError(
                f"no space left on {mount} (a {size:.0f} MiB filesystem) while writing {where}: "
                f"free space or point hydra.run.dir elsewhere (this run's folder is {folder})."
            )
        current = current.__cause__ or current.__context__
    return None


class UnwritableError(UserError):
    """A folder the run writes to is read-only (or not the user's)."""


#: errno values that mean "this folder cannot be written".
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def unwritable_error(
    error: BaseException, folder: str | os.PathLike[str]
) -> UnwritableError | None:
    """A one-line :class:`UnwritableError` if ``error`` (or an error it was raised from or while
    handling) is a permission or read-only-filesystem error; ``None`` otherwise."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NOT_WRITABLE:
            where = os.fsdecode(current.filename) if current.filename else folder
            return UnwritableError(
                f"cannot write {where} ({current.strerror}): the run folder {folder} is not "
                "writable; make it writable again (chmod u+w, or remount read-write) or point "
                "hydra.run.dir elsewhere."
            )
        current = current.__cause__ or current.__context__
    return None


def print_user_error(error: UserError) -> None:
    """``error: ...`` on stderr, one line; the run folder's log file (when a Hydra job is
    logging to one) gets the same line, so that it ends as the console did."""
    message = f"error: {error}"
    print(message, file=sys.stderr)
    record = logging.LogRecord("mtl_celeba", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def exit_on_user_error(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a console entry point so a :class:`UserError` ends it with one line, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except UserError as error:
            print_user_error(error)
            raise SystemExit(2) from None

    return wrapper
