"""imgscan contacts nobody: no URL a file names (scanner.provenance), and no vendor's usage telemetry.

`import openvino` sends a usage event to Google Analytics from every process whose user has no opt-out file in
~/intel and no `CI=true` in the environment (openvino.tools.ovc, via the `openvino_telemetry` package; NNCF,
which `imgscan quantize` uses, likewise). A nightly scan run by cron is exactly such a process. Both packages
fall back to their own no-op stub when `openvino_telemetry` cannot be imported, so marking it unimportable
(None in sys.modules: Python's documented way to make an import fail) turns the telemetry off without touching
the user's home directory. It must happen before the first `import openvino` of the process: imgscan_core
does it on import, and every imgscan entry point imports imgscan_core before any runtime.
"""

from __future__ import annotations

import sys

TELEMETRY_MODULES = ("openvino_telemetry",)


def block_telemetry() -> None:
    for name in TELEMETRY_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]
