"""A Python client for Lethe's HTTP API: ``Client(url, key)``.

It needs only ``httpx`` and ``pydantic`` (and ``PyJWT`` with ``cryptography`` to check a
certificate's signature), never the server's code. Answers come back as typed records;
a field the server adds later is kept on the record (``extra="allow"``) rather than
dropped. Every error answer raises :class:`ApiError` with the server's machine-readable
``code``::

    from lethe.client import Client

    with Client("http://127.0.0.1:8000", "cli_…") as lethe:
        request = lethe.delete("person-0042", reason="GDPR art. 17")
        done = lethe.wait(request.id)             # polls until completed or failed
        token = lethe.certificate(request.id)     # the signed JWS
        claims = lethe.verify_certificate(token)  # checked against the server's JWKS
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from pydantic import BaseModel, ConfigDict

__all__ = ["ApiError", "Client", "Dataset", "Deletion", "Job", "Model", "Version", "AuditEvent", "ChainReport",
           "JobEvent", "Webhook", "WebhookDelivery"]

DONE = ("completed", "failed")


class ApiError(Exception):
    """An error answer: HTTP ``status``, the server's ``code`` and ``detail``, the whole
    ``body`` (``errors``, ``known``, ``replaced_by``, … where the server gives them)."""

    def __init__(self, status: int, code: str, detail: str, body: dict | None = None):
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.body = status, code, detail, body or {}


class Record(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Dataset(Record):
    name: str
    source: str
    n_samples: int
    n_owners: int
    n_test: int | None = None
    num_classes: int | None = None
    input_shape: list[int] | None = None


class OwnerCount(Record):
    owner_id: str
    sample_count: int


class Job(Record):
    id: str
    kind: str
    status: str
    progress: str | None = None
    error: str | None = None


class Model(Record):
    name: str
    dataset: str
    architecture: str
    strategy: dict
    status: str
    latest_version: int | None = None
    error: str | None = None
    job: Job | None = None


class Version(Record):
    model: str
    version: int
    parent: int | None = None
    kind: str
    method: str
    exact: bool | None = None
    status: str = "published"
    requests: list[str] = []
    metrics: dict | None = None


class Outcome(Record):
    model: str
    status: str
    method: str
    version: int | None = None
    metrics: dict | None = None
    seconds: float | None = None
    error: str | None = None
    job_id: str | None = None


class Deletion(Record):
    id: str
    owner_id: str
    status: str
    method: str
    models: list[str] = []
    outcomes: list[Outcome] = []
    failure_reason: str | None = None
    created_at: datetime
    completed_at: datetime | None = None
    due_at: datetime | None = None
    overdue: bool = False

    @property
    def done(self) -> bool:
        return self.status in DONE


class JobProgress(Record):
    id: str
    kind: str
    model: str
    status: str
    phase: str
    shards_total: int = 0
    shards_done: int = 0
    shards: list[dict] = []
    eta_s: float | None = None
    progress: str | None = None
    error: str | None = None


class JobEvent(Record):
    event: str  # "progress" (data is the job) or "end" (data is {"status"})
    data: dict


class AuditEvent(Record):
    seq: int
    at: str
    actor: str
    kind: str
    owner_id: str | None = None
    request_id: str | None = None
    model: str | None = None
    version: int | None = None
    data: dict = {}
    hash: str


class ChainReport(Record):
    ok: bool
    events: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


class Webhook(Record):
    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookDelivery(Record):
    id: str
    webhook_id: str
    event: str
    status: str
    attempts: int


class Client:
    """Lethe over HTTP with an API key (admin or client). ``transport`` and ``timeout``
    go to ``httpx.Client`` (tests pass an in-process transport)."""

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the transport ------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._call(method, path, **kwargs)
        return response.json() if response.content else None

    # --- datasets -----------------------------------------------------------------
    def datasets(self) -> list[Dataset]:
        return [Dataset(**d) for d in self._json("GET", "/v1/datasets")]

    def dataset(self, name: str) -> Dataset:
        return Dataset(**self._json("GET", f"/v1/datasets/{_seg(name)}"))

    def import_dataset(self, name: str, source: str, *, path: str | None = None, options: dict | None = None,
                       **params) -> Dataset:
        """A public set by name (``digits``, ``fashion-mnist``; ``seed``, ``owners``,
        ``zipf_a``, ``label_alpha`` as keywords) or a file already on the server (``path``)."""
        body = {"name": name, "source": source, **params,
                **({"path": path} if path else {}), **({"options": options} if options else {})}
        return Dataset(**self._json("POST", "/v1/datasets", json=body))

    def upload_dataset(self, name: str, file: str | Path | BinaryIO, *, source: str = "npz",
                       options: dict | None = None, filename: str | None = None) -> Dataset:
        """Upload an ``.npz``, a table (``source="table"``) or an image-folder archive."""
        data = {"name": name, "source": source, **({"options": json.dumps(options)} if options else {})}
        with _opened(file) as (fh, default_name):
            files = {"file": (filename or default_name, fh)}
            return Dataset(**self._json("POST", "/v1/datasets", data=data, files=files))

    def owners(self, dataset: str, *, limit: int = 100, after: str | None = None) -> list[OwnerCount]:
        """One page of owner ids and their remaining sample counts (admin)."""
        params = {"limit": limit, **({"after": after} if after else {})}
        page = self._json("GET", f"/v1/datasets/{_seg(dataset)}/owners", params=params)
        return [OwnerCount(**o) for o in page["owners"]]

    # --- models -------------------------------------------------------------------
    def models(self) -> list[Model]:
        return [Model(**m) for m in self._json("GET", "/v1/models")]

    def model(self, name: str) -> Model:
        return Model(**self._json("GET", f"/v1/models/{_seg(name)}"))

    def create_model(self, name: str, dataset: str, *, architecture: str = "cnn", strategy: dict | None = None,
                     training: dict | None = None, architecture_params: dict | None = None,
                     seed: int = 0) -> Job:
        """Queue training (admin); the job to follow (:meth:`job_events`, :meth:`wait_model`)."""
        body = {"name": name, "dataset": dataset, "architecture": architecture, "seed": seed,
                "strategy": strategy or {"kind": "sisa", "shards": 4, "slices": 2},
                **({"training": training} if training else {}),
                **({"architecture_params": architecture_params} if architecture_params else {})}
        return Job(**self._json("POST", "/v1/models", json=body)["job"])

    def retrain(self, name: str) -> Job:
        """Queue a full retrain of every shard on the data held now (admin); the job."""
        return Job(**self._json("POST", f"/v1/models/{_seg(name)}/retrain")["job"])

    def import_model(self, name: str, dataset: str, architecture: str, weights: str | Path | BinaryIO, *,
                     architecture_params: dict | None = None, training: dict | None = None,
                     seed: int = 0) -> Model:
        """Bring a model trained elsewhere (safetensors or a weights-only state dict)."""
        data = {"name": name, "dataset": dataset, "architecture": architecture, "seed": str(seed),
                **({"architecture_params": json.dumps(architecture_params)} if architecture_params else {}),
                **({"training": json.dumps(training)} if training else {})}
        with _opened(weights) as (fh, filename):
            return Model(**self._json("POST", "/v1/models/import", data=data, files={"weights": (filename, fh)}))

    def versions(self, model: str) -> list[Version]:
        return [Version(**v) for v in self._json("GET", f"/v1/models/{_seg(model)}/versions")]

    def version(self, model: str, version: int | str = "latest") -> Version:
        return Version(**self._json("GET", f"/v1/models/{_seg(model)}/versions/{_seg(str(version))}"))

    def predict(self, model: str, inputs, version: int | str = "latest") -> dict:
        """Probabilities and classes for ``inputs`` (nested lists or a numpy array)."""
        rows = inputs.tolist() if hasattr(inputs, "tolist") else inputs
        return self._json("POST", f"/v1/models/{_seg(model)}/versions/{_seg(str(version))}/predict",
                          json={"inputs": rows})

    def artifact(self, model: str, version: int | str = "latest") -> bytes:
        return self._call("GET", f"/v1/models/{_seg(model)}/versions/{_seg(str(version))}/artifact").content

    def aliases(self, model: str) -> list[dict]:
        return self._json("GET", f"/v1/models/{_seg(model)}/aliases")

    def set_alias(self, model: str, alias: str, version: int) -> dict:
        return self._json("PUT", f"/v1/models/{_seg(model)}/aliases/{_seg(alias)}", json={"version": version})

    def wait_model(self, name: str, *, timeout: float = 3600, every: float = 1.0) -> Model:
        """Poll until the model is ``ready`` or ``failed``; the last answer."""
        return _poll(lambda: self.model(name), lambda m: m.status in ("ready", "failed"), timeout, every)

    # --- deletions ----------------------------------------------------------------
    def delete(self, owner_id: str, *, models: list[str] | None = None, method: str | None = None,
               reason: str | None = None, idempotency_key: str | None = None) -> Deletion:
        """File a deletion request (202 ``queued``). With ``idempotency_key`` a retry of the
        same call answers the same request."""
        body = {"owner_id": owner_id, **({"models": models} if models else {}),
                **({"method": method} if method else {}), **({"reason": reason} if reason else {})}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Deletion(**self._json("POST", "/v1/deletion-requests", json=body, headers=headers))

    def deletion(self, request_id: str) -> Deletion:
        return Deletion(**self._json("GET", f"/v1/deletion-requests/{_seg(request_id)}"))

    def deletions(self, *, owner_id: str | None = None, status: str | None = None, overdue: bool | None = None,
                  limit: int = 100) -> list[Deletion]:
        params = {"limit": limit, **({"owner_id": owner_id} if owner_id else {}),
                  **({"status": status} if status else {}),
                  **({"overdue": str(overdue).lower()} if overdue is not None else {})}
        return [Deletion(**d) for d in self._json("GET", "/v1/deletion-requests", params=params)]

    def retry(self, request_id: str) -> Deletion:
        return Deletion(**self._json("POST", f"/v1/deletion-requests/{_seg(request_id)}/retry"))

    def wait(self, request_id: str, *, timeout: float = 3600, every: float = 1.0) -> Deletion:
        """Poll until the request is ``completed`` or ``failed``; the last answer."""
        return _poll(lambda: self.deletion(request_id), lambda d: d.done, timeout, every)

    def owner(self, owner_id: str) -> dict:
        """The owner's lineage (admin): datasets, versions trained on them, requests."""
        return self._json("GET", f"/v1/owners/{_seg(owner_id)}")

    # --- certificates -------------------------------------------------------------
    def certificate(self, request_id: str) -> str:
        """The signed deletion certificate (a JWS) of a completed request."""
        return self._json("GET", f"/v1/deletion-requests/{_seg(request_id)}/certificate")["certificate"]

    def jwks(self) -> dict:
        return self._json("GET", "/.well-known/jwks.json")

    def verify_certificate(self, token: str, jwks: dict | None = None) -> dict:
        """Check the certificate's Ed25519 signature against ``jwks`` (default: the
        server's published keys); its claims. Raises ``jwt.PyJWTError`` when it fails."""
        return verify_token(token, jwks or self.jwks())

    # --- jobs ---------------------------------------------------------------------
    def job(self, job_id: str) -> JobProgress:
        return JobProgress(**self._json("GET", f"/v1/jobs/{_seg(job_id)}"))

    def job_events(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's Server-Sent Events as they come: ``progress`` events, then one ``end``."""
        with self._http.stream("GET", f"/v1/jobs/{_seg(job_id)}/events",
                               timeout=httpx.Timeout(self._http.timeout.connect, read=timeout)) as response:
            if response.status_code >= 400:
                response.read()
                raise _error(response)
            event, data = "message", []
            for line in response.iter_lines():
                if line.startswith(":"):
                    continue
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield JobEvent(event=event, data=json.loads("\n".join(data)))
                    if event == "end":
                        return
                    event, data = "message", []

    # --- audit --------------------------------------------------------------------
    def audit(self, *, owner_id: str | None = None, request_id: str | None = None, model: str | None = None,
              since: str | None = None, until: str | None = None, page_size: int = 500) -> Iterator[AuditEvent]:
        """Every matching audit event in chain order (admin), page after page."""
        params = {k: v for k, v in {"owner_id": owner_id, "request_id": request_id, "model": model,
                                    "since": since, "until": until, "limit": page_size}.items() if v is not None}
        while True:
            page = self._json("GET", "/v1/audit", params=params)
            yield from (AuditEvent(**e) for e in page["events"])
            if page["next_cursor"] is None:
                return
            params["cursor"] = page["next_cursor"]

    def verify_audit(self) -> ChainReport:
        """The server recomputes the whole chain (admin)."""
        return ChainReport(**self._json("GET", "/v1/audit/verify"))

    # --- webhooks -----------------------------------------------------------------
    def add_webhook(self, url: str, events: list[str], secret: str | None = None) -> Webhook:
        """Subscribe ``url`` to ``events`` (admin). The answer carries the signing secret
        (``secret``, given or generated) once; later reads do not show it."""
        body = {"url": url, "events": events, **({"secret": secret} if secret else {})}
        return Webhook(**self._json("POST", "/v1/webhooks", json=body))

    def webhooks(self) -> list[Webhook]:
        return [Webhook(**w) for w in self._json("GET", "/v1/webhooks")]

    def remove_webhook(self, webhook_id: str) -> None:
        self._call("DELETE", f"/v1/webhooks/{_seg(webhook_id)}")

    def deliveries(self, webhook_id: str, *, limit: int = 100) -> list[WebhookDelivery]:
        """A webhook's deliveries, newest first, each with its attempts."""
        return [WebhookDelivery(**d) for d in
                self._json("GET", f"/v1/webhooks/{_seg(webhook_id)}/deliveries", params={"limit": limit})]


def verify_token(token: str, jwks: dict) -> dict:
    """A deletion certificate's claims, once its EdDSA signature checks against the key
    its header names in ``jwks`` (a JWK set); ``jwt.PyJWTError`` otherwise. A little
    leeway: a verifier's clock may be behind the service's."""
    import jwt

    kid = jwt.get_unverified_header(token).get("kid")
    known = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    if kid not in known:
        raise jwt.InvalidKeyError(f"no public key with kid {kid!r} in the key set")
    return jwt.decode(token, known[kid].key, algorithms=["EdDSA"], leeway=300)


def _error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return ApiError(response.status_code, body.get("code", f"http_{response.status_code}"),
                    body.get("detail", response.text[:200]), body)


def _seg(value: str) -> str:
    """One path segment, percent-encoded (an owner id may hold '/', '?', …)."""
    from urllib.parse import quote

    return quote(str(value), safe="")


def _poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float, every: float):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout:g} s: {value!r}")
        time.sleep(every)


class _opened:
    """A path opened for reading, or a file object as it is; with a file name for the upload."""

    def __init__(self, file: str | Path | BinaryIO):
        self.file, self.fh = file, None

    def __enter__(self) -> tuple[BinaryIO, str]:
        if isinstance(self.file, (str, Path)):
            self.fh = open(self.file, "rb")
            return self.fh, Path(self.file).name
        return self.file, Path(getattr(self.file, "name", "upload") or "upload").name

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()
