"""Read and validate the input manifest before any work starts.

Problems with the manifest as a whole (missing columns, wrong types, empty or duplicate
ids) refuse the job with a message naming them; problems with one row (unknown media
type, bad clip window) become that row's failure later, so nothing is lost.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage import credential_problem, resolve

REQUIRED = ("id", "uri")
OPTIONAL_TYPES: dict[str, pa.DataType] = {
    "media_type": pa.string(),
    "prompt": pa.string(),
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    "max_new_tokens": pa.int64(),  # per row; checked where it is used, so a bad value fails its row only
}
VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


class ManifestError(ValueError):
    """The manifest cannot be used at all; the message says why and where."""


def infer_media_type(uri: str) -> str | None:
    suffix = PurePosixPath(uri.split("?", 1)[0]).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    return None


def read_manifest(uri: str) -> pa.Table:
    """Load, validate and normalise a manifest into the columns the pipeline expects."""
    try:
        fs, path = resolve(uri)
        table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {uri!r} does not exist") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"manifest {uri!r} is not a readable Parquet file: {exc}") from exc
    return validate_manifest(table, uri)


def _check_utf8(table: pa.Table, name: str, source: str) -> None:
    """Parquet does not enforce UTF-8; a bad string would otherwise crash a stage far from here."""
    column = table[name]
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        rows = []
        for i, value in enumerate(column.cast(pa.large_binary()).to_pylist()):
            try:
                value is None or value.decode("utf-8")
            except UnicodeDecodeError:
                rows.append(i)
                if len(rows) == 5:
                    break
        raise ManifestError(f"{source}: column {name!r} holds bytes that are not valid UTF-8 at row(s) {rows}") from None


def validate_manifest(table: pa.Table, source: str = "manifest") -> pa.Table:
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"{source}: missing required column(s) {missing}; found {table.column_names}"
        )
    for name in REQUIRED:
        if not (pa.types.is_string(table[name].type) or pa.types.is_large_string(table[name].type)):
            raise ManifestError(f"{source}: column {name!r} must be strings, got {table[name].type}")
    for name in table.column_names:
        _check_utf8(table, name, source)
    table = table.set_column(table.schema.get_field_index("id"), "id", table["id"].cast(pa.string()))
    table = table.set_column(table.schema.get_field_index("uri"), "uri", table["uri"].cast(pa.string()))
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(table["id"]), ""), True)
    if pc.any(empty).as_py():
        rows = pc.indices_nonzero(empty).to_pylist()[:5]
        raise ManifestError(f"{source}: column 'id' is null or empty at row(s) {rows}")
    suspect = pc.fill_null(pc.match_substring_regex(table["uri"], r"@|(?i)access_key|secret_key|session_token"), False)
    problems = {i: credential_problem(table["uri"][i].as_py()) for i in pc.indices_nonzero(suspect).to_pylist()}
    leaking = [i for i, problem in problems.items() if problem]
    if leaking:  # refused as a whole: a failed row would copy the secret into the output
        raise ManifestError(f"{source}: column 'uri' at row(s) {leaking[:5]} {problems[leaking[0]]}")
    counts = pc.value_counts(table["id"])
    dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
    if dup:
        raise ManifestError(f"{source}: duplicate id(s) {dup[:5]}{' ...' if len(dup) > 5 else ''}")
    for name, dtype in OPTIONAL_TYPES.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), dtype))
            continue
        try:
            table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(dtype))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ManifestError(f"{source}: column {name!r} must be {dtype}, got {table[name].type}") from exc
    return table.select(["id", "uri", *OPTIONAL_TYPES])
