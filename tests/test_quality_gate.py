"""The publish quality gate, for real: bundles trained by the trainer's own pipeline on the series data, a live
bundle trained on the older part of it, candidates trained on all of it; `seqrec publish` with real Redis and
Milvus holds a candidate that serves the newest held-out interactions worse, publishes one that serves them
well, and records each decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.services.ranker.quality_gate import DECISIONS_FILE, GatePolicy, judge, live_ranks, ndcg_hr
from seqrec.shared.bundle import HELDOUT, HISTORIES, Bundle
from seqrec.shared.registry import BundleRegistry
from tests.conftest import make_series_interactions


def _train(data: Path, out: Path, epochs: int, **hparams: float) -> Bundle:
    from seqrec.services.trainer.pipeline import run_training
    from seqrec.shared.config import DataConfig, TrainConfig, build_hparams

    cfg = TrainConfig(data=DataConfig(data=str(data)), seed=3,
                      hparams=build_hparams(max_len=12, hidden_size=32, heads=2, epochs=epochs, batch_size=64,
                                            patience=epochs, lr=0.003, eval_every=max(1, epochs // 4),
                                            negative_samples=50, **hparams))
    path, _ = run_training(cfg, out, progress=False)
    return Bundle.open(path)


def scrambled(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The same interactions with each user's order scrambled except the last two (an upstream job that lost
    the event order): a model trained on it learns the wrong transitions."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, user in frame.sort_values("timestamp").groupby("user_id", sort=False):
        times = user["timestamp"].to_numpy().copy()
        times[:-2] = rng.permutation(times[:-2])
        parts.append(user.assign(timestamp=times))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Bundle]:
    """One bundle root: `old` trained on interactions before the 70th percentile of time, `weak` on every
    interaction in a scrambled order, `good` on every interaction."""
    frame = make_series_interactions()
    data_dir, root = tmp_path_factory.mktemp("gate-data"), tmp_path_factory.mktemp("gate-bundles")
    cutoff = frame["timestamp"].quantile(0.7)
    frame[frame["timestamp"] < cutoff].to_csv(data_dir / "old.csv", index=False)
    frame.to_csv(data_dir / "all.csv", index=False)
    scrambled(frame).to_csv(data_dir / "scrambled.csv", index=False)
    return {"old": _train(data_dir / "old.csv", root, 30), "weak": _train(data_dir / "scrambled.csv", root, 30),
            "good": _train(data_dir / "all.csv", root, 30)}


def test_the_bundle_keeps_its_selection_runs_held_out_ranks(bundles):
    good = bundles["good"]
    rows = list(good.iter_jsonl(HELDOUT))
    histories = {row["user_id"]: row for row in good.iter_jsonl(HISTORIES)}
    assert len(rows) == good.manifest.n_users  # every series user has three or more interactions
    for row in rows[:20]:  # the held-out item is each user's last one, at its time
        assert histories[row["user_id"]]["items"][-1] == row["item_id"]
        assert histories[row["user_id"]]["timestamps"][-1] == row["timestamp"]
    ndcg, hr = ndcg_hr(np.asarray([row["rank"] for row in rows]))
    reported = json.loads((good.path / "metrics.json").read_text())["test_seen_excluded"]
    assert ndcg == pytest.approx(reported["ndcg@10"]) and hr == pytest.approx(reported["hr@10"])


def test_live_ranks_are_the_bundles_own_when_it_scores_its_held_out_items(bundles, tmp_path):
    """The gate's live side and the trainer's evaluation are one scoring contract: a bundle trained without a refit
    (the shipped model is the selection model) ranks its own held-out items as its selection run did."""
    frame = make_series_interactions(n_users=80, seed=5)
    frame.to_csv(tmp_path / "small.csv", index=False)
    bundle = _train(tmp_path / "small.csv", tmp_path / "bundles", 4, refit_share=0.0)
    rows = list(bundle.iter_jsonl(HELDOUT))
    histories = {row["user_id"]: row["items"][:-1] for row in bundle.iter_jsonl(HISTORIES)}
    ranks = live_ranks(bundle, [histories[r["user_id"]] for r in rows], [r["item_id"] for r in rows])
    assert np.array_equal(ranks, [r["rank"] for r in rows])


def test_the_gate_judges_on_interactions_newer_than_the_live_data(bundles):
    old, weak, good = bundles["old"], bundles["weak"], bundles["good"]
    held = judge(weak, old, GatePolicy(margin=0.0, min_users=50))
    assert not held.publish and held.users >= 50 and held.candidate_ndcg10 < held.live_ndcg10
    newest_old = max(row["timestamps"][-1] for row in old.iter_jsonl(HISTORIES))
    assert held.newer_than == newest_old
    passed = judge(good, old, GatePolicy(margin=0.0, min_users=50))
    assert passed.publish and passed.users == held.users and passed.candidate_ndcg10 > held.candidate_ndcg10
    assert judge(weak, old, GatePolicy(margin=0.9, min_users=50)).publish  # a wide margin lets it through
    scarce = judge(weak, old, GatePolicy(min_users=10_000))
    assert scarce.publish and "too little evidence" in scarce.reason
    assert judge(weak, None, GatePolicy()).publish and judge(good, good, GatePolicy()).publish
    assert judge(good, weak, GatePolicy(min_users=1)).users == 0  # the live data covers every held-out item


def _publish(target: Bundle | Path, redis_url: str, milvus_uri: str, *extra: str, **env: str
             ) -> subprocess.CompletedProcess:
    path = target.path if isinstance(target, Bundle) else target
    return subprocess.run([sys.executable, "-m", "seqrec.services.cli", "publish", str(path), "--redis-url",
                           redis_url, "--milvus-uri", milvus_uri, "--no-progress", *extra], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "SEQREC_GATE_MIN_USERS": "50", **env})


def test_seqrec_publish_holds_a_worse_candidate_and_publishes_a_better_one(bundles, redis_server, milvus_server):
    old, weak, good = bundles["old"], bundles["weak"], bundles["good"]
    redis_url, root = f"redis://{redis_server.address}/9", old.path.parent
    registry = BundleRegistry(root)
    first = _publish(old, redis_url, milvus_server)
    assert first.returncode == 0, first.stderr
    assert registry.live_version() == old.version

    held = _publish(weak, redis_url, milvus_server)
    assert held.returncode == 3, held.stderr
    answer = json.loads(held.stdout.strip().splitlines()[-1])
    assert answer["held"] == weak.version and answer["live"] == old.version
    assert "held by the quality gate" in held.stderr and "Traceback" not in held.stderr
    assert registry.live_version() == old.version  # nothing moved

    forced = _publish(weak, redis_url, milvus_server, "--no-gate")
    assert forced.returncode == 0 and registry.live_version() == weak.version
    assert _publish(root, redis_url, milvus_server, "--rollback").returncode == 0  # not gated; old is live again
    assert registry.live_version() == old.version

    published = _publish(good, redis_url, milvus_server)
    assert published.returncode == 0, published.stderr
    assert registry.live_version() == good.version
    decisions = [json.loads(line) for line in (root / DECISIONS_FILE).read_text().splitlines()]
    assert [(d["candidate"], d["publish"]) for d in decisions] == [
        (old.version, True), (weak.version, False), (good.version, True)]
    assert decisions[1]["candidate_ndcg10"] < decisions[1]["live_ndcg10"] <= decisions[2]["candidate_ndcg10"] + 0.05
    bad_margin = _publish(good, redis_url, milvus_server, SEQREC_GATE_MARGIN="2")
    assert bad_margin.returncode == 1 and "SEQREC_GATE_MARGIN" in bad_margin.stderr
