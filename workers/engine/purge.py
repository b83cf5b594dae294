"""Purge: deleting for good what revoked versions learned, by mark and sweep over the
version records.

Candidates are the learned artifacts (slice checkpoints, weights, outputs on test and retain rows) of
revoked versions that are due and not purged yet. The mark is everything a live
version or a running job needs, read *after* the candidates, so a version published
meanwhile keeps its objects: its blobs are new (never a candidate) or come from its
plan (marked). Sample-id lists stay: they are a revoked version's evidence, not learned.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from models_store import ModelStore
from workers.engine.plans import Plan

LEARNED = (".checkpoint", ".weights", ".test_probs", ".retain_probs")  # artifact names whose bytes came from training


@dataclass
class PurgeReport:
    purged: list[dict] = field(default_factory=list)  # per version: model, version, digests, bytes
    freed_bytes: int = 0
    dry_run: bool = False


def learned(record: dict) -> set[str]:
    return {d for name, d in record["artifacts"].items() if name.endswith(LEARNED)}


def referenced(record: dict) -> set[str]:
    """Every blob a live version needs to be served and verified."""
    blobs = set(record["artifacts"].values())
    removed = record.get("removed", {}).get("sample_ids")
    return blobs | ({removed} if removed else set())


def plan_blobs(plan: Plan) -> set[str]:
    """Every blob a running job's plan reads."""
    blobs = set()
    for s in plan.shards:
        blobs |= set(s.slices) | set(s.checkpoints)
        blobs |= {d for d in (s.test_probs, s.retain_probs, s.parent_weights, s.forget_ids) if d}
    if plan.removal is not None:
        blobs.add(plan.removal.sample_ids)
    return blobs


def _size(store: ModelStore, digest: str) -> int:
    try:
        return store.blob_size(digest)
    except FileNotFoundError:  # another sweep got to it first
        return 0


def purge(store: ModelStore, *, keep: set[str] = frozenset(), due: Callable[[dict], bool] = lambda r: True,
          dry_run: bool = False) -> PurgeReport:
    """Delete the learned artifacts of revoked versions whose revocation is ``due`` and
    that nothing live, and nothing in ``keep`` (running jobs' blobs), references; record
    a purge beside each version. ``dry_run`` reports what would go and deletes nothing."""
    candidates = {}
    for name in store.model_names():
        for number in store.version_numbers(name):
            revocation = store.revocation(name, number)
            if revocation is not None and store.purge(name, number) is None and due(revocation):
                candidates[(name, number)] = learned(store.version(name, number))
    report = PurgeReport(dry_run=dry_run)
    if not candidates:
        return report
    live = set(keep)
    for name in store.model_names():
        for number in store.version_numbers(name):
            if store.revocation(name, number) is None:
                live |= referenced(store.version(name, number))
    gone: set[str] = set()
    for (name, number), blobs in sorted(candidates.items()):
        mine = sorted(d for d in blobs - live - gone if store.has_blob(d))
        size = sum(_size(store, d) for d in mine)
        if not dry_run:
            for digest in mine:
                store.delete_blob(digest)
            store.mark_purged(name, number, digests=mine, freed_bytes=size)
        gone |= set(mine)
        report.purged.append({"model": name, "version": number, "digests": mine, "bytes": size})
        report.freed_bytes += size
    return report
