"""Attribution: which served list an event came from, and whether it landed on a recommended item.

Every recommendation response carries a `recommendation_id`. With a TTL set (SEQREC_RECOMMENDATION_TTL_S,
an hour by default) the ranker keeps the list it served under that id in Redis (`seqrec:served:<id>`:
the model version, the RPC and the item ids), so an event sent back with the id is joined to the list
that led to it. Each applied event is attributed once (a retried event id is a duplicate and is not
counted again) as

- `hit`: the event's item is in the list (the recommendation worked),
- `miss`: the list is known, the item is not in it,
- `expired`: no list is held under the id (older than the TTL, or recorded by no ranker),

counted by the served list's model version and the event type in `seqrec_ranker_attributed_events_total`;
`seqrec_ranker_served_lists_total` counts the lists, so the online hit rate per model version is one
PromQL division (deploy/grafana). The id and the event type also travel into the event log, for joins
offline. Memory: about 300 bytes a list of ten, times the answer rate, times the TTL.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence

from seqrec.services.ranker.history_store import Event, HistoryStoreUnavailable, RedisHistoryStore
from seqrec.services.ranker.metrics import RankerMetrics
from seqrec.services.ranker.recommender import InvalidQuery, Recommendation
from seqrec.shared.json_api import EVENT_TYPE_NAMES

log = logging.getLogger(__name__)

SERVED_PREFIX = "seqrec:served:"
DEFAULT_TTL_S = 3600.0


def event_type_name(value: int, field: str) -> str:
    """The event log's name of an EventType value; InvalidQuery naming `field` for a value not in the enum."""
    if value not in EVENT_TYPE_NAMES:
        raise InvalidQuery(f"{field}: unknown event type {value}")
    return EVENT_TYPE_NAMES[value]


def served_key(recommendation_id: str) -> str:
    return f"{SERVED_PREFIX}{recommendation_id}"


class ServedLists:
    """Records served lists under their recommendation ids and attributes events to them."""

    def __init__(self, histories: RedisHistoryStore, ttl_s: float, metrics: RankerMetrics):
        self.histories = histories
        self.ttl_ms = int(ttl_s * 1000)
        self.metrics = metrics

    def record(self, method: str, rec: Recommendation) -> str:
        """A new recommendation id for `rec`, its list kept for the TTL. A Redis outage loses the record,
        not the answer: the events that refer to it count as expired."""
        recommendation_id = uuid.uuid4().hex
        self.metrics.served_lists.labels(rec.model_version).inc()
        if self.ttl_ms <= 0:
            return recommendation_id
        payload = json.dumps({"v": rec.model_version, "m": method, "i": [item[0] for item in rec.items]},
                             separators=(",", ":"))
        try:
            self.histories.call(lambda client: client.set(served_key(recommendation_id), payload, px=self.ttl_ms))
        except HistoryStoreUnavailable as exc:
            log.warning("served list not recorded for attribution: %s", exc,
                        extra={"recommendation_id": recommendation_id})
        return recommendation_id

    def attribute(self, events: Sequence[Event]) -> None:
        """Count each applied event that names a recommendation id as hit, miss or expired."""
        named = [e for e in events if e.recommendation_id]
        if not named:
            return

        def fetch(client) -> list:
            pipe = client.pipeline(transaction=False)
            for event in named:
                pipe.get(served_key(event.recommendation_id))
            return pipe.execute()

        try:
            found = self.histories.call(fetch)
        except HistoryStoreUnavailable as exc:  # the events are applied already: they must not fail now
            log.warning("events not attributed: %s", exc, extra={"events": len(named)})
            return
        for event, raw in zip(named, found, strict=True):
            if raw is None:
                version, outcome = "", "expired"
            else:
                served = json.loads(raw)
                version, outcome = served["v"], "hit" if event.item_id in served["i"] else "miss"
            self.metrics.attributed_events.labels(version, event.event_type or "unspecified", outcome).inc()
