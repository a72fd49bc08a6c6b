"""Screenshots of an HTML report in headless Chromium: the real-browser check that the report renders."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 4000, timeout_s: float = 120.0,
               binary: str | None = None) -> Path:
    """Render `html` (a local file) in headless Chromium and save a PNG of the first width x height pixels."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    png = Path(png).resolve()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="imgscan-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
               Path(html).resolve().as_uri()]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout_s, check=False)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    """python -m scanner.evaluation.browser REPORT.html SHOT.png [HEIGHT]: screenshot a report."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m scanner.evaluation.browser REPORT.html SHOT.png [HEIGHT]", file=sys.stderr)
        return 2
    print(screenshot(Path(args[0]), Path(args[1]), height=int(args[2]) if len(args) == 3 else 4000))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
