"""A decoder child for tests: the real child loop, with Pillow's decode patched to abort the process on one
marked image, to hang on another and to be slow (SLOW_S, SLOWISH_S seconds) on others, and the provenance reader to
hang on a file marked HANG-PROVENANCE; FAULTY_CHILD_SLOW_START=S makes its start-up S seconds longer;
FAULTY_CHILD_HANG_FIRST_START=FILE makes the first child (the one that finds no FILE) hang at start-up. Started by IsolatedImageDecoder(child_command=...) in the tests."""

import os
import sys
import time

import scanner.decode as decode
import scanner.decode_isolated as isolated
import scanner.provenance as provenance

_real_pillow_decode = decode.pillow_decode
SLOW_S = 2.5
SLOWISH_S = 0.9


def _faulty_pillow_decode(data, spec):
    if b"ABORT-ME" in data:
        os.abort()  # what a C decoder's assert() would do to the whole process
    if b"HANG-ME" in data:
        time.sleep(3600)
    if b"SLOW-ME" in data:
        time.sleep(SLOW_S)
    if b"SLOWISH" in data:
        time.sleep(SLOWISH_S)
    return _real_pillow_decode(data, spec)


_real_read_provenance = provenance.read_provenance


def _faulty_read_provenance(data):
    if data is not None and b"HANG-PROVENANCE" in data:
        time.sleep(3600)
    return _real_read_provenance(data)


decode.pillow_decode = _faulty_pillow_decode
provenance.read_provenance = _faulty_read_provenance

if __name__ == "__main__":
    time.sleep(float(os.environ.get("FAULTY_CHILD_SLOW_START", "0")))
    once = os.environ.get("FAULTY_CHILD_HANG_FIRST_START")  # a marker file: only the first child to start hangs
    if once and not os.path.exists(once):
        open(once, "w").close()
        time.sleep(3600)
    isolated.child_main(sys.argv[1:])
