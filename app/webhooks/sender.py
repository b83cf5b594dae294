"""The webhook sender: a background thread that posts due deliveries, signed the
Standard Webhooks way, and logs every attempt on its row.

A round claims due rows by pushing their next attempt past a lease (SKIP LOCKED on
PostgreSQL, so several senders never claim one row), commits, posts them a few at a
time, and records each answer in its own transaction. A sender that dies mid-post
leaves the row to be claimed again when the lease ends: a delivery is at least once,
and the ``webhook-id`` header, the same on every attempt, lets the receiver drop a
repeat. A failure is retried after ``retry_seconds`` doubling, at most an hour apart,
until ``give_up_hours`` after the event; then the delivery is ``failed``.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.tables import WebhookDeliveryRow, WebhookRow, utcnow
from app.webhooks.service import UrlRefused, resolve, sign

log = logging.getLogger("lethe.webhooks")
MAX_DELAY = 3600.0


class Sender:
    def __init__(self, factory: sessionmaker[Session], *, allow_private: bool, timeout: float = 10.0,
                 retry_seconds: float = 5.0, give_up_hours: float = 24.0, interval: float = 1.0, parallel: int = 4):
        self.factory, self.allow_private, self.timeout = factory, allow_private, timeout
        self.retry_seconds, self.give_up, self.interval = retry_seconds, timedelta(hours=give_up_hours), interval
        # One post per thread per claim, so a claim's lease covers its slowest post (connect, write
        # and read each take up to ``timeout``): another sender never takes a row still being sent.
        self.batch, self.parallel = parallel, parallel
        self.lease = timedelta(seconds=3 * timeout + 30)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # trust_env off: a proxy from the environment would hide where the post really goes. No
        # keep-alive: connections are to addresses, and one kept for one host name must not carry
        # another name's post past its TLS check.
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                                  limits=httpx.Limits(max_keepalive_connections=0))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lethe-webhook-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.timeout + 5)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.round() and not self._stop.is_set():
                    pass
            except Exception:
                log.exception("webhook round failed; the next one retries it")
            self._stop.wait(self.interval)

    def round(self) -> int:
        """Claim and post due deliveries (one per thread); how many were claimed."""
        claimed = self._claim()
        if claimed:
            with ThreadPoolExecutor(self.parallel) as pool:  # one slow receiver does not hold up the rest
                list(pool.map(self._deliver, claimed))
        return len(claimed)

    def _claim(self) -> list[tuple]:
        now = utcnow()
        with session_scope(self.factory) as session:
            rows = session.execute(
                select(WebhookDeliveryRow, WebhookRow.url, WebhookRow.secret)
                .join(WebhookRow, WebhookRow.id == WebhookDeliveryRow.webhook_id)
                .where(WebhookDeliveryRow.status == "pending", WebhookDeliveryRow.next_attempt_at <= now)
                .order_by(WebhookDeliveryRow.next_attempt_at).limit(self.batch)
                .with_for_update(skip_locked=True, of=WebhookDeliveryRow)).all()
            lease = now + self.lease
            for delivery, _, _ in rows:
                delivery.next_attempt_at = lease
            return [(d.id, d.payload, url, secret) for d, url, secret in rows]

    def _deliver(self, claimed: tuple) -> None:
        msg_id, payload, url, secret = claimed
        started, status_code, error = time.perf_counter(), None, None
        try:
            status_code = self.post(url, secret, msg_id, payload)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except UrlRefused as exc:
            error = exc.detail
        except Exception as exc:  # a refused connection, a timeout, or anything else: logged on the row, retried
            error = f"{type(exc).__name__}: {exc}"[:300]
        self._record(msg_id, status_code, error, (time.perf_counter() - started) * 1000)

    def post(self, url: str, secret: str, msg_id: str, payload: str) -> int:
        """POST ``payload`` to ``url``, signed; the status code. The host is resolved and
        checked again now and the connection goes to the address checked (no DNS
        rebinding between check and connect); TLS still verifies the host's name."""
        address, port = resolve(url, allow_private=self.allow_private)
        parts = urlsplit(url)
        host = f"[{address}]" if ":" in address else address
        target = urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))
        name = parts.hostname.encode("idna").decode()  # a name in Unicode goes out as its ASCII form
        name = f"[{name}]" if ":" in name else name
        timestamp = int(time.time())
        headers = {"host": f"{name}:{parts.port}" if parts.port else name, "content-type": "application/json",
                   "user-agent": "Lethe-Webhooks/1", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(secret, msg_id, timestamp, payload)}
        extensions = {"sni_hostname": name} if parts.scheme == "https" else {}
        # The body of the answer is not read: only its status counts (a receiver cannot make us buffer it).
        with self._http.stream("POST", target, content=payload.encode(), headers=headers,
                               extensions=extensions) as response:
            return response.status_code

    def _record(self, msg_id: str, status_code: int | None, error: str | None, ms: float) -> None:
        now = utcnow()
        with session_scope(self.factory) as session:
            row = session.get(WebhookDeliveryRow, msg_id, with_for_update=True)
            if row is None or row.status != "pending":
                return  # cancelled meanwhile
            row.attempts += 1
            row.attempt_log = [*row.attempt_log, {"at": now.isoformat(timespec="milliseconds"),
                                                  "status_code": status_code, "error": error, "ms": round(ms, 1)}]
            if error is None:
                row.status, row.finished_at, row.next_attempt_at = "delivered", now, None
                return
            delay = min(self.retry_seconds * 2 ** (row.attempts - 1), MAX_DELAY)
            if now + timedelta(seconds=delay) > row.created_at + self.give_up:
                row.status, row.finished_at, row.next_attempt_at = "failed", now, None
                log.warning("webhook delivery %s failed for good after %d attempts", msg_id, row.attempts)
            else:
                row.next_attempt_at = now + timedelta(seconds=delay)
                log.info("webhook delivery %s attempt %d failed (%s); next in %g s", msg_id, row.attempts, error,
                         delay)
