"""The state a job keeps between its steps: the engine's plan and which attempt it is,
saved together on the job row (``JobRow.plan``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workers.engine.plans import Plan


@dataclass
class Attempt:
    """Which try at the job this is, beside its plan."""

    number: int = 1
    phase: str = "publish"  # publish | spot_check (an unpublished exact reference)
    requested_method: str | None = None  # what the requests asked for (exact, auto, a method)
    fallback_from: dict | None = None  # the failed approximate attempt: {"method", "metrics"}
    checked_version: int | None = None  # spot_check: the approximate version it checks
    # ``auto``: the methods tried before this attempt, each {"method", "failures"}
    tried: list[dict] = dataclasses.field(default_factory=list)
    # ``auto`` went straight to exact retraining: why (doing nothing was already within
    # the gate's no-op margin of a retrain, so no method could have passed)
    skipped: str | None = None


@dataclass
class JobState:
    plan: Plan
    attempt: Attempt

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "attempt": dataclasses.asdict(self.attempt)}

    @classmethod
    def from_dict(cls, d: dict) -> JobState:
        if "plan" not in d:  # saved before the state was typed: one flat dict
            attempt = Attempt(number=d.get("attempt", 1),
                              phase="spot_check" if d.get("phase") == "spot_check" else "publish",
                              requested_method=d.get("requested_method"), fallback_from=d.get("fallback_from"),
                              checked_version=d.get("checked_version"))
            return cls(Plan.from_dict(d), attempt)
        return cls(Plan.from_dict(d["plan"]), Attempt(**d["attempt"]))
