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


def run_script(main) -> None:
    """The same boundary for the scripts beside the package (tools/): exit with main()'s status, or print
    `error: <message>` and exit with the error's exit_code."""
    import sys

    try:
        status = main()
    except ImgscanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(status)
