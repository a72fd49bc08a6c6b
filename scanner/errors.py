"""Errors that end a command with a one-line message and a non-zero exit (no traceback)."""


class UsageError(Exception):
    """Unusable arguments, model or index: the CLI prints `imgscan: error: <message>` and exits 2."""
