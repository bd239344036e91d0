"""Prometheus metrics of the ranker: RPCs (shared/service_metrics.py), the stages of a recommendation (encoder,
Redis, Milvus), how often answers fall back or name unknown items, and which bundle is served since when."""

from __future__ import annotations

import datetime as dt
import time

from prometheus_client import Counter, Gauge

from seqrec.proto.v1 import common_pb2, ranker_pb2
from seqrec.shared.service_metrics import ServiceMetrics, methods_of

RANKER_METHODS = methods_of(ranker_pb2, "RankerService")
FALLBACKS = {value: name.removeprefix("FALLBACK_").lower() for name, value in common_pb2.Fallback.items()}


class RankerMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("ranker", RANKER_METHODS)
        self.recommendations = Counter(
            "seqrec_ranker_recommendations", "Answered recommendation calls by RPC and fallback (none = the model).",
            ("method", "fallback"), registry=self.registry)
        self.unknown_items = Counter(
            "seqrec_ranker_unknown_items", "Items named in requests that the served model does not know.",
            ("method",), registry=self.registry)
        self.model = Gauge("seqrec_ranker_model_info", "The bundle version being served (value 1).", ("version",),
                           registry=self.registry)
        self.bundle_age = Gauge("seqrec_ranker_bundle_age_seconds", "Seconds since the served bundle was built.",
                                registry=self.registry)
        # Labelled by the version that served the list, so the hit rate of each model shows during a rollout.
        self.served_lists = Counter(
            "seqrec_ranker_served_lists", "Recommendation lists answered, by the model version that served them.",
            ("version",), registry=self.registry)
        self.attributed_events = Counter(
            "seqrec_ranker_attributed_events", "Applied events naming a recommendation_id: hit (the item was in "
            "the list), miss, or expired (no list held under the id), by the list's model version and event type.",
            ("version", "event_type", "outcome"), registry=self.registry)
        self._built_at = time.time()
        self.bundle_age.set_function(lambda: time.time() - self._built_at)

    def answered(self, method: str, fallback: int, unknown: int) -> None:
        self.recommendations.labels(method, FALLBACKS.get(fallback, "other")).inc()
        if unknown:
            self.unknown_items.labels(method).inc(unknown)

    def serving(self, version: str, created_at: str) -> None:
        """The bundle now served: one version label at a time (bounded), its age from its build time."""
        self.model.clear()
        self.model.labels(version).set(1)
        try:
            self._built_at = dt.datetime.fromisoformat(created_at).timestamp()
        except ValueError:  # a bundle without a build time: age counts from when it was loaded
            self._built_at = time.time()
