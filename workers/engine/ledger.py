"""Dataset store with a per-sample, owner-keyed ledger.

Layout of one dataset ``<root>/<name>/``:

- ``ledger.sqlite``: ``samples(sample_id, owner_id, label)`` indexed by ``owner_id``,
  ``erasures`` (ids and digests of what was erased, never raw data) and ``meta``.
- ``chunks/<k>-<generation>/``: the raw training rows (``sample_id.npy``, ``x.npy``,
  ``y.npy``) in chunks of ``chunk_rows`` consecutive sample ids (chunk ``k`` holds ids
  ``k * chunk_rows`` up to the next chunk's), sorted by sample id. Erasing an owner
  rewrites only the chunks that hold the owner's rows: each gets a new generation
  without them, the ledger switches to the new generations in one transaction, and the
  old ones are deleted. So an erasure costs what the owner's chunks cost, not what the
  dataset does. (Datasets written before chunks held one ``arrays-<generation>.npz``;
  opening one splits it into chunks.)
- ``test.npz``: held-out evaluation rows; they belong to no owner and are never trained on.

(Longer than the other rooms, on purpose: the ledger's tables, the array generations and
erasure share one file layout and one writer lock, and are read together.)
"""
from __future__ import annotations

import fcntl
import json
import mmap
import os
import re
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from workers.engine.digests import ids_digest
from workers.engine.errors import DatasetError, DatasetExists, DatasetNotFound, OwnerNotFound

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"  # dataset and model names (the API validates with it too)
NAME_RE = re.compile(NAME_PATTERN)

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples (
    sample_id INTEGER PRIMARY KEY,
    owner_id TEXT NOT NULL,
    label INTEGER NOT NULL
);
CREATE INDEX ix_samples_owner_id ON samples(owner_id);
CREATE TABLE erasures (
    erasure_id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id TEXT NOT NULL,
    sample_ids TEXT NOT NULL,
    sample_count INTEGER NOT NULL,
    digest TEXT NOT NULL,
    reference TEXT,
    erased_at TEXT NOT NULL
);
CREATE INDEX ix_erasures_owner_id ON erasures(owner_id);
"""


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_name(name: str, what: str = "dataset") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DatasetError(
            f"invalid {what} name {name!r}: use 1-64 characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Erasure:
    """What one owner's erasure removed: ids and a digest, never the raw rows."""

    owner_id: str
    sample_ids: list[int]
    digest: str
    erased_at: str
    reference: str | None = None


@dataclass(frozen=True)
class Arrays:
    """The training rows currently held, sorted by sample id."""

    sample_ids: np.ndarray
    x: np.ndarray
    y: np.ndarray


@dataclass
class DatasetInfo:
    name: str
    source: dict
    num_classes: int
    input_shape: list[int]
    x_scale: float
    n_samples: int
    n_owners: int
    n_test: int
    created_at: str
    extra: dict = field(default_factory=dict)


CHUNK_ROWS = 4096  # rows per chunk: an erasure rewrites ~chunk_rows rows per chunk it touches


