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
        except UserInputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
