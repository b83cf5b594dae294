"""Digests shared by the ledger, the SISA manifests and the model store."""
import hashlib

import numpy as np


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ids_digest(sample_ids) -> str:
    """sha256 of the sorted sample ids written as little-endian int64.

    This is the training-manifest digest: anyone holding the id list can recompute it.
    """
    ids = np.sort(np.asarray(sample_ids, dtype=np.int64)).astype("<i8")
    return hashlib.sha256(ids.tobytes()).hexdigest()