def _write_chunk(directory: Path, sample_ids: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """Write one chunk generation: it appears whole (a directory renamed into place) or not at all."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in (("sample_id", sample_ids), ("x", x), ("y", y)):
        with open(tmp / f"{name}.npy", "wb") as fh:
            np.save(fh, np.ascontiguousarray(array))
            fh.flush()
            os.fsync(fh.fileno())
    os.rename(tmp, directory)


def _read_chunk(directory: Path) -> Arrays:
    return Arrays(*(np.load(directory / f"{name}.npy", mmap_mode="r") for name in ("sample_id", "x", "y")))


class ChunkedRows:
    """Rows spread over several memory-mapped chunk arrays, indexed by position as one
    array without concatenating them: only the rows asked for are read."""

    def __init__(self, parts: list[np.ndarray]):
        for part in parts:  # rows are read in random order: no readahead (it read 500x the data)
            mm = getattr(part, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_RANDOM)
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = parts[0].dtype
        self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + len(self), index).astype(np.int64)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        order = np.argsort(index, kind="stable")  # each chunk read front to back
        bounds = np.searchsorted(which[order], np.arange(len(self.parts) + 1))
        for k in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[k]:bounds[k + 1]]
            out[sel] = self.parts[k][index[sel] - self.offsets[k]]
        return out


class ChunkedIds:
    """Sample ids spread over memory-mapped chunk arrays, ascending across them: the
    positions of ids found chunk by chunk, without the dataset's ids in memory (on 7.8
    million rows they are 62 MiB; here the kernel pages them in and out as needed)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self._full = [k for k, p in enumerate(parts) if len(p)]  # a chunk emptied by erasures has no first id
        self._firsts = np.array([parts[k][0] for k in self._full], dtype=np.int64)
        self.shape = (int(self.offsets[-1]),)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every id, in memory (what code that needs them all as an array gets)."""
        ids = np.concatenate([np.asarray(p) for p in self.parts]) if self.parts else np.empty(0, np.int64)
        return ids if dtype is None else ids.astype(dtype, copy=False)

    def positions(self, ids: np.ndarray, dtype=np.int64) -> np.ndarray:
        """The row position of each of ``ids``; KeyError if any is not held."""
        ids = np.asarray(ids)
        out = np.empty(len(ids), dtype=dtype)
        if not len(ids):
            return out
        part = np.searchsorted(self._firsts, ids, side="right") - 1  # into _full; -1: below every id
        if part.min() < 0:
            raise KeyError("some sample ids are not in the dataset")
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(len(self._full) + 1))
        for j in np.flatnonzero(np.diff(bounds)):
            sel = order[bounds[j]:bounds[j + 1]]
            k = self._full[j]
            want = ids[sel]
            at = np.searchsorted(self.parts[k], want)
            if at.max() >= len(self.parts[k]) or (self.parts[k][at] != want).any():
                raise KeyError("some sample ids are not in the dataset")
            out[sel] = at + self.offsets[k]
        return out


@dataclass(frozen=True)
class Chunks:
    """The training rows held now, in sample-id order, as the memory-mapped chunks they
    are stored in: nothing is read until it is indexed."""

    sample_ids: ChunkedIds
    x: ChunkedRows
    y: list[np.ndarray]  # each chunk's labels

    def labels(self, dtype=np.int32) -> np.ndarray:
        """Every row's label, in memory, as ``dtype`` (narrow: the labels are class indices)."""
        out = np.empty(len(self.sample_ids), dtype=dtype)
        for part, a in zip(self.y, self.sample_ids.offsets):
            out[a:a + len(part)] = part
        return out

    def blocks(self):
        """``(sample_ids, labels)`` chunk by chunk (memory-mapped), in sample-id order."""
        return zip(self.sample_ids.parts, self.y)


def _chunk_name(k: int, generation: int) -> str:
    return f"{k:06d}-{generation:06d}"


