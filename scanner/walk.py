"""Walk stage: stream the files under the crawl roots, one directory listing in memory at a time.

Paths travel as bytes (os.fsencode) from here to the writer, so names that are not valid UTF-8 are kept
exactly as found and never interpreted. Directory symlinks are not followed (a crawl can contain loops);
file symlinks are yielded, and the read stage reports broken ones and loops as error rows. A directory that
cannot be listed is yielded itself, and the read stage reports why.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase

from imgscan_core.errors import UsageError
from scanner.keys import path_key

# What counts as an image file when walking a directory (case-insensitive). Files given explicitly on the
# command line are always scanned, whatever their name.
IMAGE_EXTENSIONS = frozenset(
    b".jpg .jpeg .jpe .jfif .png .webp .gif .bmp .tif .tiff .jp2 .j2k .heic .avif .ppm .pgm".split()
)


def is_image_name(name: bytes) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def check_roots(roots: Iterable[str | bytes], all_files: bool = False) -> list[bytes]:
    """The roots as absolute paths, each file reached once: a root that another root's walk already reaches
    (the same path spelled differently, a file or folder inside a root given too) is dropped, so a file never
    gets two rows and a resumed run finds its rows whatever spelling the roots had. Roots that do not exist are
    refused before any work starts (an unusable argument, not a per-file error); a shard (scanner.shards) that
    cannot be read, local or at a URL, gets a row saying so instead, as one of a range of shards may."""
    from scanner.shards import is_remote, is_shard

    out: list[bytes] = []
    for root in roots:
        raw = os.fsencode(root)
        if is_remote(raw):  # a shard in an object store: its row says if it cannot be read
            if raw not in out:
                out.append(raw)
            continue
        if not os.path.lexists(raw) and not is_shard(raw):
            raise UsageError(f"{os.fsdecode(raw)}: no such file or directory")
        raw = os.path.normpath(os.path.abspath(raw))
        if not any(raw == kept or reached_by_walk(raw, kept, all_files) for kept in out):
            out = [kept for kept in out if not reached_by_walk(kept, raw, all_files)] + [raw]
    return out


def reached_by_walk(path: bytes, root: bytes, all_files: bool) -> bool:
    """Whether walk_files([root]) yields `path` (or, for a directory, everything under it): `path` lies under
    the directory `root` through no directory symlink (the walk does not follow those), and is a directory, or
    a file the walk takes (an image name, or any file with --all-files)."""
    if not os.path.isdir(root) or not path.startswith(root.rstrip(b"/") + b"/"):
        return False
    parent = os.path.dirname(path)
    while parent != root and len(parent) > len(root):
        if os.path.islink(parent):
            return False
        parent = os.path.dirname(parent)
    if os.path.isdir(path):
        return not os.path.islink(path)
    return all_files or is_image_name(os.path.basename(path))


def pattern_match(path: bytes, root: bytes, patterns: Iterable[str]) -> bool:
    """Whether a glob matches the file's path relative to the root it was found under (`2026-11/*.jpg`) or its
    name (`*.png`); case-sensitive, `*` also crosses `/` in the relative path (fnmatch)."""
    rel = os.fsdecode(os.path.relpath(path, root))
    name = os.fsdecode(os.path.basename(path))
    return any(fnmatchcase(rel, p) or fnmatchcase(name, p) for p in patterns)


def walk_files(roots: Iterable[bytes], all_files: bool = False, include: Iterable[str] = (),
               exclude: Iterable[str] = ()) -> Iterator[bytes]:
    """Yield file paths (bytes) under each root, depth first, entries sorted within a directory.

    Sorting one directory's entries keeps runs reproducible without ever holding the whole crawl in memory.
    `include` (when given: only files one of them matches) and `exclude` (files any matches are left out) are
    globs (`pattern_match`) applied to files found by walking; files named as roots are always scanned.
    """
    include, exclude = tuple(include), tuple(exclude)
    for root in roots:
        if not os.path.isdir(root):
            yield root  # a file (or a broken link) named on the command line: always scanned
            continue
        stack = [root]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                # Unreadable (permissions, a path over PATH_MAX, removed meanwhile): nothing inside can be listed,
                # so the directory itself gets a row, with the reason (the read stage names it), never silence.
                yield directory
                continue
            subdirs = []
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.path)
                        continue
                    if entry.is_symlink() and entry.is_dir():
                        continue  # a link to a directory is not followed (loops), and is not a file either
                except OSError:
                    pass
                if not (all_files or is_image_name(entry.name)):
                    continue
                if include and not pattern_match(entry.path, root, include):
                    continue
                if exclude and pattern_match(entry.path, root, exclude):
                    continue
                yield entry.path
            stack.extend(reversed(subdirs))


def files_to_scan(roots: list[bytes], read) -> Iterator[bytes]:
    """Everything a scan reads, in order: the files found under the roots (ReadConfig's extension and glob
    filters), then those of the --files-from list (`listed_files`)."""
    yield from walk_files(roots, read.all_files, read.include, read.exclude)
    if read.listed is not None:
        yield from listed_files(read.listed, roots, read.all_files, read.include, read.exclude)


MAX_ENTRY_BYTES = 1 << 16  # a --files-from entry longer than this is no path (PATH_MAX is 4096)


@dataclass(frozen=True)
class FileList:
    """--files-from: a crawler's list of paths, in a file or on standard input ("-"), one per line or
    NUL-separated (`nul_separated`, as `find -print0` writes). Read as a stream, a block at a time, while the scan
    runs: a list of millions of paths (or one that never ends) costs no memory up front, and its first files are
    judged while the crawler is still writing the rest."""

    source: str
    nul_separated: bool = False
    block_bytes: int = 1 << 16

    def entries(self) -> Iterator[bytes]:
        """The raw entries, in order (blank ones included; a line's CRLF ending is a line ending)."""
        if self.nul_separated:
            yield from self._split(b"\0")
        else:
            yield from (raw.removesuffix(b"\r") for raw in self._split(b"\n"))

    def _split(self, sep: bytes) -> Iterator[bytes]:
        stream = sys.stdin.buffer if self.source == "-" else open(self.source, "rb")  # noqa: SIM115
        try:
            pending, overlong = b"", False
            while block := stream.read1(self.block_bytes):  # what is there now, up to a block: never waits for more
                *complete, pending = (pending + block).split(sep)
                for raw in complete:
                    if not overlong:
                        yield raw
                    overlong = False
                if len(pending) > MAX_ENTRY_BYTES:  # no path is this long: one entry (its row says so), the rest dropped
                    if not overlong:
                        yield pending[:MAX_ENTRY_BYTES]
                    pending, overlong = b"", True
            if pending and not overlong:
                yield pending
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

    def fingerprint(self) -> str:
        """What identifies the list for resuming: the file's sha256; standard input cannot be read twice, so it
        is only named (a resumed run still skips the files done, by path)."""
        if self.source == "-":
            return "stdin"
        digest = hashlib.sha256()
        with open(self.source, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()


def listed_files(file_list: FileList, roots: list[bytes], all_files: bool = False, include: Iterable[str] = (),
                 exclude: Iterable[str] = ()) -> Iterator[bytes]:
    """The files a --files-from list names, made absolute, streamed: a directory in the list is walked as a root
    is (extension and glob filters apply inside it); a file is always scanned. Blank entries, repeats (a 64-bit
    key per path held) and files a root's walk already reaches are dropped, so each file gets one row. Missing
    files are kept: they get a row saying so, as a file that vanished during a crawl would."""
    from scanner.shards import is_remote

    seen: set[int] = set()
    for raw in file_list.entries():
        if not raw:
            continue
        if is_remote(raw):  # a shard URL: its members get the rows
            if path_key(raw) not in seen:
                seen.add(path_key(raw))
                yield raw
            continue
        path = os.path.normpath(os.path.abspath(raw))
        found = (walk_files([path], all_files, include, exclude)
                 if os.path.isdir(path) and not os.path.islink(path) else (path,))
        for file in found:
            key = path_key(file)
            if key in seen or any(file == root or reached_by_walk(file, root, True) for root in roots):
                continue
            seen.add(key)
            yield file
