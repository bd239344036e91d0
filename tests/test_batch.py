"""`seqrec batch-recommend`: the online user_to_item answer for every user, into resumable Parquet parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from seqrec.services.ranker import batch, batch_output
from seqrec.services.ranker.batch import BatchError, BatchOptions, batch_key, run_batch
from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.services.ranker.filters import FilterError
from seqrec.services.ranker.history_store import Event, RedisHistoryStore
from seqrec.services.ranker.publish import publish
from seqrec.services.ranker.recommender import Recommender
from seqrec.services.ranker.vector_store import MilvusItemStore
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.json_api import FALLBACK_NAMES, RequestError, parse_filters
from tests.conftest import bundle_before_gap_filling

DRAMA_IN_STOCK = {"meta.genre": "drama", "meta.in_stock": True}


def _db_url(redis_server, db: int) -> str:
    url = f"redis://{redis_server.address}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def published(trained_bundle, redis_server, milvus_server):
    """The trained bundle published into Milvus and a Redis database of this module's own."""
    path, _ = trained_bundle
    url = _db_url(redis_server, 3)
    publish(path, url, milvus_server, progress=False)
    return path, url, milvus_server


def _recommender(path: Path, redis_url: str, milvus_uri: str) -> Recommender:
    bundle = Bundle.open(path)
    return Recommender(bundle, OnnxEncoder(bundle), MilvusItemStore(milvus_uri), RedisHistoryStore(redis_url))


@pytest.fixture(scope="module")
def online(published) -> Recommender:
    return _recommender(*published)


@pytest.fixture(scope="module")
def all_users(published) -> list[str]:
    return [row["user_id"] for row in Bundle.open(published[0]).iter_jsonl(HISTORIES)]


def _users_file(tmp_path: Path, users: list[str]) -> Path:
    path = tmp_path / "users.txt"
    path.write_text("\n".join(users) + "\n")
    return path


def _run(path: Path, out: Path, **options) -> batch.BatchSummary:
    options.setdefault("progress", False)
    return run_batch(BatchOptions(bundle=path, out=out, **options))


def _by_user(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {user: rows.sort_values("rank") for user, rows in frame.groupby("user_id", sort=False)}


def _assert_equals_online(frame: pd.DataFrame, online: Recommender, users: list[str], top_k: int,
                          filters: dict | None, exclude_seen: bool) -> None:
    clauses = parse_filters("filters", filters) if filters else []
    rows = _by_user(frame)
    for user in users:
        want = online.user_to_item(user, clauses, top_k, exclude_seen)
        got = rows.get(user)
        want_ids = [item_id for item_id, *_ in want.items]
        if got is None:  # a user without any result writes no row
            assert want_ids == [], user
            continue
        assert got["item_id"].tolist() == want_ids, user
        assert got["rank"].tolist() == list(range(1, len(want_ids) + 1))
        np.testing.assert_allclose(got["score"].to_numpy(), [s for _, s, *_ in want.items], rtol=1e-5, atol=1e-6)
        assert got["display_name"].tolist() == [name for _, _, name, _ in want.items]
        assert set(got["fallback"].fillna("none")) == {FALLBACK_NAMES[want.fallback] or "none"}
        assert set(got["model_version"]) == {online.version}


@pytest.mark.parametrize("search", ["exact", "milvus"])
@pytest.mark.parametrize("filters,exclude_seen,top_k", [
    (None, True, 10),
    (DRAMA_IN_STOCK, True, 7),
    (None, False, 5),
    ({"meta.genre": ["docs", "comedy"], "meta.in_stock": False}, False, 12),
])
def test_batch_equals_online_user_to_item(published, online, all_users, tmp_path, search, filters, exclude_seen,
                                          top_k):
    path, _, milvus_uri = published
    users = all_users if filters is None and exclude_seen else all_users[::3]
    users = [*users, "nobody-ever"]  # unknown: the popularity fallback, filtered like online
    summary = _run(path, tmp_path / "out", users_file=_users_file(tmp_path, users), top_k=top_k, filters=filters,
                   exclude_seen=exclude_seen, batch_size=32, part_size=40,
                   milvus_uri=milvus_uri if search == "milvus" else None)
    assert summary.complete and summary.users == len(users) and summary.search == search
    frame = pd.read_parquet(tmp_path / "out")
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "display_name", "model_version", "fallback"]
    assert frame.groupby("user_id").size().max() == top_k
    _assert_equals_online(frame, online, users, top_k, filters, exclude_seen)
    if filters:
        catalog = online.catalog
        meta = [catalog.meta[online.vocab.index(i)] for i in frame["item_id"]]
        assert all(all(m[k.removeprefix("meta.")] in (v if isinstance(v, list) else [v]) for k, v in filters.items())
                   for m in meta)


