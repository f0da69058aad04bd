"""Local paths and object-store URIs through one pyarrow filesystem resolver.

Object stores (`s3://`, also S3-compatible ones such as MinIO, Ceph RGW and R2, and `gs://`
where pyarrow serves it) take their credentials from the client library's standard chain
(AWS_* environment variables, a profile, instance or pod identity) and never from a URI:
a URI that carries a key is refused, so no secret ends up in a job spec, a manifest or a log.
The endpoint comes from AWS_ENDPOINT_URL or the URI's own `endpoint_override`/`scheme`
query, the region from AWS_REGION/AWS_DEFAULT_REGION or the URI's `region` query.

Remote media are copied once into a spool file on local disk (`spooled`), so a decoder
can seek in them without reading the object twice or holding it in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from urllib.parse import parse_qs, quote, urlsplit

import pyarrow.fs as pafs

URI_CHARS = "/%:@!$&'()*+,;=-._~"  # besides letters and digits: left as they are in a URI's path
CREDENTIAL_QUERY_KEYS = frozenset({"access_key", "secret_key", "session_token"})
SPOOL_ROOT_NAME = "iwp-spool"
COPY_CHUNK = 8 << 20  # bytes per read while spooling: a few large range reads, bounded memory


class OutputStorageError(OSError):
    """Writing the output failed (full, read-only, gone); the message names the path.

    Raised where the path is known, because the filesystem's own error often omits it.
    """


class StorageUnavailableError(RuntimeError):
    """A store named by the job cannot be reached or used when the job starts; nothing was done."""


class StorageReadError(OSError):
    """Reading one input object failed (access denied, store unreachable); names the URI and why."""


class MediaError(ValueError):
    """The file exists but is not usable media (empty, wrong kind, bad clip window, too big)."""


class MediaTooLargeError(MediaError):
    """The object is bigger than `max_media_bytes`; refused from its size, before any byte is read."""


def credential_problem(uri: str) -> str | None:
    """Why `uri` must be refused for carrying credentials, or None."""
    if "://" not in uri:
        return None
    parts = urlsplit(uri)
    query = {k.lower() for k in parse_qs(parts.query, keep_blank_values=True)}
    if parts.username or parts.password or query & CREDENTIAL_QUERY_KEYS:
        return ("carries credentials; give them through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                "a profile or pod identity), never in a URI")
    return None


def redact(uri: str) -> str:
    """`uri` as safe to print: anything that could be a credential is cut off."""
    if credential_problem(uri) is None:
        return uri
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path} (credentials removed)"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map `uri` to (filesystem, path); plain paths are local and made absolute."""
    if "://" in uri:
        problem = credential_problem(uri)
        if problem:
            raise ValueError(f"{redact(uri)} {problem}")
        location, query = uri.split("?", 1) if "?" in uri else (uri, None)
        scheme, rest = location.split("://", 1)
        # Object keys may hold spaces or non-ASCII letters, which a URI cannot: encode just those
        # (pyarrow decodes them back); a key with a literal '?', '#' or '%' is written percent-encoded.
        encoded = f"{scheme}://{quote(rest, safe=URI_CHARS)}" + ("" if query is None else f"?{query}")
        return pafs.FileSystem.from_uri(encoded)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return f.read()


def _info(fs: pafs.FileSystem, path: str, failure: Callable[[OSError], Exception]) -> pafs.FileInfo:
    """`path`'s metadata; a store that cannot answer raises `failure(its error)`."""
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise failure(exc) from exc


def object_size(fs: pafs.FileSystem, path: str, uri: str, max_bytes: int) -> int:
    """The size of the file `uri` from its metadata (0 for a local pipe or device, which has
    none); refuses a missing, empty or oversized one before anything is read from it."""
    return int(_checked(fs, path, uri, max_bytes).size or 0)


