"""`seqrec publish`: load a bundle into the online stores and make it live; rollback is one command.

Milvus gets the item vectors and the item-to-item vectors (collections named after the bundle
version) with typed metadata fields; Redis gets the training-time histories, merged with what is
already stored so no ingested event is lost. Which version is live, and the history of
publications, belong to the bundle registry (`seqrec.shared.registry`): this module is its loader.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np

from seqrec.services.ranker.catalog import Catalog
from seqrec.services.ranker.history_store import RedisHistoryStore
from seqrec.services.ranker.vector_store import MilvusItemStore
from seqrec.shared.bundle import HISTORIES, ITEM_TO_ITEM, Bundle, BundleError
from seqrec.shared.registry import BundleRegistry, Gate
from seqrec.shared.similarity import item_to_item_vectors

log = logging.getLogger(__name__)
I2I_SUFFIX = "_i2i"  # the item-to-item collection sits beside the version's item vectors
TIME_SCALE_MS = 1000  # bundle timestamps are epoch seconds (trainer.data.parse_timestamps); Redis keeps ms
FUTURE_SLACK_S = 86_400  # a bundle timestamp later than a day from now means a misread unit


def check_history_times(bundle: Bundle) -> None:
    """Refuse a bundle whose training timestamps lie in the future once read as epoch seconds: merged into
    Redis they would sort after every live event (data in milliseconds read as seconds, for example)."""
    newest = max((max(row["timestamps"], default=0.0) for row in bundle.iter_jsonl(HISTORIES)), default=0.0)
    limit = time.time() + FUTURE_SLACK_S
    if newest > limit:
        unit = (bundle.manifest.config.get("data") or {}).get("time_unit", "auto")
        raise BundleError(f"bundle {bundle.version}: its newest training timestamp, {newest:.4g} s since the "
                          f"epoch, is in the future (time_unit was {unit!r}); retrain with the data's real "
                          f"time_unit (s, ms, us or ns) so its histories merge in order with live events")


def bundle_item_to_item_vectors(bundle: Bundle, item_vectors: np.ndarray) -> np.ndarray:
    """The hybrid bundle's precomputed item-to-item vectors, or unit output embeddings for an id-only one."""
    if bundle.has(ITEM_TO_ITEM):
        return bundle.array(ITEM_TO_ITEM)
    return item_to_item_vectors(item_vectors, bundle.manifest.scoring.layout)


def load_stores(bundle_path: Path, redis_url: str, milvus_uri: str, milvus_token: str = "", progress: bool = True,
                index_type: str = "FLAT") -> Bundle:
    """Load the bundle into Milvus and Redis (idempotent: complete collections are reused)."""
    bundle = Bundle.open(bundle_path, verify=False)  # the registry verified it
    check_history_times(bundle)
    vocab = bundle.vocab()
    catalog = Catalog(bundle, vocab)
    store = MilvusItemStore(milvus_uri, milvus_token)
    indices = np.arange(1, vocab.n_items + 1, dtype=np.int64)
    rows = dict(item_indices=indices, item_ids=vocab.ids(), metadata=[catalog.meta[i] for i in indices],
                metadata_schema=catalog.schema, display_names=[catalog.display_names[i] for i in indices],
                progress=progress, index_type=index_type)
    try:
        vectors = bundle.item_vectors()
        store.load_items(bundle.version, vectors[indices], **rows)
        store.load_items(bundle.version + I2I_SUFFIX, bundle_item_to_item_vectors(bundle, vectors)[indices], **rows)
    finally:
        store.close()
    histories = RedisHistoryStore(redis_url)
    n_users = histories.merge_bulk(
        ((row["user_id"], row["items"], [int(round(t * TIME_SCALE_MS)) for t in row["timestamps"]])
         for row in bundle.iter_jsonl(HISTORIES)),
        total=bundle.manifest.n_users, progress=progress)
    log.info("loaded", extra={"bundle": bundle.version, "items": vocab.n_items, "users": n_users})
    return bundle


def publish(bundle_path: Path, redis_url: str, milvus_uri: str, milvus_token: str = "", progress: bool = True,
            index_type: str = "FLAT", gate: Gate | None = None) -> Bundle:
    """Load the bundle into Milvus and Redis and make it the live version of its root; with `gate`
    (`quality_gate.QualityGate`) only if it judges the bundle no worse than the live one."""
    bundle_path = Path(bundle_path)
    load = functools.partial(load_stores, redis_url=redis_url, milvus_uri=milvus_uri, milvus_token=milvus_token,
                             progress=progress, index_type=index_type)
    BundleRegistry(bundle_path.parent).publish(bundle_path, load, gate)
    return Bundle.open(bundle_path, verify=False)


def rollback(root: Path, redis_url: str, milvus_uri: str, milvus_token: str = "", version: str = "") -> str:
    """Make the previously published version (or `version`) live again; returns it."""
    load = functools.partial(load_stores, redis_url=redis_url, milvus_uri=milvus_uri, milvus_token=milvus_token,
                             progress=False)
    return BundleRegistry(root).rollback(load, version)
