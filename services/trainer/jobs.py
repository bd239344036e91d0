"""Training jobs: a persistent queue run one job at a time, each job in a child process calling `run_training`.

The parent never trains. A job's child process (multiprocessing "spawn": a fresh interpreter, no
inherited threads or locks) runs the same `run_training` as `seqrec train`, writes its bundle into
a staging folder under `<bundle root>/.jobs/` and reports every epoch through a one-way pipe (a
message queue with no lock or feeder thread, so a child terminated mid-training leaves nothing
behind; the parent holds no write end, so the child's exit reads as end-of-file). Only after
the child has finished and verified the bundle does the parent move it into the bundle root (one
`os.replace`), so a cancelled, failed or killed job never leaves a bundle, half-written or whole.

Every job is a JSON file in `<bundle root>/.jobs/`, rewritten on each change, so the job list and
each job's events survive a restart. A job that was running when the trainer died is marked
FAILED ("trainer restarted ..."); jobs still queued are queued again.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from seqrec.services.trainer.kube_jobs import KubernetesError, KubernetesLauncher
from seqrec.shared.config import TrainConfig
from seqrec.shared.registry import GateRefused

log = logging.getLogger(__name__)

JOBS_DIR = ".jobs"  # inside the bundle root; hidden, so it is never mistaken for a bundle
STAGING_SUFFIX = ".out"  # <job_id>.out/: where the child writes its bundle before it is moved into place
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
PERSIST_INTERVAL_S = 1.0  # epoch events are written to disk at most this often (state changes always)
MAX_MESSAGE_CHARS = 2000  # child → parent messages stay far below a pipe's atomic write size
LOCK_FILE = ".lock"  # held (flock) by the one trainer that manages a bundle root
RESTARTED = "trainer restarted while the job was running; start it again"


class JobNotFound(LookupError):
    """No job with this id."""


class TrainerClosed(RuntimeError):
    """The trainer is shutting down and accepts no new job."""


class QueueFull(RuntimeError):
    """As many jobs wait as the trainer accepts (maps to RESOURCE_EXHAUSTED)."""


class RootInUse(RuntimeError):
    """Another trainer process already manages this bundle root."""


@dataclass
class JobEvent:
    """One progress event; the fields mirror the API's TrainingEvent."""

    state: str
    message: str
    time: float  # seconds since the epoch
    epoch: int = 0  # the epoch just completed (1-based); 0 before the first one ends
    total_epochs: int = 0
    loss: float = 0.0
    validation: dict[str, float] = field(default_factory=dict)  # this epoch's validation metrics (may be empty)
    warnings: list[str] = field(default_factory=list)  # the training report's warnings (final event)
    bundle_path: str = ""
    bundle_version: str = ""
    progress: float = 0.0  # 0..1


