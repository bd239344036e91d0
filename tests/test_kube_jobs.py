"""Training as Kubernetes Jobs (services/trainer/kube_jobs.py). No cluster here, so the Job the trainer service
would submit is built from the CronJob exactly as `kubectl kustomize` renders it, validated against the Kubernetes
schema, and its container script is run for real on this machine (Kubernetes' `$$` and `$(VAR)` expansion
applied): it trains the requested configuration into the staging folder and leaves publishing to the trainer."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seqrec.services.trainer.kube_jobs import JOB_ID_LABEL, KubernetesError, job_manifest, job_status
from seqrec.shared.bundle import Bundle
from seqrec.shared.config import DataConfig, TrainConfig, build_hparams
from tests.conftest import make_series_interactions
from tests.test_deploy import K8S_VERSION, by_kind, kubernetes_validate, pod_spec, render

CONFIG = TrainConfig(data=DataConfig(data="/data/interactions.csv", meta_cols=("genre",)), seed=5,
                     hparams=build_hparams("accuracy", epochs=3))
STAGING = Path("/bundles/.jobs/0123456789abcdef.out")


def cronjob(path: str) -> dict:
    return by_kind(render(path), "CronJob")["seqrec-retrain"]


def train_container(job: dict) -> dict:
    return next(c for c in pod_spec(job)["containers"] if c["name"] == "train")


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_the_prod_job_is_the_gpu_cronjob_template_with_the_request_and_validates():
    template = cronjob("overlays/prod")
    job = job_manifest(template, "0123456789abcdef", CONFIG, STAGING, Path("/data"))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["kind"] == "Job" and job["metadata"]["name"] == "seqrec-retrain-0123456789abcdef"
    assert job["metadata"]["namespace"] == "seqrec" and job["metadata"]["labels"][JOB_ID_LABEL] == "0123456789abcdef"
    assert job["spec"]["template"]["metadata"]["labels"][JOB_ID_LABEL] == "0123456789abcdef"
    train = train_container(job)
    assert train["resources"]["limits"]["nvidia.com/gpu"] == 1 and "trainer-gpu" in train["image"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod_spec(job)["tolerations"])
    assert "torchrun" in " ".join(train["args"])
    env = env_of(train)
    assert TrainConfig.from_dict(json.loads(env["SEQREC_TRAIN_CONFIG"])) == CONFIG
    assert env["SEQREC_TRAIN_ARGS"] == "--config-env SEQREC_TRAIN_CONFIG"
    assert env["SEQREC_TRAIN_OUT"] == str(STAGING) and env["SEQREC_PUBLISH"] == "false"
    # everything else is the template's: the job spec, the pod's security and volumes, the other env entries
    expected = copy.deepcopy(template["spec"]["jobTemplate"]["spec"])
    expected.pop("template")
    assert {k: v for k, v in job["spec"].items() if k != "template"} == expected
    assert pod_spec(job)["volumes"] == pod_spec(template)["volumes"]
    assert [e for e in train["env"] if e["name"].startswith("SEQREC_TLS")] == \
        [e for e in train_container(template)["env"] if e["name"].startswith("SEQREC_TLS")]
    assert job["spec"]["template"]["spec"]["securityContext"] == pod_spec(template)["securityContext"]


def test_a_template_that_does_not_mount_the_trainers_volumes_is_refused():
    template = cronjob("base")
    with pytest.raises(KubernetesError, match="bundle staging folder /elsewhere/x.out is on no volume"):
        job_manifest(template, "abc", CONFIG, Path("/elsewhere/x.out"), Path("/data"))
    outside = TrainConfig(data=DataConfig(data="/srv/other.csv"))
    with pytest.raises(KubernetesError, match="training data /srv/other.csv"):
        job_manifest(template, "abc", outside, STAGING, Path("/data"))
    items_elsewhere = TrainConfig(data=DataConfig(data="/data/a.csv", items="/srv/items.csv"))
    with pytest.raises(KubernetesError, match="item table /srv/items.csv"):
        job_manifest(template, "abc", items_elsewhere, STAGING, Path("/data"))


def test_job_status_reads_the_conditions():
    assert job_status({"status": {"active": 1}}).state == "running"
    assert job_status({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}).state == "succeeded"
    condition = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"}
    failed = job_status({"status": {"conditions": [condition]}})
    assert failed.state == "failed" and "BackoffLimitExceeded" in failed.message


def kube_expand(text: str, env: dict[str, str]) -> str:
    """What the kubelet does to a container's args: $(VAR) from the container's env, $$ to a literal $."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def test_the_jobs_script_trains_the_request_into_staging_and_does_not_publish(tmp_path):
    """The base CronJob's template with its bundle and data volumes where this machine has them (the trainer and
    the Job mount them at the same paths), its script run as the container would run it."""
    data_dir, bundle_root = tmp_path / "data", tmp_path / "bundles"
    data_dir.mkdir()
    make_series_interactions(n_users=60, seed=2).to_csv(data_dir / "interactions.csv", index=False)
    template = cronjob("base")
    mounts = {"/bundles": str(bundle_root), "/data": str(data_dir)}
    for mount in train_container({"spec": template["spec"]["jobTemplate"]["spec"], "kind": "Job"})["volumeMounts"]:
        mount["mountPath"] = mounts.get(mount["mountPath"], mount["mountPath"])
    staging = bundle_root / ".jobs" / "feedc0de.out"
    config = TrainConfig(data=DataConfig(data=str(data_dir / "interactions.csv")), seed=1,
                         hparams=build_hparams(epochs=1, max_len=10, hidden_size=16, heads=2, negative_samples=0))
    job = job_manifest(template, "feedc0de", config, staging, data_dir)
    train = train_container(job)
    env = env_of(train)
    command = [kube_expand(part, env) for part in train["command"] + train["args"]]
    bin_dir = str(Path(sys.executable).parent)
    run = subprocess.run(command, env={**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                                       "SEQREC_LOG_FORMAT": "json"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    bundles = [p for p in staging.iterdir() if (p / "manifest.json").is_file()]
    assert len(bundles) == 1 and Bundle.open(bundles[0]).manifest.config["seed"] == 1
    assert not (bundle_root / "LIVE").exists()  # SEQREC_PUBLISH=false: the trainer publishes, through its gate
