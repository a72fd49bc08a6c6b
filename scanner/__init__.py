"""imgscan: tell whether images are AI-generated and which generator made them.

The scan flow, one module per stage: walk -> read (bytes + hash) -> decode (DALI / Pillow) -> embed ->
search (indexes.SupportIndex) -> verdict -> write (Parquet).
"""

__version__ = "0.1.0"
