"""Storage backends: the narrow interface the model store needs, and two implementations.

A backend stores bytes under '/'-separated keys. ``write_new`` is the only write that
publishes: it must be atomic and must refuse to replace an existing key.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


class Backend(Protocol):
    url: str

    def read(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def write_new(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` atomically unless the key exists; True if written."""

    def list(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (not recursive), sorted."""

    def size(self, key: str) -> int: ...

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

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False


class FsspecBackend:
    """Any fsspec URL (``s3://bucket/lethe``, ``memory://x``).

    Object stores write whole objects, so a reader never sees a partial one; the
    exists-then-write in ``write_new`` is not a compare-and-swap, so run one publisher
    per model (the service serialises publishes per model).
    """

    def __init__(self, url: str):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url)

    def _path(self, key: str) -> str:
        return f"{self.base}/{key}"

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def write_new(self, key: str, data: bytes) -> bool:
        if self.exists(key):
            return False
        self.fs.pipe_file(self._path(key), data)
        return True

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        if not self.fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        self.fs.rm_file(self._path(key))
        return True


def open_backend(url: str | os.PathLike) -> Backend:
    """A plain path or ``file://`` URL gives :class:`LocalBackend`; other schemes use fsspec."""
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return LocalBackend(parsed.path if parsed.scheme == "file" else text)
    return FsspecBackend(text)
