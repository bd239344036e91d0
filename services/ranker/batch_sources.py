"""Whom `seqrec batch-recommend` scores and what they did: user files, and histories from the bundle or Redis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seqrec.services.ranker.batch_output import REDIS_READ_CHUNK, BatchError, redis_errors
from seqrec.shared.bundle import HISTORIES, Bundle


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
            except redis_errors() as exc:
                raise HistoryStoreUnavailable(f"--redis-url: Redis is unavailable: {exc}") from exc
            out.extend([_parse(e)[0] for e in entries] for entries in rows)
        return out


