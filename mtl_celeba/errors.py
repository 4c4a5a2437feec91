"""User-facing errors: one clear sentence instead of a deep traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
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


def exit_on_user_error(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a console entry point so a :class:`UserError` ends it with one line, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
