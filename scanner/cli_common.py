"""What every imgscan command shares: the options declared once, the consoles, and the one error boundary.

Options are `Annotated` types reused by scan, enroll, bench, eval, explain and train, grouped into help panels.
`CommandBoundary` is the one error boundary, the group class of imgscan's app and of `python -m train`: an
ImgscanError ends the command with one line and its exit status (2, or 130 when interrupted); never a
traceback for anything the user can fix.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer import _click as typer_click  # the click that typer vendors: its UsageError is what parsing raises
from typer.core import TyperGroup, TyperOption

from imgscan_core.errors import ImgscanError, Interrupted
from scanner.paths import INDEX_ENV, MODEL_ENV

_display_type_rich = TyperOption.display_type_rich


def _no_type_for_switches(self, ctx):
    # typer's help shows `<bool>` beside switches like --overwrite, which reads as "takes a value": users then
    # typed `--overwrite true` and got a scan root named `true`. A switch takes no value: show no type.
    return None if self.is_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _no_type_for_switches


class PipeAwareConsole(Console):
    """rich ends the process with status 1 on a closed pipe; let the command boundary decide instead."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


out_console = PipeAwareConsole()
err_console = PipeAwareConsole(stderr=True, soft_wrap=True)  # log lines are never wrapped (cron, grep)

MODEL_PANEL = "Model and runtime"

IndexOpt = Annotated[Optional[Path], typer.Option(
    "--index", help=f"Support index directory. Default: ${INDEX_ENV}, else ~/.local/share/imgscan/index (XDG).")]
ModelOpt = Annotated[Optional[Path], typer.Option(
    "--model", rich_help_panel=MODEL_PANEL,
    help=f"Model directory (embedder.pt + model_card.json), or a model shipped with imgscan by name: default (three "
         f"seeds of one recipe as one model), or fast (one of them alone: about twice the embedding speed, more real "
         f"photos called AI; README). Default: ${MODEL_ENV}, else the default.")]
DeviceOpt = Annotated[str, typer.Option("--device", rich_help_panel=MODEL_PANEL, help="auto (CUDA when available), cpu or cuda.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=4096, rich_help_panel=MODEL_PANEL,
                                       help="Images per decode/embed batch.")]
RuntimeOpt = Annotated[str, typer.Option(
    "--runtime", rich_help_panel=MODEL_PANEL,
    help="auto (OpenVINO on a CPU, torch on CUDA), openvino (CPU only; 3-5x torch fp32 on an AVX2 CPU) or torch.")]
ViewsOpt = Annotated[Optional[int], typer.Option(
    "--views", min=1, max=9, rich_help_panel=MODEL_PANEL,
    help="Native-pixel crops per image 1.5x the input size or larger, their embeddings averaged: more views read "
         "more of a large photo (cost: one embedding each). Default: the model card's (5 for the shipped model). "
         "Enroll and scan with the same value.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", rich_help_panel=MODEL_PANEL,
    help="auto (fp16 on CUDA; on CPU bf16 where the CPU has native bf16, else fp32), fp32, fp16 (CUDA) or bf16 (CPU).")]
KOpt = Annotated[int, typer.Option("--k", min=1, max=256, help="Neighbours that vote.")]
MinDetailOpt = Annotated[float, typer.Option(
    "--min-detail", min=0.0,
    help="Never call an image AI when its views hold less pixel detail than this (mean |Laplacian| of luma: flat "
         "sky, fog, a wall score below 2; photos 10-60): there the model's 'AI' is a guess that falls on real photos. "
         "Its ai_score is capped at 0.5; the `detail` column shows the value. 0: judge every image.")]


YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (on a terminal, this command asks first).")]


def confirm_on_terminal(question: str, yes: bool) -> None:
    """Ask before changing something a user may want back, but only a person at a terminal: scripts and cron
    (no terminal) and --yes go ahead. A "no" ends the command with status 1."""
    if not yes and sys.stdin.isatty() and not typer.confirm(question):
        raise typer.Exit(1)


def invocation(default_prog: str = "imgscan") -> str:
    """The command line as typed (for model cards and reports); `python -m train` spelled out when used."""
    if not sys.argv:
        return default_prog
    prog = "python -m train" if sys.argv[0].endswith("__main__.py") else Path(sys.argv[0]).name
    return " ".join([prog, *(shlex.quote(a) for a in sys.argv[1:])])


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal or ssh session) behave like Ctrl-C: a command keeps what it
    finished, says how to continue, and exits 130."""
    def on_signal(signum, frame):
        raise KeyboardInterrupt
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)


LOG_FORMAT = {"format": "text"}  # set by a command's --log-format: errors then go out as JSON records too


def print_error(message: str) -> None:
    if LOG_FORMAT["format"] == "json":
        from scanner.progress import json_line

        json_line("error", message)
        return
    # Plain text, never markup: paths and names like imgscan[ray] hold square brackets.
    err_console.print(f"[bold red]imgscan: error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _usage_error(exc) -> None:
    """A mistyped command line: one line that a cron log keeps readable, not a framed box; exit 2."""
    where = exc.ctx.command_path if exc.ctx is not None else "imgscan"
    print_error(f"{where}: {exc.format_message()} (see `{where} --help`)")
    raise typer.Exit(2)


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return any(m in text for m in ("can't start new thread", "failed to map segment", "Cannot allocate memory",
                                   "std::bad_alloc", "out of memory"))


class CommandBoundary(TyperGroup):
    """The one error boundary, around every command of the group it is given to (`typer.Typer(cls=...)`):
    imgscan's app and `python -m train` alike, and under typer's test runner too."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except typer_click.exceptions.UsageError as exc:  # an unknown option of the group itself
            _usage_error(exc)

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, inside the boundary, not at interpreter exit
            return result
        except Interrupted as exc:
            err_console.print(f"imgscan: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except typer_click.exceptions.UsageError as exc:
            _usage_error(exc)
        except ImgscanError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("imgscan: interrupted", highlight=False)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # The reader of our output went away (`imgscan index show | head -1`): stop quietly, with the status
            # of a process ended by SIGPIPE. (SIGPIPE itself stays ignored: the decoder child's pipe needs the
            # error, not the signal.)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(128 + signal.SIGPIPE) from None
        except (MemoryError, RuntimeError, ImportError, OSError) as exc:
            # Out of memory or address space (a ulimit -v, a cgroup): torch's libraries cannot be mapped, a
            # thread cannot start, an allocation fails. Say so in one line; anything else is a bug: re-raise it.
            if not _out_of_memory(exc):
                raise
            print_error(f"out of memory ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no details'})"
                        "; raise the memory or address-space limit (ulimit -v), or lower --batch-size and --readers")
            raise typer.Exit(2) from None
