from seqrec.proto.v1 import ranker_pb2 as _ranker_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("item_to_item", "user_to_item", "contextual", "sequential", "gap")
    ITEM_TO_ITEM_FIELD_NUMBER: _ClassVar[int]
    USER_TO_ITEM_FIELD_NUMBER: _ClassVar[int]
    CONTEXTUAL_FIELD_NUMBER: _ClassVar[int]
    SEQUENTIAL_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    item_to_item: _ranker_pb2.ItemToItemRequest
    user_to_item: _ranker_pb2.UserToItemRequest
    contextual: _ranker_pb2.ContextualRequest
    sequential: _ranker_pb2.SequentialRequest
    gap: _ranker_pb2.GapRequest
    def __init__(self, item_to_item: _Optional[_Union[_ranker_pb2.ItemToItemRequest, _Mapping]] = ..., user_to_item: _Optional[_Union[_ranker_pb2.UserToItemRequest, _Mapping]] = ..., contextual: _Optional[_Union[_ranker_pb2.ContextualRequest, _Mapping]] = ..., sequential: _Optional[_Union[_ranker_pb2.SequentialRequest, _Mapping]] = ..., gap: _Optional[_Union[_ranker_pb2.GapRequest, _Mapping]] = ...) -> None: ...
