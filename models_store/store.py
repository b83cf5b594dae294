"""The model store: content-addressed blobs plus one immutable JSON record per version.

Keys::

    objects/sha256/<ab>/<digest>          artifact bytes, stored once per digest
    models/<name>/model.json              what the model is (architecture, strategy, recipe)
    models/<name>/versions/<n:08d>.json   one version: parent, artifacts, manifest, metrics
    models/<name>/revocations/<n:08d>.json  that version revoked: when, for which requests, by which version
    models/<name>/purges/<n:08d>.json       that revoked version's learned artifacts deleted: when, which, bytes

A version becomes visible only when its record is created, after every blob it names
has been written; the record is created with ``write_new``, so a crash mid-publish
leaves at most unreferenced blobs, never a half-written version.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from models_store.backends import Backend
from models_store.errors import BlobCorrupt, ModelExists, ModelNotFound, StoreError, VersionConflict, VersionNotFound


def _blob_key(digest: str) -> str:
    return f"objects/sha256/{digest[:2]}/{digest}"


def _dumps(record: dict) -> bytes:
    return json.dumps(record, indent=1, sort_keys=True).encode()


class ModelStore:
    def __init__(self, backend: Backend):
        self.backend = backend

    # -- blobs --------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        """Store ``data`` once under its sha256; return the digest."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.backend.exists(_blob_key(digest)):
            self.backend.write_new(_blob_key(digest), data)
        return digest

    def get_blob(self, digest: str) -> bytes:
        try:
            data = self.backend.read(_blob_key(digest))
        except FileNotFoundError:
            raise StoreError(f"artifact {digest} is missing from the store") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobCorrupt(f"artifact {digest} does not match its digest")
        return data

    def has_blob(self, digest: str) -> bool:
        return self.backend.exists(_blob_key(digest))

    def blob_size(self, digest: str) -> int:
        return self.backend.size(_blob_key(digest))

    def bytes_used(self) -> int:
        """Bytes of every artifact held (for monitoring; walks the whole store)."""
        return self.backend.total_size("objects")

    def delete_blob(self, digest: str) -> bool:
        """Delete an artifact for good (purge); False if it was already gone."""
        return self.backend.delete(_blob_key(digest))

    # -- models -------------------------------------------------------------
    def create_model(self, name: str, spec: dict) -> None:
        if not self.backend.write_new(f"models/{name}/model.json", _dumps(spec)):
            raise ModelExists(f"model {name!r} already exists")

    def model_spec(self, name: str) -> dict:
        try:
            return json.loads(self.backend.read(f"models/{name}/model.json"))
        except FileNotFoundError:
            raise ModelNotFound(f"model {name!r} does not exist") from None

    def model_names(self) -> list[str]:
        return [n for n in self.backend.list("models") if self.backend.exists(f"models/{n}/model.json")]

    # -- versions -----------------------------------------------------------
    def version_numbers(self, name: str) -> list[int]:
        self.model_spec(name)
        return sorted(int(f.split(".")[0]) for f in self.backend.list(f"models/{name}/versions") if f.endswith(".json"))

    def latest_number(self, name: str) -> int | None:
        numbers = self.version_numbers(name)
        return numbers[-1] if numbers else None

    def version(self, name: str, number: int | str = "latest") -> dict:
        """The record of version ``number`` (an int, or ``"latest"``)."""
        if number == "latest":
            number = self.latest_number(name)
            if number is None:
                raise VersionNotFound(f"model {name!r} has no versions yet")
        try:
            raw = self.backend.read(f"models/{name}/versions/{int(number):08d}.json")
        except FileNotFoundError:
            self.model_spec(name)
            raise VersionNotFound(f"model {name!r} has no version {number}") from None
        record = json.loads(raw)
        record["record_sha256"] = hashlib.sha256(raw).hexdigest()
        return record

    # -- what happened to a version after it was published ----------------------
    # Each is its own immutable record beside the version (the version never changes),
    # written once: a second write keeps the first.
    def _note(self, name: str, kind: str, number: int) -> str:
        return f"models/{name}/{kind}/{int(number):08d}.json"

    def _write_note(self, name: str, kind: str, number: int, note: dict, *, stamp: str) -> dict:
        note = {"model": name, "version": int(number), **note,
                stamp: datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        self.backend.write_new(self._note(name, kind, number), _dumps(note))
        return self._read_note(name, kind, number)

    def _read_note(self, name: str, kind: str, number: int) -> dict | None:
        try:
            return json.loads(self.backend.read(self._note(name, kind, number)))
        except FileNotFoundError:
            return None

    # -- audit anchors: signed heads of the service's audit chain, kept apart from it ----
    def put_anchor(self, seq: int, token: str) -> bool:
        """Keep a signed anchor of the audit chain at ``seq`` (written once, never replaced)."""
        return self.backend.write_new(f"audit/anchors/{int(seq):020d}.jws", token.encode())

    def anchor_seqs(self) -> list[int]:
        """The seqs that have an anchor, highest first."""
        names = [n for n in self.backend.list("audit/anchors") if n.endswith(".jws")]
        seqs = []
        for n in names:
            try:
                seqs.append(int(n[:-4]))
            except ValueError:
                continue  # not one of ours
        return sorted(seqs, reverse=True)

    def anchor(self, seq: int) -> str:
        return self.backend.read(f"audit/anchors/{int(seq):020d}.jws").decode(errors="replace")

    def put_anchor_key(self, kid: str, jwk: dict) -> bool:
        """Keep the public key that signs anchors beside them (written once): anchors are
        checked against these, not against keys the database lists."""
        return self.backend.write_new(f"audit/keys/{kid}.jwk", _dumps(jwk))

    def anchor_keys(self) -> dict[str, dict]:
        keys = {}
        for n in self.backend.list("audit/keys"):
            if n.endswith(".jwk"):
                try:
                    keys[n[:-4]] = json.loads(self.backend.read(f"audit/keys/{n}"))
                except (ValueError, FileNotFoundError):
                    continue
        return keys

    def revoke(self, name: str, number: int, *, requests: list[str], replaced_by: int | None) -> dict:
        """Record that version ``number`` is revoked: a later version (``replaced_by``)
        removed samples it was trained on, for ``requests`` (None: it was withdrawn,
        nothing replaces it). Revoking again returns the first revocation."""
        self.version(name, number)
        return self._write_note(name, "revocations", number,
                                {"replaced_by": None if replaced_by is None else int(replaced_by), "requests": sorted(set(requests))}, stamp="revoked_at")

    def revocation(self, name: str, number: int) -> dict | None:
        """The revocation of version ``number``, or None while it is live."""
        return self._read_note(name, "revocations", number)

    def mark_purged(self, name: str, number: int, *, digests: list[str], freed_bytes: int) -> dict:
        """Record that a revoked version's learned artifacts were deleted."""
        return self._write_note(name, "purges", number, {"digests": sorted(digests), "bytes": int(freed_bytes)},
                                stamp="purged_at")

    def purge(self, name: str, number: int) -> dict | None:
        """The purge record of version ``number``, or None while its artifacts are kept."""
        return self._read_note(name, "purges", number)

    def publish(self, name: str, record: dict, *, parent: int | None) -> dict:
        """Publish ``record`` as version ``parent + 1`` (1 if no parent); return it.

        Every digest in ``record["artifacts"]`` must already be stored. If another
        publisher got to ``parent + 1`` first, :class:`VersionConflict` is raised: the
        record was derived from ``parent`` and would silently drop that version's work.
        """
        self.model_spec(name)
        missing = [d for d in record["artifacts"].values() if not self.has_blob(d)]
        if missing:
            raise StoreError(f"cannot publish: artifacts {missing[:3]} are not stored")
        number = 1 if parent is None else parent + 1
        full = dict(
            record,
            model=name,
            version=number,
            parent=parent,
            created_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        )
        if not self.backend.write_new(f"models/{name}/versions/{number:08d}.json", _dumps(full)):
            raise VersionConflict(f"model {name!r} already has version {number}; re-derive from it")
        return self.version(name, number)
