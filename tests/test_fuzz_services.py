"""Property-based fuzzing of the trainer's and the embedder's gRPC APIs, with the properties and wire-level
strategies of tests/test_fuzz_grpc.py: a real TrainerService (its data root holding one small CSV, a queue
of one) and a real EmbedderService (real MiniLM), every RPC, typed messages with hostile content and raw
bytes (unknown fields, another RPC's message, invalid UTF-8, over-long varints, random bytes).

The properties: no call ends with a status that means the server broke (INTERNAL, UNKNOWN, UNAVAILABLE,
DEADLINE_EXCEEDED, DATA_LOSS, UNIMPLEMENTED), including the trainer's StreamProgress stream; every
INVALID_ARGUMENT names a field of the request first; an Embed answer has one finite vector of the model's
dimension per text. A training job the fuzzer manages to start is cancelled at once, so the corpus costs
requests rather than training runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given
from hypothesis import strategies as st

from seqrec.proto.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from seqrec.shared.error_details import details_of
from seqrec.shared.local_services import free_port
from seqrec.shared.settings import Env
from tests.conftest import make_series_interactions
from tests.test_fuzz_grpc import (
    CALL_TIMEOUT_S,
    FUZZ_SETTINGS,
    SERVER_FAULTS,
    _message,
    call_raw,
    hostile_text,
    leads_with_a_field,
    wait_serving,
    wire_payloads_of,
)

C = grpc.StatusCode
T = trainer_pb2
TRAINER_SERVICE = "seqrec.proto.v1.TrainerService"
EMBEDDER_SERVICE = "seqrec.proto.v1.EmbedderService"
DATA_FILE = "events.csv"  # in the trainer's data root
COLUMNS = ["user_id", "item_id", "timestamp"]

# ---- trainer strategies ----------------------------------------------------------------------------------------

int32s = st.integers(-(2**31), 2**31 - 1) | st.sampled_from([0, 1, 2, 3, 8, 64, 4096, 4097, -1])
int64s = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1, 2**32, -1])
doubles = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.2, 1.0, 1.5, -0.1, 1e308])
enums = st.sampled_from([0, 1, 2, 3, 99, -1])  # proto3 enums are open: unknown numbers reach the server

_HP_STRATEGY = {"TYPE_INT32": int32s, "TYPE_INT64": int64s, "TYPE_DOUBLE": doubles, "TYPE_BOOL": st.booleans(),
                "TYPE_ENUM": enums}


def _hp_field(field) -> st.SearchStrategy:
    from google.protobuf.descriptor import FieldDescriptor

    kind = next(name for name, number in vars(FieldDescriptor).items()
                if name.startswith("TYPE_") and number == field.type)
    return st.none() | _HP_STRATEGY[kind]


hyperparameters = st.builds(partial(_message, T.Hyperparameters), **{
    f.name: _hp_field(f) for f in T.Hyperparameters.DESCRIPTOR.fields})
locations = st.one_of(
    st.sampled_from([DATA_FILE, "", "/etc/passwd", "../../etc/shadow.csv", "/proc/self/environ.csv", "s3://b/x.csv",
                     "file:///etc/passwd", ".", "..", "events.parquet", "missing.csv", "./" + DATA_FILE]),
    hostile_text,
)
columns = st.sampled_from([*COLUMNS, ""]) | hostile_text
training_requests = st.builds(
    partial(_message, T.TrainingRequest),
    data_uri=locations, items_uri=st.none() | locations, user_column=columns, item_column=columns,
    timestamp_column=columns, metadata_columns=st.lists(columns, max_size=3),
    display_name_column=st.none() | columns, min_user_interactions=st.none() | int32s,
    min_item_interactions=st.none() | int32s,
    preset=st.none() | st.sampled_from(["default", "fast", "accuracy", "quality"]) | hostile_text,
    hyperparameters=st.none() | hyperparameters, publish_on_success=st.booleans(), description=hostile_text,
    timestamp_unit=st.none() | st.sampled_from(["s", "ms", "auto", "us", "days"]) | hostile_text,
)
job_refs = st.builds(T.JobRef, job_id=hostile_text)
TRAINER_REQUESTS: dict[str, st.SearchStrategy[Message]] = {
    "StartTraining": training_requests,
    "StreamProgress": job_refs,
    "GetJob": job_refs,
    "ListJobs": st.builds(T.ListJobsRequest, limit=int32s),
    "CancelJob": job_refs,
    "ListBundles": st.builds(T.ListBundlesRequest, limit=int32s),
    "PublishBundle": st.builds(T.PublishBundleRequest, version=hostile_text),
    "RollbackBundle": st.builds(T.RollbackBundleRequest, version=hostile_text),
}
TRAINER_TYPES = {name: method.input_type for name, method in
                 T.DESCRIPTOR.services_by_name["TrainerService"].methods_by_name.items()}

# ---- embedder strategies ---------------------------------------------------------------------------------------

E = embedder_pb2
EMBEDDER_REQUESTS: dict[str, st.SearchStrategy[Message]] = {
    "Embed": st.builds(E.EmbedRequest, texts=st.lists(hostile_text, max_size=10), normalize=st.booleans()),
    "GetModelInfo": st.just(common_pb2.GetModelInfoRequest()),
}
EMBEDDER_TYPES = {name: method.input_type for name, method in
                  E.DESCRIPTOR.services_by_name["EmbedderService"].methods_by_name.items()}


def _payloads(requests: dict[str, st.SearchStrategy[Message]], types: dict, rpc: str) -> st.SearchStrategy[bytes]:
    return wire_payloads_of(types[rpc], requests[rpc], [s for name, s in requests.items() if name != rpc])


def _names(descriptor) -> frozenset[str]:
    return frozenset({"request", *descriptor.fields_by_name, *descriptor.oneofs_by_name})


# ---- the checks ------------------------------------------------------------------------------------------------


def _stream_outcome(channel: grpc.Channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        for _ in channel.unary_stream(method)(payload, timeout=CALL_TIMEOUT_S):
            pass
        return C.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def check_trainer_call(channel: grpc.Channel, rpc: str, payload: bytes) -> None:
    method = f"/{TRAINER_SERVICE}/{rpc}"
    if rpc == "StreamProgress":
        code, details = _stream_outcome(channel, method, payload)
        answer = None
    else:
        code, details, answer = call_raw(channel, method, payload)
    if rpc == "StartTraining" and code == C.OK:  # a job the fuzzer started: stop it before it trains
        job = T.TrainingJob.FromString(answer or b"")
        call_raw(channel, f"/{TRAINER_SERVICE}/CancelJob", T.JobRef(job_id=job.job_id).SerializeToString())
    assert code not in SERVER_FAULTS, f"{rpc}({payload[:300]!r}): {code.name}: {details}"
    if code == C.INVALID_ARGUMENT:
        assert leads_with_a_field(details, _names(TRAINER_TYPES[rpc])), \
            f"{rpc}({payload[:300]!r}): INVALID_ARGUMENT without a field: {details!r}"


def check_embedder_call(channel: grpc.Channel, rpc: str, payload: bytes) -> None:
    code, details, answer = call_raw(channel, f"/{EMBEDDER_SERVICE}/{rpc}", payload)
    assert code not in SERVER_FAULTS, f"{rpc}({payload[:300]!r}): {code.name}: {details}"
    if code == C.INVALID_ARGUMENT:
        assert leads_with_a_field(details, _names(EMBEDDER_TYPES[rpc])), \
            f"{rpc}({payload[:300]!r}): INVALID_ARGUMENT without a field: {details!r}"
    if code != C.OK or rpc != "Embed":
        return
    request = E.EmbedRequest.FromString(payload)  # the server parsed it, so it parses
    try:
        response = E.EmbedResponse.FromString(answer or b"")
    except DecodeError as exc:
        raise AssertionError(f"Embed answered OK with an unparsable EmbedResponse: {exc}") from exc
    assert len(response.embeddings) == len(request.texts)
    for embedding in response.embeddings:
        assert len(embedding.values) == response.dim
        assert all(math.isfinite(v) for v in embedding.values)


# ---- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer_channel(tmp_path_factory, redis_server, milvus_server) -> Iterator[grpc.Channel]:
    from seqrec.services.trainer.server import TrainerApp, TrainerSettings

    data_root = tmp_path_factory.mktemp("trainer-fuzz")
    make_series_interactions(n_users=20).to_csv(data_root / DATA_FILE, index=False)
    app = TrainerApp(TrainerSettings.from_env(Env({
        "SEQREC_BUNDLE_ROOT": str(data_root / "bundles"), "SEQREC_DATA_ROOT": str(data_root),
        "SEQREC_TRAINER_ADDRESS": f"127.0.0.1:{free_port()}", "REDIS_URL": f"redis://{redis_server.address}/6",
        "MILVUS_URI": milvus_server, "SEQREC_TRAINER_MAX_QUEUED": "1", "SEQREC_TRAINER_MAX_JOB_S": "7200",
        "SEQREC_GRPC_WORKERS": "4", "SEQREC_TRAINER_MAX_STREAMS": "2", "SEQREC_HEALTH_INTERVAL_S": "0.5"})))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        wait_serving(channel, TRAINER_SERVICE)
        yield channel
    finally:
        channel.close()
        app.stop(0)


@pytest.fixture(scope="module")
def embedder_channel(minilm) -> Iterator[grpc.Channel]:
    from seqrec.services.embedder.server import EmbedderApp, EmbedderSettings

    app = EmbedderApp(EmbedderSettings.from_env(Env({
        "SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{free_port()}", "SEQREC_EMBEDDER_MAX_BATCH": "8",
        "SEQREC_EMBEDDER_MAX_TEXT_CHARS": "200", "SEQREC_HEALTH_INTERVAL_S": "0.5"})), model=minilm)
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}", options=[("grpc.max_send_message_length", 64 << 20)])
    try:
        wait_serving(channel, EMBEDDER_SERVICE)
        yield channel
    finally:
        channel.close()
        app.stop(0)


# ---- properties ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", TRAINER_REQUESTS)
def test_trainer_typed_messages(trainer_channel, rpc):
    @FUZZ_SETTINGS
    @given(request=TRAINER_REQUESTS[rpc])
    def run(request: Message) -> None:
        check_trainer_call(trainer_channel, rpc, request.SerializeToString())

    run()


@pytest.mark.parametrize("rpc", TRAINER_REQUESTS)
def test_trainer_wire_bytes(trainer_channel, rpc):
    @FUZZ_SETTINGS
    @given(payload=_payloads(TRAINER_REQUESTS, TRAINER_TYPES, rpc))
    def run(payload: bytes) -> None:
        check_trainer_call(trainer_channel, rpc, payload)

    run()


@pytest.mark.parametrize("rpc", EMBEDDER_REQUESTS)
def test_embedder_typed_messages(embedder_channel, rpc):
    @FUZZ_SETTINGS
    @given(request=EMBEDDER_REQUESTS[rpc])
    def run(request: Message) -> None:
        check_embedder_call(embedder_channel, rpc, request.SerializeToString())

    run()


@pytest.mark.parametrize("rpc", EMBEDDER_REQUESTS)
def test_embedder_wire_bytes(embedder_channel, rpc):
    @FUZZ_SETTINGS
    @given(payload=_payloads(EMBEDDER_REQUESTS, EMBEDDER_TYPES, rpc))
    def run(payload: bytes) -> None:
        check_embedder_call(embedder_channel, rpc, payload)

    run()


def _valid_training(**hyperparameters) -> bytes:
    return T.TrainingRequest(data_uri=DATA_FILE, user_column="user_id", item_column="item_id",
                             timestamp_column="timestamp",
                             hyperparameters=T.Hyperparameters(**hyperparameters)).SerializeToString()


EXPLICIT = {  # (service, rpc, payload, the statuses allowed)
    "outside-the-data-root": ("trainer", "StartTraining", T.TrainingRequest(
        data_uri="/etc/passwd", user_column="a", item_column="b", timestamp_column="c").SerializeToString(),
        {C.INVALID_ARGUMENT, C.PERMISSION_DENIED}),
    "climbing-out-of-the-root": ("trainer", "StartTraining", T.TrainingRequest(
        data_uri="../../../etc/hosts.csv", user_column="a", item_column="b", timestamp_column="c").SerializeToString(),
        {C.INVALID_ARGUMENT, C.PERMISSION_DENIED}),
    "nan-learning-rate": ("trainer", "StartTraining", _valid_training(lr=math.nan), {C.INVALID_ARGUMENT}),
    "infinite-budget": ("trainer", "StartTraining", _valid_training(time_budget=math.inf), {C.INVALID_ARGUMENT}),
    "enormous-model": ("trainer", "StartTraining", _valid_training(hidden_size=2**31 - 1), {C.INVALID_ARGUMENT}),
    "unknown-sampling": ("trainer", "StartTraining", _valid_training(sampling=42), {C.INVALID_ARGUMENT}),
    "huge-job-id": ("trainer", "GetJob", T.JobRef(job_id="j" * 3_000_000).SerializeToString(),
                    {C.NOT_FOUND, C.INVALID_ARGUMENT}),
    "stream-of-nothing": ("trainer", "StreamProgress", T.JobRef().SerializeToString(), {C.INVALID_ARGUMENT}),
    "too-many-texts": ("embedder", "Embed", E.EmbedRequest(texts=["x"] * 9).SerializeToString(),
                       {C.INVALID_ARGUMENT}),
    "over-long-text": ("embedder", "Embed", E.EmbedRequest(texts=["word " * 1000]).SerializeToString(),
                       {C.INVALID_ARGUMENT, C.OK}),
    "empty-text": ("embedder", "Embed", E.EmbedRequest(texts=[""]).SerializeToString(), {C.INVALID_ARGUMENT, C.OK}),
}


@pytest.mark.parametrize("name", EXPLICIT)
def test_explicit_cases(request, name):
    service, rpc, payload, expected = EXPLICIT[name]
    channel = request.getfixturevalue(f"{service}_channel")
    prefix = TRAINER_SERVICE if service == "trainer" else EMBEDDER_SERVICE
    if rpc == "StreamProgress":
        code, details = _stream_outcome(channel, f"/{prefix}/{rpc}", payload)
    else:
        code, details, _ = call_raw(channel, f"/{prefix}/{rpc}", payload)
    assert code in expected, f"{name}: {code.name}: {details[:300]}"
    (check_trainer_call if service == "trainer" else check_embedder_call)(channel, rpc, payload)


def test_refusals_carry_the_field_as_a_bad_request_detail(trainer_channel, embedder_channel):
    """google.rpc.BadRequest on unary calls and on the trainer's stream, naming what the message names."""
    stub = trainer_pb2_grpc.TrainerServiceStub(trainer_channel)
    with pytest.raises(grpc.RpcError) as refused:
        for _ in stub.StreamProgress(T.JobRef(), timeout=CALL_TIMEOUT_S):
            pass
    assert refused.value.code() == C.INVALID_ARGUMENT
    assert details_of(refused.value).field == "job_id", refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        stub.StartTraining(T.TrainingRequest.FromString(_valid_training(lr=math.nan)), timeout=CALL_TIMEOUT_S)
    typed = details_of(refused.value)
    assert typed.field == "hyperparameters.lr" or typed.field == "lr", refused.value.details()
    assert typed.description == refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        embedder_pb2_grpc.EmbedderServiceStub(embedder_channel).Embed(E.EmbedRequest(texts=["x"] * 9),
                                                                     timeout=CALL_TIMEOUT_S)
    assert details_of(refused.value).field == "texts", refused.value.details()


