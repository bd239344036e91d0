"""`seqrec batch-recommend`: the `user_to_item` top-k of every user (or a given list) written to Parquet.

The answer for each user is the one the online ranker gives for `user_to_item` with the same
options: the same history window (the last `max_len - 1` stored events, unknown items skipped),
the same encoder input (`encode_histories` through the bundle's ONNX encoder), the same seen-item
exclusion (items of that window), the same filters (JSON parsed by `json_api.parse_filters` and
validated against the bundle's metadata schema) and the same popularity fallback for users without
a known item. Two ways to search:

* exact (default): `intent @ item_vectors` in numpy over the bundle's catalog, filters evaluated on
  the catalog's in-memory columns, seen items masked; no store needed;
* Milvus (`--milvus-uri`): the published version's collection, searched exactly as online.

Histories come from the bundle's `histories.jsonl`, or from Redis (`--redis-url`) so that events
ingested since training count.

Output is resumable: the user list is cut into contiguous parts of `--part-size` users; each part
is written atomically (temporary file, fsync, rename) as `part-NNNNN.parquet`, and `_manifest.json`
describes the job. A rerun with the same options skips the parts that exist, so a killed run
continues where it stopped and no user is ever written twice. `--out FILE.parquet` stages the parts
in `FILE.parquet.parts/` and merges them into one file at the end.

Heavy dependencies (ONNX Runtime, pyarrow, redis, pymilvus) are imported where they are used, so
`seqrec --help` stays quick.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.services.ranker.prior_rescoring import overfetch, rescore
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.json_api import MAX_TOP_K, RequestError, parse_filters
from seqrec.shared.sequence_prior import SequencePrior

FORMAT = "seqrec-batch/1"
MANIFEST = "_manifest.json"  # leading underscore: Parquet dataset readers skip it
LOCK = ".lock"
PART_PATTERN = "part-{:05d}.parquet"
PARTS_SUFFIX = ".parts"  # staging directory of a single-file output
METADATA_KEY = b"seqrec.batch"
REDIS_KEY_PREFIX = "seqrec:batch:"
DEFAULT_BATCH_SIZE = 256
DEFAULT_PART_SIZE = 50_000
DEFAULT_MAX_BATCH_TOKENS = 4096  # CPU: users x padded length per ONNX batch (measured best at 2-4k, max_len 200)
REDIS_READ_CHUNK = 1000
MAX_SCORE_CELLS = 1 << 25  # scores held at once in the exact path (128 MiB of float32)


class BatchError(RuntimeError):
    """The job cannot run as asked: bad options, an output that belongs to another job, a busy output."""


# ---- results ----------------------------------------------------------------------------------

@dataclass
class UserResult:
    user_id: str
    items: list[tuple[str, float, str | None]]  # item_id, score, display name; best first
    fallback: str | None = None  # "popularity" when the user had no known item


def batch_key(version: str, user_id: str) -> str:
    """Redis key of a user's precomputed list, e.g. `seqrec:batch:<version>:{u42}`: the hash tag is the
    user id, escaped exactly as in the user's history key (`seqrec:hist:{u42}`)."""
    from seqrec.services.ranker.history_store import KEY_PREFIX, history_key

    return f"{REDIS_KEY_PREFIX}{version}:{history_key(user_id).removeprefix(KEY_PREFIX)}"


def _redis_errors() -> tuple[type[Exception], ...]:
    import redis
    from redis.exceptions import RedisClusterException

    return redis.RedisError, RedisClusterException


def result_json(result: UserResult, version: str) -> str:
    """The value stored under `batch_key`: the user's list as the JSON API shapes an answer."""
    items = []
    for item_id, score, name in result.items:
        entry: dict[str, Any] = {"item_id": item_id, "score": round(float(score), 6)}
        if name is not None:
            entry["display_name"] = name
        items.append(entry)
    return json.dumps({"items": items, "model_version": version, "fallback": result.fallback},
                      ensure_ascii=False)


# ---- users and histories ------------------------------------------------------------------------