@dataclass
class Job:
    job_id: str
    config: dict[str, Any]  # TrainConfig.to_dict(): what the child trains
    request: dict[str, Any]  # the API payload with defaults resolved (JSON form); kept for display only
    publish: bool  # publish the bundle when training succeeds
    description: str
    created_at: float
    state: str = QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    events: list[JobEvent] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # the bundle's metrics.json, on success
    bundle_version: str = ""
    bundle_path: str = ""
    error: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def total_epochs(self) -> int:
        return int(self.config.get("hparams", {}).get("epochs", 0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        event_fields = {f.name for f in fields(JobEvent)}
        values["events"] = [JobEvent(**{k: v for k, v in e.items() if k in event_fields})
                            for e in raw.get("events", [])]
        return cls(**values)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 3] + "..."


def _watch_parent(parent: int) -> None:
    """In the child: exit when the trainer process is gone, instead of training on as an orphan."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


class _Terminated(BaseException):
    """Raised in the child by SIGTERM (CancelJob): unwinds run_training, whose bundle writer cleans up."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _send(events: Connection, message: tuple[str, Any]) -> None:
    try:
        events.send(message)
    except OSError:  # the parent stopped listening (cancelled): nothing left to tell
        pass


def train_child(config: dict[str, Any], out_dir: str, env: dict[str, str], events: Connection,
                parent: int) -> None:
    """Body of the child process: `run_training` with progress bars off, each epoch sent to the parent.

    Messages (all small): ("epoch", {...}) per epoch, then ("done", {"path": ...}) or ("error", message).
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    os.environ.update(env)
    from seqrec.shared.logs import configure_logging

    configure_logging()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    try:
        from seqrec.services.trainer.data import DataError
        from seqrec.services.trainer.pipeline import run_training
        from seqrec.services.trainer.train import EpochRecord, TrainingError
        from seqrec.shared.bundle import BundleError
        from seqrec.shared.config import ConfigError

        def on_epoch(record: EpochRecord) -> None:
            _send(events, ("epoch", {"epoch": int(record.epoch), "loss": float(record.loss),
                                     "seconds": float(record.seconds), "valid": _jsonable(dict(record.valid))}))

        path, _ = run_training(TrainConfig.from_dict(config), out_dir, progress=False, on_epoch=on_epoch)
        _send(events, ("done", {"path": str(path)}))
    except _Terminated:
        logging.getLogger(__name__).info("training cancelled")
    except (ConfigError, DataError, TrainingError, BundleError) as exc:
        _send(events, ("error", _clip(str(exc))))
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the parent gets a message
        incident = uuid.uuid4().hex[:12]
        logging.getLogger(__name__).exception("training failed", extra={"incident": incident})
        # the text of an unexpected error may quote the data (a KeyError names a value): it stays in the log
        _send(events, ("error", f"internal error {type(exc).__name__} (incident {incident} in the trainer's log)"))
    finally:
        events.close()


@dataclass
class _Running:
    job_id: str
    process: Any = None  # the multiprocessing Process, once started
    cancel_reason: str | None = None
    finalizing: bool = False  # the child has finished: too late to cancel
    timed_out: bool = False  # stopped by the wall-clock cap: a failure, not a cancellation


class JobManager:
    """The job queue and its worker thread; thread-safe; every read returns a copy."""

    def __init__(self, bundle_root: Path, publisher: Callable[[Path], Any] | None = None,
                 child_env: dict[str, str] | None = None, cancel_grace_s: float = 5.0, max_queued: int = 16,
                 max_job_s: float = 0.0, launcher: KubernetesLauncher | None = None):
        self.root = Path(bundle_root)
        self.max_queued = max_queued
        self.max_job_s = max_job_s  # wall clock of a training process; 0 = no cap
        self.jobs_dir = self.root / JOBS_DIR
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_root(self.jobs_dir / LOCK_FILE)
        self.publisher = publisher
        self.child_env = dict(child_env or {})
        self.launcher = launcher  # None: a child process per job; else a Kubernetes Job (kube_jobs)
        self.cancel_grace_s = cancel_grace_s
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._running: _Running | None = None
        self._closed = False
        self._close_reason = ""
        self._last_persist: dict[str, float] = {}
        with self._cond:
            self._load()
        self._worker = threading.Thread(target=self._work, name="training-jobs", daemon=True)

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    @property
    def alive(self) -> bool:
        return self._worker.is_alive() and not self._closed

    def submit(self, cfg: TrainConfig, request: dict[str, Any], publish: bool = False,
               description: str = "") -> Job:
        now = time.time()
        job = Job(job_id=uuid.uuid4().hex[:16], config=cfg.to_dict(), request=request, publish=publish,
                  description=description, created_at=now)
        with self._cond:
            if self._closed:
                raise TrainerClosed("the trainer is shutting down; start the job again once it is back")
            if len(self._queue) >= self.max_queued:
                raise QueueFull(f"{len(self._queue)} jobs are already queued (SEQREC_TRAINER_MAX_QUEUED="
                                f"{self.max_queued}); start it once one has run, or cancel one")
            ahead = len(self._queue) + (1 if self._running else 0)
            job.events.append(JobEvent(QUEUED, f"queued ({ahead} job(s) ahead)", now,
                                       total_epochs=job.total_epochs))
            self._jobs[job.job_id] = job
            self._queue.append(job.job_id)
            self._persist(job)
            self._cond.notify_all()
            log.info("job queued", extra={"job_id": job.job_id, "ahead": ahead})
            return copy.deepcopy(job)

    def get(self, job_id: str) -> Job:
        with self._cond:
            return copy.deepcopy(self._get(job_id))

    def list(self, limit: int = 0) -> list[Job]:
        """Newest first; `limit` 0 means all."""
        with self._cond:
            jobs = sorted(self._jobs.values(), key=lambda j: (j.created_at, j.job_id), reverse=True)
            return [copy.deepcopy(j) for j in (jobs[:limit] if limit > 0 else jobs)]

    def bundle_jobs(self) -> dict[str, str]:
        """Bundle version → the job that produced it."""
        with self._cond:
            return {j.bundle_version: j.job_id for j in self._jobs.values() if j.bundle_version}

    def wait_events(self, job_id: str, start: int, timeout: float) -> tuple[list[JobEvent], bool]:
        """Events from index `start` on, waiting up to `timeout` s for one; and whether the job has ended."""
        with self._cond:
            job = self._get(job_id)
            if len(job.events) <= start and not job.terminal:
                self._cond.wait(timeout)
            return copy.deepcopy(job.events[start:]), job.terminal

    def wake(self) -> None:
        """Wake every `wait_events` (e.g. a streaming client went away)."""
        with self._cond:
            self._cond.notify_all()

    def cancel(self, job_id: str, reason: str = "cancelled by request", wait_s: float = 30.0) -> Job:
        """Cancel a queued or running job (a finished one is returned unchanged); returns its state afterwards."""
        with self._cond:
            job = self._get(job_id)
            if job.state == QUEUED:
                if job_id in self._queue:
                    self._queue.remove(job_id)
                self._finish(job, CANCELLED, reason)
                return copy.deepcopy(job)
            running = self._running
            if job.terminal or running is None or running.job_id != job_id or running.finalizing:
                target = None
            else:
                running.cancel_reason = running.cancel_reason or reason
                target = running.process
        if target is not None:
            log.info("cancelling job", extra={"job_id": job_id, "reason": reason})
            _terminate(target)
        deadline = time.monotonic() + wait_s
        with self._cond:
            while not job.terminal and time.monotonic() < deadline:
                self._cond.wait(0.2)
            return copy.deepcopy(job)

    def shutdown(self, reason: str = "cancelled: the trainer shut down", wait_s: float = 30.0) -> None:
        """Accept no more jobs, cancel the running one (queued jobs stay queued for the next start)."""
        with self._cond:
            self._closed, self._close_reason = True, reason
            running = self._running
            self._cond.notify_all()
        if running is not None:
            self.cancel(running.job_id, reason, wait_s)
        if self._worker.is_alive():
            self._worker.join(wait_s)
        self._lock_file.close()  # releases the flock

    # -- internals ----------------------------------------------------------------------------

    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"job_id: no job {job_id!r}")
        return job

    def _job_file(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    def _persist(self, job: Job, force: bool = True) -> None:
        """Write the job's JSON atomically (caller holds the lock); epoch events may be batched."""
        now = time.monotonic()
        if not force and now - self._last_persist.get(job.job_id, 0.0) < PERSIST_INTERVAL_S:
            return
        self._last_persist[job.job_id] = now
        path = self._job_file(job.job_id)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(job.to_dict(), default=str))
            os.replace(tmp, path)
        except OSError:
            log.exception("cannot persist job", extra={"job_id": job.job_id})

    def _event(self, job: Job, event: JobEvent, force: bool = True) -> None:
        job.events.append(event)
        self._persist(job, force)
        self._cond.notify_all()

    def _finish(self, job: Job, state: str, message: str, **extra: Any) -> None:
        now = time.time()
        job.state, job.finished_at = state, now
        if state == FAILED:
            job.error = message
        last = job.events[-1] if job.events else None
        self._event(job, JobEvent(state, message, now, epoch=last.epoch if last else 0,
                                  total_epochs=job.total_epochs, loss=last.loss if last else 0.0,
                                  progress=1.0 if state == SUCCEEDED else (last.progress if last else 0.0),
                                  **extra))
        self._last_persist.pop(job.job_id, None)
        log.info("job finished", extra={"job_id": job.job_id, "state": state, "detail": message})

    def _load(self) -> None:
        """Read the persisted jobs (caller holds the lock)."""
        for staging in self.jobs_dir.glob(f"*{STAGING_SUFFIX}"):
            shutil.rmtree(staging, ignore_errors=True)  # a previous run's unfinished bundle
        loaded = []
        for path in self.jobs_dir.glob("*.json"):
            try:
                loaded.append(Job.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("skipping unreadable job file", extra={"path": str(path), "error": str(exc)})
        for job in sorted(loaded, key=lambda j: j.created_at):
            self._jobs[job.job_id] = job
            if job.state == RUNNING:
                self._finish(job, FAILED, RESTARTED)
            elif job.state == QUEUED:
                self._queue.append(job.job_id)
                self._event(job, JobEvent(QUEUED, "queued again after a trainer restart", time.time(),
                                          total_epochs=job.total_epochs))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._jobs[self._queue.popleft()]
                if job.state != QUEUED:
                    continue
                job.state, job.started_at = RUNNING, time.time()
                self._event(job, JobEvent(RUNNING, "training started", job.started_at,
                                          total_epochs=job.total_epochs))
                running = self._running = _Running(job.job_id)  # from here on, CancelJob finds it
            try:
                self._run(job, running)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any one job
                log.exception("job crashed the worker", extra={"job_id": job.job_id})
                with self._cond:
                    self._running = None
                    if not job.terminal:
                        self._finish(job, FAILED, f"internal error: {type(exc).__name__}: {exc}")

    def _run(self, job: Job, running: _Running) -> None:
        if self.launcher is not None:
            self._run_launched(job, running)
            return
        ctx = multiprocessing.get_context("spawn")
        reader, writer = ctx.Pipe(duplex=False)
        staging = self.jobs_dir / f"{job.job_id}{STAGING_SUFFIX}"
        shutil.rmtree(staging, ignore_errors=True)
        process = ctx.Process(target=train_child, name=f"train-{job.job_id}",
                              args=(job.config, str(staging), self.child_env, writer, os.getpid()))
        with self._cond:
            reason = running.cancel_reason or (self._close_reason if self._closed else None)
            if reason is not None:  # cancelled between dequeuing and starting: nothing ran
                reader.close()
                writer.close()
                self._running = None
                self._finish(job, CANCELLED, reason)
                return
            process.start()
            running.process = process
        log.info("training process started", extra={"job_id": job.job_id, "pid": process.pid})

        writer.close()  # the child holds the only write end now: its exit is end-of-file here

        outcome: tuple[str, Any] | None = None
        started = time.monotonic()
        try:
            while outcome is None and running.cancel_reason is None:
                if self.max_job_s and time.monotonic() - started > self.max_job_s:
                    self._stop_overdue(running, process)
                    break
                if not reader.poll(0.2):
                    continue
                try:
                    kind, payload = reader.recv()
                except EOFError:  # the child is gone without a last word (killed, crashed)
                    break
                if kind == "epoch":
                    self._on_epoch(job, payload)
                else:
                    outcome = (kind, payload)
        finally:
            reader.close()

        with self._cond:
            running.finalizing = True
            cancel_reason = running.cancel_reason
        process.join(self.cancel_grace_s if cancel_reason else 30.0)
        if process.is_alive():
            log.warning("training process did not stop; killing it", extra={"job_id": job.job_id})
            process.kill()
            process.join(10.0)
        try:
            self._finalize(job, outcome, cancel_reason, process.exitcode, staging, running.timed_out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with self._cond:
                self._running = None
                self._cond.notify_all()

    def _run_launched(self, job: Job, running: _Running) -> None:
        """The job as a Kubernetes Job: submitted, polled, deleted when cancelled or overdue; its bundle lands in
        the same staging folder a child process would use, and is finalized the same way."""
        assert self.launcher is not None
        staging = self.jobs_dir / f"{job.job_id}{STAGING_SUFFIX}"
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()

        def stop() -> bool:
            with self._cond:
                if running.cancel_reason is None and self.max_job_s and time.monotonic() - started > self.max_job_s:
                    running.timed_out = True
                    running.cancel_reason = f"stopped after {self.max_job_s:g} s (SEQREC_TRAINER_MAX_JOB_S)"
                return running.cancel_reason is not None or self._closed

        def submitted(name: str) -> None:
            with self._cond:
                self._event(job, JobEvent(RUNNING, f"running as Kubernetes Job {name}", time.time(),
                                          total_epochs=job.total_epochs))

        try:
            outcome = self.launcher.run(job.job_id, TrainConfig.from_dict(job.config), staging, stop, submitted)
        except KubernetesError as exc:
            outcome = ("error", f"could not run the training as a Kubernetes Job: {_clip(str(exc))}")
        with self._cond:
            running.finalizing = True
            cancel_reason = running.cancel_reason or (self._close_reason if outcome is None else None)
        try:
            self._finalize(job, outcome, cancel_reason, None, staging, running.timed_out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with self._cond:
                self._running = None
                self._cond.notify_all()

    def _stop_overdue(self, running: _Running, process: Any) -> None:
        """The job ran past the wall-clock cap: stop its process; the job fails saying why."""
        with self._cond:
            if running.cancel_reason is not None:
                return
            running.timed_out = True
            running.cancel_reason = (f"stopped after {self.max_job_s:g} s, the trainer's wall-clock cap per job "
                                     "(SEQREC_TRAINER_MAX_JOB_S); lower epochs or time_budget")
        log.warning("job ran past the wall-clock cap; stopping it",
                    extra={"job_id": running.job_id, "max_job_s": self.max_job_s})
        _terminate(process)

    def _on_epoch(self, job: Job, payload: dict[str, Any]) -> None:
        total = job.total_epochs
        valid = {k: float(v) for k, v in payload.get("valid", {}).items()}
        text = f"epoch {payload['epoch']}/{total}: loss {payload['loss']:.4f}"
        if "ndcg@10" in valid:
            text += f", valid NDCG@10 {valid['ndcg@10']:.4f} HR@10 {valid.get('hr@10', 0.0):.4f}"
        with self._cond:
            self._event(job, JobEvent(RUNNING, text, time.time(), epoch=payload["epoch"], total_epochs=total,
                                      loss=payload["loss"], validation=valid,
                                      progress=min(1.0, payload["epoch"] / max(total, 1))), force=False)

    def _finalize(self, job: Job, outcome: tuple[str, Any] | None, cancel_reason: str | None,
                  exitcode: int | None, staging: Path, timed_out: bool = False) -> None:
        """Record the outcome; the staging folder is gone before the job turns terminal."""
        if outcome is None or outcome[0] != "done" or cancel_reason is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if cancel_reason is not None:  # stopped: by a caller (cancelled) or by the wall-clock cap (failed)
            with self._cond:
                self._finish(job, FAILED if timed_out else CANCELLED, cancel_reason)
            return
        if outcome is None:
            detail = f"the training process exited unexpectedly (exit code {exitcode})"
            if exitcode is not None and exitcode < 0:
                detail += f"; killed by signal {-exitcode}" + (" (out of memory?)" if exitcode == -9 else "")
            with self._cond:
                self._finish(job, FAILED, detail)
            return
        kind, payload = outcome
        if kind == "error":
            with self._cond:
                self._finish(job, FAILED, str(payload))
            return

        staged = Path(payload["path"])
        final = self.root / staged.name
        try:
            os.replace(staged, final)  # atomic: the bundle appears whole or not at all
            shutil.rmtree(staging, ignore_errors=True)
            metrics = json.loads((final / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            with self._cond:
                self._finish(job, FAILED, f"could not move the bundle into {self.root}: {exc}")
            return
        warnings = [str(w) for w in metrics.get("warnings", [])]
        with self._cond:
            job.metrics, job.bundle_version, job.bundle_path = _jsonable(metrics), final.name, str(final)
            job.warnings = warnings
        log.info("bundle written", extra={"job_id": job.job_id, "bundle": str(final)})
        message = f"bundle {final.name} written"
        if job.publish and self.publisher is not None:
            try:
                self.publisher(final)
                message += " and published"
            except GateRefused as held:  # the job did its work; the live model was better on the newest data
                message += f", not published: {held}"
            except Exception as exc:  # noqa: BLE001 - any store error: the bundle stays, the job says why
                log.exception("publishing failed", extra={"job_id": job.job_id})
                with self._cond:
                    self._finish(job, FAILED, f"training succeeded and bundle {final.name} was written, but "
                                              f"publishing it failed: {exc}; call PublishBundle to retry",
                                 bundle_path=str(final), bundle_version=final.name, warnings=warnings)
                return
        with self._cond:
            self._finish(job, SUCCEEDED, message, bundle_path=str(final), bundle_version=final.name,
                         warnings=warnings, validation={k: float(v) for k, v in metrics.get("valid", {}).items()
                                                        if isinstance(v, (int, float))})


def _lock_root(path: Path) -> Any:
    """Hold an exclusive lock for this process's lifetime: two trainers on one root would corrupt the jobs."""
    import fcntl

    handle = open(path, "a+")  # kept open: the lock lives as long as the file object
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise RootInUse(f"{path.parent.parent}: another trainer already manages this bundle root") from exc
    return handle


def _terminate(process: Any) -> None:
    try:
        process.terminate()
    except (AttributeError, OSError, ValueError):  # not started yet, or already reaped
        pass
