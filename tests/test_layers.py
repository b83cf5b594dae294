"""The import direction between Lethe's layers, read from the source with ``ast``:
edges (HTTP routes, Celery tasks, the CLI) -> services -> the engine library -> the
model store. Nothing below imports anything above; the libraries import no web,
queue or database framework."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "workers", "models_store")
LAYERS = ("store", "engine", "services", "edges")  # bottom to top
# Modules of ``app`` that are edges; everything else in ``app`` is the service layer.
EDGE_MODULES = {"app.main", "app.http", "app.deps", "app.worker", "app.jobs.tasks"}
EDGE_PACKAGES = ("app.cli",)
FRAMEWORKS = ("fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic", "uvicorn", "click",
              "pydantic_settings")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer(module: str) -> str:
    if module.startswith("models_store"):
        return "store"
    if module.startswith("workers"):
        return "engine"
    if (module in EDGE_MODULES or module.endswith(".routes")
            or any(module == p or module.startswith(p + ".") for p in EDGE_PACKAGES)):
        return "edges"
    return "services"


def imports(source: str) -> set[str]:
    """Every module ``source`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


def _ours(name: str) -> str | None:
    """The module of ours ``name`` refers to (itself or its closest known parent)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_the_layers_are_classified():
    assert layer("app.models.routes") == "edges" and layer("app.jobs.tasks") == "edges"
    assert layer("app.cli.service_commands") == "edges" and layer("app.jobs.flow") == "services"
    assert layer("workers.engine.planning") == "engine" and layer("models_store.store") == "store"
    assert {layer(m) for m in MODULES} == set(LAYERS)


def upward(module: str, source: str) -> list[str]:
    """What ``source``, as the text of ``module``, imports from the layers above it."""
    mine = LAYERS.index(layer(module))
    return sorted(f"{target} ({layer(target)})" for name in imports(source)
                  if (target := _ours(name)) and LAYERS.index(layer(target)) > mine)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_a_layer_above_its_own(module):
    found = upward(module, MODULES[module].read_text())
    assert not found, f"{module} ({layer(module)}) imports a layer above it: {found}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in ("engine", "store")))
def test_the_libraries_import_no_web_queue_or_database_framework(module):
    used = sorted(n for n in imports(MODULES[module].read_text()) if n.split(".")[0] in FRAMEWORKS)
    assert not used, f"{module} imports {used}"


def test_the_check_catches_an_upward_import():
    """Also inside a function, where a shortcut usually sneaks in."""
    source = "import numpy\n\ndef f():\n    from app.jobs import flow\n    from workers.engine import plans\n"
    assert upward("workers.engine.engine", source) == ["app.jobs.flow (services)"]
    assert upward("app.jobs.tasks", source) == []


def test_the_client_imports_none_of_the_server():
    """``lethe.client`` runs where the server's code is not installed: httpx, pydantic
    and PyJWT only."""
    paths = sorted((ROOT / "lethe").rglob("*.py"))
    assert paths
    for path in paths:
        used = sorted(n for n in imports(path.read_text())
                      if n.split(".")[0] in (*PACKAGES, *FRAMEWORKS, "torch", "numpy"))
        assert not used, f"{path.name} imports {used}"