def read_user_file(path: Path) -> tuple[list[str], int]:
    """User ids, one per line (surrounding whitespace and blank lines ignored), first occurrence kept;
    returns (users, duplicates dropped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BatchError(f"--users: cannot read {path}: {exc}") from exc
    users = list(dict.fromkeys(u for u in (line.strip() for line in lines) if u))
    return users, sum(1 for line in lines if line.strip()) - len(users)


def bundle_histories(bundle: Bundle, keep: int) -> dict[str, list[str]]:
    """Each user's last `keep` items from the bundle's histories.jsonl, oldest first."""
    return {str(row["user_id"]): list(row["items"][-keep:]) for row in bundle.iter_jsonl(HISTORIES)}


class BundleHistorySource:
    name = "bundle"

    def __init__(self, histories: dict[str, list[str]]):
        self.histories = histories

    def read(self, users: Sequence[str]) -> list[list[str]]:
        return [self.histories.get(u, []) for u in users]


class RedisHistorySource:
    """The histories the ranker reads: the last `keep` entries of `seqrec:hist:{user}`, pipelined."""

    name = "redis"

    def __init__(self, url: str, keep: int):
        from seqrec.services.ranker.history_store import RedisHistoryStore

        self.store = RedisHistoryStore(url, timeout=30.0)
        self.keep = keep

    def read(self, users: Sequence[str]) -> list[list[str]]:
        """`RedisHistoryStore.read(user, keep)` for many users: LRANGEs pipelined without a transaction."""
        from seqrec.services.ranker.history_store import HistoryStoreUnavailable, _parse, history_key

        out: list[list[str]] = []
        for start in range(0, len(users), REDIS_READ_CHUNK):
            try:
                with self.store.client.pipeline(transaction=False) as pipe:
                    for user in users[start:start + REDIS_READ_CHUNK]:
                        pipe.lrange(history_key(user), -self.keep, -1)
                    rows = pipe.execute()
            except _redis_errors() as exc:
                raise HistoryStoreUnavailable(f"--redis-url: Redis is unavailable: {exc}") from exc
            out.extend([_parse(e)[0] for e in entries] for entries in rows)
        return out


# ---- search ---------------------------------------------------------------------------------------

IndexHits = list[tuple[int, float]]  # (item index, score), best first


class ExactSearch:
    """Exact inner-product top-k in numpy over the bundle's items that pass the filters."""

    def __init__(self, item_vectors: np.ndarray, n_items: int, allowed: np.ndarray | None):
        """`item_vectors`: the bundle's [n_items + 2, dim] array; `allowed`: mask over indices (or None)."""
        candidates = np.arange(1, n_items + 1)
        if allowed is not None:
            candidates = candidates[allowed[1:n_items + 1]]
        self.candidates = candidates  # item index of each column
        self.column = np.full(len(item_vectors), -1, dtype=np.int64)  # item index -> column (-1: not a candidate)
        self.column[candidates] = np.arange(len(candidates))
        self.matrix = np.ascontiguousarray(item_vectors[candidates].T, dtype=np.float32)  # [dim, n_candidates]

    def search(self, intents: np.ndarray, top_k: int, excluded: Sequence[Sequence[int]],
               added: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[IndexHits]:
        """(item index, score) best first per query; ties by lower index, as a stable argsort. `added`: per
        query, (item indices, score added to each): the sequence prior's terms."""
        n = len(self.candidates)
        rows = max(1, MAX_SCORE_CELLS // max(n, 1))
        out: list[IndexHits] = []
        for start in range(0, len(intents), rows):
            out.extend(self._search(intents[start:start + rows], top_k, excluded[start:start + rows],
                                    None if added is None else added[start:start + rows]))
        return out

    def _search(self, intents: np.ndarray, top_k: int, excluded: Sequence[Sequence[int]],
                added: Sequence[tuple[np.ndarray, np.ndarray]] | None) -> list[IndexHits]:
        n = len(self.candidates)
        if n == 0:
            return [[] for _ in range(len(intents))]
        scores = np.asarray(intents, dtype=np.float32) @ self.matrix
        for row, (indices, bonus) in enumerate(added or ()):
            cols = self.column[indices]
            searchable = cols >= 0
            scores[row, cols[searchable]] += bonus[searchable]
        rows = np.repeat(np.arange(len(excluded)), [len(e) for e in excluded])
        if len(rows):
            cols = self.column[np.fromiter((i for e in excluded for i in e), dtype=np.int64, count=len(rows))]
            keep = cols >= 0
            scores[rows[keep], cols[keep]] = -np.inf
        k = min(top_k, n)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(scores), 1))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        indices = self.candidates[top]
        return [[(int(i), float(s)) for i, s in zip(ir, sr, strict=True) if s != -np.inf]
                for ir, sr in zip(indices, top_scores, strict=True)]


