"""Errors that end a command with a one-line message and an exit status, never a traceback.

Every command runs inside one boundary (`scanner.cli.run_app`, used by `imgscan` and `python -m train` alike)
that prints `imgscan: error: <message>` (or the interruption notice) and exits with `exit_code`.
"""


class ImgscanError(Exception):
    """Base of the errors a command reports in one line."""

    exit_code = 2


class UsageError(ImgscanError):
    """Unusable arguments, model, index or data: `imgscan: error: <message>`, exit 2."""


class Interrupted(ImgscanError):
    """Stopped by Ctrl-C or SIGTERM with the work so far kept; the message says how to continue. Exit 130."""

    exit_code = 130
