"""Errors that are the user's input, not a bug: the command line prints them as one line.

``python -m maskfm.train`` / ``evaluate`` catch :class:`UserInputError` and print
``error: <message>`` (the message names the file or config key and the problem) instead of
a traceback. Library callers get the exception as usual.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps


class UserInputError(ValueError):
    """A file, checkpoint or option the user gave cannot be used; the message says why."""


def exit_on_user_error(main: Callable) -> Callable:
    """Wrap a command-line ``main``: a :class:`UserInputError` ends it with exit code 2 and
    one line on stderr."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as e:
            cause = user_error_behind(e)
            if cause is None:
                raise
            print(f"error: {cause}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def user_error_behind(error: BaseException) -> UserInputError | None:
    """The :class:`UserInputError` that ``error`` is or was raised from (Hydra's
    ``instantiate`` wraps what a constructor raises), else None."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserInputError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None
