"""`seqrec batch-recommend`: the `user_to_item` top-k of every user (or a given list) written to Parquet.

The answer for each user is the one the online ranker gives for `user_to_item` with the same
options: the same history window (the last `max_len - 1` stored events, unknown items skipped),
the same encoder input (`encode_histories` through the bundle's ONNX encoder), the same seen-item
exclusion (items of that window), the same filters (JSON parsed by `json_api.parse_filters` and
validated against the bundle's metadata schema) and the same popularity fallback for users without
a known item. Two ways to search:

* exact (default): the scoring contract's exact top-k (`shared.scoring.ExactSearch`) over the bundle's
  catalog, filters evaluated on the catalog's in-memory columns, seen items excluded; no store needed;
* Milvus (`--milvus-uri`): the published version's collection, searched and merged with the prior
  exactly as online (`Scorer.merge`).

With `--gaps FILE.jsonl` the job answers gap queries instead of users, one per line, each as `GapFill` answers
it (`batch_gaps`); the output is keyed by the line's `id`.

Histories come from the bundle's `histories.jsonl`, or from Redis (`--redis-url`) so that events
ingested since training count.

Output is resumable (`batch_output`): the user list is cut into contiguous parts of `--part-size` users;
each part is written atomically (temporary file, fsync, rename) as `part-NNNNN.parquet`, and `_manifest.json`
describes the job. A rerun with the same options skips the parts that exist, so a killed run
continues where it stopped and no user is ever written twice. `--out FILE.parquet` stages the parts
in `FILE.parquet.parts/` and merges them into one file at the end.

Heavy dependencies (ONNX Runtime, pyarrow, redis, pymilvus) are imported where they are used, so
`seqrec --help` stays quick.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqrec.services.ranker.batch_gaps import excluded_key, gap_jobs, gap_sides
from seqrec.services.ranker.batch_output import (
    FORMAT,
    MANIFEST,
    METADATA_KEY,
    PART_PATTERN,
    BatchError,
    BatchResult,
    OutputLayout,
    batch_key,
    check_job,
    job_id_of,
    locked,
    merge_parts,
    now_iso,
    part_record,
    results_schema,
    results_table,
    store_in_redis,
    write_json_atomic,
    write_part,
)
from seqrec.services.ranker.batch_sources import (
    BundleHistorySource,
    RedisHistorySource,
    bundle_histories,
    read_user_file,
)
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.history import gap_window
from seqrec.shared.json_api import MAX_TOP_K, parse_filters
from seqrec.shared.scoring import Scorer

__all__ = ["BatchError", "BatchOptions", "BatchRecommender", "BatchSummary", "BatchResult", "batch_key", "run_batch"]

DEFAULT_BATCH_SIZE = 256
DEFAULT_PART_SIZE = 50_000
DEFAULT_MAX_BATCH_TOKENS = 4096  # CPU: users x padded length per ONNX batch (measured best at 2-4k, max_len 200)
MAX_SCORE_CELLS = 1 << 25  # scores held at once in the exact path (128 MiB of float32)


# ---- batching -------------------------------------------------------------------------------------

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
        self.scorer = Scorer.from_bundle(bundle)
        self.exact = None
        if store is None:
            self.exact = self.scorer.searcher(self.catalog.filter_mask(self.clauses) if self.clauses else None)
        popular = self.catalog.popular(top_k, self.clauses, set())
        self.popular = [(self.vocab.item_id(i), score, self.catalog.display_names[i]) for i, score in popular]

    @property
    def has_display_names(self) -> bool:
        return any(name is not None for name in self.catalog.display_names)

    def recommend(self, users: Sequence[str], histories: Sequence[Sequence[str]], batch_size: int = DEFAULT_BATCH_SIZE,
                  on_batch: Callable[[int], None] | None = None) -> list[BatchResult]:
        """Results in `users` order; `histories` are raw item ids, oldest first (only the last
        `max_len - 1` count). Users are encoded in batches of similar history length."""
        encoded = [self.vocab.encode(h[-self.keep:])[0] for h in histories]
        excluded = [sorted(set(r)) if self.exclude_seen else [] for r in encoded]
        return self._answer(users, encoded, None, excluded, batch_size, on_batch)

    def fill_gaps(self, keys: Sequence[str], before: Sequence[list[int]], after: Sequence[list[int]],
                  excluded: Sequence[list[int]], batch_size: int = DEFAULT_BATCH_SIZE,
                  on_batch: Callable[[int], None] | None = None) -> list[BatchResult]:
        """What `GapFill` answers for each gap: item indices on both sides (cut to the window the ranker
        encodes), and the indices each answer leaves out."""
        windows = [gap_window(b, a, self.keep) for b, a in zip(before, after, strict=True)]
        return self._answer(keys, [list(w[0]) for w in windows], [list(w[1]) for w in windows], excluded,
                            batch_size, on_batch)

    def _answer(self, keys: Sequence[str], rows: list[list[int]], following: list[list[int]] | None,
                excluded: Sequence[list[int]], batch_size: int,
                on_batch: Callable[[int], None] | None) -> list[BatchResult]:
        """Encode the rows (gaps when `following` is given) in batches of similar length and search each;
        popularity, less the row's exclusions, for a row without a known item."""
        after = following or [[] for _ in rows]
        results: list[BatchResult | None] = [None] * len(keys)
        with_context = []
        for n, key in enumerate(keys):
            if rows[n] or after[n]:
                with_context.append(n)
            else:
                results[n] = BatchResult(key, self._popular(excluded[n]), "popularity")
        if on_batch and len(with_context) < len(keys):
            on_batch(len(keys) - len(with_context))
        with_context.sort(key=lambda n: len(rows[n]) + len(after[n]))  # less padding per ONNX batch
        for chunk in _chunks(with_context, [len(rows[n]) + len(after[n]) + 1 for n in with_context], batch_size,
                             self.max_batch_tokens):
            before = [rows[n] for n in chunk]
            behind = None if following is None else [after[n] for n in chunk]
            intents = self.encoder.intents(before, behind)
            for n, items in zip(chunk, self._search(before, intents, [excluded[n] for n in chunk], behind),
                                strict=True):
                results[n] = BatchResult(keys[n], items)
            if on_batch:
                on_batch(len(chunk))
        return results  # type: ignore[return-value]

    def _popular(self, excluded: list[int]) -> list[tuple[str, float, str | None]]:
        if not excluded:
            return list(self.popular)
        names = self.catalog.display_names
        return [(self.vocab.item_id(i), score, names[i])
                for i, score in self.catalog.popular(self.top_k, self.clauses, set(excluded))]

    def _search(self, histories: list[list[int]], intents: Any, excluded: list[list[int]],
                followings: list[list[int]] | None) -> list[list[tuple[str, float, str | None]]]:
        """Top-k per history (per gap, with `followings`) through the scoring contract: exact in numpy, or the
        online search merged with the prior as the ranker merges it."""
        if self.exact is not None:
            names = self.catalog.display_names
            return [[(self.vocab.item_id(i), score, names[i]) for i, score in hits]
                    for hits in self.exact.top_k(intents, histories, self.top_k, excluded, followings)]
        after = followings or [None] * len(histories)
        limit = self.top_k + max(self.scorer.overfetch(h, e, f) for h, e, f in zip(histories, excluded, after,
                                                                                   strict=True))
        found = self.store.search(self.version, intents, limit, self.expr, excluded)
        rows = [self.scorer.merge(history, intent, hits, self.top_k, limit, set(skip),
                                  lambda indices: self.store.rows(self.version, indices, self.expr), following)
                for history, intent, hits, skip, following in zip(histories, intents, found, excluded, after,
                                                                  strict=True)]
        return [[(item_id, score, display.get("display_name")) for _, score, item_id, display in row] for row in rows]


