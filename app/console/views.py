"""What the console's pages show, read through the services (the same reads the API's
routes make): requests with their deadlines, one request's outcomes and gate attempts,
models with their live job, a model's versions and charts, datasets, the audit trail."""
from __future__ import annotations

import json
from datetime import datetime

from markupsafe import Markup, escape
from sqlalchemy import cast, func, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.callers import Caller
from app.datasets import service as datasets
from app.deletions import service as deletions
from app.jobs import service as jobs
from app.models import service as models
from app.models import versions as aliases
from app.tables import AuditEventRow, utcnow
from workers.engine.engine import Engine
from workers.engine.unlearning import METHODS

CONSOLE = Caller(key_id="console", role="admin")  # reads as an admin; writes carry the signed-in key's id
# a version's metrics key for each chart (TA is test_accuracy on every version; ta where only that was kept)
CHART_METRICS = ((("test_accuracy", "ta"), "TA"), (("ra",), "RA"), (("ua",), "UA"), (("mia_efficacy",), "MIA-efficacy"))


def requests(session: Session, *, status: str | None, owner_id: str | None, overdue: bool,
             limit: int = 200) -> list[dict]:
    rows = deletions.list_for(session=session, caller=CONSOLE, owner_id=owner_id or None, status=status or None,
                              limit=limit, overdue=overdue)
    now = utcnow()
    return [{"row": r, "overdue": deletions.is_overdue(r), "left": _left(r.due_at, now) if r.status not in
             ("completed",) else None} for r in rows]


def _left(due: datetime | None, now: datetime) -> str | None:
    """A deadline as text: "12d 4h left" or "3h 20m overdue"."""
    if due is None:
        return None
    seconds = (due - now).total_seconds()
    s = abs(int(seconds))
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    text = f"{days}d {hours}h" if days else f"{hours}h {minutes}m"
    return f"{text} left" if seconds >= 0 else f"{text} overdue"


def request_detail(session: Session, request_id: str) -> dict:
    row = deletions.get(session=session, caller=CONSOLE, request_id=request_id)
    outcomes = deletions.outcomes(session=session, request_id=row.id)
    produced = deletions.published_methods(session=session, outcomes=outcomes)
    events = audit.query(session, audit.AuditFilter(request_id=row.id), limit=1000)
    attempts = [{"model": e.model, **json.loads(e.data)} for e in events if e.kind == "unlearning.attempt"]
    return {"row": row, "overdue": deletions.is_overdue(row), "left": _left(row.due_at, utcnow()),
            "outcomes": [{"o": o, "published_method": produced.get((o.model, o.version)),
                          "metrics": _shown(o.metrics)} for o in outcomes],
            "attempts": attempts, "events": events}


def _shown(metrics: dict | None) -> list[tuple[str, str]]:
    """The metrics worth a glance, formatted; the rest are in the API's answer."""
    out = []
    for key in ("ua", "ra", "ta", "test_accuracy", "mia_efficacy", "forget_size", "rte_seconds",
                "retrained_shards"):
        if metrics and metrics.get(key) is not None:
            value = metrics[key]
            out.append((key, f"{100 * value:.2f}%" if isinstance(value, float) and key not in ("rte_seconds",)
                        else str(value)))
    return out


def models_page(session: Session) -> list[dict]:
    return [{"row": m, "job": _live_job(session, m.name)} for m in models.list_all(session=session)]


def _live_job(session: Session, name: str) -> dict | None:
    """The model's current job as ``GET /v1/jobs/{id}`` shows it, or None."""
    job = models.current_job(session=session, name=name)
    return jobs.view(session, caller=CONSOLE, job_id=job.id) if job is not None else None


def model_job(session: Session, name: str) -> tuple:
    """The model and its live job, for the fragment the pages poll."""
    return models.get(session=session, name=name), _live_job(session, name)


def model_detail(session: Session, name: str) -> dict:
    row = models.get(session=session, name=name)
    versions = models.versions(session=session, name=name)
    return {"row": row, "versions": [{"v": v, "approximate": v.method in METHODS} for v in reversed(versions)],
            "aliases": aliases.aliases(session=session, name=name),
            "job": _live_job(session, name),
            "charts": [chart(label, [(v.version, _first(v.metrics or {}, keys)) for v in versions], revoked={
                v.version for v in versions if v.revoked_at is not None}) for keys, label in CHART_METRICS]}


def _first(metrics: dict, keys: tuple[str, ...]):
    return next((metrics[k] for k in keys if metrics.get(k) is not None), None)


def chart(label: str, points: list[tuple[int, float | None]], *, revoked: set[int] = frozenset(),
          width: int = 320, height: int = 140) -> Markup:
    """One metric over versions as an inline SVG line (percent); revoked versions hollow."""
    known = [(v, y) for v, y in points if isinstance(y, (int, float))]
    pad, top = 34, 18
    svg = [f'<svg class="chart" role="img" aria-label="{escape(label)} over versions" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}"><title>{escape(label)}</title>',
           f'<text x="4" y="12" class="label">{escape(label)}</text>']
    if not known:
        svg.append(f'<text x="{pad}" y="{height // 2}" class="none">not measured</text></svg>')
        return Markup("".join(svg))
    lo, hi = min(y for _, y in known), max(y for _, y in known)
    lo, hi = (lo - 0.01, hi + 0.01) if hi - lo < 0.02 else (lo, hi)
    first, last = points[0][0], points[-1][0]
    x = (lambda v: pad + (v - first) / (last - first) * (width - pad - 10)) if last > first else (lambda v: width / 2)
    y = lambda value: top + (hi - value) / (hi - lo) * (height - top - 22)  # noqa: E731
    for value in (lo, hi):
        svg.append(f'<text x="2" y="{y(value) + 4:.1f}" class="tick">{100 * value:.1f}</text>'
                   f'<line x1="{pad}" x2="{width - 6}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="grid"/>')
    svg.append('<polyline class="line" points="' + " ".join(f"{x(v):.1f},{y(val):.1f}" for v, val in known) + '"/>')
    for v, val in known:
        hollow = ' class="revoked"' if v in revoked else ""
        svg.append(f'<circle cx="{x(v):.1f}" cy="{y(val):.1f}" r="3"{hollow}><title>v{v}: {100 * val:.2f}%'
                   f'{" (revoked)" if v in revoked else ""}</title></circle>')
    for v, _ in points:
        svg.append(f'<text x="{x(v):.1f}" y="{height - 6}" class="tick" text-anchor="middle">v{v}</text>')
    svg.append("</svg>")
    return Markup("".join(svg))


def datasets_page(session: Session, engine: Engine) -> list[dict]:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        dataset = cast(AuditEventRow.data, JSONB)["dataset"].astext
    else:
        dataset = func.json_extract(AuditEventRow.data, "$.dataset")
    erased = dict(session.execute(select(dataset, func.count()).where(AuditEventRow.kind == "dataset.owner_erased")
                                  .group_by(dataset)).all())
    return [{"info": datasets.describe(engine=engine, row=r), "erasures": erased.get(r.name, 0)}
            for r in datasets.list_all(session=session)]


def audit_page(session: Session, *, request_id: str | None, model: str | None, kind: str | None,
               after: int, limit: int = 100) -> tuple[list, int | None]:
    """One page of events (the kind filter applies within it); the cursor of the next."""
    rows = audit.query(session, audit.AuditFilter(request_id=request_id or None, model=model or None),
                       after=after, limit=limit)
    shown = [r for r in rows if not kind or r.kind.startswith(kind)]
    return shown, rows[-1].seq if len(rows) == limit else None
