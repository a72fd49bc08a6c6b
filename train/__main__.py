"""`python -m train train DATA --out DIR ...`: the train command without the rest of imgscan's CLI
(useful before/without `imgscan` being installed; same options and the same error boundary as `imgscan train`)."""

import typer

from scanner.cli_common import CommandBoundary
from train.cli import register

app = typer.Typer(add_completion=False, help="imgscan training (same as `imgscan train`).",
                  pretty_exceptions_enable=False, cls=CommandBoundary)
register(app)


@app.callback()
def _root() -> None:
    """Keep `train` as an explicit sub-command, as in `imgscan train`."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