def test_the_data_file_is_there(trainer_channel):
    """The fuzzed requests can reach a real job: a valid request starts one (then cancelled)."""
    code, details, answer = call_raw(trainer_channel, f"/{TRAINER_SERVICE}/StartTraining",
                                     _valid_training(epochs=1, hidden_size=8, heads=1, max_len=8))
    assert code == C.OK, details
    job = T.TrainingJob.FromString(answer)
    cancelled = T.TrainingJob.FromString(call_raw(trainer_channel, f"/{TRAINER_SERVICE}/CancelJob",
                                                  T.JobRef(job_id=job.job_id).SerializeToString())[2])
    assert cancelled.state in (T.JOB_STATE_CANCELLED, T.JOB_STATE_SUCCEEDED, T.JOB_STATE_FAILED)
    assert Path(job.request.data_uri).name == DATA_FILE


def test_every_rpc_of_every_service_is_fuzzed():
    from seqrec.proto.v1 import gateway_pb2, ranker_pb2
    from tests.test_fuzz_grpc import REQUESTS

    def methods(module, service: str) -> set[str]:
        return set(module.DESCRIPTOR.services_by_name[service].methods_by_name)

    assert methods(ranker_pb2, "RankerService") == set(REQUESTS)
    assert methods(trainer_pb2, "TrainerService") == set(TRAINER_REQUESTS)
    assert methods(embedder_pb2, "EmbedderService") == set(EMBEDDER_REQUESTS)
    assert methods(gateway_pb2, "RecommendService") == {"Recommend"}  # tests/test_fuzz_grpc.py: test_front_door
