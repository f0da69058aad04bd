"""Local paths and object-store URIs through one pyarrow filesystem resolver."""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map `uri` to (filesystem, path); plain paths are local and made absolute."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return f.read()


class OutputStorageError(OSError):
    """Writing the output failed (full, read-only, gone); the message names the path.

    Raised where the path is known, because the filesystem's own error often omits it.
    """


def storage_error(exc: BaseException) -> OutputStorageError | None:
    """The OutputStorageError behind `exc`, also when a Ray task raised it on another process."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OutputStorageError) and getattr(e, "cause", None) is None:  # not Ray's wrapper of one
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None