def _chunks(order: Sequence[int], widths: Sequence[int], max_rows: int, max_tokens: int) -> Iterator[list[int]]:
    """Consecutive batches of `order` with at most `max_rows` rows and (when max_tokens > 0) at most
    `max_tokens` cells once padded to their widest row; `widths` must not decrease."""
    chunk: list[int] = []
    for n, width in zip(order, widths, strict=True):
        if chunk and (len(chunk) == max_rows or (max_tokens and (len(chunk) + 1) * width > max_tokens)):
            yield chunk
            chunk = []
        chunk.append(n)
    if chunk:
        yield chunk


# ---- the scorer -----------------------------------------------------------------------------------

class BatchRecommender:
    """user_to_item for many users at once, answer for answer what the online Recommender returns.

    Without `store` the search is exact in numpy over the bundle's item vectors; with a
    `MilvusItemStore` it is the online search over the published collection. Users are encoded in
    batches of similar history length: at most `batch_size` users and `max_batch_tokens` padded cells.
    """

    def __init__(self, bundle: Bundle, encoder: Any, top_k: int, filters: dict[str, Any] | None = None,
                 exclude_seen: bool = True, store: Any = None, max_batch_tokens: int | None = None):
        from seqrec.services.ranker.catalog import Catalog
        from seqrec.services.ranker.filters import build_expression

        if not 1 <= top_k <= MAX_TOP_K:
            raise BatchError(f"--top-k: must be between 1 and {MAX_TOP_K}, got {top_k}")
        self.bundle, self.encoder, self.top_k, self.exclude_seen = bundle, encoder, top_k, exclude_seen
        self.version = bundle.version
        self.vocab = bundle.vocab()
        self.catalog = Catalog(bundle, self.vocab)
        self.keep = bundle.max_len - 1  # the history window the ranker encodes (and excludes as seen)
        # The online validation, in the online order: JSON → FilterClause (RequestError) → schema (FilterError).
        self.clauses = parse_filters("filters", filters) if filters else []
        self.expr = build_expression(self.clauses, self.catalog.schema)
        self.store = store
        if max_batch_tokens is None:  # CPU: attention over long, wide batches falls out of cache; a GPU wants them
            max_batch_tokens = 0 if getattr(encoder, "provider", "") == "CUDAExecutionProvider" else \
                DEFAULT_MAX_BATCH_TOKENS
        self.max_batch_tokens = max_batch_tokens
        self.exact = None
        self.prior = SequencePrior.from_bundle(bundle)
        self.item_vectors = bundle.item_vectors()
        if store is None:
            allowed = self.catalog.filter_mask(self.clauses) if self.clauses else None
            self.exact = ExactSearch(self.item_vectors, self.vocab.n_items, allowed)
        popular = self.catalog.popular(top_k, self.clauses, set())
        self.popular = [(self.vocab.item_id(i), score, self.catalog.display_names[i]) for i, score in popular]

    @property
    def has_display_names(self) -> bool:
        return any(name is not None for name in self.catalog.display_names)

    def recommend(self, users: Sequence[str], histories: Sequence[Sequence[str]], batch_size: int = DEFAULT_BATCH_SIZE,
                  on_batch: Callable[[int], None] | None = None) -> list[UserResult]:
        """Results in `users` order; `histories` are raw item ids, oldest first (only the last
        `max_len - 1` count). Users are encoded in batches of similar history length."""
        encoded = [self.vocab.encode(h[-self.keep:])[0] for h in histories]
        results: list[UserResult | None] = [None] * len(users)
        with_history = []
        for n, (user, history) in enumerate(zip(users, encoded, strict=True)):
            if history:
                with_history.append(n)
            else:
                results[n] = UserResult(user, list(self.popular), "popularity")
        if on_batch and len(with_history) < len(users):
            on_batch(len(users) - len(with_history))
        with_history.sort(key=lambda n: len(encoded[n]))  # less padding per ONNX batch
        for chunk in _chunks(with_history, [len(encoded[n]) + 1 for n in with_history], batch_size,
                             self.max_batch_tokens):
            rows = [encoded[n] for n in chunk]
            intents = self.encoder.intents(rows)
            excluded = [sorted(set(r)) if self.exclude_seen else [] for r in rows]
            for n, items in zip(chunk, self._search(rows, intents, excluded), strict=True):
                results[n] = UserResult(users[n], items)
            if on_batch:
                on_batch(len(chunk))
        return results  # type: ignore[return-value]

    def _search(self, histories: list[list[int]], intents: np.ndarray,
                excluded: list[list[int]]) -> list[list[tuple[str, float, str | None]]]:
        """Top-k per history: exact in numpy, or the online search plus the prior as the ranker merges them."""
        if self.exact is not None:
            names = self.catalog.display_names
            added = None if self.prior is None else [self.prior.terms(h) for h in histories]
            return [[(self.vocab.item_id(i), score, names[i]) for i, score in hits]
                    for hits in self.exact.search(intents, self.top_k, excluded, added)]
        limit = self.top_k + max(overfetch(self.prior, h, e) for h, e in zip(histories, excluded, strict=True))
        found = self.store.search(self.version, intents, limit, self.expr, excluded)
        rows = [rescore(self.prior, history, intent, hits, self.top_k, self.item_vectors, set(skip),
                        lambda indices: self.catalog.filter_mask(self.clauses, indices), self.catalog.hit_record)
                for history, intent, hits, skip in zip(histories, intents, found, excluded, strict=True)]
        return [[(item_id, score, display.get("display_name")) for _, score, item_id, display in row] for row in rows]


