"""What every dataset source hands the ledger (:class:`SourceData`), and the rules its
owner ids must follow: those of a deletion request's ``owner_id``, or an owner could
never be erased. The sources (``sources``, ``tables``, ``images``) share them from here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

MAX_OWNER_ID_LENGTH = 128  # as a deletion request's owner_id
MAX_CLASSES = 1000


def owner_id_problem(owner: str) -> str | None:
    """What is wrong with ``owner`` as an owner id ("must be 1 to 128 characters, it has
    0", ...), or None."""
    if not 1 <= len(owner) <= MAX_OWNER_ID_LENGTH:
        return f"must be 1 to {MAX_OWNER_ID_LENGTH} characters, it has {len(owner)}"
    if any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in owner):
        return "must not contain NUL characters or lone surrogates"
    return None


@dataclass
class SourceData:
    """Raw rows from a source, before they enter the dataset store."""

    x: np.ndarray
    y: np.ndarray
    owner_ids: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    input_shape: list[int]
    x_scale: float
    source: dict
    # A source too large to hold: x, y and owner_ids are None and this yields
    # (x, y, owner_ids) batches, written to the ledger as they come.
    batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]] | None = None
