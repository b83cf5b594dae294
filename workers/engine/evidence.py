"""Re-deriving a version's evidence from the stored bytes (what an auditor runs)."""
from __future__ import annotations

import numpy as np

from models_store import ModelStore, StoreError
from workers.engine import checkpoints
from workers.engine.digests import ids_digest
from workers.engine.ids import slice_ids as read_slice_ids
from workers.engine.ledger import DatasetStore
from workers.engine.purge import learned


def verify(store: ModelStore, datasets: DatasetStore, name: str, number: int | str = "latest") -> dict:
    """Re-derive a version's evidence from the stored bytes.

    Checks every artifact against its sha256, recomputes each constituent's and the
    model's manifest digest from the stored sample ids, checks each final checkpoint
    records the same manifest, and lists erased samples the version was trained on
    (expected only for versions published before that erasure). ``exact`` is False
    for a version with approximately unlearned constituents: its manifest excludes the
    removed samples, but its weights were derived from a model that saw them.
    ``revoked`` is the version's revocation (when, for which requests, replaced by which
    version), or None while it is live; a revoked version still verifies. ``purged`` is
    the record of its learned artifacts' deletion (those are then not looked for).
    """
    store.model_spec(name)
    record = store.version(name, number)
    purge = store.purge(name, record["version"])
    # Deleted on purpose: what the version learned (some of it may have gone with the
    # purge of another revoked version that shared it).
    purged = (set(purge["digests"]) | learned(record)) if purge else set()
    problems = []
    try:
        slice_ids = read_slice_ids(store, record)
    except StoreError as exc:
        return {"model": name, "version": record["version"], "ok": False, "problems": [exc.detail]}
    for digest in record["artifacts"].values():
        if digest in purged:
            continue
        try:
            store.get_blob(digest)
        except StoreError as exc:
            problems.append(exc.detail)
    for c, slices in zip(record["constituents"], slice_ids):
        ids = np.concatenate(slices)
        if ids_digest(ids) != c["manifest_digest"] or len(ids) != c["n_samples"]:
            problems.append(f"shard {c['shard']}: manifest digest does not match its sample ids")
        if c["weights"] in purged:
            continue
        try:
            info = checkpoints.loads(store.get_blob(c["weights"])).info
        except StoreError:
            continue  # already reported with the artifacts
        # Approximately unlearned weights are not a slice checkpoint; they name their origin.
        if c["weights"] != c["slices"][-1]["checkpoint"] and "unlearned_from" not in info:
            problems.append(f"shard {c['shard']}: weights are not the last slice's checkpoint")
        if info["manifest_digest"] != c["manifest_digest"]:
            problems.append(f"shard {c['shard']}: checkpoint was trained on other samples")
    every_id = np.concatenate([np.concatenate(s) for s in slice_ids])
    if ids_digest(every_id) != record["manifest_digest"]:
        problems.append("model manifest digest does not match its sample ids")
    erased_in = []
    for e in datasets.open(record["dataset"]).erasures():
        n = int(np.isin(np.asarray(e.sample_ids, dtype=np.int64), every_id).sum())
        if n:
            erased_in.append({"owner_id": e.owner_id, "samples": n, "erased_at": e.erased_at})
    return {
        "model": name,
        "version": record["version"],
        "ok": not problems,
        "revoked": store.revocation(name, record["version"]),
        "purged": purge,
        "exact": record.get("exact", True),
        "problems": problems,
        "manifest_digest": record["manifest_digest"],
        "erased_owners_in_manifest": erased_in,
    }
