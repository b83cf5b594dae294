"""Datasets and erasure: a source imported into the owner-keyed ledger, owners erased
from it (their rows sealed in the evidence vault first), and a dataset's rows as tensors.

Erasure comes before planning: :func:`erase_owners` returns the receipts (ids digest
and count, never rows) for whoever audits them, and the plan is cut from what is left.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from workers.engine import sources
from workers.engine.errors import DatasetError, DatasetExists
from workers.engine.ledger import Dataset, DatasetInfo, DatasetStore, Erasure, check_name
from workers.engine.vault import Vault

if TYPE_CHECKING:  # torch is imported by the functions that use it: an import needs none of it
    import torch

    from workers.engine.training import DeviceData


class Importer:
    """Dataset imports into ``data_dir`` with its configured source paths and class cap:
    what :meth:`Engine.import_dataset` runs, and what ``lethe import`` runs without the
    engine, which imports torch (an import never uses it: 276 MiB of an idle process)."""

    def __init__(self, data_dir: str | os.PathLike, *, source_paths: dict | None = None,
                 max_classes: int = sources.MAX_CLASSES, progress=None):
        self.datasets = DatasetStore(os.path.join(data_dir, "datasets"))
        self.cache_dir = os.path.join(data_dir, "cache")
        self.source_paths = dict(source_paths or {})
        self.max_classes, self.progress = max_classes, progress

    def __call__(self, name: str, source: str, *, path=None, **options) -> DatasetInfo:
        """``import_dataset`` with ``path`` defaulting to the source's configured one."""
        return import_dataset(self.datasets, name, source, cache_dir=self.cache_dir,
                              path=path if path is not None else self.source_paths.get(source),
                              progress=self.progress, max_classes=self.max_classes, **options)


def import_dataset(
    datasets: DatasetStore,
    name: str,
    source: str,
    *,
    cache_dir: str | os.PathLike,
    seed: int = 0,
    path: str | os.PathLike | bytes | None = None,
    owners: int | None = None,
    zipf_a: float = 0.75,
    label_alpha: float | None = None,
    progress=None,
    max_classes: int = sources.MAX_CLASSES,
    options: dict | None = None,
    fingerprint: str | None = None,
) -> DatasetInfo:
    """Import ``source`` (a name in ``sources.SOURCES``) as dataset ``name``; public sets
    get Zipf-skewed owners from ``seed``. ``fingerprint`` (what made this import) is kept
    in the dataset's source description."""
    check_name(name)
    if datasets.exists(name):
        raise DatasetExists(f"dataset {name!r} already exists")
    raw = sources.load(source, path=path, seed=seed, cache_dir=cache_dir, max_classes=max_classes, options=options)
    if fingerprint is not None:
        raw.source = {**raw.source, "fingerprint": fingerprint}
    if label_alpha is not None and (raw.batches is not None or raw.owner_ids is not None):
        raise DatasetError(f"label_alpha shapes the owners Lethe assigns; {source!r} names its own owners")
    if raw.batches is not None:
        if progress:
            progress(f"importing {raw.source.get('rows', 'the')} rows into {name!r}, chunk by chunk")
        return datasets.create_from_batches(
            name, raw.batches(), x_test=raw.x_test, y_test=raw.y_test, num_classes=raw.num_classes,
            input_shape=raw.input_shape, x_scale=raw.x_scale, source=raw.source).info()
    source_info = dict(raw.source)
    owner_ids = raw.owner_ids
    if owner_ids is None:
        owner_ids = sources.assign_owners(len(raw.x), seed=seed, n_owners=owners, zipf_a=zipf_a, labels=raw.y,
                                          label_alpha=label_alpha)
        source_info["owners"] = {"assigned": "zipf", "zipf_a": zipf_a, "seed": seed, "count": int(len(set(owner_ids))),
                                 **({"label_alpha": label_alpha} if label_alpha is not None else {})}
    if progress:
        progress(f"importing {len(raw.x)} samples into {name!r}")
    ds = datasets.create(
        name, x=raw.x, y=raw.y, owner_ids=owner_ids, x_test=raw.x_test, y_test=raw.y_test,
        num_classes=raw.num_classes, input_shape=raw.input_shape, x_scale=raw.x_scale, source=source_info,
    )
    return ds.info()


def erase_owners(ds: Dataset, owners: dict[str, list[str]], *, vault: Vault, reference: str | None) -> list[Erasure]:
    """Seal each request's owners' raw rows in ``vault`` (the request's forget set: the
    methods unlearn from it and the metrics are measured on it, for every model on the
    dataset), then erase them from the dataset, the erasure noting ``reference`` (the
    request ids). ``owners`` maps evidence keys (request ids) to owner ids.
    Returns the owners' erasure receipts, this one's and any earlier one's."""
    wanted = {}
    for request, owner_ids in owners.items():
        ids = [ds.owner_sample_ids(o) for o in owner_ids if ds.knows_owner(o)]
        if ids and sum(len(i) for i in ids):
            wanted[request] = np.concatenate(ids)
    if wanted:
        held = ds.rows(np.concatenate(list(wanted.values())))  # one read, of the chunks that hold them only
        for request, ids in wanted.items():
            rows = np.flatnonzero(np.isin(held.sample_ids, ids))
            if len(rows):
                vault.seal(request, ds.name, held.sample_ids[rows], held.x[rows], held.y[rows])
    every = sorted({o for owner_ids in owners.values() for o in owner_ids})
    return ds.erase_owners(every, reference=reference)


DEFAULT_MAX_DEVICE_DATA_BYTES = 1 << 30


def max_device_data_bytes() -> int:
    """``LETHE_MAX_DEVICE_DATA_BYTES``: the largest dataset (as float32 model inputs) held
    whole on the device; a larger one is read from its memory-mapped chunks per batch."""
    return int(os.environ.get("LETHE_MAX_DEVICE_DATA_BYTES", DEFAULT_MAX_DEVICE_DATA_BYTES))


def device_data(ds: Dataset, device: torch.device) -> DeviceData:
    """The dataset's training rows as tensors on ``device``, or, when they would take
    more than :func:`max_device_data_bytes` there, left memory-mapped on the host and
    read batch by batch (a dataset larger than memory trains that way)."""
    from workers.engine.training import DeviceData

    info = ds.info()
    n_values = info.n_samples * int(np.prod(info.input_shape))
    if n_values * 4 <= max_device_data_bytes():
        arrays = ds.load_arrays()
        return DeviceData(arrays.sample_ids, arrays.x, arrays.y, info.x_scale, device)
    # Larger: rows and ids stay in their memory-mapped chunks; only the labels are held,
    # as narrow as the classes allow (on 7.8 million rows: 8 MiB, not the 93 MiB of the
    # ids and int32 labels).
    chunks = ds.load_chunks()
    return DeviceData(chunks.sample_ids, chunks.x, chunks.labels(label_dtype(info.num_classes)), info.x_scale,
                      device)


def label_dtype(num_classes: int) -> np.dtype:
    """The narrowest signed integer type that holds class indices below ``num_classes``."""
    for dtype in (np.int8, np.int16, np.int32):
        if num_classes <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def test_tensors(ds: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The dataset's held-out rows as (inputs, labels) on ``device``; None without a test split."""
    import torch

    from workers.engine.training import scaled

    test = ds.load_test()
    if test is None:
        return None
    return scaled(test[0], ds.info().x_scale, device), torch.as_tensor(test[1]).to(device)

