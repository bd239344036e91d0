"""One scoring contract, end to end: the trainer's evaluation, the ranker over gRPC with Milvus (FLAT),
batch-recommend (exact and through Milvus) and the benchmarks' scorer give the same top-10 for the same
histories, with filters and exclusions, also after UpsertItems changes an existing item's text and metadata
and gives text to an item that had none.

The bundle is built the way the training pipeline builds it (its own model builder, bundle builder and
scorer), trained briefly, with a strong sequence prior and an exposure boost so that every term counts.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import redis
import torch
from grpc_health.v1 import health_pb2

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.embedder.server import EmbedderApp, EmbedderSettings
from seqrec.services.ranker.batch import BatchRecommender
from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.services.ranker.publish import publish
from seqrec.services.ranker.server import RankerApp
from seqrec.services.ranker.vector_store import MilvusItemStore
from seqrec.services.trainer.bundle_builder import BundleContents, model_config, scoring_parts, write_bundle
from seqrec.services.trainer.data import load_interactions
from seqrec.services.trainer.evaluate import score_histories
from seqrec.services.trainer.freshness import newest_items
from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.split import leave_one_out
from seqrec.services.trainer.text_features import catalog_texts, text_table
from seqrec.services.trainer.train import train_model
from seqrec.shared.bundle import HISTORIES, ITEMS, Bundle
from seqrec.shared.config import DataConfig, TrainConfig, build_hparams
from seqrec.shared.history import encode_histories
from seqrec.shared.local_services import free_port
from seqrec.shared.scoring import NEW_ITEM, ItemParts, Scorer, item_rows
from seqrec.shared.sequence_prior import SequencePrior
from seqrec.shared.settings import Env
from tests.conftest import make_item_table, make_series_interactions
from tests.test_ranker import _settings, _wait_health

NO_TEXT_SERIES = 29  # warm items that have no row in the item table, so no text
DRAMA = {"meta.genre": "drama"}
K = 10


@pytest.fixture(scope="module")
def contract(tmp_path_factory, minilm):
    """(bundle path, the trainer's scorer, the torch model) built as the training pipeline builds them."""
    root = tmp_path_factory.mktemp("contract")
    make_series_interactions(n_users=200, seed=4).to_csv(root / "events.csv", index=False)
    items = make_item_table()
    items[~items["item_id"].str.startswith(f"s{NO_TEXT_SERIES}e")].to_csv(root / "items.csv", index=False)
    cfg = TrainConfig(data=DataConfig(data=str(root / "events.csv"), items=str(root / "items.csv"),
                                      meta_cols=("genre", "in_stock"), name_col="title"),
                      hparams=build_hparams(max_len=12, hidden_size=32, heads=2, epochs=4, batch_size=64, lr=0.003,
                                            negative_samples=50), seed=3)
    torch.manual_seed(3)
    data = load_interactions(cfg.data)
    text = text_table(catalog_texts(data, cfg.data), minilm, progress=False)
    split = leave_one_out(data.sequences)
    newest = newest_items(split.train, data.timestamps, data.vocab.n_indices)
    model = BERT4Rec(model_config(cfg.hparams, data.vocab.n_indices, hybrid=True), text=torch.from_numpy(text),
                     n_warm=data.n_warm, newest=torch.from_numpy(newest))
    counts = np.bincount(np.concatenate(split.train), minlength=data.vocab.n_indices)
    model.init_output_bias(torch.from_numpy(counts))
    model = train_model(model, split, cfg.hparams, data.vocab.n_items, counts, cfg.seed, progress=False,
                        n_warm=data.n_warm).model.eval()
    prior = SequencePrior.from_sequences(split.train, data.vocab.n_indices, cfg.hparams.max_len - 1).weighted(3.0, -8.0)
    boost = 0.5
    path = write_bundle(root / "bundles", model, BundleContents(cfg, data, prior, {"test": {}}, boost))
    return path, Scorer.from_parts(scoring_parts(model, boost), prior), model


@pytest.fixture(scope="module")
def served(contract, redis_server, milvus_server, minilm):
    path = contract[0]
    redis_url = f"redis://{redis_server.address}/7"  # its own database: its user ids are other bundles' too
    redis.Redis.from_url(redis_url).flushdb()
    publish(path, redis_url, milvus_server, progress=False)
    embedder = EmbedderApp(EmbedderSettings.from_env(Env({"SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{free_port()}"})),
                           model=minilm)
    embedder.start()
    app = RankerApp(_settings(path, redis_url, milvus_server, SEQREC_EMBEDDER=f"127.0.0.1:{embedder.port}"))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
    yield ranker_pb2_grpc.RankerServiceStub(channel), MilvusItemStore(milvus_server)
    channel.close()
    app.stop(0)
    embedder.stop(0)


def _histories(bundle: Bundle, n: int = 40) -> tuple[list[str], list[list[str]]]:
    rows = list(bundle.iter_jsonl(HISTORIES))[:n]
    return [r["user_id"] for r in rows], [r["items"][-(bundle.max_len - 1):] for r in rows]


def _genres(bundle: Bundle) -> dict[str, str]:
    return {row["item_id"]: row["meta"].get("genre") for row in bundle.iter_jsonl(ITEMS)}


def _reference(scores: np.ndarray, bundle: Bundle, histories: list[list[int]], genre: dict[str, str],
               extra: list[int]) -> list[list[str]]:
    """Top-K of a dense score matrix over the drama items, seen and `extra` items excluded, ties to the lower index."""
    vocab = bundle.vocab()
    allowed = np.array([genre.get(vocab.item_id(i)) == "drama" for i in range(1, vocab.n_items + 1)])
    out = []
    for row, history in zip(scores, histories, strict=True):
        row = np.where(allowed, row, -np.inf)
        row[np.asarray([*history, *extra], dtype=np.int64) - 1] = -np.inf
        order = np.argsort(-row, kind="stable")[:K]
        out.append([vocab.item_id(int(i) + 1) for i in order if np.isfinite(row[i])])
    return out


def _ranker(stub, histories: list[list[str]], extra: list[str] = ()) -> list[list[str]]:
    clause = common_pb2.FilterClause(field="meta.genre", equals=common_pb2.MetadataValue(string_value="drama"))
    return [[i.item_id for i in stub.Sequential(ranker_pb2.SequentialRequest(
        session_items=h, filters=[clause], top_k=K, exclude_seen=True, exclude_item_ids=list(extra)), timeout=10).items]
        for h in histories]


def _batch(bundle: Bundle, users: list[str], histories: list[list[str]], store=None) -> list[list[str]]:
    recommender = BatchRecommender(bundle, OnnxEncoder(bundle), K, DRAMA, exclude_seen=True, store=store)
    return [[item for item, _, _ in r.items] for r in recommender.recommend(users, histories)]


def test_every_path_gives_the_same_top_10(contract, served):
    path, trainer_scorer, model = contract
    stub, store = served
    bundle = Bundle.open(path)
    vocab, genre = bundle.vocab(), _genres(bundle)
    users, raw = _histories(bundle)
    histories = [vocab.encode(h)[0] for h in raw]
    trainer = _reference(score_histories(model, [np.array(h) for h in histories], bundle.mask_index, trainer_scorer),
                         bundle, histories, genre, [])
    intents = OnnxEncoder(bundle).intents(histories)
    benches = _reference(Scorer.from_bundle(bundle).scores(intents, histories), bundle, histories, genre, [])
    assert benches == trainer
    assert sum(len(t) for t in trainer) == K * len(users)
    assert _ranker(stub, raw) == trainer
    assert _batch(bundle, users, raw) == trainer
    assert _batch(bundle, users, raw, store) == trainer
    extra = [trainer[0][0], trainer[1][1]]  # exclusions by id, on top of the seen items
    want = _reference(score_histories(model, [np.array(h) for h in histories], bundle.mask_index, trainer_scorer),
                      bundle, histories, genre, [vocab.index(i) for i in extra])
    assert _ranker(stub, raw, extra) == want


def test_upserts_rebuild_rows_through_the_contract_and_filters_see_them(contract, served, minilm):
    """UpsertItems on a warm item with text (new text, new genre) and on a warm item without text: the stored rows are
    those of `item_rows` (content = the new text, no new-item marks for warm items), and every serving path ranks
    and filters with what Milvus now holds, including the items only the sequence prior lifts."""
    path, _, _ = contract
    stub, store = served
    bundle = Bundle.open(path)
    vocab, genre = bundle.vocab(), _genres(bundle)
    users, raw = _histories(bundle)
    parts = ItemParts.from_bundle(bundle)
    # a session ending inside a drama series: the prior lifts the next episode, which then leaves the drama filter
    cut = next(h[:p + 1] for h in raw for p, item in enumerate(h) if genre.get(item) == "drama" and p
               and not item.endswith("e7"))
    raw, user = [*raw, cut], len(raw)
    users.append("cut-session")
    series, episode = raw[user][-1][1:].split("e")
    moved, untexted = f"s{series}e{int(episode) + 1}", f"s{NO_TEXT_SERIES}e3"
    assert not parts.text[vocab.index(untexted)].any() and parts.text[vocab.index(moved)].any()
    assert moved in _ranker(stub, [raw[user]])[0]
    texts = {moved: f"name: {moved} (recut); genre: comedy; in_stock: yes", untexted: "name: lost pilot; genre: drama"}
    comedy = {"genre": common_pb2.MetadataValue(string_value="comedy"),
              "in_stock": common_pb2.MetadataValue(bool_value=True)}
    items = [ranker_pb2.CatalogItem(item_id=moved, text=texts[moved], meta=comedy),
             ranker_pb2.CatalogItem(item_id=untexted, text=texts[untexted],
                                    meta={"genre": common_pb2.MetadataValue(string_value="drama")})]
    assert stub.UpsertItems(ranker_pb2.UpsertItemsRequest(items=items), timeout=30).upserted == 2
    embedded = dict(zip(texts, minilm.embed(list(texts.values())), strict=True))

    stored = store.get_vectors(bundle.version, [vocab.index(moved), vocab.index(untexted)])
    layout, head = parts.layout, parts.head
    for item, index in ((moved, vocab.index(moved)), (untexted, vocab.index(untexted))):
        assert not parts.flags[index] & NEW_ITEM  # warm items: no new-item marks, before or after
        row, text = stored[index], embedded[item]
        np.testing.assert_allclose(row[layout.content_cols], text, atol=1e-5)  # content is the new text, exactly
        own = parts.id_rows[index]
        np.testing.assert_allclose(row[layout.model_cols], own[:layout.model] + text @ head.weights[:-1, :-1]
                                   + head.weights[-1, :-1], atol=1e-4)
        assert row[layout.bias_col] == pytest.approx(own[-1] + text @ head.weights[:-1, -1] + head.weights[-1, -1],
                                                     abs=1e-4)

    rows = bundle.item_vectors().copy()
    for item in texts:
        index = vocab.index(item)
        rows[index] = item_rows(layout, parts.id_rows[index:index + 1], parts.flags[index:index + 1],
                                embedded[item][None, :], head, parts.exposure_boost)[0]
    genre.update({moved: "comedy", untexted: "drama"})
    histories = [vocab.encode(h)[0] for h in raw]
    intents = OnnxEncoder(bundle).intents(histories)
    scorer = Scorer(rows, SequencePrior.from_bundle(bundle), Scorer.from_bundle(bundle).unseen)
    want = _reference(scorer.scores(intents, histories), bundle, histories, genre, [])
    got = _ranker(stub, raw)
    assert moved not in got[user]  # the prior lifts it, but it is no drama any more
    assert got == want
    assert _batch(bundle, users, raw, store) == want


def test_the_bundle_encoder_is_the_trainer_model(contract):
    """The intents the ranker serves are the trainer model's (what the trainer evaluated)."""
    path, _, model = contract
    bundle = Bundle.open(path)
    histories = [bundle.vocab().encode(h)[0] for h in _histories(bundle, 20)[1]]
    ids = torch.from_numpy(encode_histories(histories, bundle.max_len, bundle.mask_index))
    np.testing.assert_allclose(OnnxEncoder(bundle).intents(histories), model(ids).detach().numpy(), atol=1e-4)
