"""Training jobs as Kubernetes Jobs: StartTraining on a GPU node pool, from the retrain CronJob's own template.

With `SEQREC_TRAINER_LAUNCHER=kubernetes` the trainer service does not train in its own pod: for each job it
reads the CronJob `SEQREC_TRAINER_CRONJOB` (seqrec-retrain) from the API server, copies its job template (image,
GPU resources, tolerations, volumes, security context: whatever the overlay made of it) and submits it as a Job
named after the training job, with three variables that the template's script reads:

- `SEQREC_TRAIN_ARGS=--config-env SEQREC_TRAIN_CONFIG` and `SEQREC_TRAIN_CONFIG`, the job's training
  configuration as JSON (no shell quoting of user input: `seqrec train` parses it);
- `SEQREC_TRAIN_OUT`, the job's staging folder under the bundle root, and `SEQREC_PUBLISH=false`: the trainer
  moves the finished bundle into place and publishes it (through the quality gate) as it does for its own
  processes.

The Job's pods mount the bundle and data volumes at the paths the trainer uses (a ReadWriteMany bundle volume);
`job_manifest` refuses a template that does not, so a misconfigured overlay fails at submission, not hours later.
The trainer polls the Job, deletes it on CancelJob or past SEQREC_TRAINER_MAX_JOB_S, and reads the outcome from
the Job's conditions. The API is called with the pod's service account (deploy/base/trainer-rbac.yaml: get the
CronJob; create, get and delete Jobs).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqrec.shared.config import TrainConfig

log = logging.getLogger(__name__)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
JOB_ID_LABEL = "seqrec.io/training-job"
CONTAINER = "train"  # the template's training container
MAX_NAME = 63


class KubernetesError(RuntimeError):
    """The API server refused a call or could not be reached."""


def job_manifest(cronjob: dict[str, Any], job_id: str, config: TrainConfig, staging: Path,
                 data_root: Path) -> dict[str, Any]:
    """The Job that trains `config` into `staging`, built from `cronjob`'s job template."""
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    name = f"{cronjob['metadata']['name']}-{job_id}"[:MAX_NAME].rstrip("-")
    metadata = template.setdefault("metadata", {})
    labels = {**metadata.get("labels", {}), JOB_ID_LABEL: job_id}
    metadata.update(name=name, labels=labels,
                    annotations={**metadata.get("annotations", {}), "cronjob.kubernetes.io/instantiate": "manual"})
    if "namespace" in cronjob["metadata"]:
        metadata["namespace"] = cronjob["metadata"]["namespace"]
    pod = template["spec"]["template"]
    pod.setdefault("metadata", {}).setdefault("labels", {})[JOB_ID_LABEL] = job_id
    containers = [c for c in pod["spec"]["containers"] if c["name"] == CONTAINER]
    if not containers:
        raise KubernetesError(f"CronJob {cronjob['metadata']['name']}: no container named {CONTAINER!r}")
    train = containers[0]
    mounts = [Path(m["mountPath"]) for m in train.get("volumeMounts", [])]
    needed = [("the bundle staging folder", staging), ("the training data", Path(config.data.data))]
    if config.data.items:
        needed.append(("the item table", Path(config.data.items)))
    for what, path in needed:
        if not any(path.is_relative_to(m) for m in mounts):
            raise KubernetesError(f"CronJob {cronjob['metadata']['name']}: {what} {path} is on no volume of its "
                                  f"container (mounts {[str(m) for m in mounts]}); mount the trainer's volumes at "
                                  f"the same paths (SEQREC_BUNDLE_ROOT, SEQREC_DATA_ROOT={data_root})")
    ours = {"SEQREC_TRAIN_ARGS": "--config-env SEQREC_TRAIN_CONFIG",
            "SEQREC_TRAIN_CONFIG": json.dumps(config.to_dict(), sort_keys=True),
            "SEQREC_TRAIN_OUT": str(staging), "SEQREC_PUBLISH": "false"}
    env = [e for e in train.get("env", []) if e["name"] not in ours]
    train["env"] = env + [{"name": k, "value": v} for k, v in ours.items()]  # container env beats envFrom
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template["spec"]}


