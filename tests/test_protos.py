"""Tests of the public gRPC API: generated code in sync with the .proto files, and usable.

If a drift test fails, regenerate with `python protos/generate.py` and check the result in.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from seqrec.proto.v1 import (
    common_pb2,
    embedder_pb2,
    gateway_pb2,
    ranker_pb2,
    trainer_pb2,
)
from seqrec.shared.config import Hyperparameters

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
API_DIR = PROTOS / "seqrec" / "proto" / "v1"
REGENERATE = "run `python protos/generate.py` and check the result in"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PROTO_NAMES = ("common", "embedder", "gateway", "ranker", "trainer")

EXPECTED_METHODS: dict[str, tuple[ModuleType, list[str]]] = {
    "RankerService": (
        ranker_pb2,
        [
            "ItemToItem",
            "UserToItem",
            "Contextual",
            "Sequential",
            "GapFill",
            "IngestEvents",
            "GetHistory",
            "UpsertItems",
            "GetModelInfo",
            "GetTrainingReport",
        ],
    ),
    "EmbedderService": (embedder_pb2, ["Embed", "GetModelInfo"]),
    "TrainerService": (
        trainer_pb2,
        [
            "StartTraining",
            "StreamProgress",
            "GetJob",
            "ListJobs",
            "CancelJob",
            "ListBundles",
            "PublishBundle",
            "RollbackBundle",
        ],
    ),
    "RecommendService": (gateway_pb2, ["Recommend"]),
}

# Every hyperparameter of the training config (seqrec.shared.config), plus the run's seed: the proto
# and the config use the same names, so the trainer service maps one onto the other field by field.
EXPECTED_HYPERPARAMETERS = {f.name for f in dataclasses.fields(Hyperparameters)} | {"seed"}


def _load_generator() -> ModuleType:
    """Import protos/generate.py (not a package module) once grpc_tools is known to exist."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install -e '.[dev]')")
    name = "seqrec_protos_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROTOS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _checked_in_generated() -> list[Path]:
    return sorted(
        p.relative_to(PROTOS)
        for p in (PROTOS / "seqrec").rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


# --- drift -----------------------------------------------------------------------------------


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    generate = _load_generator()
    if generate.find_mypy_grpc_plugin() is None:
        pytest.skip("protoc-gen-mypy_grpc is not installed (pip install -e '.[dev]')")
    fresh = generate.run_protoc(tmp_path)
    checked_in = _checked_in_generated()
    missing = [str(p) for p in fresh if p not in checked_in]
    stale = [str(p) for p in checked_in if p not in fresh]
    differing = [
        str(p) for p in fresh if p in checked_in and (tmp_path / p).read_bytes() != (PROTOS / p).read_bytes()
    ]
    problems = [
        f"{what}: {files}"
        for what, files in (
            ("not checked in", missing),
            ("stale (no longer generated)", stale),
            ("out of date", differing),
        )
        if files
    ]
    assert not problems, f"generated code drifted from the .proto files ({'; '.join(problems)}); {REGENERATE}"


def test_no_generated_file_without_its_proto() -> None:
    orphans = []
    for rel in _checked_in_generated():
        stem = re.sub(r"_pb2(_grpc)?\.pyi?$", "", rel.name)
        if not (PROTOS / rel.parent / f"{stem}.proto").is_file():
            orphans.append(str(rel))
    assert not orphans, f"generated files without a .proto: {orphans}; {REGENERATE}"


def test_every_proto_has_its_generated_files() -> None:
    protos = sorted(API_DIR.glob("*.proto"))
    assert {p.stem for p in protos} == set(PROTO_NAMES)
    missing = [
        f"{p.stem}{suffix}"
        for p in protos
        for suffix in GENERATED_SUFFIXES
        if not (API_DIR / f"{p.stem}{suffix}").is_file()
    ]
    assert not missing, f"missing generated files: {missing}; {REGENERATE}"


def test_protobuf_lower_bound_matches_generated_code() -> None:
    pattern = re.compile(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),")
    versions = set()
    for name in PROTO_NAMES:
        match = pattern.search((API_DIR / f"{name}_pb2.py").read_text())
        assert match, f"{name}_pb2.py lacks a runtime version check"
        versions.add(".".join(match.groups()))
    assert len(versions) == 1, versions
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    protobuf = [d.replace(" ", "") for d in deps if re.match(r"protobuf\b", d)]
    assert protobuf == [f"protobuf>={versions.pop()}"], protobuf


# --- smoke -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROTO_NAMES)
def test_modules_import(name: str) -> None:
    pb2 = importlib.import_module(f"seqrec.proto.v1.{name}_pb2")
    grpc_mod = importlib.import_module(f"seqrec.proto.v1.{name}_pb2_grpc")
    assert pb2.DESCRIPTOR.package == "seqrec.proto.v1"
    assert pb2.DESCRIPTOR.name == f"seqrec/proto/v1/{name}.proto"
    for service in pb2.DESCRIPTOR.services_by_name:
        assert hasattr(grpc_mod, f"{service}Stub")
        assert hasattr(grpc_mod, f"{service}Servicer")
        assert hasattr(grpc_mod, f"add_{service}Servicer_to_server")


def _filters() -> list[common_pb2.FilterClause]:
    return [
        common_pb2.FilterClause(field="meta.brand", equals=common_pb2.MetadataValue(string_value="Samsung")),
        common_pb2.FilterClause(field="meta.in_stock", equals=common_pb2.MetadataValue(bool_value=True)),
        common_pb2.FilterClause(
            field="meta.category",
            any_of=common_pb2.ValueList(
                values=[
                    common_pb2.MetadataValue(string_value="Electronics"),
                    common_pb2.MetadataValue(int_value=7),
                ]
            ),
        ),
        common_pb2.FilterClause(field="meta.price", range=common_pb2.NumericRange(gte=10.0, lt=99.5)),
    ]


def _requests() -> list[Message]:
    item_to_item = ranker_pb2.ItemToItemRequest(
        item_id="item_1024", item_text="Optional description", filters=_filters()[:1], top_k=10
    )
    sequential = ranker_pb2.SequentialRequest(
        session_items=["item_1024", "item_89", "item_300"], filters=_filters(), top_k=10
    )
    hyper = trainer_pb2.Hyperparameters(
        hidden_size=128,
        heads=4,
        depth=3,
        lr=0.001,
        weight_tying=False,
        sampling=trainer_pb2.SEQUENCE_SAMPLING_LAST,
    )
    return [
        item_to_item,
        ranker_pb2.UserToItemRequest(user_id="user_777", top_k=5, exclude_seen=False),
        ranker_pb2.ContextualRequest(user_id="user_777", item_id="item_1024", top_k=10),
        sequential,
        ranker_pb2.GapRequest(session_items=["item_1024", "item_300"], gap_position=1, top_k=10),
        ranker_pb2.GapRequest(user_id="user_777", gap_position=0, exclude_seen=False),
        ranker_pb2.IngestEventsRequest(
            events=[
                common_pb2.Interaction(user_id="user_777", item_id="item_1", timestamp_ms=1_700_000_000_000)
            ]
        ),
        ranker_pb2.GetHistoryRequest(user_id="user_777", limit=20),
        ranker_pb2.UpsertItemsRequest(
            items=[
                ranker_pb2.CatalogItem(
                    item_id="item_new",
                    text="A brand-new phone",
                    display_name="Phone X",
                    meta={
                        "brand": common_pb2.MetadataValue(string_value="Samsung"),
                        "price": common_pb2.MetadataValue(double_value=499.0),
                        "tags": common_pb2.MetadataValue(
                            list_value=common_pb2.ValueList(
                                values=[common_pb2.MetadataValue(string_value="5g")]
                            )
                        ),
                    },
                )
            ]
        ),
        common_pb2.GetModelInfoRequest(),
        ranker_pb2.GetTrainingReportRequest(),
        embedder_pb2.EmbedRequest(texts=["a red dress", "a blue shirt"], normalize=True),
        trainer_pb2.TrainingRequest(
            data_uri="data/interactions.parquet",
            user_column="user_id",
            item_column="item_id",
            timestamp_column="ts",
            metadata_columns=["title", "category"],
            display_name_column="title",
            min_user_interactions=5,
            preset="video_streaming",
            hyperparameters=hyper,
        ),
        trainer_pb2.JobRef(job_id="job-1"),
        trainer_pb2.ListJobsRequest(limit=5),
        trainer_pb2.ListBundlesRequest(limit=5),
        trainer_pb2.PublishBundleRequest(version="v1"),
        trainer_pb2.RollbackBundleRequest(version="v0"),
        gateway_pb2.RecommendRequest(sequential=sequential),
        gateway_pb2.RecommendRequest(item_to_item=item_to_item),
    ]


@pytest.mark.parametrize("message", _requests(), ids=lambda m: type(m).__name__)
def test_request_round_trips(message: Message) -> None:
    data = message.SerializeToString(deterministic=True)
    if type(message).DESCRIPTOR.fields:
        assert data, "the request should carry fields"
    decoded = type(message).FromString(data)
    assert decoded == message
    assert decoded.SerializeToString(deterministic=True) == data


def test_requests_cover_every_rpc_input() -> None:
    covered = {type(m).DESCRIPTOR.full_name for m in _requests()}
    inputs = {
        method.input_type.full_name
        for _, (module, _names) in EXPECTED_METHODS.items()
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert inputs <= covered, sorted(inputs - covered)


@pytest.mark.parametrize("service", sorted(EXPECTED_METHODS))
def test_service_methods(service: str) -> None:
    module, names = EXPECTED_METHODS[service]
    descriptor = module.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"seqrec.proto.v1.{service}"
    assert [m.name for m in descriptor.methods] == names
    streaming = {m.name for m in descriptor.methods if m.server_streaming or m.client_streaming}
    assert streaming == ({"StreamProgress"} if service == "TrainerService" else set())


def test_recommendations_share_one_response() -> None:
    outputs = {
        m.output_type.full_name
        for s in (
            ranker_pb2.DESCRIPTOR.services_by_name["RankerService"],
            gateway_pb2.DESCRIPTOR.services_by_name["RecommendService"],
        )
        for m in s.methods
        if m.name in {"ItemToItem", "UserToItem", "Contextual", "Sequential", "GapFill", "Recommend"}
    }
    assert outputs == {"seqrec.proto.v1.RecommendResponse"}


def test_gateway_oneof_covers_every_query_type() -> None:
    oneof = gateway_pb2.RecommendRequest.DESCRIPTOR.oneofs_by_name["query"]
    assert {f.name: f.message_type.name for f in oneof.fields} == {
        "item_to_item": "ItemToItemRequest",
        "user_to_item": "UserToItemRequest",
        "contextual": "ContextualRequest",
        "sequential": "SequentialRequest",
        "gap": "GapRequest",
    }
    request = gateway_pb2.RecommendRequest(user_to_item=ranker_pb2.UserToItemRequest(user_id="u"))
    assert request.WhichOneof("query") == "user_to_item"


def test_unset_means_default() -> None:
    fields = trainer_pb2.Hyperparameters.DESCRIPTOR.fields
    assert {f.name for f in fields} == EXPECTED_HYPERPARAMETERS
    assert all(f.has_presence for f in fields), [f.name for f in fields if not f.has_presence]
    hyper = trainer_pb2.Hyperparameters.FromString(
        trainer_pb2.Hyperparameters(weight_tying=False).SerializeToString()
    )
    assert hyper.HasField("weight_tying") and not hyper.HasField("dropout")
    for message in (ranker_pb2.UserToItemRequest, ranker_pb2.ContextualRequest, ranker_pb2.SequentialRequest,
                    ranker_pb2.GapRequest):
        assert not message().HasField("exclude_seen")
        assert message(exclude_seen=False).HasField("exclude_seen")
    assert not ranker_pb2.GapRequest().HasField("gap_position")
    assert ranker_pb2.GapRequest(gap_position=0).HasField("gap_position")  # 0 is a position, not "unset"


def test_response_carries_items_and_fallback() -> None:
    response = ranker_pb2.RecommendResponse(
        items=[
            common_pb2.ScoredItem(
                item_id="item_1",
                score=0.5,
                display_name="One",
                meta={"brand": common_pb2.MetadataValue(string_value="Samsung")},
            )
        ],
        model_version="v1",
        fallback=common_pb2.FALLBACK_POPULARITY,
        unknown_items=["item_x"],
    )
    decoded = ranker_pb2.RecommendResponse.FromString(response.SerializeToString())
    assert decoded.items[0].meta["brand"].WhichOneof("kind") == "string_value"
    assert decoded.fallback == common_pb2.FALLBACK_POPULARITY
    assert common_pb2.Fallback.Name(0) == "FALLBACK_NONE"


# --- documentation ---------------------------------------------------------------------------


def _undocumented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Name every message, field, oneof, enum, value, service and RPC lacking a comment."""
    commented = {
        tuple(loc.path)
        for loc in file.source_code_info.location
        if loc.leading_comments.strip() or loc.trailing_comments.strip()
    }
    missing: list[str] = []

    def check(path: tuple[int, ...], name: str) -> None:
        if path not in commented:
            missing.append(name)

    def enum(path: tuple[int, ...], proto: Any, prefix: str) -> None:
        check(path, prefix + proto.name)
        for i, value in enumerate(proto.value):
            check(path + (2, i), f"{prefix}{proto.name}.{value.name}")

    def message(path: tuple[int, ...], proto: Any, prefix: str) -> None:
        name = prefix + proto.name
        check(path, name)
        for i, field in enumerate(proto.field):
            check(path + (2, i), f"{name}.{field.name}")
        for i, oneof in enumerate(proto.oneof_decl):
            if not oneof.name.startswith("_"):  # synthetic oneofs of proto3 `optional`
                check(path + (8, i), f"{name}.{oneof.name}")
        for i, nested in enumerate(proto.nested_type):
            if not nested.options.map_entry:
                message(path + (3, i), nested, name + ".")
        for i, nested_enum in enumerate(proto.enum_type):
            enum(path + (4, i), nested_enum, name + ".")

    for i, msg in enumerate(file.message_type):
        message((4, i), msg, "")
    for i, top_enum in enumerate(file.enum_type):
        enum((5, i), top_enum, "")
    for i, service in enumerate(file.service):
        check((6, i), service.name)
        for j, method in enumerate(service.method):
            check((6, i, 2, j), f"{service.name}.{method.name}")
    return missing


def test_every_element_is_documented(tmp_path: Path) -> None:
    generate = _load_generator()
    from grpc_tools import protoc

    out = tmp_path / "api.desc"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTOS}",
            f"--proto_path={generate.well_known_types_include()}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *(str(API_DIR / f"{name}.proto") for name in PROTO_NAMES),
        ]
    )
    assert code == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    missing = {f.name: _undocumented(f) for f in files}
    assert not any(missing.values()), {k: v for k, v in missing.items() if v}
