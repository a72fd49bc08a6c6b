"""`python -m train train DATA --out DIR ...`: the train command without the rest of imgscan's CLI
(useful before/without `imgscan` being installed; same options as `imgscan train`)."""

import sys

import typer

from scanner.errors import UsageError
from train.cli import register

app = typer.Typer(add_completion=False, help="imgscan training (same as `imgscan train`).")
register(app)


@app.callback()
def _root() -> None:
    """Keep `train` as an explicit sub-command, as in `imgscan train`."""


def main() -> None:
    try:
        app(standalone_mode=True)
    except UsageError as exc:
        print(f"imgscan: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
