"""The shipped docker-compose.yml and Kubernetes manifests are closed by default and still start.

Each service's environment is taken exactly as the packaging gives it (`docker-compose config`, or the
ConfigMap plus the container's own env as `kubectl kustomize` renders them), its certificate paths pointed
at certificates made the way the packaging says (compose: the `certs` service's own command; Kubernetes:
deploy/README.md's `seqrec certs` for the Secret), and the service's settings are built from it: every
service must accept it (the exposure checks of shared/exposure.py run there), the gRPC services must serve
mutual TLS, the gateway must require API keys, and nothing may say SEQREC_ALLOW_INSECURE. Then a real
trainer is started from the rendered Kubernetes environment and the readiness probe's own command
(`seqrec health`) is run against it, as kubelet would run it inside the pod.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqrec.shared.local_services import free_port
from seqrec.shared.settings import Env
from tests.test_deploy import GRPC_PORTS, compose_command, compose_config, container, render, run

GRPC_SERVICES = ("ranker", "embedder", "trainer")
COMPOSE_API_KEYS = "compose-test-key"  # tests/test_deploy.py renders compose with this in the environment
K8S_API_KEYS = "k8s-test-key"  # stands in for the Secret seqrec-secrets


def settings_for(service: str, env: dict[str, str]):  # noqa: ANN201 - one of four settings classes
    if service == "ranker":
        from seqrec.services.ranker.server import RankerSettings as cls
    elif service == "embedder":
        from seqrec.services.embedder.server import EmbedderSettings as cls
    elif service == "trainer":
        from seqrec.services.trainer.server import TrainerSettings as cls
    else:
        from seqrec.services.gateway.settings import GatewaySettings as cls
    return cls.from_env(Env(env))


def localised(env: dict[str, str], root: Path) -> dict[str, str]:
    """`env` with the container paths (/certs, /bundles, /data) moved under `root`."""
    out = {}
    for key, value in env.items():
        for mount in ("/certs", "/bundles", "/data"):
            if value == mount or value.startswith(mount + "/"):
                value = str(root / mount.lstrip("/")) + value[len(mount):]
        out[key] = value
    (root / "bundles").mkdir(exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    return out


def make_certs(args: list[str], root: Path) -> None:
    """Run `seqrec certs ARGS` (with /certs meaning root/certs), as the packaging runs it."""
    args = [str(root / "certs") if a == "/certs" else a for a in args]
    result = subprocess.run([sys.executable, "-m", "seqrec.services.cli", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def check_closed(service: str, env: dict[str, str]) -> None:
    assert "SEQREC_ALLOW_INSECURE" not in env, f"{service}: the shipped config opts out of closed by default"
    settings = settings_for(service, env)
    if service == "gateway":
        assert settings.api_keys, "the gateway must require API keys"
        assert settings.tls.ca, "the gateway must dial the ranker over TLS"
    else:
        assert settings.tls.mutual, f"{service} must serve mutual TLS"
        assert settings.tls.ca, f"{service} must dial its peers over TLS"


# ---- docker-compose.yml --------------------------------------------------------------------------------------


def test_compose_services_start_closed(tmp_path):
    services = compose_config("jobs")["services"]
    assert services["certs"]["command"][:1] == ["certs"] and "--if-missing" in services["certs"]["command"]
    make_certs(services["certs"]["command"], tmp_path)
    for name in ("ranker", "embedder", "trainer", "gateway"):
        service = services[name]
        assert "certs" in service["depends_on"], name
        assert any(str(v).endswith(":/certs:ro") or (isinstance(v, dict) and v.get("target") == "/certs")
                   for v in service["volumes"]), name
        env = {k: str(v) for k, v in service["environment"].items()}
        check_closed(name, localised(env, tmp_path))
    assert services["gateway"]["environment"]["SEQREC_API_KEYS"] == COMPOSE_API_KEYS
    job_env = localised({k: str(v) for k, v in services["train-job"]["environment"].items()}, tmp_path)
    from seqrec.shared.tls import TlsSettings

    assert TlsSettings.from_env(Env(job_env)).ca, "the training job must dial the embedder over TLS"


def test_compose_refuses_to_render_without_api_keys():
    env = {k: v for k, v in os.environ.items() if k != "SEQREC_API_KEYS"}
    result = subprocess.run([*compose_command(), "config", "-q"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode != 0 and "SEQREC_API_KEYS" in result.stderr


# ---- Kubernetes ------------------------------------------------------------------------------------------------


def pod_env(docs: list[dict], name: str) -> dict[str, str]:
    """The environment of a Deployment's first container: the ConfigMap, then its own env (which wins)."""
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "seqrec-config")
    c = container(docs, "Deployment", name)
    env = {**config["data"]}
    for ref in c.get("envFrom", []):
        assert "configMapRef" in ref or ref.get("secretRef", {}).get("name") == "seqrec-secrets", ref
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            key = var["valueFrom"]["secretKeyRef"]
            assert (key["name"], key["key"]) == ("seqrec-secrets", "SEQREC_API_KEYS"), var
            env[var["name"]] = K8S_API_KEYS
    return env


