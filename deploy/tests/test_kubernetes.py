"""deploy/kubernetes/: rendered with ``kubectl kustomize`` (no cluster runs here), validated
strictly against the Kubernetes schemas (``kubernetes-validate``), and checked for what a team
relies on: probes, the drain fitting the grace period, the security context, the config's hash
suffix, secrets only by reference, the migration Job, the PDB, the optional HPA and
ServiceMonitor."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from midway.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
# The newest schemas kubernetes-validate ships, and an older release clusters still run.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


def render(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']}s"
        kinds[doc["kind"]] = doc
    return kinds


@pytest.fixture(scope="module")
def example() -> dict[str, dict[str, Any]]:
    return by_kind(render(KUSTOMIZE / "overlays" / "example"))


@pytest.mark.parametrize("overlay", ["base", "overlays/example"])
@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_validates_strictly(overlay: str, version: str) -> None:
    for doc in render(KUSTOMIZE / overlay):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD's schema kubernetes-validate lacks: checked below
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_typo_is_caught_by_the_validation() -> None:
    doc = render(KUSTOMIZE / "base")
    deployment = next(d for d in doc if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_base_has_the_pieces() -> None:
    kinds = by_kind(render(KUSTOMIZE / "base"))
    assert set(kinds) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job"}


def test_the_deployment_probes_drains_and_is_locked_down(example: dict[str, Any],
                                                        tmp_path: Path) -> None:
    deployment = example["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "registry.example.com/midway:0.1.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["args"][:1] == ["serve"]

    # the drain fits: preStop pause + shutdown_timeout + 10 s (teardown) <= grace period
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    config = example["ConfigMap"]["data"]["midway.toml"]
    (tmp_path / "midway.toml").write_text(config)
    settings = load_settings(tmp_path / "midway.toml", environ={})
    assert float(pre_stop[1]) + settings.shutdown_timeout + 10 <= pod[
        "terminationGracePeriodSeconds"]

    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]

    # writable: only the data dir (an emptyDir); the config is the generated ConfigMap
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/etc/midway", "/var/lib/midway"}
    assert mounts["/etc/midway"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/var/lib/midway"]["name"]]
    assert volumes[mounts["/etc/midway"]["name"]]["configMap"]["name"] == \
        example["ConfigMap"]["metadata"]["name"]


def test_secrets_are_references_only(example: dict[str, Any]) -> None:
    assert "Secret" not in example
    for kind in ("Deployment", "Job"):
        (container,) = example[kind]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        for name in ("ANTHROPIC_API_KEY", "MIDWAY_PG_DSN", "MIDWAY_BILLING__STORE",
                     "MIDWAY_CACHE__STORE", "MIDWAY_ROUTER__STATE", "MIDWAY_IDENTITY_SECRET"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "midway-secrets", name
            assert "value" not in env[name]
    config = example["ConfigMap"]["data"]["midway.toml"]
    tables = tomllib.loads(config)
    assert tables["midway"]["upstream_api_key"].startswith("env:")
    assert tables["keys"]["enabled"] is True  # listening on 0.0.0.0 needs client keys


def test_a_config_change_renames_the_configmap_so_pods_roll(tmp_path: Path) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUSTOMIZE, copy)
    before = by_kind(render(copy / "base"))["ConfigMap"]["metadata"]["name"]
    toml = copy / "base" / "midway.toml"
    toml.write_text(toml.read_text().replace("shutdown_timeout = 30", "shutdown_timeout = 20"))
    after = by_kind(render(copy / "base"))
    name = after["ConfigMap"]["metadata"]["name"]
    assert before.startswith("midway-config-") and name.startswith("midway-config-")
    assert name != before
    pod = after["Deployment"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == name


def test_the_migration_job_runs_db_upgrade(example: dict[str, Any]) -> None:
    job = example["Job"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert container["image"] == example["Deployment"]["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_pdb_hpa_and_servicemonitor(example: dict[str, Any]) -> None:
    labels = example["Deployment"]["spec"]["template"]["metadata"]["labels"]
    pdb = example["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = example["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == example["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] >= 2
    monitor = example["ServiceMonitor"]
    assert monitor["metadata"]["namespace"] == "midway"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        example["Service"]["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in example["Service"]["spec"]["ports"]}
    service_selector = example["Service"]["spec"]["selector"]
    assert service_selector.items() <= labels.items()