# ---- output -----------------------------------------------------------------------------------------

def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_durably(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    _replace_durably(tmp, path)


def _schema(display_names: bool) -> Any:
    import pyarrow as pa

    fields = [pa.field("user_id", pa.string(), nullable=False), pa.field("rank", pa.int32(), nullable=False),
              pa.field("item_id", pa.string(), nullable=False), pa.field("score", pa.float32(), nullable=False)]
    if display_names:
        fields.append(pa.field("display_name", pa.string()))
    fields += [pa.field("model_version", pa.string(), nullable=False), pa.field("fallback", pa.string())]
    return pa.schema(fields)


def results_table(results: Sequence[UserResult], version: str, display_names: bool, metadata: dict[str, Any]) -> Any:
    """One row per (user, recommended item), users in the given order, ranks from 1."""
    import pyarrow as pa

    counts = [len(r.items) for r in results]
    total = sum(counts)
    columns: dict[str, Any] = {
        "user_id": [r.user_id for r in results for _ in r.items],
        "rank": np.concatenate([np.arange(1, c + 1, dtype=np.int32) for c in counts]) if total else
        np.zeros(0, dtype=np.int32),
        "item_id": [item for r in results for item, _, _ in r.items],
        "score": np.fromiter((s for r in results for _, s, _ in r.items), dtype=np.float32, count=total),
    }
    if display_names:
        columns["display_name"] = [name for r in results for _, _, name in r.items]
    columns["model_version"] = [version] * total
    columns["fallback"] = [r.fallback for r in results for _ in r.items]
    schema = _schema(display_names).with_metadata({METADATA_KEY: json.dumps(metadata)})
    return pa.Table.from_pydict(columns, schema=schema)


def store_in_redis(client: Any, version: str, results: Sequence[UserResult], ttl_s: int) -> None:
    """SET each user's list (JSON) under `batch_key`, with a TTL when ttl_s > 0; idempotent."""
    from seqrec.services.ranker.history_store import HistoryStoreUnavailable

    for start in range(0, len(results), REDIS_READ_CHUNK):
        try:
            with client.pipeline(transaction=False) as pipe:
                for result in results[start:start + REDIS_READ_CHUNK]:
                    pipe.set(batch_key(version, result.user_id), result_json(result, version), ex=ttl_s or None)
                pipe.execute()
        except _redis_errors() as exc:
            raise HistoryStoreUnavailable(f"--to-redis: Redis is unavailable: {exc}") from exc


@dataclass
class BatchOptions:
    bundle: Path  # a bundle directory, or a bundle root whose LIVE file names the version
    out: Path  # a directory of part files, or FILE.parquet (parts staged beside it, merged at the end)
    users_file: Path | None = None  # default: every user of the bundle's histories.jsonl
    top_k: int = 0  # 0: the bundle's default
    filters: dict[str, Any] | None = None
    exclude_seen: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_tokens: int | None = None  # None: 4096 on CPU, no limit on CUDA; 0: no limit
    part_size: int = DEFAULT_PART_SIZE
    redis_url: str | None = None  # histories from Redis instead of the bundle
    milvus_uri: str | None = None  # search the published collection instead of numpy
    milvus_token: str = ""
    to_redis: str | None = None  # also SET each user's list in this Redis
    redis_ttl_s: int = 0
    ort_threads: int = 0
    ort_provider: str = "auto"
    overwrite: bool = False
    progress: bool = True
    stop_after_parts: int | None = None  # stop (resumably) after writing this many parts


@dataclass
class BatchSummary:
    out: str
    model_version: str
    users: int
    parts: int
    parts_written: int
    parts_skipped: int
    rows_written: int
    complete: bool
    seconds: float
    users_per_s: float  # users scored in this run per second of scoring and writing
    search: str
    histories: str
    notes: list[str] = field(default_factory=list)


class _Output:
    """Where the parts go: `dir` holds part files and the manifest; `final` is the merged file (or None)."""

    def __init__(self, out: Path):
        self.final = out if out.suffix == ".parquet" else None
        self.dir = out.with_name(out.name + PARTS_SUFFIX) if self.final else out

    def part(self, index: int) -> Path:
        return self.dir / PART_PATTERN.format(index)

    def clear(self) -> None:
        """Remove a previous job's files (ours only: parts, manifest, temporary files) and merged output."""
        if self.dir.is_dir():
            for pattern in ("part-*.parquet", ".part-*.parquet.tmp", MANIFEST, f".{MANIFEST}.tmp"):
                for path in self.dir.glob(pattern):
                    path.unlink()
        if self.final is not None:
            self.final.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    import fcntl

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fh = open(directory / LOCK, "a+")  # closed by the with block below
    except OSError as exc:
        raise BatchError(f"--out: cannot write to {directory}: {exc}") from exc
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BatchError(f"{directory}: another batch-recommend is writing there") from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _job_id(job: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def _check_job(found: dict[str, Any], job: dict[str, Any], where: Path) -> None:
    if found.get("format") != FORMAT or found.get("job") != job:
        old = found.get("job") or {}
        differs = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k)) or ["format"]
        raise BatchError(f"{where} holds a batch job with other options (differs in: {', '.join(differs)}); "
                         "rerun with the same options to resume, pass --overwrite, or choose another --out")