@dataclass
class BatchOptions:
    bundle: Path  # a bundle directory, or a bundle root whose LIVE file names the version
    out: Path  # a directory of part files, or FILE.parquet (parts staged beside it, merged at the end)
    users_file: Path | None = None  # default: every user of the bundle's histories.jsonl
    gaps_file: Path | None = None  # gap queries (JSON lines, see batch_gaps) instead of users
    history_cap: int = 1000  # the ranker's SEQREC_HISTORY_CAP: a user's gap_position indexes this many newest events
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
    from seqrec.shared.registry import resolve_bundle

    if options.batch_size < 1 or options.part_size < 1:
        raise BatchError("--batch-size and --part-size must be at least 1")
    if options.max_batch_tokens is not None and options.max_batch_tokens < 0:
        raise BatchError("--max-batch-tokens: must be >= 0 (0 = no limit)")
    if options.redis_ttl_s < 0:
        raise BatchError("--redis-ttl: must be >= 0 (0 = no expiry)")
    bundle = Bundle.open(resolve_bundle(Path(options.bundle)))
    notes: list[str] = []
    gaps, gaps_sha256 = gap_jobs(options.gaps_file, options.users_file, options.to_redis, options.history_cap)
    if gaps is not None and not bundle.manifest.gap_filling:
        raise BatchError(f"--gaps: bundle {bundle.version} was trained by a seqrec without gap filling (its encoder "
                         "answers after the last item only); retrain it to answer gap queries")
    keep = options.history_cap if gaps is not None else bundle.max_len - 1
    stored = None
    if gaps is not None:
        keys = [gap.id for gap in gaps]
    elif options.users_file is not None:
        keys, duplicates = read_user_file(options.users_file)
        if duplicates:
            notes.append(f"{duplicates} duplicate user id(s) in {options.users_file} scored once")
    else:
        stored = bundle_histories(bundle, keep) if not options.redis_url else None
        keys = list(stored) if stored is not None else list(dict.fromkeys(
            str(row["user_id"]) for row in bundle.iter_jsonl(HISTORIES)))
    if options.redis_url:
        try:
            source: BundleHistorySource | RedisHistorySource = RedisHistorySource(options.redis_url, keep)
        except ValueError as exc:  # a malformed URL
            raise BatchError(f"--redis-url: {exc}") from exc
    else:
        source = BundleHistorySource(stored if stored is not None else bundle_histories(bundle, keep))

    store = _open_stores(options, bundle)
    score: Callable[[int, int, Callable[[int], None]], list[BatchResult]]
    if gaps is not None:
        vocab = bundle.vocab()
        sides = gap_sides(gaps, source.read, vocab, options.exclude_seen, excluded_key(vocab, store is not None))

        def score(first: int, last: int, on_batch: Callable[[int], None]) -> list[BatchResult]:
            return recommender.fill_gaps(keys[first:last], sides.before[first:last], sides.after[first:last],
                                         sides.excluded[first:last], options.batch_size, on_batch)
    else:
        def score(first: int, last: int, on_batch: Callable[[int], None]) -> list[BatchResult]:
            return recommender.recommend(keys[first:last], source.read(keys[first:last]), options.batch_size,
                                         on_batch)

    encoder = OnnxEncoder(bundle, options.ort_threads, options.ort_provider)
    recommender = BatchRecommender(bundle, encoder, options.top_k or bundle.top_k, options.filters,
                                   options.exclude_seen, store, options.max_batch_tokens)
    names = recommender.has_display_names
    key = "id" if gaps is not None else "user_id"
    job = {
        "model_version": bundle.version,
        **({"queries": "gap", "gaps_sha256": gaps_sha256, "n_gaps": len(keys), "history_cap": keep}
           if gaps is not None else
           {"users_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest(), "n_users": len(keys)}),
        "top_k": recommender.top_k,
        "filters": json.dumps(options.filters or {}, sort_keys=True),
        "exclude_seen": options.exclude_seen,
        "histories": source.name,
        "search": "milvus" if store is not None else "exact",
        "part_size": options.part_size,
        "display_name": names,
        "to_redis": bool(options.to_redis),
    }
    job_id = job_id_of(job)
    n_parts = (len(keys) + options.part_size - 1) // options.part_size
    output = OutputLayout(Path(options.out))
    started = time.perf_counter()

    def summary(written: int, skipped: int, rows: int, complete: bool, scored: int) -> BatchSummary:
        seconds = time.perf_counter() - started
        return BatchSummary(str(options.out), bundle.version, len(keys), n_parts, written, skipped, rows, complete,
                            round(seconds, 3), round(scored / seconds, 1) if scored and seconds > 0 else 0.0,
                            job["search"], job["histories"], notes)

    if output.final is not None and output.final.exists() and not options.overwrite:
        import pyarrow.parquet as pq

        meta = (pq.read_schema(output.final).metadata or {}).get(METADATA_KEY)
        check_job(json.loads(meta) if meta else {}, job, output.final)
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

    with locked(output.dir):
        manifest_path = output.dir / MANIFEST
        if options.overwrite:
            output.clear()
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            check_job(manifest, job, output.dir)
        else:
            if any(output.dir.glob("part-*.parquet")):
                raise BatchError(f"{output.dir} holds part files but no {MANIFEST}; pass --overwrite or choose "
                                 "another --out")
            manifest = {"format": FORMAT, "job_id": job_id, "job": job, "n_parts": n_parts,
                        "columns": results_schema(names, key).names, "parts": {}, "complete": False,
                        "created_at": now_iso()}
            write_json_atomic(manifest_path, manifest)
        for stale in output.dir.glob(".part-*.tmp"):  # a part that was being written when the run died
            stale.unlink()

        todo = [i for i in range(n_parts) if not output.part(i).is_file()]
        for index in sorted(set(range(n_parts)) - set(todo)):
            manifest["parts"].setdefault(PART_PATTERN.format(index), part_record(output.part(index), job_id))
        done_users = len(keys) - sum(len(keys[i * options.part_size:(i + 1) * options.part_size]) for i in todo)
        written = rows = scored = 0
        with tqdm(total=len(keys), initial=done_users, desc=f"batch-recommend {bundle.version}",
                  unit="gap" if gaps is not None else "user", disable=not options.progress, file=sys.stderr) as bar:
            for index in todo:
                if options.stop_after_parts is not None and written >= options.stop_after_parts:
                    break
                first = index * options.part_size
                part_users = keys[first:first + options.part_size]
                results = score(first, first + len(part_users), bar.update)
                if redis_sink is not None:  # before the part: a finished part implies its users are in Redis
                    store_in_redis(redis_sink, bundle.version, results, options.redis_ttl_s)
                meta = {"format": FORMAT, "job_id": job_id, "part": index, "first_user": first,
                        "users": len(part_users)}
                table = results_table(results, bundle.version, names, meta, key)
                write_part(table, output.part(index))
                written += 1
                rows += table.num_rows
                scored += len(part_users)
                manifest["parts"][PART_PATTERN.format(index)] = {
                    "first_user": first, "users": len(part_users), "rows": table.num_rows,
                    "fallback_users": sum(r.fallback is not None for r in results)}
                manifest["updated_at"] = now_iso()
                write_json_atomic(manifest_path, manifest)
        complete = all(output.part(i).is_file() for i in range(n_parts))
        if complete:
            manifest["complete"] = True
            manifest["updated_at"] = now_iso()
            manifest.setdefault("completed_at", now_iso())
            write_json_atomic(manifest_path, manifest)
    if complete and output.final is not None:
        merge_parts(output, n_parts, names, job_id, job, key)
        shutil.rmtree(output.dir)
    return summary(written, n_parts - len(todo), rows, complete, scored)
