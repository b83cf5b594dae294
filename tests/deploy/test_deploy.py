"""The docker-compose deployment, checked without a Docker engine."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_passes_docker_compose_config():
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's package)")
    result = subprocess.run([tool, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True,
                            text=True, env={**os.environ, "LETHE_ADMIN_KEYS": "k", "LETHE_APP_DB_PASSWORD": "p"},
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_compose_has_the_services_with_health_checks(compose):
    services = {name: s for name, s in compose["services"].items() if "profiles" not in s}
    assert set(services) == {"api", "worker", "redis", "postgres", "migrate"}
    for name in ("api", "worker", "redis", "postgres"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["command"] == ["lethe", "migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_worker_reserves_a_gpu_and_services_keep_their_data_in_volumes(compose):
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert {"pgdata", "redisdata", "lethe-data"} <= set(compose["volumes"])
    assert any(v.startswith("lethe-data:") for v in worker["volumes"])
    assert any(v.startswith("pgdata:") for v in compose["services"]["postgres"]["volumes"])


def test_minio_is_optional_behind_the_s3_profile(compose):
    services = compose["services"]
    for name in ("minio", "minio-init"):
        assert services[name]["profiles"] == ["s3"], name
    assert "healthcheck" in services["minio"] and "miniodata" in compose["volumes"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    # The Lethe services do not need it: the default store stays the lethe-data volume.
    for name in ("api", "worker", "migrate"):
        assert "minio" not in services[name].get("depends_on", {}), name


def test_dockerfile_installs_the_project_and_runs_the_api():
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and 'CMD ["lethe", "api"' in text and "COPY migrations" in text


def test_the_api_and_workers_connect_as_the_application_role_and_only_migrate_as_owner(compose):
    services = compose["services"]
    for name in ("api", "worker"):
        assert services[name]["environment"]["LETHE_DATABASE_URL"].startswith("postgresql://lethe_app:")
    migrate = services["migrate"]["environment"]
    assert migrate["LETHE_DATABASE_URL"].startswith("postgresql://lethe:") and "LETHE_APP_DB_PASSWORD" in migrate