def _open_stores(options: BatchOptions, bundle: Bundle) -> Any:
    if not options.milvus_uri:
        return None
    from seqrec.services.ranker.vector_store import MilvusItemStore

    store = MilvusItemStore(options.milvus_uri, options.milvus_token, timeout=60.0)
    if not store.has_version(bundle.version):
        raise BatchError(f"--milvus-uri: version {bundle.version} is not loaded in Milvus at {options.milvus_uri} "
                         "(run seqrec publish first)")
    return store


def run_batch(options: BatchOptions) -> BatchSummary:
    """Score every user of the job and write the parts that are missing; see the module docstring."""
    from tqdm import tqdm

    from seqrec.services.ranker.encoder import OnnxEncoder
    from seqrec.services.ranker.publish import resolve_bundle

    if options.batch_size < 1 or options.part_size < 1:
        raise BatchError("--batch-size and --part-size must be at least 1")
    if options.max_batch_tokens is not None and options.max_batch_tokens < 0:
        raise BatchError("--max-batch-tokens: must be >= 0 (0 = no limit)")
    if options.redis_ttl_s < 0:
        raise BatchError("--redis-ttl: must be >= 0 (0 = no expiry)")
    bundle = Bundle.open(resolve_bundle(Path(options.bundle)))
    keep = bundle.max_len - 1
    notes: list[str] = []
    stored = None
    if options.users_file is not None:
        users, duplicates = read_user_file(options.users_file)
        if duplicates:
            notes.append(f"{duplicates} duplicate user id(s) in {options.users_file} scored once")
    else:
        stored = bundle_histories(bundle, keep) if not options.redis_url else None
        users = list(stored) if stored is not None else list(dict.fromkeys(
            str(row["user_id"]) for row in bundle.iter_jsonl(HISTORIES)))
    if options.redis_url:
        try:
            source: BundleHistorySource | RedisHistorySource = RedisHistorySource(options.redis_url, keep)
        except ValueError as exc:  # a malformed URL
            raise BatchError(f"--redis-url: {exc}") from exc
    else:
        source = BundleHistorySource(stored if stored is not None else bundle_histories(bundle, keep))

    store = _open_stores(options, bundle)
    encoder = OnnxEncoder(bundle, options.ort_threads, options.ort_provider)
    recommender = BatchRecommender(bundle, encoder, options.top_k or bundle.top_k, options.filters,
                                   options.exclude_seen, store, options.max_batch_tokens)
    names = recommender.has_display_names
    job = {
        "model_version": bundle.version,
        "users_sha256": hashlib.sha256("\n".join(users).encode()).hexdigest(),
        "n_users": len(users),
        "top_k": recommender.top_k,
        "filters": json.dumps(options.filters or {}, sort_keys=True),
        "exclude_seen": options.exclude_seen,
        "histories": source.name,
        "search": "milvus" if store is not None else "exact",
        "part_size": options.part_size,
        "display_name": names,
        "to_redis": bool(options.to_redis),
    }
    job_id = _job_id(job)
    n_parts = (len(users) + options.part_size - 1) // options.part_size
    output = _Output(Path(options.out))
    started = time.perf_counter()

    def summary(written: int, skipped: int, rows: int, complete: bool, scored: int) -> BatchSummary:
        seconds = time.perf_counter() - started
        return BatchSummary(str(options.out), bundle.version, len(users), n_parts, written, skipped, rows, complete,
                            round(seconds, 3), round(scored / seconds, 1) if scored and seconds > 0 else 0.0,
                            job["search"], job["histories"], notes)

    if output.final is not None and output.final.exists() and not options.overwrite:
        import pyarrow.parquet as pq

        meta = (pq.read_schema(output.final).metadata or {}).get(METADATA_KEY)
        _check_job(json.loads(meta) if meta else {}, job, output.final)
        if output.dir.is_dir():
            shutil.rmtree(output.dir)  # a run that stopped between the merge and the clean-up
        return summary(0, n_parts, 0, True, 0)

    redis_sink = None
    if options.to_redis:  # any URL the ranker's REDIS_URL takes
        from seqrec.services.ranker.history_store import RedisHistoryStore

        try:
            redis_sink = RedisHistoryStore(options.to_redis, timeout=30.0).client
        except ValueError as exc:
            raise BatchError(f"--to-redis: {exc}") from exc

    with _locked(output.dir):
        manifest_path = output.dir / MANIFEST
        if options.overwrite:
            output.clear()
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            _check_job(manifest, job, output.dir)
        else:
            if any(output.dir.glob("part-*.parquet")):
                raise BatchError(f"{output.dir} holds part files but no {MANIFEST}; pass --overwrite or choose "
                                 "another --out")
            manifest = {"format": FORMAT, "job_id": job_id, "job": job, "n_parts": n_parts,
                        "columns": _schema(names).names, "parts": {}, "complete": False, "created_at": _now()}
            _write_json_atomic(manifest_path, manifest)
        for stale in output.dir.glob(".part-*.tmp"):  # a part that was being written when the run died
            stale.unlink()

        todo = [i for i in range(n_parts) if not output.part(i).is_file()]
        for index in sorted(set(range(n_parts)) - set(todo)):
            manifest["parts"].setdefault(PART_PATTERN.format(index), _part_record(output.part(index), job_id))
        done_users = len(users) - sum(len(users[i * options.part_size:(i + 1) * options.part_size]) for i in todo)
        written = rows = scored = 0
        with tqdm(total=len(users), initial=done_users, desc=f"batch-recommend {bundle.version}", unit="user",
                  disable=not options.progress, file=sys.stderr) as bar:
            for index in todo:
                if options.stop_after_parts is not None and written >= options.stop_after_parts:
                    break
                first = index * options.part_size
                part_users = users[first:first + options.part_size]
                results = recommender.recommend(part_users, source.read(part_users), options.batch_size, bar.update)
                if redis_sink is not None:  # before the part: a finished part implies its users are in Redis
                    store_in_redis(redis_sink, bundle.version, results, options.redis_ttl_s)
                meta = {"format": FORMAT, "job_id": job_id, "part": index, "first_user": first,
                        "users": len(part_users)}
                table = results_table(results, bundle.version, names, meta)
                _write_part(table, output.part(index))
                written += 1
                rows += table.num_rows
                scored += len(part_users)
                manifest["parts"][PART_PATTERN.format(index)] = {
                    "first_user": first, "users": len(part_users), "rows": table.num_rows,
                    "fallback_users": sum(r.fallback is not None for r in results)}
                manifest["updated_at"] = _now()
                _write_json_atomic(manifest_path, manifest)
        complete = all(output.part(i).is_file() for i in range(n_parts))
        if complete:
            manifest["complete"] = True
            manifest["updated_at"] = _now()
            manifest.setdefault("completed_at", _now())
            _write_json_atomic(manifest_path, manifest)
    if complete and output.final is not None:
        _merge(output, n_parts, names, job_id, job)
        shutil.rmtree(output.dir)
    return summary(written, n_parts - len(todo), rows, complete, scored)


