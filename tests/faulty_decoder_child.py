"""A decoder child for tests: the real child loop, with Pillow's decode patched to abort the process on one
marked image and to hang on another. Started by IsolatedImageDecoder(child_command=...) in the tests."""

import os
import sys
import time

import scanner.decode as decode
import scanner.decode_isolated as isolated

_real_pillow_decode = decode.pillow_decode


def _faulty_pillow_decode(data, spec):
    if b"ABORT-ME" in data:
        os.abort()  # what a C decoder's assert() would do to the whole process
    if b"HANG-ME" in data:
        time.sleep(3600)
    return _real_pillow_decode(data, spec)


decode.pillow_decode = _faulty_pillow_decode

if __name__ == "__main__":
    isolated.child_main(sys.argv[1:])
