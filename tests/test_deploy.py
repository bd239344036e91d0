"""Offline checks of the container and Kubernetes packaging: Dockerfile, docker-compose.yml, deploy/.

- docker-compose.yml is validated by `docker-compose config` (Compose v1, Debian's package; .ci/run
  installs it), for the default stack and with the optional profiles.
- Every kustomization under deploy/ is rendered with `kubectl kustomize` and each document is validated
  against the Kubernetes 1.30 OpenAPI schemas (strict: unknown fields fail) by `kubernetes-validate`,
  which ships the schemas and needs no cluster.
- Structural rules every manifest must keep: hardened non-root containers with resource requests and
  limits, `seqrec health` exec probes for gRPC services (mutual TLS), HTTP probes for the gateway,
  autoscalers, graceful shutdown.
- The Dockerfile is parsed: one target per service, non-root runtime stages, `seqrec` entry point.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"
SERVICES = ("embedder", "ranker", "gateway", "trainer")
GRPC_PORTS = {"ranker": 50051, "embedder": 50052, "trainer": 50053}
HPA_TARGETS = {"ranker", "embedder", "gateway"}
UID = 10001

# Every kustomization, and the documents it must contain at least (kind, name).
KUSTOMIZATIONS = {
    "base": {("Deployment", s) for s in SERVICES} | {("StatefulSet", "redis"), ("Deployment", "milvus")},
    "overlays/dev": {("Deployment", s) for s in SERVICES} | {("StatefulSet", "redis"), ("Namespace", "seqrec-dev")},
    "overlays/prod": {("Deployment", s) for s in SERVICES} | {("Namespace", "seqrec")},
    "base/train-job": {("Job", "seqrec-train")},
    "overlays/dev/train-job": {("Job", "seqrec-train")},
    "overlays/prod/train-job": {("Job", "seqrec-train")},
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
# docker-compose.yml refuses to render without API keys (closed by default): the tests give it one
COMPOSE_ENV = {**os.environ, "SEQREC_API_KEYS": "compose-test-key"}


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=COMPOSE_ENV)


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


_RENDERED: dict[str, list[dict]] = {}


def render(path: str) -> list[dict]:
    """The documents `kubectl kustomize deploy/<path>` renders (cached per module run)."""
    if path not in _RENDERED:
        command = kustomize_command()
        if command is None:
            pytest.skip("neither kubectl nor kustomize is on PATH: cannot render deploy/ kustomizations")
        result = run([*command, str(DEPLOY / path)])
        assert result.returncode == 0, f"kustomize {path} failed:\n{result.stderr}"
        _RENDERED[path] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _RENDERED[path]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(doc: dict) -> dict | None:
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def workloads(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", spec) for d in docs if (spec := pod_spec(d)) is not None]


def container(docs: list[dict], kind: str, name: str) -> dict:
    spec = pod_spec(by_kind(docs, kind)[name])
    assert spec is not None
    return spec["containers"][0]


def compose_command() -> list[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("the docker-compose binary (Debian package docker-compose) is not installed; "
                    ".ci/run installs it")
    return [binary, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]


def compose_config(*profiles: str) -> dict:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    result = run([*compose_command(), *flags, "config"])
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profiles", [(), ("milvus-standalone", "jobs")], ids=["default", "all-profiles"])
def test_compose_config_is_valid(profiles: tuple[str, ...]) -> None:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    result = run([*compose_command(), *flags, "config", "-q"])
    assert result.returncode == 0, f"docker-compose {' '.join(flags)} config -q failed:\n{result.stderr}"


def test_compose_stack_shape() -> None:
    services = compose_config("milvus-standalone", "jobs")["services"]
    assert {"redis", "milvus-lite", "etcd", "minio", "milvus-standalone", "embedder", "ranker", "gateway",
            "trainer", "train-job"} <= set(services)
    # profiles: the standalone Milvus and the training job are opt-in
    assert services["milvus-standalone"]["profiles"] == ["milvus-standalone"]
    assert services["train-job"]["profiles"] == ["jobs"]
    assert "profiles" not in services["milvus-lite"] and "profiles" not in services["ranker"]

    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync always" in redis_cmd

    lite = services["milvus-lite"]
    assert lite["build"]["target"] == "ranker"
    assert lite["entrypoint"] == ["milvus-lite"]
    assert lite["command"][:1] == ["server"] and "--data-dir" in lite["command"]

    for name in SERVICES:
        assert services[name]["build"]["target"] == name
        assert services[name]["image"].startswith(f"seqrec/{name}:")
        assert "healthcheck" in services[name], name
        assert services[name].get("user") == f"{UID}:{UID}" and services[name].get("read_only") is True, name
    for name, port in GRPC_PORTS.items():  # `seqrec health` dials with the service's own certificates
        assert services[name]["healthcheck"]["test"][:4] == ["CMD", "seqrec", "health", f"127.0.0.1:{port}"], name
    assert "/readyz" in " ".join(services["gateway"]["healthcheck"]["test"])

    published = {str(p.get("published")) if isinstance(p, dict) else str(p) for p in services["gateway"]["ports"]}
    assert any("8080" in p for p in published)

    for name in ("ranker", "trainer", "train-job"):
        targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services[name]["volumes"]]
        assert "/bundles" in targets, name

    env = services["ranker"]["environment"]
    assert env["SEQREC_BUNDLE"] == "/bundles"
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert env["SEQREC_EMBEDDER"] == "embedder:50052"
    assert services["gateway"]["environment"]["SEQREC_RANKER"] == "dns:///ranker:50051"  # every replica
    assert services["ranker"]["depends_on"]["redis"]["condition"] == "service_healthy"

    job = services["train-job"]
    script = " ".join(job["command"])
    assert "seqrec train" in script and "--out /bundles" in script and "seqrec publish" in script


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(KUSTOMIZATIONS))
def test_kustomization_renders_and_validates(path: str) -> None:
    docs = render(path)
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert KUSTOMIZATIONS[path] <= present, f"missing from {path}: {KUSTOMIZATIONS[path] - present}"
    errors = []
    for doc in docs:
        ident = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            location = ".".join(str(p) for p in exc.path)
            errors.append(f"{ident}: {location}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{ident}: {exc.message}")
    assert not errors, f"{path} does not validate against Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", sorted(KUSTOMIZATIONS))
def test_every_container_is_hardened_and_bounded(path: str) -> None:
    problems = []
    for ident, spec in workloads(render(path)):
        pod_ctx = spec.get("securityContext") or {}
        if pod_ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{ident}: pod seccompProfile is not RuntimeDefault")
        launches_jobs = ident == "Deployment/trainer" and spec.get("serviceAccountName") == "seqrec-trainer"
        if spec.get("automountServiceAccountToken") is not False and not launches_jobs:
            problems.append(f"{ident}: service account token is mounted")
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{ident}/{c['name']}"
            ctx = {**pod_ctx, **(c.get("securityContext") or {})}
            if ctx.get("runAsNonRoot") is not True or ctx.get("runAsUser") != UID:
                problems.append(f"{where}: not runAsNonRoot with runAsUser {UID}")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if (ctx.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not dropped")
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(part) or {}):
                    problems.append(f"{where}: no cpu/memory {part}")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            tmp = volumes.get(mounts.get("/tmp", ""), {})
            if "emptyDir" not in tmp:
                problems.append(f"{where}: no emptyDir at /tmp")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", ["base", "overlays/dev", "overlays/prod"])
def test_the_gateway_balances_over_every_ranker_pod(path: str) -> None:
    """A headless Service resolves to every ranker pod; the gateway dials it by DNS (round_robin in the client,
    tests/test_load_balancing.py) and the rankers cap connection age so new pods are found."""
    docs = render(path)
    headless = by_kind(docs, "Service")["ranker-headless"]["spec"]
    ranker = by_kind(docs, "Deployment")["ranker"]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"].items() <= ranker["template"]["metadata"]["labels"].items()
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("seqrec-config"))
    assert config["data"]["SEQREC_RANKER"] == "dns:///ranker-headless:50051"
    assert float(config["data"]["SEQREC_MAX_CONNECTION_AGE_S"]) > 0
    env = {v["name"]: v.get("value") for v in container(docs, "Deployment", "gateway")["env"]}
    assert env["SEQREC_TLS_SERVER_NAME"] == "ranker"  # the name in the rankers' certificate


@pytest.mark.parametrize("path", ["base", "overlays/dev", "overlays/prod"])
def test_services_probes_and_shutdown(path: str) -> None:
    docs = render(path)
    deployments = by_kind(docs, "Deployment")
    for name, port in GRPC_PORTS.items():
        c = container(docs, "Deployment", name)
        # kubelet's gRPC probe cannot speak mutual TLS: `seqrec health` runs in the container with its certificates
        assert c["readinessProbe"]["exec"]["command"][:3] == ["seqrec", "health", f"127.0.0.1:{port}"], name
        assert c["livenessProbe"]["tcpSocket"]["port"] == "grpc", name
        assert any(p["containerPort"] == port for p in c["ports"]), name
        assert c["args"] == ["serve", name], name
    assert container(docs, "Deployment", "embedder")["startupProbe"]["exec"]["command"][:2] == ["seqrec", "health"]
    gateway = container(docs, "Deployment", "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["args"] == ["serve", "gateway"]

    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("seqrec-config"))
    grace = float(config["data"]["SEQREC_SHUTDOWN_GRACE_S"])
    for name in SERVICES:
        spec = deployments[name]["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert c["image"].split("/")[-1].startswith(f"{name}:"), c["image"]
        assert any(ref.get("configMapRef", {}).get("name") == config["metadata"]["name"] for ref in c["envFrom"])
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])
        pause = float(pre_stop[-1]) if pre_stop[0] == "sleep" else 0.0
        assert spec["terminationGracePeriodSeconds"] > grace + pause, name

    for key in ("REDIS_URL", "MILVUS_URI", "SEQREC_BUNDLE", "SEQREC_EMBEDDER", "SEQREC_RANKER",
                "SEQREC_BUNDLE_ROOT", "SEQREC_DATA_ROOT", "SEQREC_LOG_LEVEL", "SEQREC_LOG_FORMAT",
                "SEQREC_ORT_PROVIDER",
                "SEQREC_EMBEDDER_DEVICE", "SEQREC_DEADLINE_S", "SEQREC_MAX_REQUEST_BYTES"):
        assert key in config["data"], key

    # the ranker only reads bundles; trainers write them, to a shared ReadWriteMany claim in prod
    ranker_mounts = {m["mountPath"]: m for m in container(docs, "Deployment", "ranker")["volumeMounts"]}
    assert ranker_mounts["/bundles"].get("readOnly") is True
    trainer_mounts = {m["mountPath"]: m for m in container(docs, "Deployment", "trainer")["volumeMounts"]}
    assert not trainer_mounts["/bundles"].get("readOnly") and trainer_mounts["/data"].get("readOnly") is True


@pytest.mark.parametrize("path", ["base", "overlays/dev", "overlays/prod"])
def test_autoscalers_and_retrain(path: str) -> None:
    docs = render(path)
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) >= HPA_TARGETS
    for name in HPA_TARGETS:
        hpa = hpas[name]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in by_kind(docs, "Deployment")[name]["spec"], f"{name}: replicas fight the HPA"
    cron = by_kind(docs, "CronJob")["seqrec-retrain"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    script = " ".join(pod_spec(cron)["containers"][0]["args"])
    assert "train $SEQREC_TRAIN_ARGS" in script and '--out "${SEQREC_TRAIN_OUT:-/bundles}"' in script
    assert "seqrec publish" in script
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    assert "seqrec-bundles" in pvcs


def test_dev_overlay_is_small() -> None:
    docs = render("overlays/dev")
    for hpa in by_kind(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1
    assert container(docs, "Deployment", "ranker")["resources"]["requests"]["cpu"] == "100m"
    assert all(d["metadata"].get("namespace") == "seqrec-dev" for d in docs if d["kind"] != "Namespace")


def test_prod_overlay_uses_external_stores_and_gpu_training() -> None:
    docs = render("overlays/prod")
    assert all(d["metadata"].get("namespace") == "seqrec" for d in docs if d["kind"] != "Namespace")
    assert by_kind(docs, "Namespace")["seqrec"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "restricted"
    # no in-cluster development stores
    assert "redis" not in by_kind(docs, "StatefulSet") and "milvus" not in by_kind(docs, "Deployment")
    data = by_kind(docs, "ConfigMap")["seqrec-config"]["data"]
    assert "milvus.svc" in data["MILVUS_URI"] and data["MILVUS_URI"] != "http://milvus:19530"
    assert data["REDIS_URL"] != "redis://redis:6379/0"
    # more replicas and bigger limits than the base
    base_hpas = by_kind(render("base"), "HorizontalPodAutoscaler")
    for name, hpa in by_kind(docs, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["minReplicas"] >= max(2, base_hpas[name]["spec"]["minReplicas"])
        assert hpa["spec"]["maxReplicas"] > base_hpas[name]["spec"]["maxReplicas"]
    assert by_kind(docs, "PersistentVolumeClaim")["seqrec-bundles"]["spec"]["accessModes"] == ["ReadWriteMany"]
    # pinned registry images
    for _, spec in workloads(docs):
        for c in spec["containers"]:
            assert not c["image"].endswith(":latest"), c["image"]
    # API keys are required
    gateway_refs = container(docs, "Deployment", "gateway")["envFrom"]
    assert {"name": "seqrec-secrets", "optional": False} in [r.get("secretRef") for r in gateway_refs]

    jobs = [pod_spec(by_kind(docs, "CronJob")["seqrec-retrain"]),
            pod_spec(by_kind(render("overlays/prod/train-job"), "Job")["seqrec-train"])]
    for spec in jobs:
        train = spec["containers"][0]
        assert train["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "trainer-gpu" in train["image"]
        script = " ".join(train["args"])
        assert "torchrun" in script and "-m seqrec.services.cli" in script and "seqrec publish" in script
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
        assert any(m["mountPath"] == "/dev/shm" for m in train["volumeMounts"])


def test_cpu_train_job() -> None:
    job = by_kind(render("base/train-job"), "Job")["seqrec-train"]
    assert job["spec"]["backoffLimit"] >= 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
    train = pod_spec(job)["containers"][0]
    assert train["image"] == "seqrec/trainer:latest" and "nvidia.com/gpu" not in train["resources"]["limits"]
    # Kubernetes expands $(VAR) in args: the shell's command substitution must be written $$(...)
    script = train["args"][0]
    assert "$$(" in script and re.search(r"(?<!\$)\$\(", script) is None


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------
def dockerfile_stages() -> dict[str, dict]:
    """Stage name → {"base": FROM image or stage, "instructions": [(INSTRUCTION, args)]}."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    stages: dict[str, dict] = {}
    current: dict | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, f"cannot parse FROM {args}"
            name = match.group(2) or f"stage{len(stages)}"
            current = stages[name] = {"base": match.group(1), "instructions": []}
        elif current is not None:
            current["instructions"].append((instruction, args.strip()))
    return stages


