"""Registries are the one list of what users extend: the API's enums and the CLI's
choices are read from them, and a name is registered once."""
from __future__ import annotations

import pytest

from app.cli.base import cli  # importing app.cli registers every command
from app.datasets.schemas import DatasetImport
from app.deletions.schemas import DeletionCreate
from app.models.schemas import ModelCreate, SisaStrategy
from workers.engine.nets import ARCHITECTURES
from workers.engine.registry import Registry
from workers.engine.sisa import AGGREGATIONS
from workers.engine.sources import SOURCES
from workers.engine.unlearning import METHODS


def _enum(model, field: str) -> list[str]:
    return model.model_json_schema()["properties"][field]["enum"]


def _choices(command: str, option: str) -> list[str]:
    (param,) = [p for p in cli.commands[command].params if p.name == option]
    return list(param.type.choices)


def test_the_api_enums_come_from_the_registries():
    # Architectures are checked against the registry when a model is created (422
    # unknown_architecture lists them; tests/api/models), not frozen into the schema:
    # over 80 names, and a plugin's may come and go.
    assert ModelCreate.model_json_schema()["properties"]["architecture"]["type"] == "string"
    assert _enum(SisaStrategy, "aggregation") == list(AGGREGATIONS)
    assert _enum(DeletionCreate, "method") == ["exact", "auto", *METHODS]
    # Every source: those read by name, then those that read a file (uploaded, or by path).
    assert _enum(DatasetImport, "source") == sorted(SOURCES, key=lambda n: SOURCES.get(n).needs_file)
    assert {"npz", "table", "image-folder"} <= set(_enum(DatasetImport, "source"))


def test_the_cli_choices_come_from_the_registries():
    assert _choices("train", "arch") == list(ARCHITECTURES)
    assert _choices("train", "aggregation") == list(AGGREGATIONS)
    assert _choices("unlearn", "method") == list(METHODS)
    assert _choices("import", "source") == list(SOURCES)


def test_a_name_is_registered_once_and_an_unknown_one_names_the_choices():
    widgets: Registry[int] = Registry("widget")
    widgets.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        widgets.add("a", 2)
    with pytest.raises(ValueError, match=r"unknown widget 'b'; choose one of a"):
        widgets.get("b")
    assert widgets.get("a") == 1 and list(widgets) == ["a"] and "a" in widgets
