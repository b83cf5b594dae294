"""The engine's front door: import datasets, train models, unlearn owners exactly.

Every step publishes an immutable version to the model store; see ``models_store``.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from models_store import ModelStore, UnknownModel, UnknownVersion, open_backend
from workers.engine import approximate, evidence, nets, sisa, sources, unlearning, verification
from workers.engine.digests import ids_digest, sha256_bytes
from workers.engine.errors import DatasetError, DatasetExists, ModelError, ModelNotFound, VersionNotFound
from workers.engine.ledger import Arrays, Dataset, DatasetInfo, DatasetStore, check_name
from workers.engine.scratch import Scratch
from workers.engine.training import DeviceData, TrainConfig, make_deterministic, predict_proba

SOURCES = ("fashion-mnist", "digits", "npz")


def default_data_dir() -> Path:
    return Path(os.environ.get("LETHE_DATA_DIR", "lethe-data"))


def _ids_blob(ids: np.ndarray) -> bytes:
    # Sorted little-endian int64: the blob's sha256 is the slice's manifest digest.
    return np.sort(np.asarray(ids, dtype=np.int64)).astype("<i8").tobytes()


class Engine:
    """Datasets under ``<data_dir>/datasets``; models in the store at ``store_url``
    (default ``<data_dir>/models_store``)."""

    def __init__(self, data_dir=None, *, store_url=None, device=None, progress=None):
        self.data_dir = Path(data_dir or default_data_dir())
        self.datasets = DatasetStore(self.data_dir / "datasets")
        self.store = ModelStore(open_backend(store_url or self.data_dir / "models_store"))
        self.scratch = Scratch(self.data_dir / "scratch")
        self.device = torch.device(device) if device else nets.default_device()
        self.progress = progress or (lambda msg: None)
        make_deterministic()

    # -- datasets -----------------------------------------------------------
    def import_dataset(
        self,
        name: str,
        source: str,
        *,
        seed: int = 0,
        path: str | os.PathLike | bytes | None = None,
        owners: int | None = None,
        zipf_a: float = 0.75,
    ) -> DatasetInfo:
        """Import ``source`` as dataset ``name``; public sets get Zipf-skewed owners from ``seed``."""
        check_name(name)
        if self.datasets.exists(name):
            raise DatasetExists(f"dataset {name!r} already exists")
        if source == "fashion-mnist":
            raw = sources.load_fashion_mnist(path, self.data_dir / "cache")
        elif source == "digits":
            raw = sources.load_digits(seed=seed)
        elif source == "npz":
            if path is None:
                raise DatasetError("an npz import needs the file")
            raw = sources.load_npz(path)
        else:
            raise DatasetError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
        source_info = dict(raw.source)
        owner_ids = raw.owner_ids
        if owner_ids is None:
            owner_ids = sources.assign_owners(len(raw.x), seed=seed, n_owners=owners, zipf_a=zipf_a)
            source_info["owners"] = {"assigned": "zipf", "zipf_a": zipf_a, "seed": seed, "count": int(len(set(owner_ids)))}
        self.progress(f"importing {len(raw.x)} samples into {name!r}")
        ds = self.datasets.create(
            name,
            x=raw.x,
            y=raw.y,
            owner_ids=owner_ids,
            x_test=raw.x_test,
            y_test=raw.y_test,
            num_classes=raw.num_classes,
            input_shape=raw.input_shape,
            x_scale=raw.x_scale,
            source=source_info,
        )
        return ds.info()

    def dataset(self, name: str) -> Dataset:
        return self.datasets.open(name)

    def ledger(self, name: str) -> Dataset:
        """A cached handle for owner look-ups on the hot path (no stale-file cleanup)."""
        cache = self.__dict__.setdefault("_ledgers", {})
        if name not in cache:
            cache[name] = self.datasets.open(name)
        return cache[name]

    # -- training and unlearning, as plan -> shards -> finish ------------------
    # A job is planned once, each shard in the plan is trained on its own (by a loop
    # here, or by one Celery task per shard), and ``finish`` publishes one version.
    # Plans are JSON and name artifacts by digest, so any worker can run any shard.

    def train(
        self,
        name: str,
        *,
        dataset: str,
        architecture: str = "cnn",
        strategy: sisa.Strategy = sisa.Strategy(),
        config: TrainConfig = TrainConfig(),
    ) -> dict:
        """Train model ``name`` on ``dataset`` and publish version 1."""
        plan = self.plan_train(name, dataset=dataset, architecture=architecture, strategy=strategy, config=config)
        return self.run_plan(plan)

    def unlearn(
        self,
        name: str,
        owner_ids: list[str],
        *,
        requests: list[str] | None = None,
        mode: str = "sisa",
        method: str | None = None,
        method_config: dict | None = None,
    ) -> dict | None:
        """Erase the owners' raw samples, then remove them from the model; publish.

        ``mode="sisa"`` retrains only the touched shards from the checkpoint before their
        earliest touched slice; ``mode="full"`` retrains every shard from scratch (the
        reference); ``mode="approximate"`` runs unlearning ``method`` (see
        ``workers.engine.unlearning``) on the touched constituents only. Several owners
        are one pass. The model is brought in line with the dataset, so samples erased
        earlier (a crashed run, another model's request) are removed too. Returns the new
        version, or None when there was nothing to remove (``sisa``/``approximate``).
        """
        plan = self.plan_unlearn(name, owner_ids, requests=requests, mode=mode, method=method,
                                 method_config=method_config)
        return None if plan is None else self.run_plan(plan)

    def run_plan(self, plan: dict) -> dict:
        """Run every shard of ``plan`` here, one after another, then publish."""
        results, seconds = {}, {}
        for entry in plan["shards"]:
            if entry["status"] != "reused":
                started = time.perf_counter()
                results[entry["shard"]] = self.run_shard(plan, entry["shard"])
                seconds[entry["shard"]] = time.perf_counter() - started
        try:
            return self.finish(plan, results, seconds)
        finally:
            self.scratch.drop(plan.get("scratch"))

    def plan_train(
        self,
        name: str,
        *,
        dataset: str,
        architecture: str = "cnn",
        strategy: sisa.Strategy = sisa.Strategy(),
        config: TrainConfig = TrainConfig(),
        job: str | None = None,
    ) -> dict:
        """Check the request, create the model in the store and cut its shards and slices."""
        started = time.time()
        check_name(name, "model")
        ds = self.dataset(dataset)
        info = ds.info()
        if architecture not in nets.ARCHITECTURES:
            raise ModelError(f"unknown architecture {architecture!r}; choose one of {', '.join(nets.ARCHITECTURES)}")
        try:
            nets.build(architecture, info.input_shape, info.num_classes, seed=0)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        try:
            slices = sisa.partition(ds.owner_map(), strategy.shards, strategy.slices)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        spec = {
            "name": name,
            "dataset": dataset,
            "architecture": architecture,
            "strategy": strategy.to_dict(),
            "recipe": config.to_dict(),
            "input_shape": info.input_shape,
            "num_classes": info.num_classes,
        }
        self._create_or_resume(name, spec)
        shards = [self._plan_shard(shard, ids, "trained", 0, []) for shard, ids in enumerate(slices)]
        return self._plan(name, spec, "train", None, shards, started, job=job)

    def plan_unlearn(
        self,
        name: str,
        owner_ids: list[str],
        *,
        requests: list[str] | None = None,
        mode: str = "sisa",
        job: str | None = None,
        method: str | None = None,
        method_config: dict | None = None,
    ) -> dict | None:
        """Erase the owners' raw samples and plan which constituents change and how.

        ``sisa`` and ``full`` plan which shards retrain from which slice; ``approximate``
        plans ``method`` on each touched constituent. The erased rows are kept in
        scratch until the job ends (the method and the metrics need them). Returns None
        when the latest version holds none of the erased samples (``sisa``, ``approximate``).
        """
        if mode not in ("sisa", "full", "approximate"):
            raise ModelError(f"unlearning mode must be 'sisa', 'full' or 'approximate', got {mode!r}")
        if mode == "approximate":
            try:
                unlearning.config(method, method_config)
            except ValueError as exc:
                raise ModelError(str(exc)) from None
        started = time.time()
        spec = self._spec(name)
        ds = self.dataset(spec["dataset"])
        scratch_key = job or f"plan-{os.getpid()}-{time.time_ns()}"
        if owner_ids:
            approximate.keep_forget_rows(self, ds, owner_ids, scratch_key)
            ds.erase_owners(owner_ids, reference=",".join(requests or []) or None)
        parent = self.version(name)
        parent_slices = self.slice_ids(parent)
        remaining = ds.load_arrays().sample_ids
        trained_on = np.concatenate([np.concatenate(s) for s in parent_slices])
        removed = np.setdiff1d(trained_on, remaining)
        tainted_any = any(c.get("tainted_from_slice") is not None for c in parent["constituents"])
        if mode != "full" and not len(removed) and not (mode == "sisa" and tainted_any):
            self.scratch.drop(scratch_key)
            return None
        kept_rows = self.scratch.load(scratch_key)[0]
        if mode == "approximate" and not np.isin(removed, kept_rows).all():
            # Rows erased by an earlier, crashed job are gone: nothing to unlearn from.
            mode = "sisa"
        if mode == "full":
            touched = {s: 0 for s in range(len(parent_slices))}
        else:
            touched = sisa.first_touched_slices(parent_slices, removed)
        shards = []
        for shard, slices in enumerate(parent_slices):
            constituent = parent["constituents"][shard]
            old = [s["checkpoint"] for s in constituent["slices"]]
            tainted = constituent.get("tainted_from_slice")
            if mode == "sisa" and tainted is not None:
                # An approximate removal left its trace from this slice on: retrain from there.
                touched[shard] = min(touched.get(shard, tainted), tainted)
            if shard not in touched:
                shards.append(self._plan_shard(shard, slices, "reused", None, old))
                shards[-1]["test_probs"] = constituent.get("test_probs")
                shards[-1]["tainted_from_slice"] = tainted
                continue
            r = touched[shard]
            kept = [np.setdiff1d(ids, removed) for ids in slices]
            if mode == "approximate":
                shards.append(self._plan_shard(shard, kept, "approximate", r, old))
                forgot = np.intersect1d(np.concatenate(slices), removed)
                shards[-1].update(
                    parent_weights=constituent["weights"],
                    forget_ids=self.store.put_blob(_ids_blob(forgot)),
                    tainted_from_slice=min(r, tainted) if tainted is not None else r,
                )
            else:
                shards.append(self._plan_shard(shard, kept, "retrained", r, old[:r]))
        kind = {"sisa": "unlearn", "full": "full_retrain", "approximate": "approximate"}[mode]
        removal = self._removal_record(ds, removed, requests)
        plan = self._plan(name, spec, kind, parent["version"], shards, started, removal=removal, job=job)
        plan["scratch"] = scratch_key
        if mode == "approximate":
            plan["method"] = {"name": method, "config": dataclasses.asdict(unlearning.config(method, method_config))}
        return plan

    def get_ids(self, key: str) -> np.ndarray:
        """Sample ids stored as a blob (a slice, a forget set)."""
        return self.slice_blobs([key])[0]

    def _plan_shard(self, shard: int, slices: list[np.ndarray], status: str, from_slice, checkpoints_kept) -> dict:
        return {
            "shard": shard,
            "status": status,  # trained | retrained | reused
            "from_slice": from_slice,
            "slices": [self.store.put_blob(_ids_blob(ids)) for ids in slices],
            "slice_sizes": [int(len(ids)) for ids in slices],
            "checkpoints": list(checkpoints_kept),  # of slices before from_slice (all, when reused)
        }

    @staticmethod
    def _plan(name, spec, kind, parent, shards, started, *, removal=None, job=None) -> dict:
        return {
            "model": name,
            "kind": kind,
            "parent": parent,
            "job": job,
            "spec": spec,
            "started_at": started,
            "removal": removal,
            "shards": shards,
        }

    def run_shard(self, plan: dict, shard: int) -> list[str]:
        """Train one planned shard from its first slice to retrain; return the checkpoints' digests.

        Deterministic, so running it twice (a redelivered task) stores the same bytes.
        """
        entry = plan["shards"][shard]
        if entry["status"] == "reused":
            return []
        if entry["status"] == "approximate":
            return [approximate.unlearn_constituent(self, plan, entry)]
        spec = plan["spec"]
        slice_ids = self.slice_blobs(entry["slices"])
        r = entry["from_slice"]
        start = self.store.get_blob(entry["checkpoints"][r - 1]) if r > 0 else None
        verb = "retraining" if entry["status"] == "retrained" else "training"
        self.progress(f"{verb} shard {shard} from slice {r} (slices 0-{len(slice_ids) - 1})")
        ds = self.dataset(spec["dataset"])
        try:
            made = sisa.train_constituent(
                architecture=spec["architecture"],
                input_shape=spec["input_shape"],
                num_classes=spec["num_classes"],
                cfg=TrainConfig(**spec["recipe"]),
                shard=shard,
                slice_ids=slice_ids,
                data=self.device_data(ds),
                start_slice=r,
                start_checkpoint=start,
                progress=self.progress,
            )
        except KeyError:
            raise DatasetError(f"dataset {spec['dataset']!r} changed while shard {shard} was planned") from None
        return [self.store.put_blob(c) for c in made]

    def finish(self, plan: dict, results: dict[int, list[str]], seconds: dict[int, float] | None = None) -> dict:
        """Publish the version ``plan`` describes, given each trained shard's checkpoints.

        A plan with a ``job`` publishes at most once: if the latest version already
        came from this job (a redelivered task), that version is returned.
        """
        published = self.published_by_job(plan)
        if published is not None:
            return published
        return self.publish(plan, self.candidate(plan, results, seconds))

    def published_by_job(self, plan: dict) -> dict | None:
        """The version this plan's job already published (a redelivered task), or None."""
        if plan["job"] is None:
            return None
        latest = self.store.latest_number(plan["model"])
        if latest is None:
            return None
        record = self.store.version(plan["model"], latest)
        return record if record.get("job") == plan["job"] else None

    def candidate(self, plan: dict, results: dict[int, list[str]], seconds: dict[int, float] | None = None) -> dict:
        """The version record ``plan`` and its shards' results make, with its verification
        metrics, not yet published (an approximate one must pass the gate first)."""
        results = {int(k): v for k, v in results.items()}
        steps, status = {}, {}
        for entry in plan["shards"]:
            shard = entry["shard"]
            weights = None
            if entry["status"] == "approximate":
                ckpts, weights = entry["checkpoints"], results[shard][0]
            else:
                ckpts = entry["checkpoints"] + list(results.get(shard, []))
            if len(ckpts) != len(entry["slices"]):
                raise ModelError(f"shard {shard} has {len(ckpts)} checkpoints for {len(entry['slices'])} slices")
            steps[shard] = list(zip(entry["slices"], entry["slice_sizes"], ckpts))
            status[shard] = (entry["status"], entry["from_slice"], entry.get("test_probs"), weights,
                             entry.get("tainted_from_slice"))
        seconds = {int(k): v for k, v in (seconds or {}).items()}
        return self._candidate(plan, steps, status, sum(seconds.values()) if seconds else None)

    def slice_blobs(self, keys: list[str]) -> list[np.ndarray]:
        """Sample-id lists stored as blobs, read back."""
        return [np.frombuffer(self.store.get_blob(k), dtype="<i8").astype(np.int64) for k in keys]

    def _create_or_resume(self, name: str, spec: dict) -> None:
        try:
            existing = self.store.model_spec(name)
        except UnknownModel:
            self.store.create_model(name, spec)
            return
        # A crashed training run may be resumed with the same spec; anything else clashes.
        if existing != spec or self.store.version_numbers(name):
            raise ModelError(f"model {name!r} already exists")

    def device_data(self, ds: Dataset, arrays: Arrays | None = None) -> DeviceData:
        """The dataset's rows as tensors on this engine's device."""
        arrays = arrays or ds.load_arrays()
        return DeviceData(arrays.sample_ids, arrays.x, arrays.y, ds.info().x_scale, self.device)

    def retrain_full(self, name: str) -> dict:
        """Retrain every shard from scratch on the data the dataset holds now (the reference)."""
        return self.unlearn(name, [], mode="full")

    def _removal_record(self, ds: Dataset, removed: np.ndarray, requests: list[str] | None) -> dict:
        owners, refs = [], list(requests or [])
        for e in ds.erasures():
            if np.isin(np.asarray(e.sample_ids, dtype=np.int64), removed).any():
                owners.append({"owner_id": e.owner_id, "sample_count": len(e.sample_ids), "digest": e.digest})
                refs.extend(r for r in (e.reference or "").split(",") if r)
        return {
            "owners": owners,
            "requests": sorted(set(refs)),
            "sample_count": int(len(removed)),
            "sample_ids_digest": ids_digest(removed),
            "sample_ids": self.store.put_blob(_ids_blob(removed)),
        }

    # -- versions -----------------------------------------------------------
    def _spec(self, name: str) -> dict:
        try:
            return self.store.model_spec(name)
        except UnknownModel as exc:
            raise ModelNotFound(exc.detail) from None

    def version(self, name: str, number: int | str = "latest") -> dict:
        self._spec(name)
        try:
            return self.store.version(name, number)
        except UnknownVersion as exc:
            raise VersionNotFound(exc.detail) from None

    def slice_ids(self, record: dict) -> list[list[np.ndarray]]:
        """The sample ids each constituent trained on, slice by slice, read back from the store."""
        return [self.slice_blobs([s["sample_ids"] for s in c["slices"]]) for c in record["constituents"]]

    def load(self, name: str, number: int | str = "latest") -> sisa.Ensemble:
        """The published version as an ensemble that predicts exactly as when published."""
        record = self.version(name, number)
        models = [
            sisa.load_constituent(self.store.get_blob(c["weights"]), self.device)
            for c in record["constituents"]
            if c["n_samples"] > 0  # a shard emptied by erasures has nothing to say
        ]
        return sisa.Ensemble(models, record["strategy"]["aggregation"])

    def verify(self, name: str, number: int | str = "latest") -> dict:
        """Re-derive a version's evidence from the stored bytes; see ``evidence.verify``."""
        return evidence.verify(self, name, number)

    def test_tensors(self, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
        test = ds.load_test()
        if test is None:
            return None
        x, y = test
        scale = np.float32(ds.info().x_scale)
        return torch.as_tensor(x.astype(np.float32) * scale).to(self.device), torch.as_tensor(y).to(self.device)

    def _candidate(self, plan: dict, steps: dict, status: dict, rte: float | None) -> dict:
        """Evaluate the constituents and build one version record (not yet published).

        ``steps`` maps shard -> [(sample-ids digest, sample count, checkpoint digest)] per
        slice. Each constituent's test-set probabilities are stored too, so a reused
        constituent is not evaluated again: its weights and the test set are unchanged.
        """
        spec = plan["spec"]
        ds = self.dataset(spec["dataset"])
        test = self.test_tensors(ds)
        constituents, artifacts, probs, every_id = [], {}, [], []
        for shard in sorted(steps):
            slices_out = []
            for r, (ids_key, n, ckpt_key) in enumerate(steps[shard]):
                artifacts[f"shard{shard}.slice{r}.sample_ids"] = ids_key
                artifacts[f"shard{shard}.slice{r}.checkpoint"] = ckpt_key
                slices_out.append({"sample_ids": ids_key, "n_samples": n, "checkpoint": ckpt_key})
            all_ids = np.concatenate(self.slice_blobs([s["sample_ids"] for s in slices_out]))
            every_id.append(all_ids)
            state, from_slice, cached, weights, tainted = status[shard]
            constituent = {
                "shard": shard,
                "status": state,
                "retrained_from_slice": from_slice if state != "approximate" else None,
                "n_samples": int(len(all_ids)),
                "manifest_digest": ids_digest(all_ids),
                "weights": weights or slices_out[-1]["checkpoint"],
                "slices": slices_out,
                "test_probs": None,
            }
            if tainted is not None:
                # The checkpoints of slices from here on (and approximate weights) still
                # carry the influence of samples removed approximately; an exact pass
                # retrains from this slice.
                constituent["tainted_from_slice"] = tainted
            if weights is not None:
                artifacts[f"shard{shard}.weights"] = weights
            if test is not None and len(all_ids):
                if state == "reused" and cached:
                    p = np.frombuffer(self.store.get_blob(cached), dtype="<f4").reshape(len(test[1]), -1).copy()
                else:
                    model = sisa.load_constituent(self.store.get_blob(constituent["weights"]), self.device)
                    p = predict_proba(model, test[0]).cpu().numpy().astype("<f4")
                    cached = self.store.put_blob(p.tobytes())
                artifacts[f"shard{shard}.test_probs"] = constituent["test_probs"] = cached
                probs.append(torch.as_tensor(p))
            constituents.append(constituent)
        metrics = {}
        if probs:
            predicted = sisa.aggregate(torch.stack(probs), spec["strategy"]["aggregation"]).argmax(1).numpy()
            predicted = predicted.astype("<i8")
            metrics["test_accuracy"] = round(float((predicted == test[1].cpu().numpy()).mean()), 6)
            # Lets anyone check that a reloaded version still predicts what it did at publish.
            metrics["test_predictions_sha256"] = sha256_bytes(predicted.tobytes())
        else:
            metrics["test_accuracy"] = None
        every_id = np.concatenate(every_id)
        wall = time.time() - plan["started_at"]
        record = {
            "kind": plan["kind"],
            "exact": all(c.get("tainted_from_slice") is None for c in constituents),
            "method": plan.get("method") or {"name": "exact" if plan["kind"] != "train" else "train"},
            "job": plan["job"],
            "dataset": spec["dataset"],
            "architecture": spec["architecture"],
            "strategy": spec["strategy"],
            "recipe": spec["recipe"],
            "device": self.device.type,
            "constituents": constituents,
            "n_samples": int(len(every_id)),
            "manifest_digest": ids_digest(every_id),
            "artifacts": artifacts,
            "removed": plan["removal"] or {"owners": [], "requests": [], "sample_count": 0},
            "metrics": {
                **metrics,
                "wall_seconds": round(wall, 3),
                "rte_seconds": round(rte, 3) if rte is not None else None,
                "retrained_shards": [c["shard"] for c in constituents if c["status"] in ("trained", "retrained")],
                "approximate_shards": [c["shard"] for c in constituents if c["status"] == "approximate"],
                "reused_shards": [c["shard"] for c in constituents if c["status"] == "reused"],
            },
        }
        parent = self.version(plan["model"], plan["parent"]) if plan["parent"] is not None else None
        record["metrics"].update(verification.measure(self, plan, record, every_id))
        record["metrics"]["l2_to_parent"] = verification.l2_to_parent(self, record, parent)
        return record

    def publish(self, plan: dict, record: dict) -> dict:
        """Publish a candidate version record."""
        name = plan["model"]
        metrics = record["metrics"]
        wall = time.time() - plan["started_at"]
        record["metrics"]["wall_seconds"] = round(wall, 3)
        published = self.store.publish(name, record, parent=plan["parent"])
        self.progress(
            f"published {name} v{published['version']}: test accuracy {metrics['test_accuracy']}, "
            f"{wall:.1f}s, retrained shards {record['metrics']['retrained_shards']}"
        )
        return published