def mounts_tls_secret(docs: list[dict], kind: str, name: str) -> bool:
    doc = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] if kind == "CronJob" else doc["spec"]["template"][
        "spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    tls = volumes.get(mounts.get("/certs", {}).get("name", ""), {})
    return tls.get("secret", {}).get("secretName") == "seqrec-tls" and mounts["/certs"].get("readOnly") is True


@pytest.mark.parametrize("path", ["base", "overlays/dev", "overlays/prod"])
def test_kubernetes_services_start_closed(path, tmp_path):
    make_certs(["certs", "--out", "/certs", "--domain", "seqrec.svc.cluster.local"], tmp_path)
    docs = render(path)
    for name in ("ranker", "embedder", "trainer", "gateway"):
        assert mounts_tls_secret(docs, "Deployment", name), name
        check_closed(name, localised(pod_env(docs, name), tmp_path))
    assert mounts_tls_secret(docs, "CronJob", "seqrec-retrain")
    for name in GRPC_SERVICES:
        probe = container(docs, "Deployment", name)["readinessProbe"]["exec"]["command"]
        assert probe[:3] == ["seqrec", "health", f"127.0.0.1:{GRPC_PORTS[name]}"], probe


def test_the_kubernetes_readiness_probe_passes_against_a_real_trainer(tmp_path, redis_server, milvus_server):
    """The trainer started from the rendered pod environment; the probe's command, run with that environment,
    says SERVING; without the pod's certificates it cannot (the port serves mutual TLS only)."""
    from seqrec.services.trainer.server import TrainerApp

    make_certs(["certs", "--out", "/certs"], tmp_path)
    docs = render("base")
    port = free_port()
    env = localised(pod_env(docs, "trainer"), tmp_path) | {
        "SEQREC_TRAINER_ADDRESS": f"127.0.0.1:{port}", "REDIS_URL": f"redis://{redis_server.address}/7",
        "MILVUS_URI": milvus_server, "SEQREC_HEALTH_INTERVAL_S": "0.5"}
    app = TrainerApp(settings_for("trainer", env))
    app.start()
    try:
        probe = container(docs, "Deployment", "trainer")["readinessProbe"]["exec"]["command"]
        command = [sys.executable, "-m", "seqrec.services.cli",
                   *[a.replace(":50053", f":{port}") for a in probe[1:]]]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SEQREC_TLS_")}
        for _ in range(40):  # the first health probe of the trainer's stores may still be running
            result = subprocess.run(command, env=clean | env, capture_output=True, text=True, timeout=60)
            if result.returncode == 0:
                break
            time.sleep(0.25)
        assert result.returncode == 0, result.stderr
        without_certs = subprocess.run(command, env=clean, capture_output=True, text=True, timeout=60)
        assert without_certs.returncode == 1 and "UNAVAILABLE" in without_certs.stderr, without_certs.stderr
        broken = subprocess.run(command, env=clean | {"SEQREC_TLS_CA": str(tmp_path / "missing.pem")},
                                capture_output=True, text=True, timeout=60)
        assert broken.returncode == 2 and "SEQREC_TLS_CA" in broken.stderr, broken.stderr
    finally:
        app.stop(0)


def test_compose_renders_with_the_test_keys():
    result = run([*compose_command(), "config"])
    assert result.returncode == 0 and COMPOSE_API_KEYS in result.stdout, result.stderr
