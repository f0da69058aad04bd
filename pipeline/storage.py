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
