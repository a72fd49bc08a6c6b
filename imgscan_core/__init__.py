"""The bottom layer of imgscan: what every other package may import and which imports none of them.

    errors   the error hierarchy that ends a command with one line and an exit status
    files    atomic file writes and file hashing
    labels   the reserved class names and the rule for a valid class name
    offline  no vendor telemetry: applied here, on import, before any runtime is imported

Layers, each importing only those below it: imgscan_core -> indexes -> scanner (the scan flow) ->
scanner.evaluation, train -> the CLI (docs/architecture.md).
"""

from imgscan_core.offline import block_telemetry

block_telemetry()
