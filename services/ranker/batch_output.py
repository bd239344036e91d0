"""Where `seqrec batch-recommend` writes: resumable Parquet parts, the job manifest, the merged file and Redis.

Every part is written atomically (temporary file, fsync, rename) as `part-NNNNN.parquet`; `_manifest.json`
describes the job, so a rerun with the same options skips finished parts and refuses another job's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "seqrec-batch/1"
MANIFEST = "_manifest.json"  # leading underscore: Parquet dataset readers skip it
LOCK = ".lock"
PART_PATTERN = "part-{:05d}.parquet"
PARTS_SUFFIX = ".parts"  # staging directory of a single-file output
METADATA_KEY = b"seqrec.batch"
REDIS_KEY_PREFIX = "seqrec:batch:"
REDIS_READ_CHUNK = 1000


class BatchError(RuntimeError):
    """The job cannot run as asked: bad options, an output that belongs to another job, a busy output."""


# ---- results ----------------------------------------------------------------------------------

@dataclass
class BatchResult:
    key: str  # the user id, or a gap job's request id
    items: list[tuple[str, float, str | None]]  # item_id, score, display name; best first
    fallback: str | None = None  # "popularity" when there was no known item to read


def batch_key(version: str, user_id: str) -> str:
    """Redis key of a user's precomputed list, e.g. `seqrec:batch:<version>:{u42}`: the hash tag is the
    user id, escaped exactly as in the user's history key (`seqrec:hist:{u42}`)."""
    from seqrec.services.ranker.history_store import KEY_PREFIX, history_key

    return f"{REDIS_KEY_PREFIX}{version}:{history_key(user_id).removeprefix(KEY_PREFIX)}"


def redis_errors() -> tuple[type[Exception], ...]:
    import redis
    from redis.exceptions import RedisClusterException

    return redis.RedisError, RedisClusterException


def result_json(result: BatchResult, version: str) -> str:
    """The value stored under `batch_key`: the user's list as the JSON API shapes an answer."""
    items = []
    for item_id, score, name in result.items:
        entry: dict[str, Any] = {"item_id": item_id, "score": round(float(score), 6)}
        if name is not None:
            entry["display_name"] = name
        items.append(entry)
    return json.dumps({"items": items, "model_version": version, "fallback": result.fallback},
                      ensure_ascii=False)



# ---- output -----------------------------------------------------------------------------------------

def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    replace_durably(tmp, path)


def results_schema(display_names: bool, key: str = "user_id") -> Any:
    """The output columns; `key` names the first: `user_id`, or `id` for gap jobs."""
    import pyarrow as pa

    fields = [pa.field(key, pa.string(), nullable=False), pa.field("rank", pa.int32(), nullable=False),
              pa.field("item_id", pa.string(), nullable=False), pa.field("score", pa.float32(), nullable=False)]
    if display_names:
        fields.append(pa.field("display_name", pa.string()))
    fields += [pa.field("model_version", pa.string(), nullable=False), pa.field("fallback", pa.string())]
    return pa.schema(fields)


def results_table(results: Sequence[BatchResult], version: str, display_names: bool, metadata: dict[str, Any],
                  key: str = "user_id") -> Any:
    """One row per (key, recommended item), keys in the given order, ranks from 1."""
    import pyarrow as pa

    counts = [len(r.items) for r in results]
    total = sum(counts)
    columns: dict[str, Any] = {
        key: [r.key for r in results for _ in r.items],
        "rank": np.concatenate([np.arange(1, c + 1, dtype=np.int32) for c in counts]) if total else
        np.zeros(0, dtype=np.int32),
        "item_id": [item for r in results for item, _, _ in r.items],
        "score": np.fromiter((s for r in results for _, s, _ in r.items), dtype=np.float32, count=total),
    }
    if display_names:
        columns["display_name"] = [name for r in results for _, _, name in r.items]
    columns["model_version"] = [version] * total
    columns["fallback"] = [r.fallback for r in results for _ in r.items]
    schema = results_schema(display_names, key).with_metadata({METADATA_KEY: json.dumps(metadata)})
    return pa.Table.from_pydict(columns, schema=schema)


def store_in_redis(client: Any, version: str, results: Sequence[BatchResult], ttl_s: int) -> None:
    """SET each user's list (JSON) under `batch_key`, with a TTL when ttl_s > 0; idempotent."""
    from seqrec.services.ranker.history_store import HistoryStoreUnavailable

    for start in range(0, len(results), REDIS_READ_CHUNK):
        try:
            with client.pipeline(transaction=False) as pipe:
                for result in results[start:start + REDIS_READ_CHUNK]:
                    pipe.set(batch_key(version, result.key), result_json(result, version), ex=ttl_s or None)
                pipe.execute()
        except redis_errors() as exc:
            raise HistoryStoreUnavailable(f"--to-redis: Redis is unavailable: {exc}") from exc



class OutputLayout:
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
def locked(directory: Path) -> Iterator[None]:
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


def job_id_of(job: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]


def check_job(found: dict[str, Any], job: dict[str, Any], where: Path) -> None:
    if found.get("format") != FORMAT or found.get("job") != job:
        old = found.get("job") or {}
        differs = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k)) or ["format"]
        raise BatchError(f"{where} holds a batch job with other options (differs in: {', '.join(differs)}); "
                         "rerun with the same options to resume, pass --overwrite, or choose another --out")



def part_record(path: Path, job_id: str) -> dict[str, Any]:
    """The manifest entry of an existing part, from its footer; refuses a part of another job."""
    import pyarrow.parquet as pq

    footer = pq.read_metadata(path)
    meta = json.loads((footer.metadata or {}).get(METADATA_KEY, b"{}"))
    if meta.get("job_id") != job_id:
        raise BatchError(f"{path} belongs to another batch job; pass --overwrite or choose another --out")
    return {"first_user": meta["first_user"], "users": meta["users"], "rows": footer.num_rows}


def write_part(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    replace_durably(tmp, path)


def merge_parts(output: OutputLayout, n_parts: int, names: bool, job_id: str, job: dict[str, Any],
                key: str = "user_id") -> None:
    """Concatenate the parts into the single output file, atomically."""
    import pyarrow.parquet as pq

    assert output.final is not None
    output.final.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.final.with_name(f".{output.final.name}.tmp")
    schema = results_schema(names, key).with_metadata({METADATA_KEY: json.dumps({"format": FORMAT, "job_id": job_id,
                                                                       "job": job, "n_parts": n_parts})})
    with pq.ParquetWriter(tmp, schema) as writer:
        for index in range(n_parts):
            writer.write_table(pq.read_table(output.part(index)).replace_schema_metadata(schema.metadata))
    replace_durably(tmp, output.final)
