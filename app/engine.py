"""The unlearning engine as the service layer builds it from ``Settings``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from app.settings import Settings
from workers.engine.datasets import Importer

if TYPE_CHECKING:  # the engine imports torch: loaded by build_engine, not by build_importer
    from workers.engine.engine import Engine
    from workers.engine.vault import Keyring


def build_importer(settings: Settings, *, progress=None) -> Importer:
    """Dataset imports for ``settings``, without the engine (and torch)."""
    return Importer(settings.data_dir, source_paths=settings.source_paths(), max_classes=settings.max_classes,
                    progress=progress)


def build_engine(settings: Settings, *, progress=None, device: str | None = None,
                 keyring: Keyring | None = None) -> Engine:
    """The engine for ``settings``; a worker passes the database keyring
    (``app.deletions.evidence.DatabaseKeyring``) so requests' evidence outlives a job."""
    from workers.engine.engine import Engine

    return Engine(settings.data_dir, store_url=settings.store_url, device=device or settings.device,
                  source_paths=settings.source_paths(), progress=progress, keyring=keyring,
                  max_classes=settings.max_classes)