def _part_record(path: Path, job_id: str) -> dict[str, Any]:
    """The manifest entry of an existing part, from its footer; refuses a part of another job."""
    import pyarrow.parquet as pq

    footer = pq.read_metadata(path)
    meta = json.loads((footer.metadata or {}).get(METADATA_KEY, b"{}"))
    if meta.get("job_id") != job_id:
        raise BatchError(f"{path} belongs to another batch job; pass --overwrite or choose another --out")
    return {"first_user": meta["first_user"], "users": meta["users"], "rows": footer.num_rows}


def _write_part(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    _replace_durably(tmp, path)


def _merge(output: _Output, n_parts: int, names: bool, job_id: str, job: dict[str, Any]) -> None:
    """Concatenate the parts into the single output file, atomically."""
    import pyarrow.parquet as pq

    assert output.final is not None
    output.final.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.final.with_name(f".{output.final.name}.tmp")
    schema = _schema(names).with_metadata({METADATA_KEY: json.dumps({"format": FORMAT, "job_id": job_id,
                                                                       "job": job, "n_parts": n_parts})})
    with pq.ParquetWriter(tmp, schema) as writer:
        for index in range(n_parts):
            writer.write_table(pq.read_table(output.part(index)).replace_schema_metadata(schema.metadata))
    _replace_durably(tmp, output.final)


# ---- command line ---------------------------------------------------------------------------------

def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory, or a bundle root whose LIVE file names the version")
    parser.add_argument("--out", required=True, type=Path,
                        help="a directory of part files, or FILE.parquet (parts staged in FILE.parquet.parts/ "
                             "and merged at the end)")
    parser.add_argument("--users", type=Path, default=None,
                        help="file with one user id per line (default: every user in the bundle's histories)")
    parser.add_argument("--top-k", type=int, default=0, help="items per user (default: the bundle's top_k)")
    parser.add_argument("--filters", default=None,
                        help='metadata filters as in the JSON API, e.g. \'{"meta.genre": "drama", '
                             '"meta.price": {"lt": 50}}\'')
    parser.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True,
                        help="leave out the items of the user's history window, as user_to_item does online")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="users per ONNX Runtime batch")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help=f"also cap a batch at this many users x padded history length (default: "
                             f"{DEFAULT_MAX_BATCH_TOKENS} on CPU, none on CUDA; 0 = none)")
    parser.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE,
                        help="users per part file (the unit of resumption)")
    parser.add_argument("--redis-url", default=None,
                        help="read histories from this Redis (events ingested since training count) instead of the "
                             "bundle")
    parser.add_argument("--milvus-uri", default=None,
                        help="search the published version in this Milvus instead of exactly in-process")
    parser.add_argument("--milvus-token", default=os.environ.get("MILVUS_TOKEN", ""))
    parser.add_argument("--to-redis", default=None, metavar="URL",
                        help=f"also store each user's list as JSON under {REDIS_KEY_PREFIX}<version>:{{<user>}}")
    parser.add_argument("--redis-ttl", type=int, default=0, metavar="SECONDS",
                        help="expiry of the --to-redis keys (0 = none)")
    parser.add_argument("--ort-threads", type=int, default=int(os.environ.get("SEQREC_ORT_THREADS", "0") or 0),
                        help="ONNX Runtime intra-op threads (0 = its default)")
    parser.add_argument("--ort-provider", choices=["auto", "cuda", "cpu"],
                        default=os.environ.get("SEQREC_ORT_PROVIDER", "auto") or "auto")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output instead of resuming")
    parser.add_argument("--stop-after-parts", type=int, default=None, metavar="N",
                        help="stop after writing N parts (rerun to continue); for slicing long jobs and tests")
    parser.add_argument("--no-progress", action="store_true")


