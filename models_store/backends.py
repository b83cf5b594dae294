"""Storage backends: the narrow interface the model store needs, and two implementations.

A backend stores bytes under '/'-separated keys. ``write_new`` is the only write that
publishes: it must be atomic and must refuse to replace an existing key.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse, urlunparse

from models_store.errors import StoreError


class Backend(Protocol):
    url: str

    def read(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def write_new(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` atomically unless the key exists; True if written."""

    def list(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (not recursive), sorted."""

    def size(self, key: str) -> int: ...

    def total_size(self, prefix: str) -> int:
        """Bytes of every key under ``prefix``, recursively (0 when there are none)."""

    def delete(self, key: str) -> bool:
        """Remove ``key``; False if it was not there."""


class LocalBackend:
    """A directory on the local filesystem. Writes go to a temp file, fsync, then hard-link."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def write_new(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # link() fails if the key exists: an atomic create-if-absent that never
            # exposes a partly written file.
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        if not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def total_size(self, prefix: str) -> int:
        path = self._path(prefix)
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False


class FsspecBackend:
    """Any fsspec URL (``s3://bucket/lethe``, ``memory://x``).

    Credentials never go in the URL (:func:`check_store_url` refuses them): the
    filesystem finds its own, for S3 the standard ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (or a profile, or an instance role) and, for a store
    other than AWS (MinIO, moto), ``AWS_ENDPOINT_URL``.

    Object stores write whole objects, so a reader never sees a partial one.
    ``write_new`` is fsspec's exclusive write (``mode="create"``): on S3, s3fs sends
    ``If-None-Match: *``, a create-if-absent that the server decides, so two publishers
    cannot both create a key. A filesystem without an exclusive write of its own, or an
    S3-compatible server that ignores the header, falls back to exists-then-write,
    which is not a compare-and-swap: there, run one publisher per model (the service
    serialises publishes per model).

    Listings are never cached: other processes (the API, each worker) write to the same
    store, and a stale listing would hide their versions.
    """

    # Tries of a conditional write that S3 answers with 409 ConditionalRequestConflict
    # (another write to the same key was in flight): the answer to it is to try again.
    conflict_tries = 5

    def __init__(self, url: str, **storage_options):
        import fsspec

        check_store_url(url)
        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url, **{"use_listings_cache": False, **storage_options})

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return f"{self.base}/{key}"

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def write_new(self, key: str, data: bytes) -> bool:
        if self.exists(key):
            return False
        for attempt in range(self.conflict_tries):
            try:
                self.fs.pipe_file(self._path(key), data, mode="create")
                return True
            except FileExistsError:
                # Someone else created it first, or a retried PUT whose first try had
                # landed: the same bytes are ours, written.
                try:
                    return self.read(key) == data
                except FileNotFoundError:  # deleted since: create it again
                    continue
            except OSError as exc:
                if _s3_error_code(exc) != "ConditionalRequestConflict":
                    raise
                time.sleep(0.05 * 2**attempt)
        raise StoreError(f"could not write {key}: other writes to it kept conflicting")

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in entries if p.rstrip("/") != path.rstrip("/"))
        return sorted(n for n in names if n and not n.startswith("."))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def total_size(self, prefix: str) -> int:
        try:
            return int(self.fs.du(self._path(prefix)))
        except FileNotFoundError:
            return 0

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        self.fs.rm_file(self._path(key))
        return True


def _s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an s3fs ``OSError`` (botocore's ``ClientError`` is its cause)."""
    response = getattr(exc.__cause__, "response", None)
    return (response or {}).get("Error", {}).get("Code")


def check_store_url(url: str | os.PathLike) -> None:
    """Refuse a store URL that carries credentials (``s3://key:secret@bucket/...``).

    Secrets in a URL end up in process listings (``lethe serve`` hands the URL to its
    children on the command line), in logs and in error messages; the store reads them
    from the environment instead. Raises :class:`StoreError`, whose message shows the
    URL with its credentials masked, never the credentials.
    """
    text = str(url)
    for part in text.split("::"):  # fsspec chains URLs: simplecache::s3://bucket/x
        parsed = urlparse(part)
        if parsed.scheme in ("", "file") and not parsed.netloc:
            continue
        if "@" in parsed.netloc:
            masked = urlunparse(parsed._replace(netloc="***@" + parsed.netloc.rsplit("@", 1)[1]))
            raise StoreError(
                f"the model store URL {masked} carries credentials; take them out of the URL and set them "
                "in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3, with "
                "AWS_ENDPOINT_URL for a store other than AWS)")


def open_backend(url: str | os.PathLike, **storage_options) -> Backend:
    """A plain path or ``file://`` URL gives :class:`LocalBackend`; other schemes use fsspec
    (``storage_options`` go to the fsspec filesystem). A URL with credentials in it is
    refused (:func:`check_store_url`)."""
    text = str(url)
    check_store_url(text)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return LocalBackend(parsed.path if parsed.scheme == "file" else text)
    return FsspecBackend(text, **storage_options)
