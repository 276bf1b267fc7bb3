"""deploy/docker-compose.yml holds together without Docker: Compose's own `config` accepts
it, its services, builds and mounts point at files that exist, every service is used by
another (or by the person looking at Grafana), Prometheus scrapes every gateway replica,
Grafana gets the datasource and the dashboard, and the image has one tag everywhere. The Dockerfile installs
the dependencies in a layer of their own, before the source."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.deploy.tools import DEPLOY, ROOT, VENV_BIN, find_compose, project_version

COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "gateway.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"
# Services nothing else calls because a person does: the dashboards.
FOR_PEOPLE = {"grafana"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # merges the x- anchors
    return loaded


SERVICES: dict[str, dict[str, Any]] = compose()["services"]
GATEWAYS = sorted(name for name, s in SERVICES.items() if s.get("build") and "command" not in s)


def mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath]]:
    """``(host path, container path)`` of each bind mount."""
    found = []
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        assert source.startswith("."), f"{volume}: only bind mounts of repository files here"
        found.append(((COMPOSE.parent / source).resolve(), PurePosixPath(target)))
    return found


def mounted_file(service: str, container_path: str) -> Path:
    """The repository file a service sees at ``container_path``."""
    wanted = PurePosixPath(container_path)
    for host, target in mounts(SERVICES[service]):
        if wanted == target:
            return host
        if wanted.is_relative_to(target):
            return host / wanted.relative_to(target)
    raise AssertionError(f"{service} has nothing mounted at {container_path}")


def docker_compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``docker compose config``: Compose's own loader and schema check (no Docker daemon needed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("UPSTREAM_TOKEN", "GRAFANA_ADMIN_PASSWORD")}
    return subprocess.run([find_compose(), "-f", str(path), "config", "--format", "json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_docker_compose_accepts_the_file_as_this_test_reads_it() -> None:
    done = docker_compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)["services"]
    assert set(resolved) == set(SERVICES)
    for name, service in resolved.items():  # the x- anchors merged the same way as PyYAML did
        assert service["image"] == SERVICES[name]["image"]
        assert len(service.get("volumes", [])) == len(SERVICES[name].get("volumes", []))
        for volume in service.get("volumes", []):
            assert volume["type"] == "bind" and volume["read_only"] and Path(volume["source"]).exists(), volume
    assert resolved["gateway-2"]["environment"] == resolved["gateway"]["environment"]


def test_docker_compose_refuses_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("healthcheck:", "healthchek:", 1), encoding="utf-8")
    done = docker_compose_config(broken)
    assert done.returncode != 0 and "healthchek" in done.stderr


def test_the_gateway_runs_as_two_replicas_behind_one_redis() -> None:
    assert GATEWAYS == ["gateway", "gateway-2"]
    for name in GATEWAYS:
        assert SERVICES[name]["environment"]["REDIS_URL"].startswith("redis://redis:")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_refers_to_files_and_services_that_exist(name: str) -> None:
    service = SERVICES[name]
    assert "image" in service, f"{name}: every service names its image"
    if "build" in service:
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / service["build"]["dockerfile"]).is_file()
    for host, target in mounts(service):
        assert host.exists(), f"{name}: {host} does not exist"
        assert target.is_absolute()
    for dependency in service.get("depends_on", []):
        assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
    for port in service.get("ports", []):
        assert re.fullmatch(r"(127\.0\.0\.1:)?\d+:\d+", port), port


def what_services_read() -> dict[str, str]:
    """Per service, the text of its configuration: environment, command and mounted files."""
    texts: dict[str, str] = {}
    for name, service in SERVICES.items():
        parts = [yaml.safe_dump(service.get("environment", {})), " ".join(service.get("command", []))]
        for host, _ in mounts(service):
            files = sorted(host.rglob("*")) if host.is_dir() else [host]
            parts += [f.read_text(encoding="utf-8") for f in files if f.is_file()]
        if name in GATEWAYS:  # the image's own config when nothing is mounted over it
            parts.append((DEPLOY / "routes.toml").read_text(encoding="utf-8"))
        texts[name] = "\n".join(parts)
    return texts


@pytest.mark.parametrize("name", sorted(set(SERVICES) - FOR_PEOPLE))
def test_service_is_used_by_another(name: str) -> None:
    readers = [other for other, text in what_services_read().items()
               if other != name and re.search(rf"(?<![\w-]){re.escape(name)}:\d+(?![\d.])", text)]
    assert readers, f"no service calls {name}: drop it, or give it a user"


def test_prometheus_scrapes_every_gateway_and_loads_the_rules() -> None:
    config_path = mounted_file("prometheus", "/etc/prometheus/prometheus.yml")
    assert config_path == PROMETHEUS_YML
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "gateway"  # what the rules and the dashboard select
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{g}:9901" for g in GATEWAYS}
    for rule_file in config["rule_files"]:  # relative to the config file, in the container too
        assert mounted_file("prometheus", f"/etc/prometheus/{rule_file}") == PROMETHEUS_YML.parent / rule_file


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = SERVICES["grafana"]
    assert mounted_file("grafana", "/etc/grafana/provisioning/datasources/prometheus.yml") == DATASOURCES
    assert mounted_file("grafana", "/etc/grafana/provisioning/dashboards/gateway.yml") == DASHBOARD_PROVIDERS
    (source,) = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert mounted_file("grafana", f"{provider['options']['path']}/gateway.json") == DASHBOARD
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted_file("grafana", home) == DASHBOARD
    board = yaml.safe_load(DASHBOARD.read_text(encoding="utf-8"))  # JSON is YAML
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == source["uid"]


def test_the_shared_limit_route_keeps_its_quota_in_redis(gateway_cli: str) -> None:
    config = tomllib.loads((DEPLOY / "routes.toml").read_text(encoding="utf-8"))
    assert config["gateway"]["redis_url"].startswith("${REDIS_URL")
    limited = [r for r in config["routes"] for p in r.get("plugins", []) if p["use"] == "rate_limit"]
    assert limited, "the demo has a rate-limited route"
    for route in limited:
        (plugin,) = [p for p in route["plugins"] if p["use"] == "rate_limit"]
        assert plugin.get("store", "auto") in ("auto", "redis") and plugin["key"] == "route"
    env = {**os.environ, "UPSTREAM_TOKEN": "t", **SERVICES["gateway"]["environment"]}
    done = subprocess.run([gateway_cli, "check", str(DEPLOY / "routes.toml")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stdout + done.stderr


def test_one_image_tag_everywhere() -> None:
    tag = f"gateway:{project_version()}"
    for name in [*GATEWAYS, "demo"]:
        assert SERVICES[name]["image"] == tag, name
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text(encoding="utf-8"))
    (image,) = kustomization["images"]
    assert f"{image['newName']}:{image['newTag']}" == tag
    build = f"docker build -f deploy/Dockerfile -t {tag} ."
    for doc in (DEPLOY / "Dockerfile", DEPLOY / "README.md"):
        text = doc.read_text(encoding="utf-8")
        assert build in text, f"{doc.name} shows how to build {tag}"
        assert not re.search(r"-t gateway(?!:)", text), f"{doc.name} builds an untagged image"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text(encoding="utf-8").splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    steps = instructions(DEPLOY / "Dockerfile")
    copies = [(i, args) for i, (op, args) in enumerate(steps) if op == "COPY"]
    first_source = min(i for i, args in copies if re.search(r"\b(gateway|plugins)\b", args.split()[0]))
    (deps,) = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install -r" in args]
    assert deps < first_source
    before = [args.split()[:-1] for i, args in copies if i < deps]
    assert before == [["pyproject.toml"]], f"only pyproject.toml may feed the dependency layer: {before}"
    (project,) = [args for op, args in steps if op == "RUN" and "pip install" in args and "-r" not in args]
    assert "--no-deps" in project, "the project's own install must not touch the dependency layer"


def test_the_dependency_layer_lists_exactly_the_project_dependencies(tmp_path: Path) -> None:
    """Run the Dockerfile's own extraction command and compare with pyproject.toml."""
    (deps,) = [args for op, args in instructions(DEPLOY / "Dockerfile") if op == "RUN" and "pip install -r" in args]
    extract, _, _ = deps.partition("&&")
    extract = extract.replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt"))
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", extract], cwd=tmp_path, env=env, check=True, timeout=60)
    listed = [Requirement(line) for line in (tmp_path / "requirements.txt").read_text().splitlines() if line]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = [Requirement(r) for r in project["build-system"]["requires"] + project["project"]["dependencies"]]
    assert [str(r) for r in listed] == [str(r) for r in wanted]