def stage_chain(stages: dict[str, dict], name: str) -> list[dict]:
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name]["base"]
    return chain  # the stage first, its ancestors after


def last(chain: list[dict], instruction: str) -> str | None:
    for stage in chain:
        for kind, args in reversed(stage["instructions"]):
            if kind == instruction:
                return args
    return None


def test_dockerfile_targets() -> None:
    stages = dockerfile_stages()
    extras = {"ranker": {"ranker"}, "embedder": {"embedder"}, "gateway": {"gateway"}, "trainer": {"trainer", "ranker"}}
    ports = {"ranker": "50051", "embedder": "50052", "gateway": "8080", "trainer": "50053"}
    for name in SERVICES:
        assert name in stages, f"Dockerfile has no target {name}"
        chain = stage_chain(stages, name)
        # runtime: non-root user, the seqrec entry point, the service's port, no build tools
        user = last(chain, "USER")
        assert user is not None and user.split(":")[0] not in ("0", "root"), f"{name}: USER {user}"
        assert user.split(":")[0] == str(UID)
        assert last(chain, "ENTRYPOINT") == '["seqrec"]', name
        assert last(chain, "CMD") == f'["serve", "{name}"]', name
        assert ports[name] in (last(chain, "EXPOSE") or "").split(), name
        runs = " ".join(args for stage in chain for kind, args in stage["instructions"] if kind == "RUN")
        assert "build-essential" not in runs and "gcc" not in runs, f"{name}: build tools in the runtime image"
        assert chain[-1]["base"].startswith("${PYTHON_IMAGE}") or chain[-1]["base"].startswith("python:3.11-slim")
        # the venv comes from the service's own builder, which installs the right extras
        copies = [args for kind, args in chain[0]["instructions"] if kind == "COPY" and "--from=" in args]
        assert len(copies) == 1, name
        builder = re.search(r"--from=(\S+)", copies[0]).group(1)
        installs = " ".join(args for stage in stage_chain(stages, builder) for kind, args in stage["instructions"]
                            if kind == "RUN" and "pip install" in args)
        installed = {extra for group in re.findall(r'"\.\[([a-z,]+)\]"', installs) for extra in group.split(",")}
        assert extras[name] <= installed, f"{name}: builder installs extras {installed}"
    for torch_user in ("trainer", "embedder"):
        builder = stages[f"build-{torch_user}"]
        assert any(kind == "ARG" and args.startswith("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
                   for kind, args in builder["instructions"]), torch_user
    # docker-compose v1 builds with the legacy builder unless told to use BuildKit: no BuildKit-only syntax
    assert "--mount=" not in (ROOT / "Dockerfile").read_text()
    assert (ROOT / ".dockerignore").is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
