"""The trainer service for real: a gRPC server on loopback running tiny trainings in child processes,
streaming their progress, cancelling them, listing and publishing the bundles they write."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqrec.proto.v1 import trainer_pb2, trainer_pb2_grpc
from seqrec.services.trainer.jobs import CANCELLED, FAILED, QUEUED, RUNNING, JobManager, RootInUse
from seqrec.services.trainer.messages import (
    InvalidRequest,
    flatten_metrics,
    hyperparameter_overrides,
    hyperparameters_message,
    request_to_config,
)
from seqrec.services.trainer.server import TrainerApp, TrainerSettings
from seqrec.shared.bundle import Bundle
from seqrec.shared.config import Hyperparameters, build_hparams
from seqrec.shared.local_services import free_port
from seqrec.shared.settings import Env, SettingsError

SERVICE = "seqrec.proto.v1.TrainerService"
S = trainer_pb2.JobState


def _hparams(**extra) -> trainer_pb2.Hyperparameters:
    """A tiny model: trains in seconds on the series fixture."""
    values = dict(hidden_size=16, heads=2, depth=1, max_len=20, epochs=3, batch_size=64, negative_samples=20,
                  eval_every=1)
    values.update(extra)
    return trainer_pb2.Hyperparameters(**values)


def _request(data: Path, **extra) -> trainer_pb2.TrainingRequest:
    values = dict(data_uri=str(data), user_column="user_id", item_column="item_id", timestamp_column="timestamp",
                  hyperparameters=_hparams())
    values.update(extra)
    return trainer_pb2.TrainingRequest(**values)


def _settings(root: Path, **extra: str) -> TrainerSettings:
    """Settings whose data root is the session's temporary folder, where every test's data files lie."""
    env = {"SEQREC_BUNDLE_ROOT": str(root), "SEQREC_TRAINER_ADDRESS": f"127.0.0.1:{free_port()}",
           "SEQREC_DATA_ROOT": str(root.parents[1]), **extra}
    return TrainerSettings.from_env(Env(env))


def _bundle_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _leftovers(root: Path) -> list[str]:
    """Staging or partial bundle folders that a finished job must not leave behind."""
    return [p.name for p in [*root.iterdir(), *(root / ".jobs").iterdir()]
            if p.is_dir() and (p.name.endswith(".partial") or p.name.endswith(".out"))]


def _wait_state(stub, job_id: str, states: set[int], timeout: float = 120.0) -> trainer_pb2.TrainingJob:
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(trainer_pb2.JobRef(job_id=job_id), timeout=5)
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {S.Name(job.state)}"
        time.sleep(0.1)


def _first_epoch(stub, job_id: str) -> grpc.Future:
    """Read the stream until the first epoch has been reported; returns the (still open) call."""
    call = stub.StreamProgress(trainer_pb2.JobRef(job_id=job_id), timeout=180)
    for event in call:
        if event.epoch >= 1:
            return call
    raise AssertionError("the stream ended before the first epoch")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, redis_server, milvus_server):
    root = tmp_path_factory.mktemp("trainer") / "bundles"
    app = TrainerApp(_settings(root, REDIS_URL=f"redis://{redis_server.address}/3", MILVUS_URI=milvus_server,
                               SEQREC_GRPC_WORKERS="4", SEQREC_MAX_CONCURRENT_RPCS="16", SEQREC_TRAINER_MAX_STREAMS="3",
                               SEQREC_TRAINER_MAX_QUEUED="3"))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    yield app, trainer_pb2_grpc.TrainerServiceStub(channel), channel
    channel.close()
    app.stop(0)


@pytest.fixture(scope="module")
def finished_job(trainer, series_csv):
    """One tiny training run to its end, with every event the stream sent."""
    _, stub, _ = trainer
    job = stub.StartTraining(_request(series_csv, description="first"))
    events = list(stub.StreamProgress(trainer_pb2.JobRef(job_id=job.job_id), timeout=300))
    return job, events


# -- the payload --------------------------------------------------------------------------------------

def test_every_proto_hyperparameter_is_a_config_field():
    """Mapping is by name: a field in the API must exist in shared/config.py (except the seed)."""
    config = {f.name: f for f in dataclasses.fields(Hyperparameters)}
    for fd in trainer_pb2.Hyperparameters.DESCRIPTOR.fields:
        if fd.name == "seed":
            continue
        assert fd.name in config, f"Hyperparameters.{fd.name} (proto) has no field in shared/config.py"
        kind = str if fd.enum_type is not None else {fd.TYPE_INT32: int, fd.TYPE_INT64: int, fd.TYPE_DOUBLE: float,
                                                      fd.TYPE_FLOAT: float, fd.TYPE_BOOL: bool}[fd.type]
        assert type(config[fd.name].default) is kind, f"{fd.name}: proto and config types differ"
        assert fd.has_presence, f"Hyperparameters.{fd.name} must be optional (unset = preset or default)"


def test_request_maps_onto_the_config(series_csv):
    hp = trainer_pb2.Hyperparameters(hidden_size=32, heads=2, sampling=trainer_pb2.SEQUENCE_SAMPLING_LAST,
                                     lr=0.01, weight_tying=True, use_attention_mask=False, seed=7)
    cfg, resolved = request_to_config(_request(f"file://{series_csv}", hyperparameters=hp, preset="music_playlist",
                                               metadata_columns=[" genre "], display_name_column="title",
                                               min_user_interactions=3))
    assert cfg.data.data == str(series_csv) and cfg.data.meta_cols == ("genre",) and cfg.data.name_col == "title"
    assert cfg.data.min_user_interactions == 3 and cfg.data.min_item_interactions == 0
    assert cfg.seed == 7 and cfg.preset == "music_playlist"
    assert (cfg.hparams.hidden_size, cfg.hparams.heads, cfg.hparams.sampling) == (32, 2, "last")
    assert cfg.hparams.depth == 3 and cfg.hparams.epochs == 25  # from the preset
    assert cfg.hparams.lr == 0.01 and cfg.hparams.weight_tying and not cfg.hparams.use_attention_mask
    # the payload echoed with defaults resolved: every field set, and it maps back onto the same config
    assert resolved.data_uri == str(series_csv)
    assert all(resolved.hyperparameters.HasField(fd.name) for fd in trainer_pb2.Hyperparameters.DESCRIPTOR.fields)
    overrides, seed = hyperparameter_overrides(resolved.hyperparameters)
    assert build_hparams(None, **overrides) == cfg.hparams and seed == 7
    assert hyperparameters_message(Hyperparameters(), 42).batch_size == 128


@pytest.mark.parametrize("change,field", [
    ({"data_uri": "no/such/file.csv"}, "data_uri: file not found"),  # relative: below the data root
    ({"data_uri": "/etc/passwd.csv"}, "data_uri: '/etc/passwd.csv' is outside the data root"),
    ({"data_uri": ""}, "data_uri: required"),
    ({"data_uri": "s3://bucket/x.csv"}, "data_uri: s3:// is not supported"),
    ({"items_uri": "no/items.csv"}, "items_uri: file not found"),
    ({"user_column": " "}, "user_column: required"),
    ({"item_column": "user_id"}, "item_column: 'user_id' is the user column too"),
    ({"hyperparameters": _hparams(hidden_size=30, heads=4)}, "hyperparameters.hidden_size: 30 is not divisible"),
    ({"hyperparameters": _hparams(mask_ratio=1.5)}, "hyperparameters.mask_ratio"),
    ({"hyperparameters": _hparams(seed=-1)}, "hyperparameters.seed"),
    ({"hyperparameters": _hparams(hidden_size=65_536, heads=1)}, "hyperparameters.hidden_size: must be at most 4096"),
    ({"hyperparameters": _hparams(epochs=2_000_000_000)}, "hyperparameters.epochs: must be at most"),
    ({"hyperparameters": _hparams(negative_samples=2_000_000_000)}, "hyperparameters.negative_samples: must be"),
    ({"hyperparameters": _hparams(lr=1e300)}, "hyperparameters.lr: must be at most 10"),
    ({"hyperparameters": _hparams(time_budget=0)}, "hyperparameters.time_budget: must be above 0 and below"),
    ({"hyperparameters": _hparams(time_budget=300)}, "cap of 240 minutes per job (SEQREC_TRAINER_MAX_JOB_S)"),
    ({"preset": "cinema"}, "preset: unknown preset 'cinema'"),
    ({"metadata_columns": ["genre", "genre"]}, "metadata_columns[1]"),
    ({"min_user_interactions": -1}, "min_user_interactions"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(trainer, series_csv, change, field):
    _, stub, _ = trainer
    before = stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs
    with pytest.raises(grpc.RpcError) as err:
        stub.StartTraining(_request(series_csv, **change))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    assert len(stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs) == len(before)  # nothing was queued


def test_data_root_confines_paths(series_csv, tmp_path):
    root = series_csv.parent
    cfg, _ = request_to_config(_request(Path(series_csv.name)), data_root=root)  # relative: from the data root
    assert cfg.data.data == str(series_csv.resolve())
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("user_id,item_id,timestamp\n")
    for uri in (str(outside), f"file://{outside}", f"../{tmp_path.name}/elsewhere.csv"):
        with pytest.raises(InvalidRequest, match="data_uri: .* is outside the data root"):
            request_to_config(_request(uri), data_root=root)


# -- jobs ---------------------------------------------------------------------------------------------

def test_training_job_streams_every_epoch_then_the_bundle(trainer, finished_job):
    app, stub, _ = trainer
    job, events = finished_job
    assert job.state == S.JOB_STATE_QUEUED and job.request.hyperparameters.batch_size == 64
    assert job.request.hyperparameters.mask_ratio == pytest.approx(0.15) and job.request.hyperparameters.seed == 42
    assert events[0].state == S.JOB_STATE_QUEUED and events[1].state == S.JOB_STATE_RUNNING
    epochs = [e for e in events if e.state == S.JOB_STATE_RUNNING and e.epoch]
    assert [e.epoch for e in epochs] == [1, 2, 3] and {e.total_epochs for e in epochs} == {3}
    assert all(e.loss > 0 and "ndcg@10" in e.validation.values for e in epochs)
    assert [e.progress for e in epochs] == sorted(e.progress for e in epochs)
    final = events[-1]
    assert final.state == S.JOB_STATE_SUCCEEDED and final.progress == 1.0
    assert final.bundle_version and Path(final.bundle_path) == app.settings.bundle_root / final.bundle_version
    assert Bundle.open(final.bundle_path).version == final.bundle_version  # whole and verified
    assert [w.message + (f"; {w.suggestion}" if w.suggestion else "") for w in final.warnings] == \
        Bundle.open(final.bundle_path).metrics()["warnings"]
    assert all(e.job_id == job.job_id and e.time.seconds > 0 for e in events)

    got = stub.GetJob(trainer_pb2.JobRef(job_id=job.job_id))
    assert got.state == S.JOB_STATE_SUCCEEDED and got.bundle_version == final.bundle_version
    assert got.bundle_path == final.bundle_path and not got.error
    assert got.started_at.seconds and got.finished_at.ToNanoseconds() >= got.started_at.ToNanoseconds()
    assert {"valid_ndcg@10", "test_hr@10", "epochs"} <= set(got.metrics.values)
    assert got.last_event == final and got.request.description == "first"


def test_list_jobs_and_bundles(trainer, finished_job):
    _, stub, _ = trainer
    job, events = finished_job
    jobs = stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs
    assert job.job_id in [j.job_id for j in jobs]
    assert [j.created_at.ToNanoseconds() for j in jobs] == sorted((j.created_at.ToNanoseconds() for j in jobs),
                                                                  reverse=True)
    assert len(stub.ListJobs(trainer_pb2.ListJobsRequest(limit=1)).jobs) == 1

    listing = stub.ListBundles(trainer_pb2.ListBundlesRequest())
    info = next(b for b in listing.bundles if b.version == events[-1].bundle_version)
    assert info.job_id == job.job_id and info.path == events[-1].bundle_path and info.created_at.seconds > 0
    metrics = Bundle.open(info.path).metrics()
    assert info.metrics.values["valid_ndcg@10"] == pytest.approx(metrics["valid"]["ndcg@10"])
    assert info.metrics.values["test_hr@10"] == pytest.approx(metrics["test"]["hr@10"])
    assert (info.model.max_len, info.model.hidden_size, info.model.default_top_k) == (20, 16, 10)
    manifest = Bundle.open(info.path).manifest
    assert (info.model.num_items, info.model.num_users) == (manifest.n_items, manifest.n_users)
    stamps = [b.created_at.ToNanoseconds() for b in listing.bundles]
    assert stamps == sorted(stamps, reverse=True)
    assert len(stub.ListBundles(trainer_pb2.ListBundlesRequest(limit=1)).bundles) == 1


def test_unknown_job_is_not_found(trainer):
    _, stub, _ = trainer
    for call in (stub.GetJob, stub.CancelJob):
        with pytest.raises(grpc.RpcError) as err:
            call(trainer_pb2.JobRef(job_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "job_id" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamProgress(trainer_pb2.JobRef(job_id="nope"), timeout=5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_missing_column_fails_the_job_with_the_reason(trainer, series_csv):
    _, stub, _ = trainer
    job = stub.StartTraining(_request(series_csv, user_column="customer"))
    events = list(stub.StreamProgress(trainer_pb2.JobRef(job_id=job.job_id), timeout=120))
    assert events[-1].state == S.JOB_STATE_FAILED
    got = stub.GetJob(trainer_pb2.JobRef(job_id=job.job_id))
    assert got.state == S.JOB_STATE_FAILED and "missing column(s) ['customer']" in got.error
    assert "Traceback" not in got.error and not got.bundle_version


def test_jobs_run_one_at_a_time_and_cancel_leaves_no_bundle(trainer, series_csv):
    app, stub, _ = trainer
    root = app.settings.bundle_root
    before = _bundle_dirs(root)
    long = stub.StartTraining(_request(series_csv, hyperparameters=_hparams(epochs=500, patience=500)))
    waiting = stub.StartTraining(_request(series_csv))
    call = _first_epoch(stub, long.job_id)
    assert stub.GetJob(trainer_pb2.JobRef(job_id=waiting.job_id)).state == S.JOB_STATE_QUEUED

    cancelled = stub.CancelJob(trainer_pb2.JobRef(job_id=waiting.job_id))  # still queued: never runs
    assert cancelled.state == S.JOB_STATE_CANCELLED and not cancelled.HasField("started_at")
    got = stub.CancelJob(trainer_pb2.JobRef(job_id=long.job_id))
    assert got.state == S.JOB_STATE_CANCELLED and not got.bundle_version and got.finished_at.seconds
    rest = list(call)  # the open stream ends with the cancellation
    assert rest[-1].state == S.JOB_STATE_CANCELLED and rest[-1].epoch < 500
    assert _bundle_dirs(root) == before and not _leftovers(root)
    again = stub.CancelJob(trainer_pb2.JobRef(job_id=long.job_id))  # idempotent
    assert again.state == S.JOB_STATE_CANCELLED


def test_a_client_cancelling_its_stream_frees_the_server(trainer, series_csv):
    """More streams than worker threads, each cancelled by its client while the job is quiet (queued):
    none may keep a thread."""
    app, stub, _ = trainer
    running = stub.StartTraining(_request(series_csv, hyperparameters=_hparams(epochs=500, patience=500)))
    quiet = stub.StartTraining(_request(series_csv))
    try:
        _first_epoch(stub, running.job_id).cancel()
        for _ in range(2 * app.settings.workers):
            call = stub.StreamProgress(trainer_pb2.JobRef(job_id=quiet.job_id), timeout=10)
            assert next(call).state == S.JOB_STATE_QUEUED  # the history is replayed first
            time.sleep(0.2)  # the server side is now waiting for the next event
            call.cancel()
            with pytest.raises(grpc.RpcError) as err:
                next(call)
            assert err.value.code() == grpc.StatusCode.CANCELLED
        assert stub.GetJob(trainer_pb2.JobRef(job_id=quiet.job_id), timeout=5).state == S.JOB_STATE_QUEUED
    finally:
        for job in (quiet, running):
            stub.CancelJob(trainer_pb2.JobRef(job_id=job.job_id), timeout=30)


def test_the_queue_and_the_open_streams_are_capped(trainer, series_csv):
    """Past SEQREC_TRAINER_MAX_QUEUED waiting jobs, and past SEQREC_TRAINER_MAX_STREAMS open progress streams,
    calls get RESOURCE_EXHAUSTED; a health check still gets a worker thread."""
    app, stub, channel = trainer
    running = stub.StartTraining(_request(series_csv, hyperparameters=_hparams(epochs=500, patience=500)))
    queued = [stub.StartTraining(_request(series_csv)) for _ in range(app.settings.max_queued)]
    calls = []
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.StartTraining(_request(series_csv))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "SEQREC_TRAINER_MAX_QUEUED" in \
            err.value.details()
        for _ in range(app.settings.max_streams):
            call = stub.StreamProgress(trainer_pb2.JobRef(job_id=queued[0].job_id), timeout=30)
            assert next(call).state == S.JOB_STATE_QUEUED
            calls.append(call)
        extra = stub.StreamProgress(trainer_pb2.JobRef(job_id=queued[0].job_id), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            next(extra)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for call in calls:
            call.cancel()
        for job in (*queued, running):
            stub.CancelJob(trainer_pb2.JobRef(job_id=job.job_id), timeout=30)


# -- bundles ------------------------------------------------------------------------------------------

def test_publish_and_rollback_move_the_live_file(trainer, finished_job, series_csv):
    app, stub, _ = trainer
    root = app.settings.bundle_root
    first = finished_job[1][-1].bundle_version
    info = stub.PublishBundle(trainer_pb2.PublishBundleRequest(version=first))
    assert info.version == first and info.live and (root / "LIVE").read_text().strip() == first
    assert stub.ListBundles(trainer_pb2.ListBundlesRequest()).live_version == first

    job = stub.StartTraining(_request(series_csv, publish_on_success=True,
                                      hyperparameters=_hparams(epochs=2, seed=3)))
    events = list(stub.StreamProgress(trainer_pb2.JobRef(job_id=job.job_id), timeout=300))
    second = events[-1].bundle_version
    assert events[-1].state == S.JOB_STATE_SUCCEEDED and "published" in events[-1].message
    assert (root / "LIVE").read_text().strip() == second
    listing = stub.ListBundles(trainer_pb2.ListBundlesRequest())
    assert listing.live_version == second and [b.version for b in listing.bundles if b.live] == [second]

    back = stub.RollbackBundle(trainer_pb2.RollbackBundleRequest())
    assert back.version == first and back.live and (root / "LIVE").read_text().strip() == first
    with pytest.raises(grpc.RpcError) as err:
        stub.RollbackBundle(trainer_pb2.RollbackBundleRequest())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    again = stub.RollbackBundle(trainer_pb2.RollbackBundleRequest(version=second))  # back to a named version
    assert again.version == second and (root / "LIVE").read_text().strip() == second

    for version, code in (("20000101T000000Z-dead", grpc.StatusCode.NOT_FOUND),
                          ("../etc", grpc.StatusCode.INVALID_ARGUMENT), ("", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishBundle(trainer_pb2.PublishBundleRequest(version=version))
        assert err.value.code() == code and "version" in err.value.details()


def test_flatten_metrics():
    raw = {"valid": {"ndcg@10": 0.5, "users": 3}, "test": {"hr@10": 0.25}, "epochs": 4, "stopped_early": True,
           "device": "cpu", "data": {"rows_read": 10}, "warnings": ["x"]}
    assert flatten_metrics(raw) == {"valid_ndcg@10": 0.5, "valid_users": 3.0, "test_hr@10": 0.25, "epochs": 4.0,
                                    "stopped_early": 1.0}


# -- restarts, settings, the process ------------------------------------------------------------------

def test_jobs_survive_a_restart(tmp_path, series_csv):
    root = tmp_path / "bundles"
    cfg, _ = request_to_config(_request(series_csv))
    first = JobManager(root)
    running, queued = first.submit(cfg, {}), first.submit(cfg, {}, description="later")
    with pytest.raises(RootInUse):
        JobManager(root)  # one trainer per bundle root
    first.shutdown()
    path = root / ".jobs" / f"{running.job_id}.json"  # as if the trainer died while this one trained
    path.write_text(json.dumps({**json.loads(path.read_text()), "state": RUNNING}))

    second = JobManager(root)
    try:
        died = second.get(running.job_id)
        assert died.state == FAILED and "trainer restarted" in died.error and died.events[-1].state == FAILED
        assert second.get(queued.job_id).state == QUEUED and second.get(queued.job_id).description == "later"
        assert [j.job_id for j in second.list()] == [queued.job_id, running.job_id]
        assert second.cancel(queued.job_id).state == CANCELLED
    finally:
        second.shutdown()


def test_settings_errors_name_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="SEQREC_BUNDLE_ROOT: required"):
        TrainerSettings.from_env(Env({}))
    with pytest.raises(SettingsError, match="SEQREC_TRAINER_ADDRESS: expected host:port"):
        TrainerSettings.from_env(Env({"SEQREC_BUNDLE_ROOT": "x", "SEQREC_DATA_ROOT": "x",
                                      "SEQREC_TRAINER_ADDRESS": "nowhere"}))
    with pytest.raises(SettingsError, match="SEQREC_DATA_ROOT: required"):  # jobs may read only below it
        TrainerSettings.from_env(Env({"SEQREC_BUNDLE_ROOT": str(tmp_path)}))
    settings = TrainerSettings.from_env(Env({"SEQREC_BUNDLE_ROOT": str(tmp_path), "SEQREC_DATA_ROOT": str(tmp_path)}))
    assert settings.address == "127.0.0.1:50053" and settings.embedder == "" and settings.max_job_s == 4 * 3600
    with pytest.raises(SettingsError, match="SEQREC_TRAINER_ADDRESS: 0.0.0.0:50053 is reachable beyond this host"):
        TrainerSettings.from_env(Env({"SEQREC_BUNDLE_ROOT": str(tmp_path), "SEQREC_DATA_ROOT": str(tmp_path),
                                      "SEQREC_TRAINER_ADDRESS": "0.0.0.0:50053"}))
    app = TrainerApp(_settings(tmp_path / "bundles", SEQREC_EMBEDDER="127.0.0.1:50052"))
    try:
        assert app.jobs.child_env == {"SEQREC_EMBEDDER": "127.0.0.1:50052"}  # handed to each training process
    finally:
        app.stop(0)
    with pytest.raises(FileNotFoundError, match="SEQREC_DATA_ROOT"):
        TrainerApp(_settings(tmp_path / "other", SEQREC_DATA_ROOT=str(tmp_path / "missing")))


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2).status


def test_serve_trainer_cancels_the_running_job_on_sigterm(series_csv, tmp_path):
    root, port = tmp_path / "bundles", free_port()
    env = {**os.environ, "SEQREC_BUNDLE_ROOT": str(root), "SEQREC_TRAINER_ADDRESS": f"127.0.0.1:{port}",
           "SEQREC_DATA_ROOT": str(series_csv.parent), "SEQREC_SHUTDOWN_GRACE_S": "2"}
    log_path = tmp_path / "trainer.log"
    with open(log_path, "w") as log:  # a file, not a pipe: nothing blocks on a full pipe
        proc = subprocess.Popen([sys.executable, "-m", "seqrec.services.cli", "serve", "trainer"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            job = stub.StartTraining(_request(Path(series_csv.name), hyperparameters=_hparams(epochs=500,
                                                                                            patience=500)))
            _first_epoch(stub, job.job_id).cancel()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        logs = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        assert {"trainer listening", "shutting down", "stopped"} <= {entry["msg"] for entry in logs}
        child = next(e["pid"] for e in logs if e["msg"] == "training process started")
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # the training process is gone too
        saved = json.loads((root / ".jobs" / f"{job.job_id}.json").read_text())
        assert saved["state"] == CANCELLED and "shut down" in saved["events"][-1]["message"]
        assert not _bundle_dirs(root) and not _leftovers(root)
    finally:
        proc.kill()


def test_serve_trainer_refuses_bad_settings():
    env = {k: v for k, v in os.environ.items() if k != "SEQREC_BUNDLE_ROOT"}
    proc = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "serve", "trainer"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "SEQREC_BUNDLE_ROOT: required" in proc.stderr


def test_a_failed_job_names_the_problem_without_quoting_the_file(trainer, tmp_path):
    """The caller of the service need not be allowed to read the file it names: a job's error says which
    columns are missing, never the columns (or values) the file holds."""
    _, stub, _ = trainer
    data = tmp_path / "private.csv"
    data.write_text("patient_name,diagnosis,visit\nAda Lovelace,flu,1\nAda Lovelace,cold,2\n")
    job = stub.StartTraining(_request(data))
    done = _wait_state(stub, job.job_id, {S.JOB_STATE_FAILED, S.JOB_STATE_SUCCEEDED})
    assert done.state == S.JOB_STATE_FAILED
    assert "missing column(s) ['user_id', 'item_id', 'timestamp']" in done.error
    for secret in ("patient_name", "diagnosis", "Ada", "flu"):
        assert secret not in done.error


def test_a_job_past_the_wall_clock_cap_is_stopped_and_fails(series_csv, tmp_path):
    """SEQREC_TRAINER_MAX_JOB_S bounds a job's whole run: a training process still busy past it (here: still
    starting, 1 s in) is stopped, and the job fails saying which cap it hit."""
    app = TrainerApp(_settings(tmp_path / "bundles", SEQREC_TRAINER_MAX_JOB_S="1"))
    app.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            job = stub.StartTraining(_request(series_csv, hyperparameters=_hparams(time_budget=0.01, epochs=1000)))
            done = _wait_state(stub, job.job_id, {S.JOB_STATE_FAILED, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_CANCELLED})
            assert done.state == S.JOB_STATE_FAILED
            assert "wall-clock cap per job (SEQREC_TRAINER_MAX_JOB_S)" in done.error
            assert not _leftovers(tmp_path / "bundles") and _bundle_dirs(tmp_path / "bundles") == set()
    finally:
        app.stop(0)
