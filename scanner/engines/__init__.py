"""Other engines that run the same scan: `imgscan scan --engine ray` (scanner.engines.ray_engine).

Nothing here imports Ray at import time; Ray is the optional extra `pip install 'imgscan[ray]'`, and the local
engine (scanner.pipeline) never needs it.
"""