@dataclass(frozen=True)
class JobStatus:
    state: str  # "running", "succeeded" or "failed"
    message: str = ""


def job_status(job: dict[str, Any]) -> JobStatus:
    """What a Job's status says: its Complete or Failed condition, else running."""
    for condition in job.get("status", {}).get("conditions") or ():
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return JobStatus("succeeded")
        if condition.get("type") == "Failed":
            return JobStatus("failed", f"Kubernetes Job failed: {condition.get('reason', '')} "
                                       f"{condition.get('message', '')}".strip())
    return JobStatus("running")


class KubernetesApi:
    """The few batch/v1 calls the launcher needs, with the pod's service account over HTTPS."""

    def __init__(self, server: str, token: str, namespace: str, ca_file: str | None, timeout_s: float = 10.0):
        self.server, self.token, self.namespace, self.timeout_s = server.rstrip("/"), token, namespace, timeout_s
        self.context = ssl.create_default_context(cafile=ca_file)

    @classmethod
    def in_cluster(cls, namespace: str = "") -> KubernetesApi:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (SERVICE_ACCOUNT / "token").is_file():
            raise KubernetesError("SEQREC_TRAINER_LAUNCHER=kubernetes: not running in a Kubernetes pod with a "
                                  "service account token (KUBERNETES_SERVICE_HOST, " + str(SERVICE_ACCOUNT) + ")")
        namespace = namespace or (SERVICE_ACCOUNT / "namespace").read_text().strip()
        return cls(f"https://{host}:{port}", (SERVICE_ACCOUNT / "token").read_text().strip(), namespace,
                   str(SERVICE_ACCOUNT / "ca.crt"))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.server}/apis/batch/v1/namespaces/{self.namespace}/{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                     "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.context) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise KubernetesError(f"{method} {path}: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise KubernetesError(f"{method} {path}: {exc}") from exc

    def cronjob(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"cronjobs/{name}")

    def create_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "jobs", manifest)

    def job(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"jobs/{name}")

    def delete_job(self, name: str) -> None:
        self._call("DELETE", f"jobs/{name}", {"propagationPolicy": "Background"})


class KubernetesLauncher:
    """Runs one training job as a Kubernetes Job and waits for it (JobManager's launcher)."""

    def __init__(self, api: KubernetesApi, cronjob: str, data_root: Path, poll_s: float = 5.0):
        self.api, self.cronjob, self.data_root, self.poll_s = api, cronjob, data_root, poll_s

    def run(self, job_id: str, config: TrainConfig, staging: Path, stop: Callable[[], bool],
            on_submitted: Callable[[str], None]) -> tuple[str, Any] | None:
        """Submit, then poll until the Job ends or `stop()` (cancel, wall-clock cap) says to delete it. Returns
        ("done", {"path": bundle}) or ("error", message) as a training process would, None when stopped."""
        manifest = job_manifest(self.api.cronjob(self.cronjob), job_id, config, staging, self.data_root)
        name = manifest["metadata"]["name"]
        self.api.create_job(manifest)
        log.info("kubernetes job submitted", extra={"job_id": job_id, "kube_job": name})
        on_submitted(name)
        while True:
            if stop():
                self.api.delete_job(name)
                return None
            try:
                status = job_status(self.api.job(name))
            except KubernetesError as exc:  # an API hiccup: keep waiting, the Job runs on
                log.warning("kubernetes job status unavailable", extra={"kube_job": name, "error": str(exc)})
                status = JobStatus("running")
            if status.state == "failed":
                return ("error", status.message)
            if status.state == "succeeded":
                bundles = [p for p in staging.iterdir() if (p / "manifest.json").is_file()] if staging.is_dir() else []
                if len(bundles) != 1:
                    return ("error", f"Kubernetes Job {name} succeeded but left {len(bundles)} bundles in {staging}")
                return ("done", {"path": str(bundles[0])})
            time.sleep(self.poll_s)
