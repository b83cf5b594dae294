"""The evidence vault: each deletion request's forget set, sealed, until the request ends.

The dataset erases an owner's raw rows before a job plans, but an approximate method
unlearns *from* those rows and the verification metrics (UA, MIA) are measured *on*
them, for every model the request touches, on every dataset. So the rows are sealed
here first, one file per (request, dataset), encrypted with AES-256-GCM under the
request's own random key. The keys live elsewhere (the service keeps them in its
database; see :class:`Keyring`): destroying a request's evidence forgets its key
(crypto-shredding) and then deletes its files, so a file left behind by a crash is
ciphertext nobody can open, and :meth:`Vault.sweep` deletes it.

Plaintext never touches the disk: the arrays are serialised in memory, encrypted and
written atomically.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"LETHE-EVIDENCE-1\n"
_SAFE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # sample ids, x, y


class Keyring(Protocol):
    """Where requests' evidence keys live (32 random bytes each, never beside the data)."""

    def keys(self, requests: Iterable[str], *, create: bool = False) -> dict[str, bytes]:
        """The keys of ``requests`` that are held; with ``create``, a new key for each
        request that has none and whose evidence was never destroyed."""
        ...


class MemoryKeyring:
    """Keys held in this process only: for the engine driven in one process (CLI,
    benchmarks, tests), where a pass's evidence lives as long as the pass."""

    def __init__(self):
        self._keys: dict[str, bytes] = {}
        self._destroyed: set[str] = set()

    def keys(self, requests: Iterable[str], *, create: bool = False) -> dict[str, bytes]:
        out = {}
        for r in requests:
            if create and r not in self._keys and r not in self._destroyed:
                self._keys[r] = AESGCM.generate_key(bit_length=256)
            if r in self._keys:
                out[r] = self._keys[r]
        return out

    def destroy(self, request: str) -> None:
        self._keys.pop(request, None)
        self._destroyed.add(request)


def _empty() -> Rows:
    return np.zeros(0, np.int64), np.zeros((0,)), np.zeros(0, np.int64)


class Vault:
    def __init__(self, root: str | os.PathLike, keyring: Keyring):
        self.root = Path(root)
        self.keyring = keyring

    def _path(self, request: str, dataset: str) -> Path:
        for part in (request, dataset):
            if not _SAFE.match(part):
                raise ValueError(f"not a safe evidence name: {part!r}")
        return self.root / request / f"{dataset}.sealed"

    @staticmethod
    def _aad(request: str, dataset: str) -> bytes:
        return f"{request}/{dataset}".encode()

    def seal(self, request: str, dataset: str, sample_ids: np.ndarray, x: np.ndarray, y: np.ndarray) -> bool:
        """Seal the rows as ``request``'s evidence on ``dataset`` unless already sealed (a
        re-planned job keeps the first copy). False when the request's evidence was
        destroyed already (no key can be made for it)."""
        path = self._path(request, dataset)
        if path.exists():
            return True
        key = self.keyring.keys([request], create=True).get(request)
        if key is None:
            return False
        buffer = io.BytesIO()
        np.savez(buffer, sample_id=np.asarray(sample_ids, np.int64), x=x, y=y)
        nonce = os.urandom(12)
        sealed = MAGIC + nonce + AESGCM(key).encrypt(nonce, buffer.getvalue(), self._aad(request, dataset))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(sealed)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def rows(self, dataset: str, requests: Iterable[str]) -> Rows:
        """The rows sealed for ``requests`` on ``dataset`` that can still be opened (one
        per sample id); empty arrays when none can."""
        requests = sorted(set(requests))
        held = [r for r in requests if self._path(r, dataset).exists()]
        keys = self.keyring.keys(held) if held else {}
        parts = []
        for request in held:
            if request not in keys:
                continue  # its key is destroyed: the file is unreadable and about to go
            data = self._path(request, dataset).read_bytes()
            if not data.startswith(MAGIC):
                raise ValueError(f"evidence of request {request} on {dataset!r} is not a sealed file")
            nonce, body = data[len(MAGIC):len(MAGIC) + 12], data[len(MAGIC) + 12:]
            plain = AESGCM(keys[request]).decrypt(nonce, body, self._aad(request, dataset))
            with np.load(io.BytesIO(plain), allow_pickle=False) as npz:
                parts.append((npz["sample_id"], npz["x"], npz["y"]))
        if not parts:
            return _empty()
        ids = np.concatenate([p[0] for p in parts])
        ids, first = np.unique(ids, return_index=True)
        return ids, np.concatenate([p[1] for p in parts])[first], np.concatenate([p[2] for p in parts])[first]

    def held(self) -> list[str]:
        """The requests with evidence files here."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def destroy(self, request: str) -> int:
        """Delete ``request``'s evidence files (its key must be forgotten first); bytes freed."""
        directory = self.root / request
        if not _SAFE.match(request) or not directory.is_dir():
            return 0
        freed = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        shutil.rmtree(directory)
        return freed

    def sweep(self, dead: Iterable[str]) -> list[str]:
        """Delete the evidence of the ``dead`` requests (their keys are gone: see
        :meth:`held` for the candidates); those that had files. Plaintext forget rows an
        older release kept in ``<data>/scratch`` go too."""
        legacy = self.root.parent / "scratch"
        if legacy.is_dir():
            shutil.rmtree(legacy, ignore_errors=True)
        gone = []
        for request in sorted(set(dead)):
            if (self.root / request).is_dir():
                self.destroy(request)  # an error here leaves it for the next sweep, and says so
                gone.append(request)
        return gone
