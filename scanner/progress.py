"""Progress reporting: a rich progress bar on a terminal, plain periodic log lines otherwise (cron, CI, pipes)."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr_console = Console(stderr=True)


class ScanProgress:
    def __init__(self, description: str = "scanning", log_every_s: float = 30.0, force_plain: bool | None = None,
                 quiet: bool = False, log_format: str = "text"):
        """quiet: no bar, no log lines (`-q`, and library calls). log_format "json": no bar, every log line a
        JSON object (time, level, message, and the counts on progress lines), for log shippers."""
        self.description = description
        self.quiet = quiet
        self.json = log_format == "json"
        if self.json:
            force_plain = True
        if quiet:
            force_plain, log_every_s = True, float("inf")
        self.plain = (not sys.stderr.isatty()) if force_plain is None else force_plain
        self.log_every_s = log_every_s
        self.done = 0  # files handled by this run
        self.already_done = 0  # rows kept from an interrupted run: shown as completed, not counted in img/s
        self.errors = 0
        self.total: int | None = None
        self.started = time.monotonic()
        self._last_log = self.started
        self._progress = None
        self._task = None

    def __enter__(self) -> "ScanProgress":
        if not self.plain:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8.1f} img/s"), TextColumn("errors {task.fields[errors]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=stderr_console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=None, rate=0.0, errors=0)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._update()
            self._progress.stop()

    def log(self, message: str) -> None:
        """One line for the log: prefixed with an ISO timestamp when stderr is not a terminal (cron), never
        wrapped."""
        if self.quiet:
            return
        if self.json:
            level = "warning" if message.startswith("warning:") else "info"
            json_line(level, message.removeprefix("warning: "))
        elif self._progress is not None:
            self._progress.console.print(f"imgscan: {message}", highlight=False, markup=False, soft_wrap=True)
        else:
            print(f"{_now()} imgscan: {message}", file=sys.stderr, flush=True)

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def set_already_done(self, n: int) -> None:
        self.already_done = n
        if self._progress is not None:
            self._update()

    def set_total(self, total: int) -> None:
        self.total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def advance(self, files: int, errors: int = 0) -> None:
        self.done += files
        self.errors += errors
        if self._progress is not None:
            self._update()
        elif time.monotonic() - self._last_log >= self.log_every_s:
            self._last_log = time.monotonic()
            if self.json:
                json_line("info", self.description, files=self.already_done + self.done, total=self.total,
                          rate=round(self.rate, 2), errors=self.errors,
                          elapsed_s=round(time.monotonic() - self.started, 1))
                return
            of = f"/{self.total}" if self.total is not None else ""
            print(
                f"{_now()} imgscan: {self.description} {self.already_done + self.done}{of} files, {self.rate:.1f} img/s, "
                f"{self.errors} errors, {time.monotonic() - self.started:.0f} s",
                file=sys.stderr, flush=True,
            )

    def _update(self) -> None:
        self._progress.update(self._task, completed=self.already_done + self.done, rate=self.rate, errors=self.errors)


def json_line(level: str, message: str, **fields) -> None:
    """One log record as a JSON object on stderr (`--log-format json`)."""
    record = {"time": _now(), "level": level, "program": "imgscan", "message": message, **fields}
    print(json.dumps(record, ensure_ascii=False), file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def table_console(console: Console) -> Console:
    """The console to print wide tables on: a log file or a pipe gets 120 columns instead of rich's 80."""
    if not console.is_terminal and console.width < 120:
        return Console(file=console.file, width=120)
    return console
