"""gRPC servicer of the ranker: protobuf messages in and out, everything else in `Recommender`."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.ranker.attribution import ServedLists, event_type_name
from seqrec.services.ranker.history_store import Event
from seqrec.services.ranker.metrics import RankerMetrics
from seqrec.services.ranker.online_items import CatalogEntry
from seqrec.services.ranker.recommender import Recommendation, Recommender
from seqrec.shared.json_api import from_metadata_value, to_metadata_value


def to_response(rec: Recommendation, recommendation_id: str) -> ranker_pb2.RecommendResponse:
    items = []
    for item_id, score, name, meta in rec.items:
        items.append(common_pb2.ScoredItem(
            item_id=item_id, score=score, display_name=name or "",
            meta={k: to_metadata_value(f"meta.{k}", v) for k, v in meta.items() if v is not None}))
    return ranker_pb2.RecommendResponse(items=items, model_version=rec.model_version, fallback=rec.fallback,
                                        unknown_items=rec.unknown_items, sequence_length=rec.sequence_length,
                                        recommendation_id=recommendation_id)


def _flag(request, name: str, default: bool) -> bool:
    return getattr(request, name) if request.HasField(name) else default


class RankerServicer(ranker_pb2_grpc.RankerServiceServicer):
    """Each call reads the current `Recommender` through `current`, so a bundle swap is one assignment."""

    def __init__(self, current: Callable[[], Recommender], model_info: Callable[[], common_pb2.ModelInfo],
                 metrics: RankerMetrics, served: ServedLists):
        self.current = current
        self.model_info = model_info
        self.metrics = metrics
        self.served = served

    def _answer(self, method: str, rec: Recommendation) -> ranker_pb2.RecommendResponse:
        self.metrics.answered(method, rec.fallback, len(rec.unknown_items))
        return to_response(rec, self.served.record(method, rec))

    def UserToItem(self, request: ranker_pb2.UserToItemRequest, context: grpc.ServicerContext):
        rec = self.current().user_to_item(request.user_id, request.filters, request.top_k,
                                          _flag(request, "exclude_seen", True), request.exclude_item_ids)
        return self._answer("UserToItem", rec)

    def Contextual(self, request: ranker_pb2.ContextualRequest, context: grpc.ServicerContext):
        rec = self.current().contextual(request.user_id, request.item_id, request.filters, request.top_k,
                                        _flag(request, "exclude_seen", True), request.exclude_item_ids)
        return self._answer("Contextual", rec)

    def Sequential(self, request: ranker_pb2.SequentialRequest, context: grpc.ServicerContext):
        rec = self.current().sequential(request.session_items, request.filters, request.top_k,
                                        _flag(request, "exclude_seen", False), request.exclude_item_ids)
        return self._answer("Sequential", rec)

    def ItemToItem(self, request: ranker_pb2.ItemToItemRequest, context: grpc.ServicerContext):
        text = request.item_text if request.HasField("item_text") else None
        rec = self.current().item_to_item(request.item_id, text, request.filters, request.top_k,
                                          request.exclude_item_ids)
        return self._answer("ItemToItem", rec)

    def GapFill(self, request: ranker_pb2.GapRequest, context: grpc.ServicerContext):
        position = request.gap_position if request.HasField("gap_position") else None
        rec = self.current().gap(request.user_id, request.session_items, position, request.filters, request.top_k,
                                 _flag(request, "exclude_seen", True), request.exclude_item_ids)
        return self._answer("GapFill", rec)

    def IngestEvents(self, request: ranker_pb2.IngestEventsRequest, context: grpc.ServicerContext):
        events = [Event(e.user_id, e.item_id, e.timestamp_ms, e.event_id, e.recommendation_id,
                        event_type_name(e.event_type, f"events[{n}].event_type"))
                  for n, e in enumerate(request.events)]
        done = self.current().ingest(events)
        self.served.attribute(done.fresh)
        return ranker_pb2.IngestEventsResponse(accepted=done.applied + done.duplicates, duplicates=done.duplicates)

    def GetHistory(self, request: ranker_pb2.GetHistoryRequest, context: grpc.ServicerContext):
        recommender = self.current()
        entries = recommender.history(request.user_id, request.limit)
        return ranker_pb2.GetHistoryResponse(user_id=request.user_id, item_ids=[i for i, _ in entries],
                                             timestamps_ms=[t for _, t in entries],
                                             display_names=[recommender.display_name(i) or "" for i, _ in entries])

    def GetTrainingReport(self, request: ranker_pb2.GetTrainingReportRequest, context: grpc.ServicerContext):
        recommender = self.current()
        return ranker_pb2.TrainingReport(bundle_version=recommender.version, html=recommender.training_report())

    def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: grpc.ServicerContext):
        return self.model_info()

    def UpsertItems(self, request: ranker_pb2.UpsertItemsRequest, context: grpc.ServicerContext):
        entries = [CatalogEntry(item.item_id, item.text, item.display_name or None,
                                {k: from_metadata_value(v) for k, v in item.meta.items()})
                   for item in request.items]
        return ranker_pb2.UpsertItemsResponse(upserted=self.current().upsert_items(entries))
