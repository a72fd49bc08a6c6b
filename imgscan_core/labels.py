"""Class names: the reserved ones and what makes a valid one (enroll, the index, data manifests, verdicts)."""

from __future__ import annotations

import re

from imgscan_core.errors import UsageError

REAL_LABEL = "real"  # real photos: the class every other one is judged against (is_ai = not real)
UNKNOWN_LABEL = "unknown"  # reserved: the verdict for an image far from every enrolled class

# \Z, not $: `$` also matches before a trailing newline, which would let "name\n" through.
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\Z")


def check_label(label: str) -> str:
    if label == UNKNOWN_LABEL:
        raise UsageError(f"label '{UNKNOWN_LABEL}' is reserved for images far from every enrolled class")
    if not LABEL_PATTERN.match(label):
        raise UsageError(f"label {label!r}: use letters, digits and . _ + - (up to 100 characters)")
    return label
