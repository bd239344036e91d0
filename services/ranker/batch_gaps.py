"""`seqrec batch-recommend --gaps FILE.jsonl`: many gap queries answered offline, each as `GapFill` answers it.

Each line is one `gap` query in the JSON API's shape, plus an `id` that names its answer in the output:

    {"id": "playlist-7", "session_items": ["a", "b", "c"], "gap_position": 1}
    {"id": "u42-3", "user_id": "u42", "gap_position": 3, "exclude_item_ids": ["x"]}

A line is validated as the JSON API validates a `gap` request. `top_k`, `filters` and `exclude_seen` belong to
the whole job (the command line's options), so a line that sets them is refused. A user's `gap_position` indexes
their history as the ranker stores it: the newest `--history-cap` events of the bundle's histories, or of Redis
with `--redis-url`. Every line is checked before anything is scored, so a bad line stops the job at the start with
its line number, never halfway through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from seqrec.services.ranker.batch_output import BatchError
from seqrec.shared.history import split_at_gap
from seqrec.shared.json_api import MAX_ID_CHARS, RequestError, parse_request
from seqrec.shared.vocab import ItemVocab

JOB_OPTIONS = {"top_k": "--top-k", "filters": "--filters", "exclude_seen": "--exclude-seen/--no-exclude-seen"}


@dataclass(frozen=True)
class GapJob:
    line: int  # 1-based line of the file, for errors
    id: str
    user_id: str
    session_items: tuple[str, ...]
    gap_position: int
    exclude_item_ids: tuple[str, ...]


@dataclass
class GapSides:
    """Item indices before and after each gap, and the indices each answer leaves out (job order)."""

    before: list[list[int]]
    after: list[list[int]]
    excluded: list[list[int]]


def _job(number: int, line: str, seen: dict[str, int]) -> GapJob:
    where = f"--gaps line {number}"
    try:
        payload = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BatchError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BatchError(f"{where}: expected a JSON object, got {type(payload).__name__}")
    payload = dict(payload)
    gap_id = payload.pop("id", None)
    if not isinstance(gap_id, str) or not gap_id.strip():
        raise BatchError(f"{where}: id: required, a non-empty string that names the answer")
    if len(gap_id) > MAX_ID_CHARS:
        raise BatchError(f"{where}: id: at most {MAX_ID_CHARS} characters, got {len(gap_id)}")
    if gap_id in seen:
        raise BatchError(f"{where}: id: {gap_id!r} is already the id of line {seen[gap_id]}")
    for name, flag in JOB_OPTIONS.items():
        if name in payload:
            raise BatchError(f"{where}: {name}: an option of the whole job; pass {flag} instead")
    if payload.pop("query_type", "gap") != "gap":
        raise BatchError(f"{where}: query_type: only gap queries go in --gaps")
    try:
        _, request = parse_request({**payload, "query_type": "gap"})
    except RequestError as exc:
        raise BatchError(f"{where}: {exc}") from exc
    seen[gap_id] = number
    return GapJob(number, gap_id, request.user_id, tuple(request.session_items), request.gap_position,
                  tuple(request.exclude_item_ids))


def read_gap_file(path: Path) -> tuple[list[GapJob], str]:
    """The file's gap queries in file order (blank lines skipped) and the file's sha256."""
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"--gaps: cannot read {path}: {exc}") from exc
    seen: dict[str, int] = {}
    jobs = [_job(n, line, seen) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not jobs:
        raise BatchError(f"--gaps: {path} holds no gap query")
    return jobs, hashlib.sha256(raw).hexdigest()


def gap_jobs(gaps_file: Path | None, users_file: Path | None, to_redis: str | None,
             history_cap: int) -> tuple[list[GapJob] | None, str]:
    """The gap queries of a `--gaps` job and the file's sha256 ((None, "") for a user job), checked against the
    options a gap job cannot take."""
    if gaps_file is None:
        return None, ""
    if users_file is not None:
        raise BatchError("--gaps: a job answers either --users or --gaps, not both")
    if to_redis:
        raise BatchError("--to-redis: stores lists per user; a --gaps job writes its answers to --out only")
    if history_cap < 1:
        raise BatchError(f"--history-cap: must be at least 1, got {history_cap}")
    return read_gap_file(gaps_file)


def excluded_key(vocab: ItemVocab, online_items: bool) -> Callable[[str], int | None]:
    """The search key of an excluded item id: its bundle index, or (searching Milvus, which holds the items added
    online) the key the ranker gives an item it did not train on."""
    from seqrec.services.ranker.online_items import online_pk

    return lambda item_id: vocab.get(item_id) or (online_pk(item_id) if online_items else None)


def gap_sides(jobs: Sequence[GapJob], read_histories: Callable[[Sequence[str]], list[list[str]]], vocab: ItemVocab,
              exclude_seen: bool, excluded_key: Callable[[str], int | None]) -> GapSides:
    """Both sides of every gap and its exclusions, as `Recommender.gap` computes them: the stored histories of
    the jobs' users come from `read_histories`; `excluded_key` maps an excluded item id to the key the search
    leaves out (None: nothing to leave out)."""
    users = list(dict.fromkeys(job.user_id for job in jobs if job.user_id))
    stored = dict(zip(users, read_histories(users), strict=True))
    sides = GapSides([], [], [])
    for job in jobs:
        sequence = list(job.session_items) if job.session_items else stored[job.user_id]
        what = "session_items" if job.session_items else f"the {len(sequence)} stored events of user {job.user_id!r}"
        try:
            items_before, items_after = split_at_gap(sequence, job.gap_position, what)
        except ValueError as exc:
            raise BatchError(f"--gaps line {job.line}: {exc}") from exc
        before = vocab.encode(items_before)[0]
        after = vocab.encode(items_after)[0]
        excluded = {key for key in map(excluded_key, job.exclude_item_ids) if key is not None}
        if exclude_seen:
            excluded |= set(before) | set(after)
        sides.before.append(before)
        sides.after.append(after)
        sides.excluded.append(sorted(excluded))
    return sides
