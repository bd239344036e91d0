"""`seqrec publish`: load a bundle into the online stores and mark it live; rollback is one command.

Milvus gets the item vectors and the item-to-item vectors (collections named after the bundle
version) with typed metadata fields; Redis gets the training-time histories, merged with what is
already stored so no ingested event is lost. The live version is recorded twice: the Milvus alias
(`seqrec_live`) and a `LIVE` file in the bundle root, with every publication in `published.json`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from seqrec.services.ranker.catalog import Catalog
from seqrec.services.ranker.history_store import RedisHistoryStore
from seqrec.services.ranker.vector_store import MilvusItemStore
from seqrec.shared.bundle import HISTORIES, ITEM_TO_ITEM, MANIFEST, Bundle, BundleError
from seqrec.shared.similarity import item_to_item_vectors

log = logging.getLogger(__name__)
I2I_SUFFIX = "_i2i"  # the item-to-item collection sits beside the version's item vectors
LIVE_FILE = "LIVE"
PUBLISHED_FILE = "published.json"
TIME_SCALE_MS = 1000  # bundle timestamps are seconds (or the file's own unit); Redis keeps integers


def resolve_bundle(path: Path) -> Path:
    """A bundle directory as given, or the live version named by a bundle root's LIVE file."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    live = path / LIVE_FILE
    if live.is_file():
        return path / live.read_text().strip()
    raise BundleError(f"{path}: neither a bundle nor a bundle root with a {LIVE_FILE} file (run seqrec publish)")


def bundle_item_to_item_vectors(bundle: Bundle, item_vectors: np.ndarray) -> np.ndarray:
    """The hybrid bundle's precomputed item-to-item vectors, or unit output embeddings for an id-only one."""
    if bundle.has(ITEM_TO_ITEM):
        return bundle.array(ITEM_TO_ITEM)
    return item_to_item_vectors(item_vectors, bundle.manifest.scoring.layout)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _record_live(bundle: Bundle) -> None:
    root = bundle.path.parent
    log_path = root / PUBLISHED_FILE
    published = json.loads(log_path.read_text()) if log_path.is_file() else []
    if not published or published[-1] != bundle.version:
        published.append(bundle.version)
    _write_atomic(log_path, json.dumps(published, indent=1))
    _write_atomic(root / LIVE_FILE, bundle.version + "\n")


def publish(bundle_path: Path, redis_url: str, milvus_uri: str, milvus_token: str = "", progress: bool = True,
            index_type: str = "FLAT") -> Bundle:
    """Load the bundle into Milvus and Redis (idempotent) and make it the live version."""
    bundle = Bundle.open(bundle_path)
    vocab = bundle.vocab()
    catalog = Catalog(bundle, vocab)
    store = MilvusItemStore(milvus_uri, milvus_token)
    indices = np.arange(1, vocab.n_items + 1, dtype=np.int64)
    rows = dict(item_indices=indices, item_ids=vocab.ids(), metadata=[catalog.meta[i] for i in indices],
                metadata_schema=catalog.schema, display_names=[catalog.display_names[i] for i in indices],
                progress=progress, index_type=index_type)
    vectors = bundle.item_vectors()
    store.load_items(bundle.version, vectors[indices], **rows)
    store.load_items(bundle.version + I2I_SUFFIX, bundle_item_to_item_vectors(bundle, vectors)[indices], **rows)

    histories = RedisHistoryStore(redis_url)
    n_users = histories.merge_bulk(
        ((row["user_id"], row["items"], [int(round(t * TIME_SCALE_MS)) for t in row["timestamps"]])
         for row in bundle.iter_jsonl(HISTORIES)),
        total=bundle.manifest.n_users, progress=progress)
    store.set_live(bundle.version)
    _record_live(bundle)
    log.info("published", extra={"bundle": bundle.version, "items": vocab.n_items, "users": n_users})
    return bundle


def rollback(root: Path, milvus_uri: str, milvus_token: str = "") -> str:
    """Make the previously published version live again; returns it."""
    log_path = Path(root) / PUBLISHED_FILE
    published = json.loads(log_path.read_text()) if log_path.is_file() else []
    if len(published) < 2:
        raise BundleError(f"{root}: no earlier published version to roll back to")
    published.pop()
    previous = published[-1]
    Bundle.open(Path(root) / previous)  # still intact?
    MilvusItemStore(milvus_uri, milvus_token).set_live(previous)
    _write_atomic(log_path, json.dumps(published, indent=1))
    _write_atomic(Path(root) / LIVE_FILE, previous + "\n")
    return previous