def test_redis_histories_count_events_ingested_since_training(published, redis_server, all_users, tmp_path):
    path, _, milvus_uri = published
    url = _db_url(redis_server, 4)
    publish(path, url, milvus_uri, progress=False)  # Milvus is already loaded: this fills Redis db 4
    online = _recommender(path, url, milvus_uri)
    old_user, new_user = all_users[0], "fresh-user"
    now_ms = 2_000_000_000_000
    RedisHistoryStore(url).append([Event(old_user, "s9e0", now_ms), Event(old_user, "s9e1", now_ms + 1)] +
                                  [Event(new_user, f"s4e{e}", now_ms + e) for e in range(3)])
    users = [old_user, new_user, *all_users[1:20]]
    users_file = _users_file(tmp_path, users)
    _run(path, tmp_path / "redis", users_file=users_file, redis_url=url)
    from_redis = pd.read_parquet(tmp_path / "redis")
    _assert_equals_online(from_redis, online, users, 10, None, True)
    assert set(from_redis[from_redis.user_id == new_user]["fallback"].isna()) == {True}  # a real history

    _run(path, tmp_path / "bundle", users_file=users_file)  # the training-time histories miss those events
    from_bundle = _by_user(pd.read_parquet(tmp_path / "bundle"))
    assert set(from_bundle[new_user]["fallback"]) == {"popularity"}
    assert from_bundle[old_user]["item_id"].tolist() != _by_user(from_redis)[old_user]["item_id"].tolist()


def test_stopped_run_resumes_and_writes_every_user_once(published, all_users, tmp_path):
    path = published[0]
    n_parts = -(-len(all_users) // 45)
    whole = _run(path, tmp_path / "whole", part_size=45, batch_size=16)
    assert whole.complete and whole.parts == n_parts == whole.parts_written

    out = tmp_path / "resumed"
    first = _run(path, out, part_size=45, batch_size=16, stop_after_parts=2)
    assert not first.complete and first.parts_written == 2
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert json.loads((out / batch.MANIFEST).read_text())["complete"] is False
    second = _run(path, out, part_size=45, batch_size=64, stop_after_parts=3)  # batch size may change
    assert (second.parts_skipped, second.parts_written, second.complete) == (2, 3, False)
    last = _run(path, out, part_size=45)
    assert (last.parts_skipped, last.parts_written, last.complete) == (5, n_parts - 5, True)
    again = _run(path, out, part_size=45)
    assert again.parts_written == 0 and again.complete

    frame = pd.read_parquet(out)
    assert frame.groupby("user_id").size().eq(10).all()
    assert sorted(frame["user_id"].unique()) == sorted(all_users)
    assert not frame.duplicated(["user_id", "rank"]).any()
    assert frame["user_id"].drop_duplicates().tolist() == all_users  # contiguous chunks, in list order
    pd.testing.assert_frame_equal(frame, pd.read_parquet(tmp_path / "whole"), check_exact=False, rtol=1e-5)
    manifest = json.loads((out / batch.MANIFEST).read_text())
    assert manifest["complete"] and len(manifest["parts"]) == n_parts
    assert sum(p["users"] for p in manifest["parts"].values()) == len(all_users)


def test_batch_shapes_do_not_change_the_answer(published, all_users, tmp_path):
    path, users = published[0], all_users[:80]
    users_file = _users_file(tmp_path, users)
    wide = _run(path, tmp_path / "wide", users_file=users_file, batch_size=256, max_batch_tokens=0)
    narrow = _run(path, tmp_path / "narrow", users_file=users_file, batch_size=5, max_batch_tokens=30)
    assert wide.complete and narrow.complete
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "wide"), pd.read_parquet(tmp_path / "narrow"),
                                  check_exact=False, rtol=1e-5)
    assert list(batch._chunks([0, 1, 2, 3, 4], [3, 3, 5, 10, 10], 4, 12)) == [[0, 1], [2], [3], [4]]
    assert list(batch._chunks([0, 1, 2], [3, 3, 5], 2, 0)) == [[0, 1], [2]]


