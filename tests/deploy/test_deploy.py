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


def test_the_image_copies_every_package_the_project_installs():
    """Each package of pyproject's find-include is in the image: its __init__ before the
    editable install (so the install maps it) and the whole folder after."""
    import tomllib

    text = (ROOT / "Dockerfile").read_text()
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in include]
    assert "lethe" in packages
    install = text.index("pip install")
    for package in packages:
        assert -1 < text.find(f"COPY {package}/__init__.py {package}/__init__.py") < install, package
        assert text.find(f"COPY {package} {package}\n") > install, package


def test_the_api_and_workers_connect_as_the_application_role_and_only_migrate_as_owner(compose):
    services = compose["services"]
    for name in ("api", "worker"):
        assert services[name]["environment"]["LETHE_DATABASE_URL"].startswith("postgresql://lethe_app:")
    migrate = services["migrate"]["environment"]
    assert migrate["LETHE_DATABASE_URL"].startswith("postgresql://lethe:") and "LETHE_APP_DB_PASSWORD" in migrate


def test_monitoring_is_optional_and_scrapes_the_api_and_the_worker(compose):
    services = compose["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"] and "prometheusdata" in compose["volumes"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape}
    assert targets == {"lethe-api": ["api:8000"], "lethe-worker": ["worker:9101"]}
    assert services["worker"]["environment"]["LETHE_WORKER_METRICS_PORT"] == "9101"
    # each container counts in its own directory: PIDs of two containers may be equal
    assert services["api"]["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert services["worker"]["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_the_grafana_dashboard_plots_only_metrics_the_service_exports():
    import json
    import re

    from app import metrics

    exported = {m.describe()[0].name for m in (metrics.HTTP_REQUESTS, metrics.HTTP_SECONDS, metrics.JOB_DURATION,
                                                metrics.SHARD_SECONDS, metrics.GATE_CHECKS)}
    exported |= set(re.findall(r'"(lethe_[a-z_]+)"', (ROOT / "app" / "metrics.py").read_text()))
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"lethe_[a-z_]+", target["expr"]))
    suffixes = ("_total", "_bucket", "_count", "_sum")
    unknown = {u for u in used if u not in exported and not any(u.endswith(s) and u[: -len(s)] in exported
                                                                  for s in suffixes)}
    assert used and not unknown, unknown
