"""Print the weights-only hash of model directories: equal hashes mean identical weights.

    python tools/weights_hash.py scanner/default_model /tmp/retrained/model

A TorchScript file carries a random serialization id, so re-exporting identical weights changes the file's
sha256 (the card's `weights_sha256`, which the model id is built from) but not this hash (`tensors_sha256`).
Used to check that the documented `imgscan train` command reproduces the shipped model (docs/training.md).
"""

from __future__ import annotations

import sys

from scanner.model import load_model, tensors_sha256


def main(argv: list[str] | None = None) -> int:
    dirs = sys.argv[1:] if argv is None else argv
    if not dirs:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    hashes = []
    for d in dirs:
        card, module = load_model(d)
        digest = tensors_sha256(module)
        hashes.append(digest)
        recorded = f" (card: {'same' if card.tensors_sha256 == digest else card.tensors_sha256 or 'not recorded'})"
        print(f"{digest}  {d}  {card.model_id}{recorded}")
    if len(hashes) > 1:
        print("identical weights" if len(set(hashes)) == 1 else "weights differ")
    return 0 if len(set(hashes)) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