def _checked(fs: pafs.FileSystem, path: str, uri: str, max_bytes: int) -> pafs.FileInfo:
    info = _info(fs, path, lambda exc: StorageReadError(f"cannot read {uri}: {exc}"))
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file: {uri}")
    if info.type == pafs.FileType.Unknown:  # a pipe or device: no size to check; the decode timeout guards it
        return info
    if info.type != pafs.FileType.File:
        raise MediaError(f"not a file: {uri}")
    if info.size == 0:
        raise MediaError(f"empty file: {uri}")
    if info.size > max_bytes:
        raise MediaTooLargeError(f"{uri} is {info.size} bytes, above max_media_bytes={max_bytes}")
    return info


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_spool_dir: str | None = None
_kept: tuple[tuple, str] | None = None  # the remote file a `spooled(keep=True)` left: (uri, size, mtime), local path


def spool_dir() -> str:
    """This process's spool folder, made on first use; folders of processes that died (a
    killed decoder child, a lost worker) are removed then, so their spool files cannot pile up."""
    global _spool_dir
    if _spool_dir is not None and os.path.isdir(_spool_dir):
        return _spool_dir
    root = os.path.join(tempfile.gettempdir(), SPOOL_ROOT_NAME)
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        pid = name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    _spool_dir = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root)
    return _spool_dir


def _drop_kept() -> None:
    global _kept
    if _kept is not None:
        with suppress(OSError):
            os.unlink(_kept[1])
        _kept = None


@contextmanager
def spooled(uri: str, max_bytes: int, keep: bool = False) -> Iterator[str]:
    """A local path holding the file `uri`: the path itself for local files, else a spool copy
    fetched once in large sequential reads and removed when the block ends.

    With `keep` the copy stays until another remote file is kept in its place, so the clips
    of one video that reach this process one after another fetch it once: a process holds
    at most one kept copy, keyed by the object's URI, size and modification time."""
    global _kept
    fs, path = resolve(uri)
    info = _checked(fs, path, uri, max_bytes)
    size = int(info.size or 0)
    if isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    key = (uri, size, info.mtime)
    if keep and _kept is not None and _kept[0] == key and os.path.exists(_kept[1]):
        yield _kept[1]
        return
    if keep:
        _drop_kept()
    fd, local = tempfile.mkstemp(dir=spool_dir(), suffix=os.path.splitext(path)[1])
    fetched = False
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with fs.open_input_stream(path) as src:
                    copied = 0
                    while chunk := src.read(COPY_CHUNK):
                        copied += len(chunk)
                        if copied > max_bytes:
                            raise MediaTooLargeError(f"{uri} grew past max_media_bytes={max_bytes} while read")
                        out.write(chunk)
            except OSError as exc:
                raise StorageReadError(f"cannot read {uri}: {exc}") from exc
        if size and copied != size:
            raise StorageReadError(f"cannot read {uri}: got {copied} of its {size} bytes")
        fetched = True
        yield local
    finally:
        if keep and fetched:
            _kept = (key, local)
        else:
            os.unlink(local)


@contextmanager
def readable(uri: str, max_bytes: int) -> Iterator[str | pafs.NativeFile]:
    """The file `uri` for a container probe: a local path, or a seekable reader over the remote
    object that fetches only the byte ranges read (a video's header, not the whole video)."""
    fs, path = resolve(uri)
    _checked(fs, path, uri, max_bytes)
    if isinstance(fs, pafs.LocalFileSystem):
        yield path
        return
    try:
        reader = fs.open_input_file(path)
    except OSError as exc:
        raise StorageReadError(f"cannot read {uri}: {exc}") from exc
    with reader:
        yield reader


def probe(uri: str, what: str) -> None:
    """Refuse to start when the store behind `uri` cannot be reached or its bucket is missing,
    before the job takes its lock or writes anything; a local path always passes."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return
    bucket = path.split("/", 1)[0]
    info = _info(fs, bucket, lambda exc: StorageUnavailableError(f"cannot reach the store of the {what} {uri}: {exc}"))
    if info.type == pafs.FileType.NotFound:
        raise StorageUnavailableError(f"the bucket {bucket!r} of the {what} {uri} does not exist")


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
