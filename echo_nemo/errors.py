"""The one exception type for bad input.

Anything the user can fix (a config key, a path, a corrupt file, an argument) raises
`UserError`; the CLI prints its message without a traceback and exits with code 2.
Bugs stay ordinary exceptions so they keep their tracebacks.
"""

from __future__ import annotations

import os

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input: the message names the thing (file, key, shard) and what was expected."""


def require_file(path: str, what: str) -> str:
    """Return `path` if it is an existing file, else raise a UserError naming `what`."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path!r} (expected an existing file)")
    return path


def require_dir(path: str, what: str) -> str:
    """Return `path` if it is an existing directory, else raise a UserError naming `what`."""
    if not os.path.isdir(path):
        raise UserError(f"{what} not found: {path!r} (expected an existing directory)")
    return path
