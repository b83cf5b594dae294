"""Digests shared by the ledger, the SISA manifests and the model store."""
import hashlib

import numpy as np


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


DIGEST_BLOCK = 1 << 20


def sorted_ids(sample_ids) -> np.ndarray:
    """The ids as little-endian int64 in ascending order; no copy when they already are."""
    ids = np.asarray(sample_ids, dtype="<i8")
    if len(ids) > 1 and not (ids[1:] >= ids[:-1]).all():
        ids = np.sort(ids)
    return ids


def ids_digest(sample_ids) -> str:
    """sha256 of the sorted sample ids written as little-endian int64.

    This is the training-manifest digest: anyone holding the id list can recompute it.
    """
    ids = sorted_ids(sample_ids)
    digest = hashlib.sha256()
    for start in range(0, len(ids), DIGEST_BLOCK):  # no copy of a large list (millions of ids)
        digest.update(memoryview(np.ascontiguousarray(ids[start:start + DIGEST_BLOCK])))
    return digest.hexdigest()
