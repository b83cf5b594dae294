"""The engine's front door: one object that holds the collaborators (the dataset store,
the model store, the evidence vault, the device) and runs whole passes through the rooms:

    datasets (import, erasure) -> planning -> shards (run each) -> candidate (build and
    measure) -> publishing;  evidence (verify a version) for auditors.

The CLI, the tests and the benchmarks drive it in one process; the service's job flow
calls the same methods one step per Celery task. Every step publishes an immutable
version to the model store; see ``models_store``.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from models_store import ModelStore, open_backend
from workers.engine import (
    candidate,
    datasets,
    evidence,
    importing,
    nets,
    planning,
    publishing,
    purge,
    shards,
    sources,
    verification,
)
from workers.engine.ids import get_ids, slice_ids
from workers.engine.ledger import Dataset, DatasetInfo, DatasetStore, Erasure
from workers.engine.plans import Plan
from workers.engine.sisa import Ensemble, Strategy
from workers.engine.training import TrainConfig, make_deterministic
from workers.engine.vault import Keyring, MemoryKeyring, Vault


class Engine:
    """Datasets under ``<data_dir>/datasets``; models in the store at ``store_url``
    (default ``<data_dir>/models_store``). ``source_paths`` gives a dataset source its
    default location (e.g. ``{"fashion-mnist": dir}``) when an import names none.
    Forget sets are sealed under ``<data_dir>/evidence`` with keys from ``keyring``
    (default: held in this process, for one-process use)."""

    def __init__(self, data_dir: str | os.PathLike, *, store_url: str | None = None, device: str | None = None,
                 source_paths: dict[str, Path] | None = None, progress=None, keyring: Keyring | None = None,
                 max_classes: int = sources.MAX_CLASSES):
        self.data_dir = Path(data_dir)
        self.datasets = DatasetStore(self.data_dir / "datasets")
        self.store = ModelStore(open_backend(store_url or self.data_dir / "models_store"))
        self.vault = Vault(self.data_dir / "evidence", keyring or MemoryKeyring())
        self.device = torch.device(device) if device else nets.default_device()
        self.source_paths = dict(source_paths or {})
        self.max_classes = max_classes
        self.progress = progress or (lambda msg, state=None: None)
        self._ledgers: dict[str, Dataset] = {}
        make_deterministic()

    # -- datasets -----------------------------------------------------------
    def import_dataset(self, name: str, source: str, *, seed: int = 0, path=None, owners: int | None = None,
                       zipf_a: float = 0.75, label_alpha: float | None = None, options: dict | None = None,
                       fingerprint: str | None = None) -> DatasetInfo:
        importer = datasets.Importer(self.data_dir, source_paths=self.source_paths, max_classes=self.max_classes,
                                     progress=self.progress)
        return importer(name, source, seed=seed, path=path, owners=owners, zipf_a=zipf_a, label_alpha=label_alpha,
                        options=options, fingerprint=fingerprint)

    def dataset(self, name: str) -> Dataset:
        return self.datasets.open(name)

    def ledger(self, name: str) -> Dataset:
        """A cached handle for owner look-ups on the hot path (no stale-file cleanup)."""
        if name not in self._ledgers:
            self._ledgers[name] = self.datasets.open(name)
        return self._ledgers[name]

    def test_tensors(self, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
        return datasets.test_tensors(ds, self.device)

    def model_dataset(self, model: str) -> Dataset:
        return self.dataset(self.store.model_spec(model)["dataset"])

    def erase_owners(self, model: str, owners: dict[str, list[str]], *, reference: str | None) -> list[Erasure]:
        """Erase the owners (by evidence key: request id) from the model's dataset, each
        key's rows sealed in the vault first; the erasure notes ``reference`` (the request ids)."""
        return datasets.erase_owners(self.model_dataset(model), owners, vault=self.vault, reference=reference)

    # -- passes: plan -> shards -> candidate -> publish ---------------------
    def plan_train(self, name: str, *, dataset: str, architecture: str = "cnn", strategy: Strategy = Strategy(),
                   config: TrainConfig = TrainConfig(), job: str | None = None,
                   architecture_params: dict | None = None) -> Plan:
        return planning.plan_train(self.store, self.dataset(dataset), name, architecture=architecture,
                                   strategy=strategy, config=config, job=job, architecture_params=architecture_params)

    def plan_removal(self, name: str, *, mode: str = "sisa", method: str | None = None,
                     method_config: dict | None = None, requests: list[str] | None = None,
                     job: str | None = None, evidence: list[str] = ()) -> Plan | None:
        """Plan removing what the dataset no longer holds (see ``planning.plan_unlearn``);
        the forget rows come from the evidence of the requests behind the removal (and
        of ``evidence``, extra keys sealed without a request)."""
        return planning.plan_unlearn(self.store, self.model_dataset(name), name, mode=mode, method=method,
                                     method_config=method_config, requests=requests, job=job, vault=self.vault,
                                     evidence=evidence)

    def plan_unlearn(self, name: str, owner_ids: list[str], *, requests: list[str] | None = None,
                     mode: str = "sisa", job: str | None = None, method: str | None = None,
                     method_config: dict | None = None) -> Plan | None:
        """Erase the owners, then plan their removal; None when there is nothing to remove."""
        planning.check_request(mode, method, method_config)
        key = job or f"plan-{os.getpid()}-{time.time_ns()}"
        if owner_ids:
            self.erase_owners(name, {r: owner_ids for r in (requests or [key])},
                              reference=",".join(requests or []) or None)  # a bare key is no request
        plan = self.plan_removal(name, mode=mode, method=method, method_config=method_config,
                                 requests=requests, job=job, evidence=[key])
        if plan is None:
            self.destroy_evidence([key])
        return plan

    def run_shard(self, plan: Plan, shard: int, progress=None) -> list[str]:
        return shards.run_shard(plan, shard, store=self.store, ds=self.dataset(plan.spec["dataset"]),
                                device=self.device, vault=self.vault, progress=progress or self.progress)

    def no_op(self, plan: Plan) -> dict | None:
        """The parent's metrics on ``plan``'s forget set, before any method runs."""
        return candidate.no_op_before(plan, store=self.store, ds=self.dataset(plan.spec["dataset"]),
                                      device=self.device, vault=self.vault)

    def candidate(self, plan: Plan, results: dict[int, list[str]], seconds: dict[int, float] | None = None) -> dict:
        return candidate.build(plan, results, seconds, store=self.store, ds=self.dataset(plan.spec["dataset"]),
                               device=self.device, vault=self.vault)

    def published_by_job(self, plan: Plan) -> dict | None:
        return publishing.published_by_job(self.store, plan)

    def publish(self, plan: Plan, record: dict) -> dict:
        return publishing.publish(self.store, plan, record, self.progress)

    def finish(self, plan: Plan, results: dict[int, list[str]], seconds: dict[int, float] | None = None) -> dict:
        """Publish the plan's version; a job publishes at most once (a redelivered task
        gets the version it already published)."""
        return self.published_by_job(plan) or self.publish(plan, self.candidate(plan, results, seconds))

    def run_plan(self, plan: Plan) -> dict:
        """Run every shard of ``plan`` here, one after another, then publish."""
        results, seconds = {}, {}
        try:
            for shard in plan.to_run:
                started = time.perf_counter()
                results[shard] = self.run_shard(plan, shard)
                seconds[shard] = time.perf_counter() - started
            return self.finish(plan, results, seconds)
        finally:
            self.destroy_evidence(plan.evidence)

    def destroy_evidence(self, requests: list[str]) -> None:
        """Forget the requests' evidence keys held in this process and delete their files
        (one-process use; the service destroys evidence through its database keyring)."""
        if isinstance(self.vault.keyring, MemoryKeyring):
            for request in requests:
                self.vault.keyring.destroy(request)
                self.vault.destroy(request)

    def train(self, name: str, *, dataset: str, architecture: str = "cnn", strategy: Strategy = Strategy(),
              config: TrainConfig = TrainConfig(), architecture_params: dict | None = None,
              init_weights: bytes | None = None) -> dict:
        """Train model ``name`` on ``dataset`` and publish version 1 (each constituent
        initialised from ``init_weights``, a pretrained backbone, when given)."""
        if init_weights is not None:
            kept = self.store_backbone(dataset, architecture=architecture, architecture_params=architecture_params,
                                       data=init_weights)
            config = dataclasses.replace(config, init=kept["digest"])
        return self.run_plan(self.plan_train(name, dataset=dataset, architecture=architecture, strategy=strategy,
                                             architecture_params=architecture_params, config=config))

    def store_backbone(self, dataset: str, *, architecture: str, architecture_params: dict | None,
                       data: bytes) -> dict:
        """Keep a pretrained backbone for ``architecture`` on ``dataset`` (see
        ``planning.store_backbone``); a recipe's ``init`` names its digest."""
        return planning.store_backbone(self.store, self.dataset(dataset), architecture=architecture,
                                       architecture_params=architecture_params, data=data)

    def import_model(self, name: str, *, dataset: str, architecture: str, weights: bytes,
                     architecture_params: dict | None = None, config: TrainConfig = TrainConfig()) -> dict:
        """Publish weights trained elsewhere as version 1 of a monolithic model on
        ``dataset`` (see ``importing``), evaluated like any version."""
        plan = importing.plan_import(self.store, self.dataset(dataset), name, architecture=architecture,
                                     weights=weights, architecture_params=architecture_params, config=config)
        if plan is None:  # this very import published version 1 before; its caller did not record it
            return self.store.version(name, 1)
        return self.finish(plan, {}, {})

    def unlearn(self, name: str, owner_ids: list[str], *, requests: list[str] | None = None, mode: str = "sisa",
                method: str | None = None, method_config: dict | None = None) -> dict | None:
        """Erase the owners' raw samples, then remove them from the model and publish.

        ``mode="sisa"`` retrains only the touched shards; ``"full"`` retrains every shard
        (the reference); ``"approximate"`` runs unlearning ``method`` on the touched
        constituents. Returns the new version, or None when there was nothing to remove.
        """
        plan = self.plan_unlearn(name, owner_ids, requests=requests, mode=mode, method=method,
                                 method_config=method_config)
        return None if plan is None else self.run_plan(plan)

    def retrain_full(self, name: str) -> dict:
        """Retrain every shard from scratch on the data the dataset holds now (the reference)."""
        return self.unlearn(name, [], mode="full")

    # -- versions -----------------------------------------------------------
    def version(self, name: str, number: int | str = "latest") -> dict:
        self.store.model_spec(name)
        return self.store.version(name, number)

    def revoke_superseded(self, record: dict) -> list[dict]:
        """Revoke every earlier, live version of the model that was trained on a sample
        ``record`` removed (see ``publishing.revoke_superseded``); the revocations."""
        return publishing.revoke_superseded(self.store, record)

    def withdraw(self, model: str, owner_ids: list[str], *, requests: list[str]) -> list[dict]:
        """Revoke, with nothing to replace them, the live versions of ``model`` trained
        on rows erased for ``owner_ids`` (see ``publishing.withdraw``)."""
        ds = self.model_dataset(model)
        erased = [i for owner in owner_ids for e in ds.erasures(owner) for i in e.sample_ids]
        return publishing.withdraw(self.store, model, np.asarray(erased, dtype=np.int64), requests)

    def purge(self, *, keep: set[str] = frozenset(), due=lambda revocation: True,
              dry_run: bool = False) -> purge.PurgeReport:
        """Delete what revoked versions learned (see ``purge.purge``)."""
        return purge.purge(self.store, keep=keep, due=due, dry_run=dry_run)

    def slice_ids(self, record: dict) -> list[list[np.ndarray]]:
        return slice_ids(self.store, record)

    def get_ids(self, key: str) -> np.ndarray:
        return get_ids(self.store, key)

    def load(self, name: str, number: int | str = "latest") -> Ensemble:
        """The published version as an ensemble that predicts exactly as when published."""
        ensemble = verification.load_ensemble(self.store, self.version(name, number), self.device)
        if ensemble is None:
            raise ValueError("an ensemble needs at least one constituent")
        return ensemble

    def forget_kl(self, plan: Plan, reference: dict, record: dict) -> float | None:
        return verification.forget_kl(plan, reference, record, store=self.store,
                                      ds=self.dataset(plan.spec["dataset"]), device=self.device, vault=self.vault)

    def verify(self, name: str, number: int | str = "latest") -> dict:
        """Re-derive a version's evidence from the stored bytes; see ``evidence.verify``."""
        return evidence.verify(self.store, self.datasets, name, number)