def run_batch_cli(args: argparse.Namespace) -> int:
    from seqrec.services.ranker.filters import FilterError
    from seqrec.services.ranker.history_store import HistoryStoreUnavailable
    from seqrec.services.ranker.vector_store import VectorStoreError, VectorStoreUnavailable
    from seqrec.shared.bundle import BundleError

    prog = "seqrec batch-recommend"
    filters = None
    if args.filters:
        try:
            filters = json.loads(args.filters)
        except json.JSONDecodeError as exc:
            print(f"{prog}: --filters is not JSON: {exc}", file=sys.stderr)
            return 2
    options = BatchOptions(
        bundle=Path(args.bundle), out=args.out, users_file=args.users, top_k=args.top_k, filters=filters,
        exclude_seen=args.exclude_seen, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
        part_size=args.part_size,
        redis_url=args.redis_url, milvus_uri=args.milvus_uri, milvus_token=args.milvus_token,
        to_redis=args.to_redis, redis_ttl_s=args.redis_ttl, ort_threads=args.ort_threads,
        ort_provider=args.ort_provider, overwrite=args.overwrite, progress=not args.no_progress,
        stop_after_parts=args.stop_after_parts)
    try:
        result = run_batch(options)
    except (RequestError, FilterError) as exc:
        print(f"{prog}: invalid filters: {exc}", file=sys.stderr)
        return 2
    except (BatchError, BundleError, HistoryStoreUnavailable, VectorStoreError, VectorStoreUnavailable) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished parts are kept, rerun the same command to continue", file=sys.stderr)
        return 130
    for note in result.notes:
        print(f"{prog}: note: {note}", file=sys.stderr)
    print(json.dumps(result.__dict__))
    return 0
