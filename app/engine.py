"""The unlearning engine as the service layer builds it from ``Settings``."""
from __future__ import annotations

from app.settings import Settings
from workers.engine.engine import Engine


def build_engine(settings: Settings, *, progress=None, device: str | None = None) -> Engine:
    return Engine(settings.data_dir, store_url=settings.store_url, device=device or settings.device,
                  source_paths=settings.source_paths(), progress=progress)
