"""The job flow: the path of one job, one step per Celery task (``app.jobs.tasks``)::

    advance(model)         claim the model's next job, erase its owners, plan it
      -> run_shard(...)    one per shard to (re)train or unlearn, in parallel
      -> finish(...)       build the candidate version and measure it; an approximate
                           one must pass the gate, else the job is re-planned (under
                           ``auto`` with the next candidate method, else as exact SISA
                           retraining) and runs again; publish; maybe spot-check
      (any failure -> fail(job))

Every step may run twice (late acknowledgement redelivers after a crash): claiming is
guarded by the dataset lease, shard training is deterministic, and publishing happens
at most once per job. The state that flows between steps is typed: the engine's
:class:`~workers.engine.plans.Plan` and this module's :class:`Attempt`, saved together
on the job row. Each database step is its own transaction (``session_scope``): the
long GPU work between them must not hold one open.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app import faults, logs
from app.db import session_scope
from app.deletions import evidence
from app.jobs import outcomes
from app.jobs import service as jobs
from app.jobs.heartbeat import Heartbeat
from app.jobs.state import Attempt, JobState
from app.metrics import GATE_CHECKS, JOB_DURATION, SHARD_SECONDS
from app.models import purge, versions
from app.settings import Settings
from app.statuses import JobKind
from app.tables import ModelRow
from models_store import LetheError
from workers.engine import gate, metrics, planning
from workers.engine.engine import Engine
from workers.engine.errors import ForgetSetUnavailable
from workers.engine.plans import Plan, PlanKind
from workers.engine.sisa import Strategy
from workers.engine.training import TrainConfig
from workers.engine import unlearning
from workers.engine.unlearning import general

log = logging.getLogger("lethe.worker")


@dataclass(frozen=True)
class Dispatch:
    """Shards to run for attempt ``attempt`` of a job, then its finish step."""

    job_id: str
    shards: list[int]
    attempt: int


def check_settings(settings: Settings) -> None:
    """Settings the job flow relies on; ValueError at start-up rather than at a deletion."""
    unknown = [m for m in settings.auto_methods if m not in general()]
    if unknown or not settings.auto_methods:
        raise ValueError(f"LETHE_AUTO_METHODS must be a comma-separated list of {', '.join(general())}, "
                         f"got {','.join(settings.auto_methods)!r}")


def auto_candidates(settings: Settings, strategy: dict) -> list[str]:
    """What ``method: auto`` tries on a model of ``strategy`` (its record), in order: the
    linear kind's own method first (the certified Newton step on a solver head, its
    proof the cheapest pass; DeltaGrad on a gd head), then ``LETHE_AUTO_METHODS``."""
    first = [m for m in unlearning.METHODS if m not in general() and unlearning.unsupported(m, strategy) is None]
    return first + [m for m in settings.auto_methods if m not in first]


class JobFlow:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], engine: Engine):
        check_settings(settings)
        self.settings, self.sessions, self.engine = settings, sessions, engine
        self.lease_seconds = max(2.0, settings.lease_seconds)

    # -- the steps ----------------------------------------------------------------
    def advance(self, model: str) -> Dispatch | None:
        """Start (or resume) the model's next job, if it has one and its dataset is free."""
        with session_scope(self.sessions) as s:
            claim = jobs.claim(s, model, self.lease_seconds, self.settings.max_job_requests)
        if claim is None:
            return None
        with self._logging(claim.job_id, claim.request_ids):
            return self._advance(claim)

    @contextmanager
    def _logging(self, job_id: str, request_ids: list[str]):
        """Every log line of the block names the job, the deletions it serves and the
        X-Request-IDs that accepted them."""
        with session_scope(self.sessions) as s:
            traces = jobs.trace_ids(s, request_ids)
        with logs.bind(job_id=job_id, deletion_ids=list(request_ids) or None, request_ids=traces or None):
            yield

    def _advance(self, claim: jobs.Claim) -> Dispatch | None:
        log.info("job %s (%s) %s on model %s for %d deletion requests", claim.job_id, claim.kind.value,
                 "resumed" if claim.state is not None else "claimed", claim.model, len(claim.request_ids))
        try:
            if claim.state is not None:
                state = JobState.from_dict(claim.state)
            else:  # erasing and sealing many owners takes a while: keep the lease meanwhile, or
                # the reconciler would hand the job to a second worker, whose erasures would
                # change the dataset under this one's plan
                with Heartbeat(self.sessions, claim.job_id, self.lease_seconds):
                    state = self._plan(claim)
        except Exception as exc:  # the job fails with a reason; it must not stay running
            log.exception("planning job %s failed", claim.job_id)
            self.fail(claim.job_id, exc)
            return None
        if state is None:
            return None
        return Dispatch(claim.job_id, state.plan.to_run, state.attempt.number)

    def run_shard(self, job_id: str, shard: int, attempt: int) -> dict:
        """Train (or approximately unlearn) one shard of the job's plan; its new
        checkpoints' digests and the seconds it took."""
        state = self._state(job_id, attempt)
        if state is None:
            return {"shard": shard, "checkpoints": [], "skipped": True}
        with self._logging(job_id, _requests(state.plan)), logs.bind(shard=shard), \
                Heartbeat(self.sessions, job_id, self.lease_seconds, shard=shard) as heartbeat:
            log.info("job %s: running shard %d (%s)", job_id, shard, state.plan.kind.value)
            heartbeat.report(None, {"phase": "running", "attempt": attempt})
            started = time.perf_counter()
            made = self.engine.run_shard(state.plan, shard, progress=heartbeat.report)
            seconds = time.perf_counter() - started
            SHARD_SECONDS.labels(state.plan.kind.value).observe(seconds)
            heartbeat.report(None, {"phase": "done", "attempt": attempt, "seconds": round(seconds, 3)})
            return {"shard": shard, "checkpoints": made, "seconds": seconds}

    def finish(self, job_id: str, attempt: int, results: list[dict]) -> Dispatch | None:
        """Verify the job's candidate version, publish it (or fall back to exact), complete."""
        state = self._state(job_id, attempt)
        if state is None or any(r.get("skipped") for r in results):
            return None
        # Measuring the candidate takes a while: keep the lease, or the reconciler would
        # hand the job to another worker meanwhile.
        with self._logging(job_id, _requests(state.plan)), Heartbeat(self.sessions, job_id, self.lease_seconds):
            if state.attempt.phase == "spot_check":
                return self._finish_spot_check(job_id, state, results)
            return self._finish(job_id, state, results)

    def fail(self, job_id: str, exc: BaseException) -> None:
        """The job fails with ``exc`` as its reason; its forget rows are dropped. A job
        that already published its version (a step after publishing failed: a spot
        check, the completion) completes with that version instead: it stands, and
        what it supersedes must be revoked."""
        state = self._state(job_id)
        published = self.engine.published_by_job(state.plan) if state is not None else None
        if published is not None:
            log.warning("job %s failed after publishing v%s (%s); completing with it", job_id,
                        published["version"], reason(exc))
            self._complete(job_id, state.plan, published)
            return
        with session_scope(self.sessions) as s:
            model = jobs.job_model(s, job_id)
            failed = outcomes.fail(s, job_id, reason(exc), max_attempts=self.settings.max_attempts,
                                   backoff_seconds=self.settings.retry_backoff_seconds, transient=_not_counted(exc),
                                   max_transient=self.settings.max_transient_failures)
            if failed:
                self._withdraw(s, model, jobs.request_owners(s, failed))
        self._sweep_evidence()

    def _withdraw(self, session: Session, model: str, owners: dict[str, str]) -> None:
        """Requests that failed for good on ``model`` after their owners' rows were erased:
        the versions trained on those rows are withdrawn (revoked in the store, nothing
        replaces them), in the transaction that fails the requests, so the model stops
        serving what was erased. Store first: if the commit fails, the job is failed
        again later and finds the same withdrawals."""
        revocations = self.engine.withdraw(model, sorted(set(owners.values())), requests=sorted(owners))
        if revocations:
            log.warning("withdrew %d versions of %s: unlearning erased rows failed for good", len(revocations), model)
            versions.record_revocations(session, actor=jobs.WORKER, name=model, revocations=revocations)

    # -- planning -----------------------------------------------------------------
    def _plan(self, claim: jobs.Claim) -> JobState | None:
        """Erase the claim's owners, plan the job and save the plan (with the erasures'
        audit events); None when there is nothing to remove (the job completes)."""
        eng = self.engine
        erasures, dataset, skipped = [], None, None
        if claim.kind == JobKind.TRAIN:
            with session_scope(self.sessions) as s:
                m = s.get(ModelRow, claim.model)
                spec = dict(dataset=m.dataset, architecture=m.architecture, architecture_params=m.architecture_params,
                            strategy=Strategy(**m.strategy), config=TrainConfig(**m.recipe))
            plan, requested = eng.plan_train(claim.model, job=claim.job_id, **spec), None
        elif claim.kind == JobKind.RETRAIN:
            plan, requested = eng.plan_removal(claim.model, mode="full", job=claim.job_id), None
        else:
            requested = jobs.job_method(claim.methods)
            method = self._auto(claim.model)[0] if requested == "auto" else requested
            mode = "sisa" if method == "exact" else "approximate"
            method = None if method == "exact" else method
            planning.check_request(mode, method)
            dataset = eng.model_dataset(claim.model).name
            if claim.owner_ids:
                erasures = eng.erase_owners(claim.model, claim.owners, reference=",".join(claim.request_ids))
            plan = eng.plan_removal(claim.model, mode=mode, method=method, requests=claim.request_ids,
                                    job=claim.job_id)
            skipped = self._nothing_to_gain(plan) if requested == "auto" and method != "certified" else None
            if skipped:
                log.info("job %s: %s", claim.job_id, skipped)
                plan = eng.plan_removal(claim.model, mode="sisa", requests=claim.request_ids, job=claim.job_id)
        with session_scope(self.sessions) as s:
            if erasures:
                jobs.cover_dataset(s, model=claim.model, dataset=dataset, request_ids=claim.request_ids)
            if plan is None:  # the latest version already excludes the owners
                outcomes.complete(s, claim.job_id, None)
            else:
                state = JobState(plan, Attempt(requested_method=requested, skipped=skipped))
                jobs.record_plan(s, claim.job_id, state.to_dict(), erasures, dataset)
        if plan is None:
            self._sweep_evidence()  # the job's requests may have ended
            return None
        return state

    def _nothing_to_gain(self, plan: Plan | None) -> str | None:
        """Why ``auto`` should retrain exactly without trying a method, or None: the gate
        passes a candidate only when its estimated Avg Gap beats doing nothing's by the
        no-op margin, and where doing nothing is already within that margin of a retrain
        (a few forget rows, or nothing memorised), no candidate can."""
        if plan is None or plan.kind != PlanKind.APPROXIMATE or not self.settings.gate_beat_no_op:
            return None
        try:
            no_op = self.engine.no_op(plan)
        except ForgetSetUnavailable:
            return None  # the tries say so, and fall back as they always did
        except Exception:  # a shortcut only: if it cannot be measured, the candidates are tried
            log.exception("measuring the parent before trying a method failed; trying the methods")
            return None
        before = gate.estimated_gap(no_op, no_op) if no_op else None
        if before is None:
            return None
        margin = gate.no_op_margin(plan.removal.sample_count)
        if before > margin:
            return None
        return (f"doing nothing is estimated {before:.2f} points of Avg Gap from a retrain, within the gate's "
                f"margin of {margin:.2f} for {plan.removal.sample_count} forget rows: no method could pass, "
                "so auto retrained exactly without trying one")

    def _replan(self, job_id: str, state: JobState) -> Dispatch:
        with session_scope(self.sessions) as s:
            jobs.record_plan(s, job_id, state.to_dict())
        return Dispatch(job_id, state.plan.to_run, state.attempt.number)

    def _state(self, job_id: str, attempt: int | None = None) -> JobState | None:
        """The running job's state; None if the job ended or moved on to another attempt."""
        with session_scope(self.sessions) as s:
            saved = jobs.running_state(s, job_id)
        if saved is None:
            return None
        state = JobState.from_dict(saved)
        return None if attempt is not None and state.attempt.number != attempt else state

    # -- finishing ----------------------------------------------------------------
    def _candidate(self, plan: Plan, results: list[dict]) -> dict:
        return self.engine.candidate(plan, {r["shard"]: r["checkpoints"] for r in results},
                                     {r["shard"]: r.get("seconds", 0.0) for r in results})

    def _finish(self, job_id: str, state: JobState, results: list[dict]) -> Dispatch | None:
        plan, eng = state.plan, self.engine
        try:
            record = eng.published_by_job(plan)
            if record is None:
                record = self._candidate(plan, results)
                if plan.kind == PlanKind.APPROXIMATE and not self._passes_gate(job_id, plan, record):
                    return self._after_gate_failure(job_id, state, record)
                if state.attempt.tried:
                    record["metrics"]["auto_tried"] = state.attempt.tried
                if state.attempt.skipped:
                    record["metrics"]["auto_skipped"] = state.attempt.skipped
                if state.attempt.fallback_from:
                    record["metrics"]["fallback_gap"] = metrics.gaps(state.attempt.fallback_from["metrics"],
                                                                     record["metrics"])
                record = eng.publish(plan, record)
                if plan.kind == PlanKind.APPROXIMATE and _sampled(job_id, self.settings.spot_check_rate):
                    return self._start_spot_check(job_id, state, record)
        except LetheError as exc:
            self.fail(job_id, exc)
            return None
        self._complete(job_id, plan, record)
        return None

    def _complete(self, job_id: str, plan: Plan, record: dict, audit=None) -> None:
        """The job is done with ``record`` published: revoke the earlier versions trained
        on what it removed (store first, then the database with the outcomes and any
        ``audit(session)`` of the step, in one transaction, aliases moved); the evidence
        of requests that ended goes."""
        revocations = self.engine.revoke_superseded(record)
        with session_scope(self.sessions) as s:
            if audit is not None:
                audit(s)
            outcomes.complete(s, job_id, record)
            versions.record_revocations(s, actor=jobs.WORKER, name=plan.model, revocations=revocations)
        if record["metrics"].get("wall_seconds") is not None:
            JOB_DURATION.labels(record["kind"], record["method"]["name"]).observe(record["metrics"]["wall_seconds"])
        self._sweep_evidence()
        if revocations and self.settings.purge_after_hours <= 0:
            try:  # the job is done either way; a purge that fails is retried by the next sweep
                purge.purge(self.sessions, self.engine, self.settings, actor=jobs.WORKER)
            except Exception:
                log.exception("purging after job %s failed", job_id)

    def _sweep_evidence(self) -> None:
        """Delete the sealed files of requests whose evidence was destroyed (the job's
        requests that just ended, and any expired); a failure waits for the next sweep."""
        try:
            evidence.sweep(self.sessions, self.engine, max_hours=self.settings.evidence_max_hours, actor=jobs.WORKER)
        except Exception:
            log.exception("sweeping sealed evidence failed")

    def _passes_gate(self, job_id: str, plan: Plan, record: dict) -> bool:
        s = self.settings
        thresholds = gate.Thresholds(s.gate_ua_tolerance, s.gate_mia_tolerance, s.gate_max_ta_drop,
                                     s.gate_beat_no_op)
        parent = self.engine.version(plan.model, plan.parent)
        failures = gate.check(record["metrics"], parent["metrics"].get("test_accuracy"), thresholds,
                              method=plan.method.name)
        record["metrics"]["gate"] = {"passed": not failures, "failures": failures, **gate.estimates(record["metrics"])}
        GATE_CHECKS.labels(plan.method.name, "fail" if failures else "pass").inc()
        with session_scope(self.sessions) as session:
            jobs.record_attempt(session, job_id, method=dataclasses.asdict(plan.method), parent=plan.parent,
                                metrics=record["metrics"], failures=failures)
        return not failures

    def _auto(self, model: str) -> list[str]:
        with session_scope(self.sessions) as s:
            strategy = s.get(ModelRow, model).strategy
        return auto_candidates(self.settings, strategy)

    def _after_gate_failure(self, job_id: str, state: JobState, record: dict) -> Dispatch:
        """The approximate candidate failed the gate. Under ``auto``, the next attempt runs
        the next candidate method not tried yet; after the last one (or for a method the
        requests named), it is exact SISA retraining from the same parent (the owners are
        already erased). Either way it is planned and run now."""
        plan = state.plan
        tried = [*state.attempt.tried, {"method": plan.method.name, "failures": record["metrics"]["gate"]["failures"]}]
        number, requested = state.attempt.number + 1, state.attempt.requested_method
        done = {t["method"] for t in tried}
        following = [m for m in self._auto(plan.model) if m not in done] if requested == "auto" else []
        if following:
            log.info("job %s: %s failed the gate; auto tries %s next", job_id, plan.method.name, following[0])
            nxt = self.engine.plan_removal(plan.model, mode="approximate", method=following[0], job=job_id,
                                           requests=plan.removal.requests, evidence=plan.evidence)
            if nxt is not None:
                return self._replan(job_id, JobState(nxt, Attempt(number, requested_method=requested, tried=tried)))
        exact = self.engine.plan_removal(plan.model, mode="sisa", requests=plan.removal.requests, job=job_id)
        attempt = Attempt(number=number, requested_method=requested, tried=tried if requested == "auto" else [],
                          fallback_from={"method": dataclasses.asdict(plan.method),
                                         "metrics": jobs.numbers(record["metrics"])})
        return self._replan(job_id, JobState(exact, attempt))

    def _start_spot_check(self, job_id: str, state: JobState, record: dict) -> Dispatch:
        """Plan an exact retrain of the approximate version just published (never
        published itself) as its reference; the job's requests complete when it is done."""
        plan = state.plan
        reference = self.engine.plan_removal(plan.model, mode="sisa", job=job_id)
        # Measured on the published version's forget set, and audited under its method.
        reference.removal, reference.method, reference.evidence = plan.removal, plan.method, plan.evidence
        attempt = Attempt(number=state.attempt.number + 1, phase="spot_check",
                          requested_method=state.attempt.requested_method, checked_version=record["version"])
        return self._replan(job_id, JobState(reference, attempt))

    def _finish_spot_check(self, job_id: str, state: JobState, results: list[dict]) -> None:
        """Compare the published approximate version with its exact reference; audit the gap."""
        plan, eng = state.plan, self.engine
        published = eng.version(plan.model, state.attempt.checked_version)
        try:
            reference = self._candidate(plan, results)
            gaps = metrics.gaps(published["metrics"], reference["metrics"])
            gaps["kl_forget"] = eng.forget_kl(plan, reference, published)
            rte = published["metrics"].get("rte_seconds")
            gaps["speed_up"] = round(reference["metrics"]["rte_seconds"] / rte, 2) if rte else None
        except LetheError as exc:
            gaps = {"error": reason(exc)}
        published["metrics"]["spot_check"] = gaps
        self._complete(job_id, plan, published, audit=lambda s: jobs.record_attempt(
            s, job_id, method=dataclasses.asdict(plan.method), parent=plan.parent,
            metrics=jobs.numbers(reference["metrics"]) if "error" not in gaps else {},
            failures=[], phase="spot_check", gaps=gaps))


def _requests(plan: Plan) -> list[str]:
    return list(plan.removal.requests) if plan.removal else []


def _not_counted(exc: BaseException) -> bool:
    """Failures that are no fault of the request's: a transient one, or an approximate
    pass whose evidence expired meanwhile (planned again, it is exact)."""
    return faults.is_transient(exc) or isinstance(exc, ForgetSetUnavailable)


def reason(exc: BaseException) -> str:
    """A failure as a job's reason: a code and a sentence (see ``app.faults``)."""
    return faults.describe(exc)


def _sampled(job_id: str, rate: float) -> bool:
    """Whether this job is in the spot-checked share: a uniform draw made from its id, so
    the choice can be reproduced from the audit trail."""
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) / 2**32 < rate
