"""Settings: one class, read from ``LETHE_*`` environment variables, with embedded defaults.

Unset URLs fall back to SQLite files under ``LETHE_DATA_DIR``: the database, a
server-less Celery broker (kombu's SQLAlchemy transport) and the Celery result store.

A ``Settings`` object is built once, at an edge (the CLI's options, the API's and the
worker's start-up, a test), and handed to what needs it: the API factory, the Celery
factory, the job flow, the engine. Nothing reads the environment after that.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models_store import check_store_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    data_dir: Path = Path("lethe-data")
    database_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    # default: <data_dir>/models_store; any fsspec URL works. Never with credentials in it
    # (refused at start-up): S3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and
    # AWS_ENDPOINT_URL for a store other than AWS (MinIO), from the environment.
    store_url: str | None = None
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    client_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: str | None = None  # default: cuda when present, else cpu
    fashion_mnist_dir: Path | None = None  # default: where Debian's dataset-fashion-mnist puts it

    db_pool_size: int = 4  # database connections per process
    max_upload_bytes: int = 200 * 1024 * 1024
    # A folder on the server whose files admins may import by path (a table or an image
    # archive larger than an upload may be); unset: imports by path are refused.
    import_dir: Path | None = None
    max_predict_rows: int = 1024
    # Most bytes a predict body may take, JSON or .npy, however wide the model's inputs:
    # below what max_predict_rows inputs would take, it is what bounds a call.
    max_predict_bytes: int = 64 * 1024 * 1024
    # Longest job the workers may run (seconds); the broker's redelivery timeout sits above it.
    job_time_limit: int = 6 * 3600
    lease_seconds: float = 300.0  # a job's dataset lease; its worker renews it every quarter
    relay_interval: float = 0.2  # seconds between outbox scans when nothing pokes the relay
    reconcile_interval: float = 30.0  # seconds between scans for stuck jobs and unsent work
    relay_in_api: bool = True  # run the outbox relay (and the webhook sender) inside the API process
    # Webhooks: deliveries to private, loopback or link-local addresses are refused unless set.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 10.0  # per attempt
    webhook_retry_seconds: float = 5.0  # the first retry's wait, doubling to at most an hour
    webhook_give_up_hours: float = 24.0  # after the event: no more attempts, the delivery is failed
    webhook_interval: float = 1.0  # seconds between scans for due deliveries
    worker_concurrency: int = 1
    worker_max_tasks_per_child: int = 0  # 1 on GPU workers: a fresh process per task frees GPU memory
    torch_threads: int = 0  # per worker process; 0: the cores divided among the pool's processes
    broker_polling_interval: float = 0.05  # kombu SQLAlchemy transport only

    # Approximate unlearning: what `method: auto` tries, in this order (cheapest first, as
    # measured in docs/benchmarks.md) until one passes the gate, then exact; a linear
    # model tries `certified` before these. And the verify-then-publish gate. The default
    # holds only methods that beat doing nothing on every data set and scenario measured
    # (GA); FT and l1_sparse tie with it on digits, distill loses there.
    auto_methods: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["ga"])
    auto_method: str | None = None  # before auto_methods: one method, no policy; still honoured
    # Passes when UA and forget-set MIA-efficacy are within these (plus two standard errors
    # of the forget-set estimate) of what a model that never saw the forget set shows on
    # held-out data, and test accuracy fell by at most gate_max_ta_drop. Fractions in [0, 1].
    # With gate_beat_no_op, also only when its estimated Avg Gap from a retrain is below
    # the parent's unchanged (doing nothing), measured on the same rows.
    gate_ua_tolerance: float = 0.03
    gate_mia_tolerance: float = 0.05
    gate_max_ta_drop: float = 0.02
    gate_beat_no_op: bool = True
    # GET /metrics (Prometheus): open when empty (counts and durations only), else it
    # takes one of these bearer keys. A worker serves its own counters on this port (0: off).
    metrics_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Log lines as JSON objects or console text, each with its context (app.logs).
    log_format: Literal["json", "console"] = "console"
    access_log: bool = True  # one line per HTTP request (method, route template, status, ms)
    worker_metrics_port: int = 0
    # Share of approximate deletions that also get an exact retrain, unpublished, as a
    # reference: the gap between the two is recorded (0 = never, 1 = always).
    spot_check_rate: float = 0.0
    # Hours after revocation before a revoked version's learned artifacts are deleted
    # (0: as soon as the replacing version is published); a sweep runs every purge_interval s.
    purge_after_hours: float = 0.0
    purge_interval: float = 600.0
    # Class labels of an imported dataset must be below this.
    max_classes: int = 1000
    # A request's forget set (its owner's rows, sealed) is destroyed when every outcome has
    # ended, or this many hours after it was sealed if that comes first.
    evidence_max_hours: float = 72.0
    # A request is due this many days after it was accepted (GDPR Art. 12(3): one month).
    deadline_days: float = 30.0
    # Tries per outcome before its request fails; the n-th retry waits backoff * 2^(n-1) s.
    max_attempts: int = 3
    retry_backoff_seconds: float = 60.0
    # Transient failures (database or broker blinked) in a row before one counts as an
    # attempt; each waits backoff * 2^(n-1) s, at most an hour.
    max_transient_failures: int = 20
    # Deletion requests one job coalesces at most (the rest wait for the next job): a job's
    # planning and completion grow with it, and must stay well inside the lease.
    max_job_requests: int = 100
    # Ed25519 key (PEM) that signs deletion certificates; unset: <data_dir>/signing-key.pem,
    # generated (mode 600) on first start. A key file named here must exist.
    signing_key_file: Path | None = None

    @field_validator("admin_keys", "client_keys", "auto_methods", "metrics_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _one_auto_method(self):
        if self.auto_method:  # LETHE_AUTO_METHOD, as set before LETHE_AUTO_METHODS existed
            self.auto_methods = [self.auto_method]
        return self

    @field_validator("store_url")
    @classmethod
    def _no_credentials_in_store_url(cls, value):
        # StoreError, not ValueError: pydantic would quote the rejected value, secret and all.
        if value:
            check_store_url(value)
        return value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'lethe.sqlite').resolve()}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.celery_broker_url.startswith(("redis://", "rediss://")):
            return self.celery_broker_url
        return f"db+sqlite:///{(self.data_dir / 'results.sqlite').resolve()}"

    @property
    def visibility_timeout(self) -> int:
        return self.job_time_limit + 3600

    def roles_by_key_hash(self) -> dict[str, str]:
        """sha256(key) -> role; keys are compared by hash, never kept in plain text beyond settings."""
        roles = {hashlib.sha256(k.encode()).hexdigest(): "client" for k in self.client_keys}
        roles.update({hashlib.sha256(k.encode()).hexdigest(): "admin" for k in self.admin_keys})
        return roles

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "signing-key.pem"

    def source_paths(self) -> dict[str, Path]:
        """Default locations of the dataset sources that read files by name."""
        return {"fashion-mnist": self.fashion_mnist_dir} if self.fashion_mnist_dir else {}
