from seqrec.proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ItemToItemRequest(_message.Message):
    __slots__ = ("item_id", "item_text", "filters", "top_k", "exclude_item_ids")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_TEXT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    item_text: str
    filters: _containers.RepeatedCompositeFieldContainer[_common_pb2.FilterClause]
    top_k: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_id: _Optional[str] = ..., item_text: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[_common_pb2.FilterClause, _Mapping]]] = ..., top_k: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UserToItemRequest(_message.Message):
    __slots__ = ("user_id", "filters", "top_k", "exclude_seen", "exclude_item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    filters: _containers.RepeatedCompositeFieldContainer[_common_pb2.FilterClause]
    top_k: int
    exclude_seen: bool
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[_common_pb2.FilterClause, _Mapping]]] = ..., top_k: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ContextualRequest(_message.Message):
    __slots__ = ("user_id", "item_id", "filters", "top_k", "exclude_seen", "item_text", "exclude_item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    ITEM_TEXT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    filters: _containers.RepeatedCompositeFieldContainer[_common_pb2.FilterClause]
    top_k: int
    exclude_seen: bool
    item_text: str
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[_common_pb2.FilterClause, _Mapping]]] = ..., top_k: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., item_text: _Optional[str] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SequentialRequest(_message.Message):
    __slots__ = ("session_items", "filters", "top_k", "exclude_seen", "exclude_item_ids")
    SESSION_ITEMS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    session_items: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[_common_pb2.FilterClause]
    top_k: int
    exclude_seen: bool
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_items: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[_common_pb2.FilterClause, _Mapping]]] = ..., top_k: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GapRequest(_message.Message):
    __slots__ = ("user_id", "session_items", "gap_position", "filters", "top_k", "exclude_seen", "exclude_item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ITEMS_FIELD_NUMBER: _ClassVar[int]
    GAP_POSITION_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_items: _containers.RepeatedScalarFieldContainer[str]
    gap_position: int
    filters: _containers.RepeatedCompositeFieldContainer[_common_pb2.FilterClause]
    top_k: int
    exclude_seen: bool
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., session_items: _Optional[_Iterable[str]] = ..., gap_position: _Optional[int] = ..., filters: _Optional[_Iterable[_Union[_common_pb2.FilterClause, _Mapping]]] = ..., top_k: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "fallback", "unknown_items", "sequence_length", "recommendation_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEMS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    model_version: str
    fallback: _common_pb2.Fallback
    unknown_items: _containers.RepeatedScalarFieldContainer[str]
    sequence_length: int
    recommendation_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., fallback: _Optional[_Union[_common_pb2.Fallback, str]] = ..., unknown_items: _Optional[_Iterable[str]] = ..., sequence_length: _Optional[int] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class IngestEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Interaction]
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Interaction, _Mapping]]] = ...) -> None: ...

class IngestEventsResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("user_id", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("user_id", "item_ids", "timestamps_ms", "display_names")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_MS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAMES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    timestamps_ms: _containers.RepeatedScalarFieldContainer[int]
    display_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., timestamps_ms: _Optional[_Iterable[int]] = ..., display_names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTrainingReportRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainingReport(_message.Message):
    __slots__ = ("bundle_version", "html")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    html: str
    def __init__(self, bundle_version: _Optional[str] = ..., html: _Optional[str] = ...) -> None: ...

class CatalogItem(_message.Message):
    __slots__ = ("item_id", "text", "display_name", "meta")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.MetadataValue, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    display_name: str
    meta: _containers.MessageMap[str, _common_pb2.MetadataValue]
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., display_name: _Optional[str] = ..., meta: _Optional[_Mapping[str, _common_pb2.MetadataValue]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogItem]
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogItem, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...