@pytest.mark.parametrize("crash_in", ["part", "manifest"])
def test_a_crash_leaves_nothing_half_written(published, all_users, tmp_path, monkeypatch, crash_in):
    """Killed while renaming the third part into place, or right after (before the manifest knew)."""
    path, out = published[0], tmp_path / "crash"
    real = batch_output.replace_durably
    calls = {"parts": 0}

    def crash_on_third_part(tmp: Path, final: Path) -> None:
        if final.name.startswith("part-"):
            calls["parts"] += 1
        if calls["parts"] == 3 and (final.name.startswith("part-") if crash_in == "part" else final.name ==
                                    batch.MANIFEST):
            raise OSError("killed")
        real(tmp, final)

    monkeypatch.setattr(batch_output, "replace_durably", crash_on_third_part)
    with pytest.raises(OSError, match="killed"):
        _run(path, out, part_size=60)
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert len(parts) == (2 if crash_in == "part" else 3)
    assert len(json.loads((out / batch.MANIFEST).read_text())["parts"]) == 2
    if crash_in == "part":
        assert list(out.glob(".part-00002.parquet.tmp"))  # the torn write never became a part
    monkeypatch.setattr(batch_output, "replace_durably", real)
    resumed = _run(path, out, part_size=60)
    n_parts = -(-len(all_users) // 60)
    assert resumed.complete and resumed.parts_written == n_parts - len(parts) and not list(out.glob(".*.tmp"))
    frame = pd.read_parquet(out)
    assert len(frame) == 10 * len(all_users) and not frame.duplicated(["user_id", "rank"]).any()
    assert frame["user_id"].drop_duplicates().tolist() == all_users
    manifest = json.loads((out / batch.MANIFEST).read_text())
    assert manifest["complete"] and sum(p["users"] for p in manifest["parts"].values()) == len(all_users)


def test_other_options_do_not_resume_someone_elses_job(published, tmp_path):
    path, out = published[0], tmp_path / "job"
    _run(path, out, part_size=100, stop_after_parts=1)
    with pytest.raises(BatchError, match="differs in: top_k"):
        _run(path, out, part_size=100, top_k=3)
    with pytest.raises(BatchError, match="exclude_seen"):
        _run(path, out, part_size=100, exclude_seen=False)
    fresh = _run(path, out, part_size=100, top_k=3, overwrite=True)
    assert fresh.complete and fresh.parts_written == fresh.parts
    assert pd.read_parquet(out).groupby("user_id").size().eq(3).all()


def test_to_redis_stores_each_users_list(published, redis_server, all_users, tmp_path):
    path = published[0]
    url = _db_url(redis_server, 5)
    users = [*all_users[:25], "nobody-ever"]
    _run(path, tmp_path / "out", users_file=_users_file(tmp_path, users), to_redis=url, redis_ttl_s=3600, top_k=4)
    frame = _by_user(pd.read_parquet(tmp_path / "out"))
    client = redis.Redis.from_url(url)
    version = Bundle.open(path).version
    assert client.dbsize() == len(users)
    for user in users:
        key = batch_key(version, user)
        stored = json.loads(client.get(key))
        assert [i["item_id"] for i in stored["items"]] == frame[user]["item_id"].tolist()
        assert stored["model_version"] == version and 0 < client.ttl(key) <= 3600
        assert stored["fallback"] == ("popularity" if user == "nobody-ever" else None)
        assert stored["items"][0]["display_name"].startswith("Series ")


def test_users_file_duplicates_and_blank_lines(published, all_users, tmp_path):
    path = published[0]
    users_file = tmp_path / "users.txt"
    users_file.write_text(f"{all_users[0]}\n\n  {all_users[1]}  \n{all_users[0]}\n")
    summary = _run(path, tmp_path / "out", users_file=users_file)
    assert summary.users == 2 and "1 duplicate" in summary.notes[0]
    assert pd.read_parquet(tmp_path / "out")["user_id"].drop_duplicates().tolist() == all_users[:2]


@pytest.mark.parametrize("filters,error", [
    ({"meta.brand": "x"}, FilterError),
    ({"meta.in_stock": "yes"}, FilterError),
    ({"genre": "drama"}, RequestError),
])
def test_bad_filters_are_refused_before_any_output(published, tmp_path, filters, error):
    with pytest.raises(error):
        _run(published[0], tmp_path / "out", filters=filters)
    assert not (tmp_path / "out").exists()


def test_milvus_path_needs_the_version_published(published, tmp_path):
    import shutil

    copy = tmp_path / "bundles" / "unpublished"
    shutil.copytree(published[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["bundle_version"] = "never-published"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BatchError, match="not loaded in Milvus"):
        _run(copy, tmp_path / "out", milvus_uri=published[2])


def test_cli_single_file_output_from_the_bundle_root(published, all_users, tmp_path):
    path = published[0]
    out = tmp_path / "recs.parquet"
    cmd = [sys.executable, "-m", "seqrec.services.cli", "batch-recommend", str(path.parent), "--out", str(out),
           "--part-size", "120", "--top-k", "3", "--filters", json.dumps({"meta.genre": "comedy"}), "--no-progress"]
    first = subprocess.run([*cmd, "--stop-after-parts", "1"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["complete"] is False and not out.exists()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout.splitlines()[-1])
    assert result["complete"] and result["parts_skipped"] == 1 and result["parts_written"] == 2
    assert not (tmp_path / "recs.parquet.parts").exists()
    frame = pd.read_parquet(out)
    assert frame["user_id"].drop_duplicates().tolist() == all_users and frame.groupby("user_id").size().eq(3).all()
    assert json.loads(pq.read_schema(out).metadata[batch.METADATA_KEY])["job"]["top_k"] == 3
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # already there: nothing to do
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])["parts_written"] == 0
    bad = subprocess.run([*cmd[:-1], "--filters", '{"meta.nope": 1}'], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "meta.nope" in bad.stderr


# ---- gap queries (--gaps) -------------------------------------------------------------------------

def _gaps_file(tmp_path: Path, lines: list, name: str = "gaps.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def _gap_lines(bundle: Bundle) -> list[dict]:
    """Sessions with gaps at the start, the middle and the end, unknown items, exclusions, a user's stored history
    and a session of nothing known (the popularity fallback)."""
    rows = list(bundle.iter_jsonl(HISTORIES))
    lines = [{"id": "mid", "session_items": ["s4e0", "s4e1", "nope", "s4e3", "s4e4"], "gap_position": 2},
             {"id": "start", "session_items": ["s2e1", "s2e2"], "gap_position": 0},
             {"id": "end", "session_items": ["s2e0", "s2e1", "s6e3"], "gap_position": 3,
              "exclude_item_ids": ["s2e2", "never-seen"]},
             {"id": "unknown", "session_items": ["nope", "nada"], "gap_position": 1, "exclude_item_ids": ["s0e0"]}]
    for n, row in enumerate(rows[:12]):
        lines.append({"id": f"user-{n}", "user_id": row["user_id"],
                      "gap_position": [1, len(row["items"]) // 2, len(row["items"])][n % 3]})
    return lines


@pytest.mark.parametrize("search,filters,exclude_seen", [("exact", None, True), ("exact", DRAMA_IN_STOCK, False),
                                                         ("milvus", None, True), ("milvus", DRAMA_IN_STOCK, True)])
def test_batch_gaps_equal_online_gap_fill(published, online, tmp_path, search, filters, exclude_seen):
    path, redis_url, milvus_uri = published
    lines = _gap_lines(Bundle.open(path))
    summary = _run(path, tmp_path / "gaps.parquet", gaps_file=_gaps_file(tmp_path, lines), top_k=6, filters=filters,
                   exclude_seen=exclude_seen, batch_size=4, part_size=7,
                   milvus_uri=milvus_uri if search == "milvus" else None,
                   redis_url=redis_url if search == "milvus" else None)
    assert summary.complete and summary.users == len(lines) and summary.parts == 3
    frame = pd.read_parquet(tmp_path / "gaps.parquet")
    assert list(frame.columns) == ["id", "rank", "item_id", "score", "display_name", "model_version", "fallback"]
    assert frame["id"].drop_duplicates().tolist() == [line["id"] for line in lines]
    clauses = parse_filters("filters", filters) if filters else []
    rows = {key: group.sort_values("rank") for key, group in frame.groupby("id", sort=False)}
    for line in lines:
        want = online.gap(line.get("user_id", ""), line.get("session_items", []), line["gap_position"], clauses, 6,
                          exclude_seen, line.get("exclude_item_ids", []))
        got = rows[line["id"]]
        assert got["item_id"].tolist() == [item_id for item_id, *_ in want.items], line["id"]
        np.testing.assert_allclose(got["score"].to_numpy(), [s for _, s, *_ in want.items], rtol=1e-5, atol=1e-6)
        assert set(got["fallback"].fillna("none")) == {FALLBACK_NAMES[want.fallback] or "none"}
    if filters is None:
        assert rows["mid"]["item_id"].iloc[0] == "s4e2"
    assert set(rows["unknown"]["fallback"]) == {"popularity"} and "s0e0" not in set(rows["unknown"]["item_id"])
    assert "s2e2" not in set(rows["end"]["item_id"])


@pytest.mark.parametrize("line,error", [
    ("{not json", "line 2: not JSON"),
    ('["a"]', "line 2: expected a JSON object"),
    ({"session_items": ["s1e0"], "gap_position": 0}, "line 2: id: required"),
    ({"id": "first", "session_items": ["s1e0"], "gap_position": 0}, "line 2: id: 'first' is already the id of line 1"),
    ({"id": "k", "session_items": ["s1e0"], "gap_position": 0, "top_k": 3}, "line 2: top_k: .*--top-k"),
    ({"id": "k", "session_items": ["s1e0"], "gap_position": 0, "query_type": "sequential"}, "line 2: query_type"),
    ({"id": "k", "session_items": ["s1e0"]}, "line 2: gap_position: required"),
    ({"id": "k", "session_items": ["s1e0"], "gap_position": 2}, r"line 2: gap_position: must be between 0 and 1"),
    ({"id": "k", "user_id": "u", "session_items": ["s1e0"], "gap_position": 0}, "line 2: user_id"),
    ({"id": "k", "user_id": "nobody-ever", "gap_position": 1}, "line 2: gap_position: .*0 stored events"),
    ({"id": "k", "session_items": ["s1e0"], "gap_position": 0, "colour": 1}, "line 2: colour: unknown field"),
])
def test_bad_gap_lines_stop_the_job_before_any_output(published, tmp_path, line, error):
    gaps = _gaps_file(tmp_path, [{"id": "first", "session_items": ["s1e0", "s1e2"], "gap_position": 1}, line])
    with pytest.raises(BatchError, match=error):
        _run(published[0], tmp_path / "out", gaps_file=gaps)
    assert not (tmp_path / "out").exists()


def test_gap_jobs_refuse_user_options_and_resume_by_their_own_file(published, all_users, tmp_path):
    path = published[0]
    gaps = _gaps_file(tmp_path, _gap_lines(Bundle.open(path)))
    with pytest.raises(BatchError, match="--users or --gaps"):
        _run(path, tmp_path / "out", gaps_file=gaps, users_file=_users_file(tmp_path, all_users[:3]))
    with pytest.raises(BatchError, match="--to-redis"):
        _run(path, tmp_path / "out", gaps_file=gaps, to_redis="redis://127.0.0.1:1/0")
    first = _run(path, tmp_path / "out", gaps_file=gaps, part_size=5, stop_after_parts=1)
    assert not first.complete and first.parts_written == 1
    with pytest.raises(BatchError, match="differs in: .*gaps_sha256"):
        _run(path, tmp_path / "out", gaps_file=_gaps_file(tmp_path, _gap_lines(Bundle.open(path))[:3], "fewer.jsonl"),
             part_size=5)
    rest = _run(path, tmp_path / "out", gaps_file=gaps, part_size=5)
    assert rest.complete and rest.parts_skipped == 1
    frame = pd.read_parquet(tmp_path / "out")
    assert not frame.duplicated(["id", "rank"]).any() and frame["id"].nunique() == len(_gap_lines(Bundle.open(path)))


def test_cli_answers_a_gap_file(published, tmp_path):
    out = tmp_path / "gaps.parquet"
    gaps = _gaps_file(tmp_path, [{"id": "p1", "session_items": ["s4e0", "s4e1", "s4e3"], "gap_position": 2}])
    done = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "batch-recommend", str(published[0]), "--out",
                           str(out), "--gaps", str(gaps), "--top-k", "3", "--no-progress"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(out)
    assert frame["id"].tolist() == ["p1"] * 3 and frame["item_id"].iloc[0] == "s4e2"
    bad = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "batch-recommend", str(published[0]), "--out",
                          str(tmp_path / "bad"), "--gaps", str(_gaps_file(tmp_path, ['{"id": "x"}']))],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "--gaps line 1: gap_position: required" in bad.stderr


def test_gap_jobs_need_a_bundle_that_fills_gaps(published, tmp_path):
    old = bundle_before_gap_filling(published[0], tmp_path / "old")
    gaps = _gaps_file(tmp_path, [{"id": "a", "session_items": ["s1e0", "s1e2"], "gap_position": 1}])
    with pytest.raises(BatchError, match="without gap filling"):
        _run(old, tmp_path / "out", gaps_file=gaps)