def _split(sample_ids: np.ndarray, chunk_rows: int) -> dict[int, slice]:
    """The rows of each chunk, for sample ids in ascending order."""
    keys, starts = np.unique(sample_ids // chunk_rows, return_index=True)
    ends = list(starts[1:]) + [len(sample_ids)]
    return {int(k): slice(int(a), int(b)) for k, a, b in zip(keys, starts, ends)}


def _atomic_savez(path: Path, **arrays) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Dataset:
    """One imported dataset: its ledger and its raw arrays."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        if not (path / "ledger.sqlite").exists():
            raise DatasetNotFound(f"dataset {self.name!r} does not exist")

    # -- ledger -------------------------------------------------------------
    @contextmanager
    def _db(self):
        con = sqlite3.connect(self.path / "ledger.sqlite", timeout=30, isolation_level=None)
        # Erased owners' rows must not linger in free pages: overwrite what is deleted.
        con.execute("PRAGMA secure_delete = ON")
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _exclusive(self):
        """Serialise writers across processes (erasures rewrite the arrays)."""
        with open(self.path / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _meta(self, con, key: str):
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def info(self) -> DatasetInfo:
        with self._db() as con:
            meta = self._meta(con, "info")
            n_samples, n_owners = con.execute(
                "SELECT COUNT(*), COUNT(DISTINCT owner_id) FROM samples"
            ).fetchone()
        return DatasetInfo(name=self.name, n_samples=n_samples, n_owners=n_owners, **meta)

    def owner_sample_ids(self, owner_id: str) -> np.ndarray:
        """The owner's remaining sample ids, through the ``owner_id`` index."""
        with self._db() as con:
            rows = con.execute(
                "SELECT sample_id FROM samples WHERE owner_id = ? ORDER BY sample_id", (owner_id,)
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def owner_query_plan(self) -> str:
        with self._db() as con:
            rows = con.execute(
                "EXPLAIN QUERY PLAN SELECT sample_id FROM samples WHERE owner_id = ?", ("x",)
            ).fetchall()
        return " ".join(str(r[-1]) for r in rows)

    def knows_owner(self, owner_id: str) -> bool:
        """True if the owner holds samples here now or had some erased."""
        with self._db() as con:
            return bool(
                con.execute("SELECT 1 FROM samples WHERE owner_id = ? LIMIT 1", (owner_id,)).fetchone()
                or con.execute("SELECT 1 FROM erasures WHERE owner_id = ? LIMIT 1", (owner_id,)).fetchone()
            )

    def known_owners(self, owner_ids: list[str]) -> set[str]:
        """The subset of ``owner_ids`` that hold samples here now or had some erased (one query)."""
        owner_ids = list(dict.fromkeys(owner_ids))
        found: set[str] = set()
        with self._db() as con:
            for start in range(0, len(owner_ids), 500):
                chunk = owner_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in con.execute(
                    f"SELECT DISTINCT owner_id FROM samples WHERE owner_id IN ({marks}) "
                    f"UNION SELECT owner_id FROM erasures WHERE owner_id IN ({marks})", chunk + chunk))
        return found

    def owners(self, *, limit: int = 100, after: str | None = None) -> list[tuple[str, int]]:
        """Owner ids with their sample counts, ordered by owner id; page with ``after``."""
        with self._db() as con:
            rows = con.execute(
                "SELECT owner_id, COUNT(*) FROM samples WHERE owner_id > ? "
                "GROUP BY owner_id ORDER BY owner_id LIMIT ?",
                (after or "", limit),
            ).fetchall()
        return [(o, int(c)) for o, c in rows]

    def owner_map(self) -> dict[int, str]:
        """sample id -> owner id for every remaining sample (used to partition shards)."""
        with self._db() as con:
            return dict(con.execute("SELECT sample_id, owner_id FROM samples").fetchall())

    def owner_codes(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Every remaining sample's id and its owner as a code into the sorted owner ids:
        ``(sample_ids, codes, owner_ids)``, read as a stream into arrays (a dataset of
        millions of rows needs tens of megabytes here, not a dict per row). The ids are
        int32 where every id fits (below 2**31), else int64: on 7.8 million rows that is
        31 MiB less, in this array and in the shards' id lists cut from it."""
        with self._db() as con:
            con.execute("BEGIN")  # one read: the count, the largest id and the rows agree
            n, top = con.execute("SELECT COUNT(*), MAX(sample_id) FROM samples").fetchone()
            ids = np.empty(n, dtype=np.int32 if (top or 0) < 2**31 else np.int64)
            codes = np.empty(n, dtype=np.int32)  # fewer owners than rows; half of int64 on millions
            names: list[str] = []
            i = 0
            for sample_id, owner in con.execute("SELECT sample_id, owner_id FROM samples ORDER BY owner_id, sample_id"):
                if not names or names[-1] != owner:
                    names.append(owner)
                ids[i], codes[i] = sample_id, len(names) - 1
                i += 1
            con.execute("COMMIT")
        return ids[:i], codes[:i], names

    def erasures(self, owner_id: str | None = None) -> list[Erasure]:
        sql = "SELECT owner_id, sample_ids, digest, erased_at, reference FROM erasures"
        args: tuple = ()
        if owner_id is not None:
            sql += " WHERE owner_id = ?"
            args = (owner_id,)
        with self._db() as con:
            rows = con.execute(sql + " ORDER BY erasure_id", args).fetchall()
        return [Erasure(o, json.loads(ids), d, t, r) for o, ids, d, t, r in rows]

    # -- arrays -------------------------------------------------------------
    def _chunks(self, con) -> dict[int, str] | None:
        chunks = self._meta(con, "chunks")
        return {int(k): v for k, v in chunks.items()} if chunks is not None else None

    def load_arrays(self, *, lazy: bool = False) -> Arrays:
        """Every training row held now, in sample-id order: read into memory, or with
        ``lazy`` its ``x`` as :class:`ChunkedRows` over the memory-mapped chunks (read
        row by row as they are indexed; ids and labels are in memory either way)."""
        return self._load(None, lazy=lazy)

    def load_chunks(self) -> Chunks:
        """Every training row held now, as its memory-mapped chunks: ids, inputs and labels
        all read only where they are indexed (:meth:`load_arrays` with ``lazy`` holds the
        ids and labels in memory)."""
        for _ in range(5):
            with self._db() as con:
                chunks = self._chunks(con)
            if chunks is None:  # written before chunks, not opened since: one file
                arrays = self.load_arrays()
                return Chunks(ChunkedIds([arrays.sample_ids]), ChunkedRows([arrays.x]), [arrays.y])
            try:
                parts = [_read_chunk(self.path / "chunks" / chunks[k]) for k in sorted(chunks)]
            except FileNotFoundError:
                continue  # an erasure switched generations between the two reads
            return Chunks(ChunkedIds([p.sample_ids for p in parts]), ChunkedRows([p.x for p in parts]),
                          [p.y for p in parts])
        raise DatasetError(f"dataset {self.name!r}: its arrays are missing")

    def sample_ids(self) -> np.ndarray:
        """The sample ids held now, ascending (the rows are not read); int32 where every
        id fits (below 2**31), else int64, as :meth:`owner_codes` gives them."""
        with self._db() as con:
            con.execute("BEGIN")  # one read: the count, the largest id and the ids agree
            n, top = con.execute("SELECT COUNT(*), MAX(sample_id) FROM samples").fetchone()
            ids = np.fromiter((r[0] for r in con.execute("SELECT sample_id FROM samples ORDER BY sample_id")),
                              dtype=np.int32 if (top or 0) < 2**31 else np.int64,
                              count=n)  # no growing buffer: millions of ids, allocated once
            con.execute("COMMIT")
            return ids

    def nbytes(self) -> int:
        """The training rows' size on disk (the chunks' x arrays)."""
        with self._db() as con:
            chunks = self._chunks(con)
        if chunks is None:
            return sum(f.stat().st_size for f in self.path.glob("arrays-*.npz"))
        return sum((self.path / "chunks" / c / "x.npy").stat().st_size for c in chunks.values())

    def rows(self, sample_ids: np.ndarray) -> Arrays:
        """The rows of ``sample_ids`` still held, reading only the chunks that hold them."""
        return self._load(np.asarray(sample_ids, dtype=np.int64))

    def _load(self, wanted: np.ndarray | None, *, lazy: bool = False) -> Arrays:
        for _ in range(5):
            with self._db() as con:
                chunks, fname = self._chunks(con), self._meta(con, "arrays_file")
                chunk_rows = self._meta(con, "chunk_rows")
            try:
                if chunks is None:  # written before chunks, not opened since
                    with np.load(self.path / fname) as data:
                        parts = [Arrays(data["sample_id"], data["x"], data["y"])]
                else:
                    keys = sorted(chunks if wanted is None else
                                  {int(k) for k in np.unique(wanted // chunk_rows)} & set(chunks))
                    parts = [_read_chunk(self.path / "chunks" / chunks[k]) for k in keys]
                    if not parts:
                        first = _read_chunk(self.path / "chunks" / chunks[min(chunks)])
                        parts = [Arrays(first.sample_ids[:0], first.x[:0], first.y[:0])]
                if wanted is not None:
                    # The wanted rows of each chunk only: a few thousand ids spread over every
                    # chunk read their rows, not every chunk's ids and rows.
                    keep = [np.isin(p.sample_ids, wanted) for p in parts]
                    return Arrays(*(np.concatenate([getattr(p, f)[k] for p, k in zip(parts, keep)])
                                    for f in ("sample_ids", "x", "y")))
                ids = np.concatenate([p.sample_ids for p in parts])
                if lazy:
                    # Labels are class indices (< MAX_CLASSES): int32 halves them on millions of rows.
                    return Arrays(ids, ChunkedRows([p.x for p in parts]),
                                  np.concatenate([p.y for p in parts], dtype=np.int32))
                return Arrays(ids, np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
            except FileNotFoundError:
                continue  # an erasure switched generations between the two reads
        raise DatasetError(f"dataset {self.name!r}: its arrays are missing")

    def load_test(self) -> tuple[np.ndarray, np.ndarray] | None:
        test = self.path / "test.npz"
        if not test.exists():
            return None
        with np.load(test) as data:
            return data["x"], data["y"]

    def erase_owners(self, owner_ids: list[str], *, reference: str | None = None) -> list[Erasure]:
        """Physically remove the owners' raw rows; return what was erased (ids + digest).

        Owners the ledger never knew raise :class:`OwnerNotFound`; owners already erased
        return their earlier erasure, so a retried request does no harm.
        """
        owner_ids = list(dict.fromkeys(owner_ids))
        if not owner_ids:
            raise DatasetError("no owner ids given")
        with self._exclusive():
            self._to_chunks()
            unknown = [o for o in owner_ids if not self.knows_owner(o)]
            if unknown:
                raise OwnerNotFound(f"dataset {self.name!r} has no owner {unknown[0]!r}")
            to_erase = {o: self.owner_sample_ids(o) for o in owner_ids}
            to_erase = {o: ids for o, ids in to_erase.items() if len(ids)}
            if to_erase:
                self._rewrite_without(to_erase, reference)
        done = []
        for o in owner_ids:
            done.extend(self.erasures(o))
        return done

    def _rewrite_without(self, to_erase: dict[str, np.ndarray], reference: str | None) -> None:
        """Write a new generation of each chunk that holds an erased row, switch the
        ledger to them with the erasure records in one transaction, delete the old ones."""
        gone = np.concatenate(list(to_erase.values()))
        with self._db() as con:
            chunks, chunk_rows = self._chunks(con), self._meta(con, "chunk_rows")
        switched = {}
        for k in sorted({int(k) for k in np.unique(gone // chunk_rows)} & set(chunks)):
            old = _read_chunk(self.path / "chunks" / chunks[k])
            keep = ~np.isin(old.sample_ids, gone)
            if keep.all():
                continue
            name = _chunk_name(k, int(chunks[k].split("-")[1]) + 1)
            _write_chunk(self.path / "chunks" / name, old.sample_ids[keep], old.x[keep], old.y[keep])
            switched[k] = name
        now = utcnow()
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            for owner_id, ids in to_erase.items():
                con.execute("DELETE FROM samples WHERE owner_id = ?", (owner_id,))
                con.execute(
                    "INSERT INTO erasures (owner_id, sample_ids, sample_count, digest, reference, erased_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (owner_id, json.dumps([int(i) for i in ids]), len(ids), ids_digest(ids), reference, now),
                )
            chunks.update(switched)
            con.execute("UPDATE meta SET value = ? WHERE key = 'chunks'", (json.dumps(chunks),))
            con.execute("COMMIT")
        self._remove_stale_arrays()

    def remove_stale_arrays(self) -> None:
        """Delete chunk generations the ledger no longer points to (raw data must not
        linger); split a dataset written before chunks into chunks."""
        with self._exclusive():
            self._to_chunks()
            self._remove_stale_arrays()

    def _to_chunks(self) -> None:
        """A dataset written as one ``arrays-*.npz``: write its rows as chunks and switch
        the ledger to them (the old file goes with the stale ones)."""
        with self._db() as con:
            if self._chunks(con) is not None:
                return
            fname = self._meta(con, "arrays_file")
        with np.load(self.path / fname) as data:
            ids, x, y = data["sample_id"], data["x"], data["y"]
        chunks = {k: _chunk_name(k, 0) for k in _split(ids, CHUNK_ROWS)}
        for k, rows in _split(ids, CHUNK_ROWS).items():
            _write_chunk(self.path / "chunks" / chunks[k], ids[rows], x[rows], y[rows])
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('chunks', ?)", (json.dumps(chunks),))
            con.execute("INSERT OR REPLACE INTO meta VALUES ('chunk_rows', ?)", (json.dumps(CHUNK_ROWS),))
            con.execute("DELETE FROM meta WHERE key = 'arrays_file'")
            con.execute("COMMIT")

    def _remove_stale_arrays(self) -> None:
        # Callers hold the lock: an erasure's next generation is "stale" until it commits.
        with self._db() as con:
            chunks = self._chunks(con) or {}
            current = self._meta(con, "arrays_file")
        live = set(chunks.values())
        for d in (self.path / "chunks").glob("*"):
            if d.name not in live:
                shutil.rmtree(d, ignore_errors=True)
        for f in self.path.glob("arrays-*.npz"):
            if f.name != current:
                f.unlink(missing_ok=True)
        for f in self.path.glob(".arrays-*.tmp"):
            f.unlink(missing_ok=True)


class DatasetStore:
    """All datasets under one root directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def open(self, name: str) -> Dataset:
        check_name(name)
        ds = Dataset(self.root / name)
        ds.remove_stale_arrays()
        return ds

    def exists(self, name: str) -> bool:
        return (self.root / name / "ledger.sqlite").exists()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "ledger.sqlite").exists())

    def create(
        self,
        name: str,
        *,
        x: np.ndarray,
        y: np.ndarray,
        owner_ids: np.ndarray,
        x_test: np.ndarray | None,
        y_test: np.ndarray | None,
        num_classes: int,
        input_shape: list[int],
        x_scale: float,
        source: dict,
    ) -> Dataset:
        """Write a new dataset atomically: it appears whole or not at all."""
        return self.create_from_batches(name, [(x, y, owner_ids)], x_test=x_test, y_test=y_test,
                                        num_classes=num_classes, input_shape=input_shape, x_scale=x_scale,
                                        source=source)

    def create_from_batches(
        self,
        name: str,
        batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
        *,
        x_test: np.ndarray | None,
        y_test: np.ndarray | None,
        num_classes: int,
        input_shape: list[int],
        x_scale: float,
        source: dict,
    ) -> Dataset:
        """Write a new dataset from ``(x, y, owner_ids)`` batches as they come, one chunk
        at a time (a dataset larger than memory is never held whole), atomically: it
        appears whole or not at all. Sample ids are the rows' positions."""
        check_name(name)
        if self.exists(name):
            raise DatasetExists(f"dataset {name!r} already exists")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            con = sqlite3.connect(tmp / "ledger.sqlite")
            con.executescript(SCHEMA)
            chunks: dict[int, str] = {}
            pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            n = held = 0

            def flush(final: bool) -> None:
                nonlocal n, pending, held
                if held < CHUNK_ROWS and not (final and held):
                    return
                x, y, owners = (np.concatenate([p[i] for p in pending]) if len(pending) > 1 else pending[0][i]
                                for i in range(3))
                while held >= CHUNK_ROWS or (final and held):
                    take = min(CHUNK_ROWS, held)
                    ids = np.arange(n, n + take, dtype=np.int64)
                    k = n // CHUNK_ROWS
                    chunks[k] = _chunk_name(k, 0)
                    _write_chunk(tmp / "chunks" / chunks[k], ids, x[:take], y[:take].astype(np.int64))
                    con.executemany("INSERT INTO samples VALUES (?, ?, ?)",
                                    zip(ids.tolist(), [str(o) for o in owners[:take]],
                                        y[:take].astype(np.int64).tolist()))
                    n += take
                    x, y, owners = x[take:], y[take:], owners[take:]
                    held -= take
                pending = [(x, y, owners)]

            for x, y, owners in batches:
                if not len(x) == len(y) == len(owners):
                    raise DatasetError(f"a batch of {len(x)} rows has {len(y)} labels and {len(owners)} owners")
                pending.append((np.asarray(x), np.asarray(y), np.asarray(owners)))
                held += len(x)
                flush(final=False)
            flush(final=True)
            if n == 0:
                raise DatasetError("the dataset is empty")
            if x_test is not None and y_test is not None and len(x_test):
                _atomic_savez(tmp / "test.npz", x=x_test, y=y_test.astype(np.int64))
            info = dict(
                source=source,
                num_classes=int(num_classes),
                input_shape=[int(d) for d in input_shape],
                x_scale=float(x_scale),
                n_test=0 if x_test is None else int(len(x_test)),
                created_at=utcnow(),
            )
            con.execute("INSERT INTO meta VALUES ('info', ?)", (json.dumps(info),))
            con.execute("INSERT INTO meta VALUES ('chunks', ?)", (json.dumps(chunks),))
            con.execute("INSERT INTO meta VALUES ('chunk_rows', ?)", (json.dumps(CHUNK_ROWS),))
            con.commit()
            con.close()
            os.rename(tmp, self.root / name)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if self.exists(name):
                raise DatasetExists(f"dataset {name!r} already exists") from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Dataset(self.root / name)
