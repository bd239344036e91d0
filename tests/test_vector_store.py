"""MilvusItemStore: one contract run against a `milvus-lite server` and, unchanged, against a real Milvus
server (a `milvus-server` 2.3 started for the session, or the one MILVUS_URI names; MILVUS_TOKEN optional).
Expected results come from numpy brute force."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install seqrec[ranker])")

from pymilvus import MilvusClient  # noqa: E402

from seqrec.services.ranker.filters import build_expression  # noqa: E402
from seqrec.services.ranker.milvus_compat import MilvusEngine  # noqa: E402
from seqrec.services.ranker.vector_store import (  # noqa: E402
    LAYOUT_PROPERTY,
    MilvusItemStore,
    VectorStoreError,
    VectorStoreUnavailable,
    collection_name,
)
from tests.milvus_fixtures import (  # noqa: E402, F401 (fixtures)
    free_port,
    milvus_lite_server,
    milvus_server,
    milvus_standalone,
)

N, DIM, QUERIES, K = 2000, 17, 20, 10
SCHEMA = {"brand": "string", "price": "double", "year": "int64", "in_stock": "bool"}
HOSTILE = ['x" or m_brand != "', '\\" || 1==1 #', "'); drop", "line\nbreak\ttab", "Ünïcødé ☃ 名前"]
BRANDS = ["acme", "globex", *HOSTILE]
ABSENT = ['zzz" or m_brand != "', '" or 1==1 or "', "acme\\", 'acme" ', "acme' or '1'='1", "*"]


def make_catalog(n: int = N, seed: int = 0, first_index: int = 1) -> dict[str, Any]:
    """Random unit-variance vectors with typed metadata, some values missing."""
    rng = np.random.default_rng(seed)
    meta = []
    for i in range(n):
        row = {"brand": BRANDS[i % len(BRANDS)], "price": float(i % 40) / 2, "year": 2000 + i % 13,
               "in_stock": bool(i % 3)}
        for col, every in (("brand", 11), ("price", 7), ("year", 17), ("in_stock", 19)):
            if i % every == 0:
                del row[col]
        meta.append(row)
    indices = np.arange(first_index, first_index + n, dtype=np.int64)
    return {"vectors": rng.standard_normal((n, DIM)).astype(np.float32), "item_indices": indices,
            "item_ids": [f"item_{i}" for i in indices], "metadata": meta, "metadata_schema": SCHEMA,
            "display_names": [f"Item {i}" if i % 2 else None for i in indices]}


def matches(meta: dict[str, Any], filters: dict[str, Any]) -> bool:
    """The filter semantics, independently: a missing value never matches."""
    for key, cond in filters.items():
        v = meta.get(key.removeprefix("meta."))
        if v is None:
            return False
        if isinstance(cond, list):
            ok = v in cond
        elif isinstance(cond, dict):
            ok = all({"gte": v >= b, "gt": v > b, "lte": v <= b, "lt": v < b}[op] for op, b in cond.items())
        else:
            ok = v == cond
        if not ok:
            return False
    return True


def brute_force(catalog: dict[str, Any], queries: np.ndarray, k: int, filters: dict[str, Any] | None = None,
                exclude: list[set[int]] | None = None) -> list[list[tuple[int, float]]]:
    """Exact top-k (index, inner product) per query among the items passing filters and exclusions."""
    allowed = np.array([matches(m, filters or {}) for m in catalog["metadata"]])
    scores = queries @ catalog["vectors"].T
    out = []
    for qi, row in enumerate(scores):
        ok = allowed.copy()
        if exclude:
            ok &= ~np.isin(catalog["item_indices"], list(exclude[qi]))
        order = [j for j in np.argsort(-row, kind="stable") if ok[j]][:k]
        out.append([(int(catalog["item_indices"][j]), float(row[j])) for j in order])
    return out


def assert_same(got: list[list[tuple]], expected: list[list[tuple[int, float]]]) -> None:
    assert [[h[0] for h in q] for q in got] == [[i for i, _ in q] for q in expected]
    for q_got, q_exp in zip(got, expected, strict=True):
        np.testing.assert_allclose([h[1] for h in q_got], [s for _, s in q_exp], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def catalog() -> dict[str, Any]:
    return make_catalog()


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((QUERIES, DIM)).astype(np.float32)


class VectorStoreContract:
    """What the ranker relies on; a subclass provides the `uri` fixture. Each class run uses its own
    versions, and drops them at the end, so a shared Milvus server is left as found."""

    @pytest.fixture(scope="class")
    @classmethod
    def uri(cls) -> str:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def run(cls) -> str:
        return "t" + uuid.uuid4().hex[:8]

    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, uri: str, run: str) -> Iterator[MilvusItemStore]:
        token = os.environ.get("MILVUS_TOKEN", "")
        store = MilvusItemStore(uri, token, timeout=30.0)
        yield store
        store.close()
        client = MilvusClient(uri=uri, token=token, timeout=30.0)
        for name in client.list_collections():
            if f"_{run}_" in name:
                client.drop_collection(name)
        client.close()

    @pytest.fixture(scope="class")
    @classmethod
    def main(cls, store: MilvusItemStore, catalog: dict[str, Any], run: str) -> str:
        version = f"{run}-main"
        assert store.load_items(version, progress=False, **catalog)
        return version

    def row_count(self, uri: str, version: str) -> int:
        """Rows written, loaded or not (a server loads only an indexed collection, so no count(*) query)."""
        client = MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""), timeout=30.0)
        try:
            client.flush(collection_name(version))
            return int(client.get_collection_stats(collection_name(version))["row_count"])
        finally:
            client.close()

    def test_exact_search_equals_brute_force(self, store: MilvusItemStore, main: str, catalog: dict[str, Any],
                                             queries: np.ndarray) -> None:
        got = store.search(main, queries, K)
        assert_same(got, brute_force(catalog, queries, K))
        index, _, item_id, display = got[0][0]
        position = index - 1
        assert item_id == catalog["item_ids"][position]
        assert display == {"display_name": catalog["display_names"][position], "meta": catalog["metadata"][position]}

    @pytest.mark.parametrize("filters", [
        {"meta.in_stock": True},
        {"meta.in_stock": False},
        {"meta.year": 2005},
        {"meta.price": 12.5},
        {"meta.brand": "globex"},
        {"meta.brand": ["acme", "globex"]},
        {"meta.year": [2001, 2003, 2011]},
        {"meta.price": {"gte": 5, "lt": 12.5}},
        {"meta.year": {"gt": 2003.5, "lte": 2010}},
        {"meta.in_stock": False, "meta.brand": ["acme", HOSTILE[0]], "meta.price": {"lte": 15}},
    ], ids=lambda f: "+".join(f))
    def test_filters_equal_filtered_brute_force(self, store: MilvusItemStore, main: str, catalog: dict[str, Any],
                                                queries: np.ndarray, filters: dict[str, Any]) -> None:
        got = store.search(main, queries, K, build_expression(filters, SCHEMA))
        assert_same(got, brute_force(catalog, queries, K, filters))
        assert all(matches(hit[3]["meta"], filters) for q in got for hit in q)

    @pytest.mark.parametrize("text", HOSTILE + ABSENT)
    def test_hostile_strings_match_only_the_literal(self, store: MilvusItemStore, main: str,
                                                    catalog: dict[str, Any], queries: np.ndarray, text: str) -> None:
        for filters in ({"meta.brand": text}, {"meta.brand": [text, "nobody"]}):
            (got,) = store.search(main, queries[:1], N, build_expression(filters, SCHEMA))
            expected = sum(m.get("brand") == text for m in catalog["metadata"])
            assert len(got) == expected < N // 4
            assert all(hit[3]["meta"]["brand"] == text for hit in got)

    def test_exclusion(self, store: MilvusItemStore, main: str, catalog: dict[str, Any], queries: np.ndarray) -> None:
        top = brute_force(catalog, queries[:5], 3)
        exclude = [{i for i, _ in q} | {int(j) for j in range(1, 40, 3 + n)} for n, q in enumerate(top)]
        exclude[4] = set()
        got = store.search(main, queries[:5], K, "", [sorted(e) for e in exclude])
        assert_same(got, brute_force(catalog, queries[:5], K, exclude=exclude))
        filters = {"meta.in_stock": True}
        got = store.search(main, queries[:5], K, build_expression(filters, SCHEMA), [sorted(e) for e in exclude])
        assert_same(got, brute_force(catalog, queries[:5], K, filters, exclude))

    def test_load_is_idempotent_and_keeps_upserted_items(self, store: MilvusItemStore, uri: str, run: str,
                                                         queries: np.ndarray) -> None:
        small = make_catalog(200, seed=2)
        version = f"{run}-cold"
        assert store.load_items(version, **small)
        cold = {"vectors": queries[:1] * 10, "item_indices": np.array([5000]), "item_ids": ["cold_1"],
                "metadata": [{"brand": "newco", "year": 2030}], "metadata_schema": SCHEMA,
                "display_names": ["Cold one"]}
        store.upsert_items(version, **cold)
        assert not store.load_items(version, **small)  # already complete: kept, not rebuilt
        assert self.row_count(uri, version) == 201
        (top,) = store.search(version, queries[:1], 1, build_expression({"meta.year": {"gte": 2030}}, SCHEMA))
        assert top == [(5000, pytest.approx(float(queries[0] @ queries[0] * 10), rel=1e-4), "cold_1",
                        {"display_name": "Cold one", "meta": {"brand": "newco", "year": 2030}})]
        items = store.get_items(version, [5000, 1, 1, 999_999])
        assert set(items) == {1, 5000}
        assert items[1] == (small["item_ids"][0], {"display_name": small["display_names"][0],
                                                   "meta": small["metadata"][0]})
        assert store.get_items(version, []) == {}

    def test_half_written_collection_is_rebuilt(self, store: MilvusItemStore, uri: str, run: str) -> None:
        small = make_catalog(300, seed=3)
        version = f"{run}-half"
        broken = dict(small, item_ids=[*small["item_ids"][:150], "", *small["item_ids"][151:]])
        with pytest.raises(ValueError, match="item_id"):
            store.load_items(version, batch_size=100, **broken)  # fails after one batch is written
        assert self.row_count(uri, version) == 100
        assert version not in store.list_versions() and not store.has_version(version)
        assert store.load_items(version, batch_size=100, **small)
        assert self.row_count(uri, version) == 300
        assert version in store.list_versions()
        other_dim = dict(small, vectors=np.ones((300, DIM + 1), dtype=np.float32))
        assert store.load_items(version, **other_dim)  # same count, other dim: rebuilt

    def test_indexing_again_is_harmless(self, store: MilvusItemStore, main: str, catalog: dict[str, Any]) -> None:
        """pymilvus resends a create_index whose connection dropped during a long build: the resend finds
        the indexes there and must not fail the publication."""
        store._create_index(collection_name(main), "FLAT", catalog["metadata_schema"], 60.0)
        assert store.has_version(main)

    def test_versions_are_listed_oldest_first_and_dropped(self, store: MilvusItemStore, run: str) -> None:
        versions = [f"0000-{run}-v1", f"0000-{run}-v2", f"0000-{run}-v3"]  # older than every other version
        for seed, version in enumerate(reversed(versions)):
            store.load_items(version, **make_catalog(30, seed=10 + seed))
        listed = store.list_versions()
        assert [v for v in listed if v in versions] == versions
        store.drop(versions[0])
        store.drop(versions[0])  # absent: no-op
        assert versions[0] not in store.list_versions() and versions[1] in store.list_versions()
        assert not store.has_version(versions[0])

    def test_missing_version_is_an_error_not_an_empty_result(self, store: MilvusItemStore, run: str,
                                                              queries: np.ndarray) -> None:
        with pytest.raises(VectorStoreError, match="does not exist"):
            store.search(f"{run}-missing", queries[:1], K)
        assert store.ping()

    def test_hnsw_recall(self, store: MilvusItemStore, run: str, catalog: dict[str, Any],
                         queries: np.ndarray) -> None:
        version = f"{run}-hnsw"
        store.load_items(version, index_type="HNSW", **catalog)
        got = store.search(version, queries, K)
        exact = brute_force(catalog, queries, K)
        recall = np.mean([len({h[0] for h in g} & {i for i, _ in e}) / K for g, e in zip(got, exact, strict=True)])
        assert recall >= 0.95


class TestMilvusLiteServer(VectorStoreContract):
    @pytest.fixture(scope="class")
    @classmethod
    def uri(cls, milvus_server: str) -> str:  # noqa: F811 (the imported fixture)
        return milvus_server


class TestMilvusServer(VectorStoreContract):
    @pytest.fixture(scope="class")
    @classmethod
    def uri(cls, milvus_standalone: str) -> str:  # noqa: F811 (the imported fixture)
        return milvus_standalone


def test_stopped_server_raises_unavailable_promptly(tmp_path: Path) -> None:
    small = make_catalog(50, seed=4)
    with milvus_lite_server(tmp_path / "data") as (proc, uri):
        store = MilvusItemStore(uri, timeout=3.0)
        store.load_items("v1", **small)
        assert store.search("v1", small["vectors"][:1], 1)[0][0][0] == 1
        proc.kill()
        proc.wait()
        started = time.monotonic()
        with pytest.raises(VectorStoreUnavailable, match="unavailable"):
            store.search("v1", small["vectors"][:1], 1)
        with pytest.raises(VectorStoreUnavailable):
            store.get_items("v1", [1])
        assert not store.ping()
        assert time.monotonic() - started < 10


def test_unreachable_server_raises_unavailable() -> None:
    store = MilvusItemStore(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    with pytest.raises(VectorStoreUnavailable, match="unavailable"):
        store.search("v1", np.ones((1, DIM), dtype=np.float32), 1)
    with pytest.raises(VectorStoreUnavailable):
        store.load_items("v1", **make_catalog(5))
    assert not store.ping()


def test_a_collection_of_another_layout_is_rebuilt(milvus_server: str) -> None:  # noqa: F811
    """A collection written by an older seqrec (metadata in nullable fields, no layout mark) is not served:
    it is not a listed version, and publishing the version again rebuilds it in today's layout."""
    store = MilvusItemStore(milvus_server, timeout=30.0)
    small = make_catalog(40, seed=21)
    version = "t" + uuid.uuid4().hex[:8] + "-layout"
    assert store.load_items(version, **small)
    client = MilvusClient(uri=milvus_server, timeout=30.0)
    try:
        client.alter_collection_properties(collection_name(version), properties={LAYOUT_PROPERTY: "nullable/0"})
        assert version not in store.list_versions()
        assert store.load_items(version, **small)  # rebuilt, not kept
        assert version in store.list_versions()
    finally:
        store.drop(version)
        client.close()
        store.close()


@pytest.mark.parametrize(("reported", "lite", "inverted"), [
    ("milvus_lite-3.2.2", True, True), ("v2.3.5-lite", False, False), ("v2.3.21", False, False),
    ("v2.4.0", False, True), ("v2.5.10", False, True), ("something else", False, True),
])
def test_engine_capabilities_from_the_reported_version(reported: str, lite: bool, inverted: bool) -> None:
    engine = MilvusEngine.from_version(reported)
    assert engine.lite is lite and engine.inverted_index is inverted
    assert engine.scalar_index("string") == ("INVERTED" if inverted else "Trie")
    assert engine.scalar_index("bool") == ("INVERTED" if inverted else None)
