"""deploy/k8s renders with kustomize, validates against the Kubernetes schemas, runs the
image of the project's version, and lets only Prometheus reach the admin port."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import DEPLOY, find_tool, project_version

K8S = DEPLOY / "k8s"


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> str:
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def resources(rendered: str) -> dict[str, dict[str, Any]]:
    """The rendered objects by ``kind/name``."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(rendered) if d}


def validate(manifests: str) -> subprocess.CompletedProcess[str]:
    tool = find_tool("kubernetes-validate", "pip install -e '.[dev]' brings kubernetes-validate")
    return subprocess.run([tool, "--strict", "-"], input=manifests, capture_output=True, text=True, timeout=60,
                          check=False)


def test_every_rendered_object_validates(rendered: str, resources: dict[str, dict[str, Any]]) -> None:
    done = validate(rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed for resource") == len(resources), done.stdout
    assert {"Deployment/gateway", "Service/gateway", "NetworkPolicy/gateway", "ConfigMap/gateway-config",
            "Secret/gateway-secrets", "PodDisruptionBudget/gateway"} <= set(resources)


def test_validation_refuses_an_unknown_field(resources: dict[str, dict[str, Any]]) -> None:
    broken = dict(resources["NetworkPolicy/gateway"])
    broken["spec"] = {**broken["spec"], "ingres": []}  # a typo strict validation must catch
    done = validate(yaml.safe_dump(broken))
    assert done.returncode != 0 and "ingres" in done.stdout + done.stderr


def test_the_deployment_runs_the_image_of_the_project_version(resources: dict[str, dict[str, Any]]) -> None:
    (container,) = resources["Deployment/gateway"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"gateway:{project_version()}"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert [i["name"] for i in kustomization["images"]] == ["gateway"]


def container_ports(resources: dict[str, dict[str, Any]]) -> dict[str, int]:
    (container,) = resources["Deployment/gateway"]["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def peers_allowed(policy: dict[str, Any], port: int, names: dict[str, int]) -> list[dict[str, Any]] | None:
    """The ``from`` peers that may reach ``port`` under this policy; None means anyone."""
    peers: list[dict[str, Any]] = []
    for rule in policy["spec"].get("ingress", []):
        rule_ports = [names.get(p["port"], p["port"]) for p in rule.get("ports", [])]
        if rule_ports and port not in rule_ports:
            continue
        if not rule.get("from"):
            return None
        peers.extend(rule["from"])
    return peers


def test_network_policy_opens_the_public_port_and_keeps_the_admin_port_for_prometheus(
        resources: dict[str, dict[str, Any]]) -> None:
    policy = resources["NetworkPolicy/gateway"]
    pod_labels = resources["Deployment/gateway"]["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the policy must select the gateway pods"
    assert "Ingress" in policy["spec"]["policyTypes"]
    ports = container_ports(resources)
    assert set(ports) == {"http", "admin"}
    assert peers_allowed(policy, ports["http"], ports) is None, "the public port must stay open"
    admin = peers_allowed(policy, ports["admin"], ports)
    assert admin, "the admin port must be open to Prometheus, and only to it"
    for peer in admin:
        assert "ipBlock" not in peer, peer
        assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}, peer
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}, peer
    assert peers_allowed(policy, 22, ports) == [], "no other port is opened"


def test_the_service_carries_only_public_traffic(resources: dict[str, dict[str, Any]]) -> None:
    service = resources["Service/gateway"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def test_the_grace_period_covers_pre_stop_and_drain(resources: dict[str, dict[str, Any]]) -> None:
    pod = resources["Deployment/gateway"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    config = tomllib.loads(resources["ConfigMap/gateway-config"]["data"]["routes.toml"])
    drain = seconds(config["gateway"]["drain_timeout"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "admin"


def test_the_configmap_config_passes_gateway_check(resources: dict[str, dict[str, Any]], gateway_cli: str,
                                                   tmp_path: Path) -> None:
    config = tmp_path / "routes.toml"
    config.write_text(resources["ConfigMap/gateway-config"]["data"]["routes.toml"], encoding="utf-8")
    secret = resources["Secret/gateway-secrets"]["stringData"]
    env = {**os.environ, **secret}
    done = subprocess.run([gateway_cli, "check", str(config)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stdout + done.stderr
