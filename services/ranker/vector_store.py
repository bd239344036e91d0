"""The ranker's vector search over a bundle's item vectors, in Milvus (or a `milvus-lite server`).

One collection per bundle version, `seqrec_<version>`, with an explicit schema: the model's item
index as INT64 primary key, `item_id`, the item vector, per metadata column a typed scalar field
(`filters.field_name`) and a BOOL presence flag (`filters.presence_name`) for filtering, and
`display`, a JSON string with the display name and full metadata for responses. The same schema
works on Milvus Lite and on every Milvus server from 2.3 on (nullable fields need 2.5+): a missing
value is a placeholder with its flag false, and filters test the flag first. Which version is
served is not kept here but in the bundle registry (`seqrec.shared.registry`). Every call carries
a timeout; an outage raises `VectorStoreUnavailable`, never an empty result.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import ConnectError, ErrorCode, MilvusException, MilvusUnavailableException
from tqdm import tqdm

from seqrec.services.ranker.filters import (
    MAX_STRING_CHARS,
    PRIMARY_KEY,
    field_name,
    presence_name,
    safe_name,
    typed_value,
)
from seqrec.services.ranker.milvus_compat import MilvusEngine
from seqrec.shared.deadlines import bounded

COLLECTION_PREFIX = "seqrec_"
INSERT_BATCH = 5000
GET_BATCH = 1000
MAX_TOPK = 16384  # Milvus's limit on limit (+ offset) of one search
ITEM_ID_BYTES = 2048
DISPLAY_BYTES = 65535
# Milvus counts VARCHAR max_length in UTF-8 bytes (Milvus Lite in characters): 4 bytes per
# character holds any string a filter may name (filters.MAX_STRING_CHARS).
STRING_BYTES = 4 * MAX_STRING_CHARS
BULK_TIMEOUT_S = 1800.0  # each step of loading a whole catalogue when publishing (not a query)
VERSION_PROPERTY = "seqrec.version"
ROWS_PROPERTY = "seqrec.rows"  # set after the last batch: the collection is complete
LAYOUT_PROPERTY, LAYOUT = "seqrec.layout", "presence-flags/1"  # how metadata is stored; another layout is rebuilt
_PLACEHOLDER = {"bool": False, "int64": 0, "double": 0.0, "string": ""}  # a missing value, its flag false
INDEX_TYPES = ("FLAT", "HNSW")
_DTYPES = {"bool": DataType.BOOL, "int64": DataType.INT64, "double": DataType.DOUBLE, "string": DataType.VARCHAR}
_OUTPUT = ["item_id", "display"]
_UNAVAILABLE_CODES = {2, ErrorCode.RATE_LIMIT}  # 2: connect failed / service unavailable

Hit = tuple[int, float, str, dict[str, Any]]


log = logging.getLogger(__name__)

# Calls that change nothing: safe to repeat once on a fresh connection.
_RETRYABLE = frozenset({"search", "get", "query", "has_collection", "describe_collection", "get_load_state",
                        "list_collections", "get_server_version", "load_collection"})


class VectorStoreError(RuntimeError):
    """Milvus answered but refused: a missing collection, a bad request, a schema mismatch."""


class VectorStoreUnavailable(RuntimeError):
    """Milvus did not answer: connection refused, timeout, server not ready or overloaded."""


def collection_name(bundle_version: str) -> str:
    """`seqrec_` + the version restricted to letters, digits and underscores (collision-safe)."""
    if not isinstance(bundle_version, str) or not bundle_version:
        raise ValueError(f"bundle version must be a non-empty string, got {bundle_version!r}")
    name = safe_name(COLLECTION_PREFIX, bundle_version)
    if len(name) > 255:
        raise ValueError(f"bundle version {bundle_version!r} cannot name a collection")
    return name


def _rows(vectors: np.ndarray, item_indices: np.ndarray, item_ids: Sequence[str], metadata: Sequence[dict],
          metadata_schema: dict[str, str], display_names: Sequence[str | None]) -> Iterator[dict[str, Any]]:
    """Validated rows in insertion order (checked lazily, one row at a time)."""
    n = len(vectors)
    if not len(item_indices) == len(item_ids) == len(metadata) == len(display_names) == n:
        raise ValueError("vectors, item_indices, item_ids, metadata and display_names differ in length")
    if len(np.unique(item_indices)) != n:
        raise ValueError("item_indices are not unique")
    unknown = sorted(set(metadata_schema.values()) - set(_DTYPES))
    if unknown:
        raise ValueError(f"metadata_schema: unsupported column types {unknown}")
    for vector, index, item_id, meta, name in zip(vectors, item_indices, item_ids, metadata, display_names,
                                                  strict=True):
        if not isinstance(item_id, str) or not 0 < len(item_id.encode()) <= ITEM_ID_BYTES:
            raise ValueError(f"item_id {item_id!r}: expected a string of 1 to {ITEM_ID_BYTES} bytes")
        meta = meta or {}
        display = json.dumps({"display_name": name, "meta": meta}, ensure_ascii=False)
        if len(display.encode()) > DISPLAY_BYTES:
            raise ValueError(f"item {item_id!r}: display name and metadata exceed {DISPLAY_BYTES} bytes")
        row = {PRIMARY_KEY: int(index), "item_id": item_id, "vector": vector, "display": display}
        for col, kind in metadata_schema.items():
            value = typed_value(kind, meta.get(col))
            row[field_name(col)] = _PLACEHOLDER[kind] if value is None else value
            row[presence_name(col)] = value is not None
        yield row


class MilvusItemStore:
    """Item vectors of bundle versions in Milvus; exact inner-product search (FLAT) by default."""

    def __init__(self, uri: str, token: str = "", timeout: float = 10.0, *, ef: int = 128):
        self.uri, self.timeout, self.ef = uri, timeout, ef
        self._token = token
        self._client: MilvusClient | None = None
        self._engine_info: MilvusEngine | None = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> MilvusClient:
        """The client, created on first use so that a store can be built while Milvus is down."""
        with self._lock:
            if self._client is None:
                self._client = MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout)
            return self._client

    def _reset(self) -> None:
        """Drop the client after a connection failure: the next call dials Milvus afresh.

        pymilvus keeps one channel per URI; once the server has dropped it (a restart, or a GOAWAY
        "too many pings" after an idle spell), every call on it fails until it is replaced.
        """
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken channel may fail; it is discarded either way
                pass

    def _call(self, what: str, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """`client.<method>(*args, timeout=..., **kwargs)` with Milvus errors mapped to ours; `timeout` defaults
        to the store's.

        On a connection failure the client is replaced, and a read is tried once more on the new one.
        """
        timeout = bounded(self.timeout if timeout is None else timeout)  # never past the caller's deadline
        try:
            return self._attempt(what, method, args, kwargs, timeout)
        except VectorStoreUnavailable:
            if method not in _RETRYABLE:
                raise
            return self._attempt(what, method, args, kwargs, bounded(timeout))

    def _attempt(self, what: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float) -> Any:
        try:
            return getattr(self._connect(), method)(*args, timeout=timeout, **kwargs)
        except (MilvusException, grpc.RpcError) as exc:
            error = self._error(what, exc)
            if isinstance(error, VectorStoreUnavailable):
                self._reset()
            raise error from exc

    def _read(self, what: str, method: str, name: str, **kwargs: Any) -> Any:
        """A search or get on collection `name`; a collection released by a Milvus restart is loaded again."""
        try:
            return self._call(what, method, name, **kwargs)
        except VectorStoreError as exc:
            if "load" not in str(exc) or not ("released" in str(exc) or "not loaded" in str(exc)):
                raise
            log.info("reloading a released collection", extra={"collection": name})
            self._call(f"load_collection {name}", "load_collection", name)
            return self._call(what, method, name, **kwargs)

    def _error(self, what: str, exc: Exception) -> RuntimeError:
        if isinstance(exc, MilvusException) and not isinstance(exc, (ConnectError, MilvusUnavailableException)):
            code = exc.code
            if code == ErrorCode.COLLECTION_NOT_FOUND:
                return VectorStoreError(f"{what}: collection does not exist (Milvus at {self.uri}: {exc.message})")
            if not (isinstance(code, grpc.StatusCode) or code in _UNAVAILABLE_CODES or exc.retriable):
                return VectorStoreError(f"{what}: Milvus at {self.uri} refused: {exc.message}")
        detail = exc.details() if isinstance(exc, grpc.RpcError) and hasattr(exc, "details") else str(exc)
        return VectorStoreUnavailable(f"{what}: Milvus at {self.uri} is unavailable: {detail}")

    def _describe(self, name: str) -> dict[str, Any] | None:
        if not self._call(f"has_collection {name}", "has_collection", name):
            return None
        return self._call(f"describe_collection {name}", "describe_collection", name)

    @staticmethod
    def _dim(description: dict[str, Any]) -> int | None:
        for field in description["fields"]:
            if field["name"] == "vector":
                return int(field["params"]["dim"])
        return None

    @staticmethod
    def _complete(description: dict[str, Any] | None) -> bool:
        """Fully written, in this module's layout (a collection of an older layout is rebuilt at publish)."""
        properties = (description or {}).get("properties", {})
        return ROWS_PROPERTY in properties and properties.get(LAYOUT_PROPERTY) == LAYOUT

    # -- loading ------------------------------------------------------------------------------

    def _schema(self, dim: int, metadata_schema: dict[str, str]) -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PRIMARY_KEY, DataType.INT64, is_primary=True)
        schema.add_field("item_id", DataType.VARCHAR, max_length=ITEM_ID_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        for column, kind in metadata_schema.items():
            extra = {"max_length": STRING_BYTES} if kind == "string" else {}
            schema.add_field(field_name(column), _DTYPES[kind], **extra)
            schema.add_field(presence_name(column), DataType.BOOL)
        schema.add_field("display", DataType.VARCHAR, max_length=DISPLAY_BYTES)
        return schema

    def _engine(self) -> MilvusEngine:
        """What this Milvus supports (`milvus_compat`), asked once per store."""
        if self._engine_info is None:
            self._engine_info = MilvusEngine.from_version(self._call("server version", "get_server_version"))
        return self._engine_info

    def _index_params(self, index_type: str, metadata_schema: dict[str, str]) -> Any:
        params = MilvusClient.prepare_index_params()
        if index_type == "HNSW":
            params.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200})
        else:
            params.add_index("vector", index_type="FLAT", metric_type="IP")
        engine = self._engine()
        for column, kind in metadata_schema.items():
            for field, field_kind in ((field_name(column), kind), (presence_name(column), "bool")):
                scalar = engine.scalar_index(field_kind)
                if scalar is not None:
                    params.add_index(field, index_type=scalar)
        return params

    def _write(self, what: str, method: str, name: str, rows: Iterator[dict[str, Any]], total: int,
               batch_size: int, progress: bool, timeout: float | None = None) -> None:
        with tqdm(total=total, desc=f"{what} {name}", unit="item", disable=not progress) as bar:
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(row)
                if len(batch) == batch_size:
                    self._call(f"{what} {name}", method, name, batch, timeout=timeout)
                    bar.update(len(batch))
                    batch = []
            if batch:
                self._call(f"{what} {name}", method, name, batch, timeout=timeout)
                bar.update(len(batch))

    def load_items(self, version: str, vectors: np.ndarray, item_indices: np.ndarray, item_ids: list[str],
                   metadata: list[dict], metadata_schema: dict[str, str], display_names: list[str | None],
                   progress: bool = False, *, index_type: str = "FLAT", batch_size: int = INSERT_BATCH) -> bool:
        """Create and fill the version's collection; False when it was already complete.

        `index_type` FLAT is exact search (the ranker must match offline top-k); HNSW is approximate.
        Idempotent: a complete collection with the same row count and dim is kept; a half-written
        one (no completion mark, or another size) is dropped and rebuilt.
        """
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError(f"vectors must be a non-empty [n, dim] array, got shape {vectors.shape}")
        n, dim = vectors.shape
        name = collection_name(version)
        described = self._describe(name)
        if described is not None:
            if (self._complete(described) and described["properties"][ROWS_PROPERTY] == str(n)
                    and self._dim(described) == dim):
                self._call(f"flush {name}", "flush", name)  # a collection written before flushing existed
                return False
            self.drop(version)
        rows = _rows(vectors, np.asarray(item_indices, dtype=np.int64), item_ids, metadata, metadata_schema,
                     display_names)
        self._call(f"create_collection {name}", "create_collection", name,
                   schema=self._schema(dim, metadata_schema),
                   properties={VERSION_PROPERTY: version, LAYOUT_PROPERTY: LAYOUT})
        # Inserting, sealing, indexing and loading a whole catalogue take their time: one batch of a
        # large insert waits while Milvus Lite seals and compacts what came before.
        bulk = max(self.timeout, BULK_TIMEOUT_S)
        self._write("insert", "insert", name, rows, n, batch_size, progress, timeout=bulk)
        # Seal the segments: Milvus Lite searches unsealed ("growing") rows 14-16x slower (measured:
        # 112 ms vs 8 ms per search at 10k items, about 1 s vs 68 ms at 100k).
        self._call(f"flush {name}", "flush", name, timeout=bulk)
        self._create_index(name, index_type, metadata_schema, bulk)
        self._call(f"load_collection {name}", "load_collection", name, timeout=bulk)
        count = self._call(f"count {name}", "query", name, filter="", output_fields=["count(*)"],
                           consistency_level="Strong", timeout=bulk)[0]["count(*)"]
        if count != n:
            raise VectorStoreError(f"load {name}: {count} rows after inserting {n}")
        self._call(f"mark {name}", "alter_collection_properties", name, properties={ROWS_PROPERTY: str(n)})
        return True

    def _create_index(self, name: str, index_type: str, metadata_schema: dict[str, str], timeout: float) -> None:
        """Index the vector and metadata fields, one field per call and each idempotently: pymilvus resends a
        create_index whose connection dropped mid-build (a server's GOAWAY on a long call), and the resend
        finds that field's index there."""
        for param in self._index_params(index_type, metadata_schema):
            single = MilvusClient.prepare_index_params()
            single.append(param)
            try:
                self._call(f"create_index {name}.{param.field_name}", "create_index", name, single, timeout=timeout)
            except VectorStoreError as exc:
                if "already exists" not in str(exc) or not self._call(
                        f"list_indexes {name}", "list_indexes", name, field_name=param.field_name):
                    raise
                log.info("the index of %s.%s was already there (a resent request)", name, param.field_name)

    def upsert_items(self, version: str, vectors: np.ndarray, item_indices: np.ndarray, item_ids: list[str],
                     metadata: list[dict], metadata_schema: dict[str, str], display_names: list[str | None],
                     *, batch_size: int = INSERT_BATCH) -> None:
        """Insert or replace items (e.g. cold-start items added online) in an existing version."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be an [n, dim] array, got shape {vectors.shape}")
        rows = _rows(vectors, np.asarray(item_indices, dtype=np.int64), item_ids, metadata, metadata_schema,
                     display_names)
        self._write("upsert", "upsert", collection_name(version), rows, len(vectors), batch_size, False)

    # -- versions -----------------------------------------------------------------------------

    def list_versions(self) -> list[str]:
        """Completely loaded versions, oldest first (versions sort by creation time)."""
        versions = []
        for name in self._call("list_collections", "list_collections"):
            if name.startswith(COLLECTION_PREFIX):
                described = self._describe(name)
                if self._complete(described):
                    versions.append(described["properties"][VERSION_PROPERTY])
        return sorted(versions)

    def has_version(self, version: str) -> bool:
        """True when the version is completely written and loaded for search."""
        name = collection_name(version)
        if not self._complete(self._describe(name)):
            return False
        state = self._call(f"get_load_state {name}", "get_load_state", name)
        return getattr(state.get("state"), "name", str(state.get("state"))) == "Loaded"

    def ensure_loaded(self, version: str) -> bool:
        """True when the version is completely written and loaded; loads it if Milvus released it (restart)."""
        name = collection_name(version)
        if not self._complete(self._describe(name)):
            return False
        if not self.has_version(version):
            log.info("loading a released collection", extra={"collection": name})
            self._call(f"load_collection {name}", "load_collection", name)
        return self.has_version(version)

    def drop(self, version: str) -> None:
        """Drop a version's collection (no-op when absent)."""
        name = collection_name(version)
        if self._call(f"has_collection {name}", "has_collection", name):
            self._call(f"drop_collection {name}", "drop_collection", name)

    # -- reads --------------------------------------------------------------------------------

    def search(self, version: str, vectors: np.ndarray, top_k: int, expr: str = "",
               exclude_indices: list[list[int]] | None = None) -> list[list[Hit]]:
        """Top-k items by inner product per query: (index, score, item_id, display), best first.

        Exclusion over-fetches top_k + len(excluded) and drops the excluded items: with exact
        (FLAT) search that is still the exact top-k of the remaining items, the whole batch stays
        one request, and the filter expression stays small (a long `not in` list per query would
        mean one request per query and a costly scalar filter).
        """
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2:
            raise ValueError(f"vectors must be a [batch, dim] array, got shape {queries.shape}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        excluded = [{int(i) for i in e} for e in exclude_indices] if exclude_indices else [set()] * len(queries)
        if len(excluded) != len(queries):
            raise ValueError(f"exclude_indices has {len(excluded)} lists for {len(queries)} queries")
        if not len(queries):
            return []
        limit = top_k + max(map(len, excluded))
        if limit > MAX_TOPK:
            raise ValueError(f"top_k plus excluded items exceeds {MAX_TOPK}")
        params = {"metric_type": "IP", "params": {"ef": max(self.ef, limit)}}  # ef: HNSW only, FLAT ignores it
        name = collection_name(version)
        results = self._read(f"search {name}", "search", name, data=queries.tolist(), filter=expr, limit=limit,
                             output_fields=_OUTPUT, search_params=params, anns_field="vector")
        out = []
        for hits, skip in zip(results, excluded, strict=True):
            found = [(int(hit.id), float(hit.distance), hit["entity"]["item_id"], json.loads(hit["entity"]["display"]))
                     for hit in hits if int(hit.id) not in skip]
            found.sort(key=lambda h: (-h[1], h[0]))  # the scoring contract's tie rule
            out.append(found[:top_k])
        return out

    def get_items(self, version: str, indices: Sequence[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        """(item_id, display) of the given item indices that exist, by primary key."""
        name = collection_name(version)
        keys = sorted({int(i) for i in indices})
        out: dict[int, tuple[str, dict[str, Any]]] = {}
        for start in range(0, len(keys), GET_BATCH):
            rows = self._read(f"get {name}", "get", name, ids=keys[start:start + GET_BATCH], output_fields=_OUTPUT)
            out.update({int(r[PRIMARY_KEY]): (r["item_id"], json.loads(r["display"])) for r in rows})
        return out

    def get_vectors(self, version: str, indices: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors of the given primary keys that exist (e.g. an item added online)."""
        return {pk: vector for pk, (vector, _, _) in self.rows(version, indices).items()}

    def rows(self, version: str, indices: Sequence[int], expr: str = "") -> dict[int, tuple[np.ndarray, str, dict]]:
        """(vector, item_id, display) of the given primary keys whose stored row passes the filter `expr`: what a
        search would score them with and whether it could return them (rows changed online included)."""
        name = collection_name(version)
        keys = sorted({int(i) for i in indices})
        out: dict[int, tuple[np.ndarray, str, dict]] = {}
        for start in range(0, len(keys), GET_BATCH):
            chunk = keys[start:start + GET_BATCH]
            where = f"{PRIMARY_KEY} in {chunk}" + (f" and ({expr})" if expr else "")
            rows = self._read(f"query {name}", "query", name, filter=where, output_fields=["vector", *_OUTPUT])
            out.update({int(r[PRIMARY_KEY]): (np.asarray(r["vector"], dtype=np.float32), r["item_id"],
                                              json.loads(r["display"])) for r in rows})
        return out

    def ping(self) -> bool:
        """True when Milvus answers a cheap call within the timeout."""
        try:
            self._call("ping", "get_server_version")
        except (VectorStoreError, VectorStoreUnavailable):
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

