"""A job's forget set, kept outside the dataset until the job ends.

The dataset erases an owner's raw rows when the job is planned, but an approximate
method unlearns *from* those rows and the verification metrics (UA, MIA) are measured
*on* them. So the rows are copied here first and deleted when the job completes or
fails; leftovers of crashed jobs are swept after a day.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_AGE_SECONDS = 24 * 3600


class Scratch:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def keep(self, key: str, sample_ids: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Store the rows under ``key`` unless already there (a re-planned job keeps its first copy)."""
        path = self._path(key)
        if path.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, sample_id=sample_ids, x=x, y=y)
        os.replace(tmp, path)

    def load(self, key: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample ids, x, y) kept under ``key``; empty arrays when nothing was kept."""
        path = self._path(key) if key else None
        if path is None or not path.exists():
            return np.zeros(0, np.int64), np.zeros((0,)), np.zeros(0, np.int64)
        with np.load(path) as data:
            return data["sample_id"], data["x"], data["y"]

    def drop(self, key: str | None) -> None:
        if key:
            self._path(key).unlink(missing_ok=True)
        self.sweep()

    def sweep(self, max_age: float = MAX_AGE_SECONDS) -> None:
        if not self.root.exists():
            return
        cutoff = time.time() - max_age
        for path in self.root.iterdir():
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
