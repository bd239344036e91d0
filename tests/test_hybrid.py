"""The hybrid engine: text fused into the model, catalog-only items, and items added online, served for real
(redis-server, `milvus-lite server`, the MiniLM embedder over gRPC, the ranker over gRPC)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2

from seqrec.proto.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from seqrec.services.embedder.server import EmbedderApp, EmbedderSettings
from seqrec.services.ranker.publish import publish
from seqrec.services.ranker.server import RankerApp
from seqrec.services.trainer.freshness import expected_unseen_share
from seqrec.services.trainer.model import GATE_SCALE, BERT4Rec, ModelConfig
from seqrec.shared.bundle import ITEM_TO_ITEM, TEXT_EMBEDDINGS, Bundle
from seqrec.shared.local_services import free_port
from seqrec.shared.scoring import NEW_ITEM, UNSEEN, ItemParts, item_rows
from seqrec.shared.settings import Env
from seqrec.shared.text import TEXT_DIM, item_text
from tests.conftest import COLD_SERIES, EPISODES, make_item_table
from tests.test_ranker import _settings, _wait_health


def _hybrid_model(n_warm: int = 6, n_items: int = 9, tying: bool = False) -> BERT4Rec:
    torch.manual_seed(0)
    text = torch.randn(n_items + 2, 16)
    text[0] = text[-1] = 0.0  # padding and [MASK] have no text
    text[3] = 0.0  # an item without text
    cfg = ModelConfig(n_indices=n_items + 2, max_len=8, hidden_size=16, heads=2, weight_tying=tying,
                      text_dim=16, id_dropout=0.5, content_dim=16, transition_dim=8)
    newest = torch.zeros(n_items + 2, dtype=torch.bool)
    newest[5] = True  # a warm item that stands in for new ones in training
    model = BERT4Rec(cfg, text=text, n_warm=n_warm, newest=newest)
    with torch.no_grad():  # the new-item marks and content taps start at zero: make them count
        for param in (model.new_in, model.new_out, model.new_bias, model.new_content, model.content_taps,
                      model.prev_emb.weight, model.next_emb.weight):
            if param is not None:
                param.normal_()
    return model


EXPOSURE = 0.7  # an exposure boost, as freshness.calibrate_exposure would fit one


@pytest.mark.parametrize("tying", [False, True])
def test_fused_model_is_the_same_function(tying):
    model = _hybrid_model(tying=tying).eval()
    ids = torch.tensor([[0, 0, 1, 7, 10], [2, 3, 4, 5, 10]])  # 7 is catalog-only, 10 is [MASK]
    fused = model.fused()
    assert not fused.hybrid
    torch.testing.assert_close(fused(ids), model(ids), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tying", [False, True])
def test_item_rows_of_the_model_parts_are_the_model_logits(tying):
    """The scoring contract's rows, built torch-free from `item_parts`, are the model's own item vectors (the
    training logits) exactly; the exposure boost moves only the bias of items nobody has interacted with."""
    model = _hybrid_model(tying=tying).eval()
    parts = model.item_parts()
    np.testing.assert_allclose(parts.rows(), model.item_vectors().detach().numpy(), atol=1e-5)
    assert ((parts.flags & NEW_ITEM) > 0).nonzero()[0].tolist() == [5, 7, 8, 9]
    assert ((parts.flags & UNSEEN) > 0).nonzero()[0].tolist() == [7, 8, 9]  # catalog-only
    boosted = parts.with_exposure(EXPOSURE).rows() - parts.rows()
    np.testing.assert_allclose(boosted[:, :-1], 0.0)
    np.testing.assert_allclose(boosted[:, -1], np.where(np.isin(np.arange(11), [7, 8, 9]), EXPOSURE, 0.0), atol=1e-6)


def test_a_text_only_row_is_what_a_catalog_only_item_gets():
    """An item known only by its text (catalog-only, or added online) gets exactly the row a catalog-only item has;
    the newest warm items are new too (no id part, the marks) but their track record earns no exposure boost."""
    model = _hybrid_model().eval()
    parts = model.item_parts().with_exposure(EXPOSURE)
    rows = parts.rows()
    no_id = np.zeros((1, parts.layout.id_width), dtype=np.float32)
    for index in (7, 8, 9):
        got = item_rows(parts.layout, no_id, np.array([NEW_ITEM | UNSEEN]), parts.text[index:index + 1], parts.head,
                        EXPOSURE)
        np.testing.assert_allclose(got[0], rows[index], atol=1e-5)
    stand_in = item_rows(parts.layout, no_id, np.array([NEW_ITEM | UNSEEN]), parts.text[5:6], parts.head, EXPOSURE)[0]
    np.testing.assert_allclose(stand_in[:-1], rows[5, :-1], atol=1e-5)
    assert stand_in[-1] - rows[5, -1] == pytest.approx(EXPOSURE, abs=1e-5)


def test_intent_carries_the_content_query_of_the_last_history_items():
    model = _hybrid_model().eval()
    ids = torch.tensor([[0, 0, 1, 7, 10], [2, 3, 4, 5, 10]])
    hidden, width = model.cfg.hidden_size, model.cfg.content_dim
    taps = GATE_SCALE * model.content_taps.detach()
    for row in range(2):
        history = ids[row, :-1].flip(0)  # newest first; padding has no text
        expected = sum(taps[k] * model.text[history[k]] for k in range(len(history)))
        torch.testing.assert_close(model(ids)[row, hidden: hidden + width], expected, atol=1e-5, rtol=1e-5)
    scale = torch.ones(model.cfg.n_indices, 1)
    scale[[5, 7, 8, 9]] = 1.0 + GATE_SCALE * model.new_content.detach()  # new items' texts weigh their own
    torch.testing.assert_close(model.item_vectors()[:, hidden: hidden + width].detach(), model.text * scale)


def test_new_items_carry_the_new_item_marks_and_dropped_ids_do_not():
    model = _hybrid_model().eval()
    assert model.new_item.nonzero().squeeze(1).tolist() == [5, 7, 8, 9]  # the newest warm item and catalog-only
    bias = model.output_bias().detach()
    plain = model.out_bias.detach() * model.id_known + model.text_bias(model.text).squeeze(-1).detach() * model.has_text
    marks = (GATE_SCALE * model.new_bias).detach().expand(4)
    torch.testing.assert_close(bias[[5, 7, 8, 9]] - plain[[5, 7, 8, 9]], marks)  # new items carry the marks
    torch.testing.assert_close(bias[[1, 2, 3, 4, 6]], plain[[1, 2, 3, 4, 6]])  # other warm items do not
    model.train()
    keep = model.id_known.clone()
    keep[4] = 0.0  # an item whose id is dropped for this step is not marked as new
    marked = model.output_bias(keep).detach() - (model.out_bias.detach() * keep
                                                  + model.text_bias(model.text).squeeze(-1).detach() * model.has_text)
    assert marked[4] == pytest.approx(0.0, abs=1e-6)
    assert marked[5] == pytest.approx(GATE_SCALE * model.new_bias.item())


def test_id_dropout_hides_ids_only_while_training_and_only_for_items_with_text():
    model = _hybrid_model()
    assert torch.equal(model.eval().id_keep(), model.id_known)
    assert model.id_known[[5, 7, 8, 9]].eq(0).all() and model.id_known[10] == 1  # new items 0, [MASK] 1
    model.train()
    draws = torch.stack([model.id_keep(torch.Generator().manual_seed(s)) for s in range(200)])
    assert draws[:, 3].eq(1).all()  # item 3 has no text: it always keeps its id
    assert draws[:, 10].eq(1).all() and draws[:, 5].eq(0).all()
    dropped = 1.0 - draws[:, [1, 2, 4, 6]].mean(0)
    assert ((dropped > 0.35) & (dropped < 0.65)).all()


# ---- the bundle ---------------------------------------------------------------------------------
def test_catalog_only_items_get_text_only_vectors(cold_bundle):
    path, metrics = cold_bundle
    bundle = Bundle.open(path)
    vocab = bundle.vocab()
    assert bundle.hybrid and bundle.manifest.n_catalog_only_items == len(COLD_SERIES) * EPISODES
    assert metrics["data"]["catalog_only_items"] == len(COLD_SERIES) * EPISODES
    cold = [vocab.index(f"s{s}e{e}") for s in COLD_SERIES for e in range(EPISODES)]
    assert min(cold) > vocab.n_items - len(cold)  # catalog-only items come after the warm ones
    text, vectors = bundle.array(TEXT_EMBEDDINGS), bundle.item_vectors()
    parts = ItemParts.from_bundle(bundle)
    assert (parts.flags[cold] == NEW_ITEM | UNSEEN).all() and not parts.id_rows[cold].any()
    no_id = np.zeros((len(cold), parts.layout.id_width), dtype=np.float32)
    np.testing.assert_allclose(item_rows(parts.layout, no_id, parts.flags[cold], text[cold], parts.head,
                                         parts.exposure_boost), vectors[cold], atol=1e-5)
    i2i = bundle.array(ITEM_TO_ITEM)
    assert np.allclose(np.linalg.norm(i2i[1:bundle.mask_index], axis=1), 1.0, atol=1e-5)
    assert bundle.popularity()[cold].sum() == 0
    # content affinity: hybrid item vectors are [output vector, text, bias]; the encoder's intent matches
    hidden = bundle.manifest.scoring.layout.model
    assert vectors.shape[1] == bundle.manifest.dim == hidden + TEXT_DIM + hidden + 1
    content = vectors[1:bundle.mask_index, hidden: hidden + TEXT_DIM]
    scale = (content * text[1:bundle.mask_index]).sum(1)  # texts are unit length: the weight of each row's text
    np.testing.assert_allclose(content, text[1:bundle.mask_index] * scale[:, None], atol=1e-5)
    new = np.abs(scale - 1.0) > 1e-4  # new items (the newest warm ones and catalog-only) weigh their own
    assert new[np.array(cold) - 1].all() and 0 < new.sum() - len(cold) <= 0.11 * (vocab.n_items - len(cold)) + 1
    exposure = metrics["data"]["new_item_exposure"]
    assert 0.0 < exposure["recent_share"] <= 1.0 and exposure["catalog_only_items"] == len(cold)
    assert exposure["target_share"] == exposure["expected_share"] == pytest.approx(
        expected_unseen_share(exposure["recent_share"], exposure["newest_items"], len(cold)), abs=1e-4)
    assert exposure["bias_boost"] >= 0.0


# ---- serving ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder_app(minilm):
    app = EmbedderApp(EmbedderSettings.from_env(Env({"SEQREC_EMBEDDER_ADDRESS": f"127.0.0.1:{free_port()}"})),
                      model=minilm)
    app.start()
    yield app
    app.stop(0)


@pytest.fixture(scope="module")
def hybrid_ranker(cold_bundle, redis_server, milvus_server, embedder_app):
    path, _ = cold_bundle
    redis_url = f"redis://{redis_server.address}/0"
    publish(path, redis_url, milvus_server, progress=False)
    app = RankerApp(_settings(path, redis_url, milvus_server, SEQREC_EMBEDDER=f"127.0.0.1:{embedder_app.port}"))
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
    yield app, ranker_pb2_grpc.RankerServiceStub(channel), channel
    channel.close()
    app.stop(0)


def _ids(response: ranker_pb2.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]


def test_model_info_says_hybrid(hybrid_ranker):
    _, stub, _ = hybrid_ranker
    assert stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=5).hybrid


def test_catalog_only_items_are_recommendable_on_day_one(hybrid_ranker):
    _, stub, _ = hybrid_ranker
    similar = _ids(stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="s0e3", top_k=10), timeout=10))
    assert len(similar) == 10 and any(i.startswith("s0e") for i in similar)  # its own series, found by text
    # catalog-only items are model inputs too (by their text), and candidates in every answer
    session = stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s0e1", "s0e2"], top_k=300), timeout=10)
    assert session.fallback == common_pb2.FALLBACK_NONE and session.sequence_length == 2
    assert not session.unknown_items and {f"s0e{e}" for e in (0, 3, 4)} <= set(_ids(session))


def test_unknown_item_with_text_searches_by_content(hybrid_ranker):
    _, stub, _ = hybrid_ranker
    row = make_item_table().set_index("item_id").loc["s5e2"]
    text = item_text({"genre": row["genre"], "in_stock": bool(row["in_stock"])}, ["genre", "in_stock"], row["title"])
    got = stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="pilot-x", item_text=text, top_k=5), timeout=10)
    assert got.fallback == common_pb2.FALLBACK_CONTENT and list(got.unknown_items) == ["pilot-x"]
    assert "s5e2" in _ids(got)  # the item whose text this is


def _upsert(stub, *items: ranker_pb2.CatalogItem) -> int:
    return stub.UpsertItems(ranker_pb2.UpsertItemsRequest(items=list(items)), timeout=30).upserted


def test_items_added_online_show_up_in_every_query_type(hybrid_ranker):
    _, stub, _ = hybrid_ranker
    premiere = {"genre": common_pb2.MetadataValue(string_value="premiere"),
                "in_stock": common_pb2.MetadataValue(bool_value=True)}
    assert _upsert(stub, ranker_pb2.CatalogItem(item_id="new-s7e4", display_name="Series 7 episode 5 (remastered)",
                                                text="name: Series 7 episode 5; genre: comedy; in_stock: yes",
                                                meta=premiere)) == 1
    only_new = [common_pb2.FilterClause(field="meta.genre", equals=common_pb2.MetadataValue(string_value="premiere"))]
    got = stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="s7e4", top_k=3), timeout=10)
    assert "new-s7e4" in _ids(got)  # its text twin is the most similar bundle item
    for call, request in [
        (stub.Sequential, ranker_pb2.SequentialRequest(session_items=["s7e2", "s7e3"], filters=only_new, top_k=5)),
        (stub.UserToItem, ranker_pb2.UserToItemRequest(user_id="u3", filters=only_new, top_k=5)),
        (stub.Contextual, ranker_pb2.ContextualRequest(user_id="u3", item_id="s7e3", filters=only_new, top_k=5)),
        (stub.ItemToItem, ranker_pb2.ItemToItemRequest(item_id="s7e3", filters=only_new, top_k=5)),
    ]:
        response = call(request, timeout=10)
        assert _ids(response) == ["new-s7e4"], call
        assert response.items[0].display_name == "Series 7 episode 5 (remastered)"
    # seeded by the new item itself, and excluded when asked
    seeded = _ids(stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="new-s7e4", top_k=5), timeout=10))
    assert "new-s7e4" not in seeded and "s7e4" in seeded
    excluded = stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s7e3"], filters=only_new, top_k=5,
                                                            exclude_item_ids=["new-s7e4"]), timeout=10)
    assert _ids(excluded) == []


def test_new_item_ranks_where_its_text_says(hybrid_ranker):
    """A new item described like the next episode ranks in the top tenth of a session about that series."""
    _, stub, _ = hybrid_ranker
    twin = ranker_pb2.CatalogItem(item_id="twin-s9e5", text="name: Series 9 episode 6; genre: drama; in_stock: no")
    _upsert(stub, twin)
    ranked = _ids(stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s9e3", "s9e4"], top_k=300), timeout=10))
    assert ranked.index("twin-s9e5") < len(ranked) // 10


def test_upsert_updates_a_bundle_item(hybrid_ranker):
    _, stub, _ = hybrid_ranker
    flag = {"genre": common_pb2.MetadataValue(string_value="relabelled")}
    _upsert(stub, ranker_pb2.CatalogItem(item_id="s4e1", text="name: Series 4 episode 2; genre: relabelled",
                                         meta=flag))
    only = [common_pb2.FilterClause(field="meta.genre", equals=flag["genre"])]
    got = stub.Sequential(ranker_pb2.SequentialRequest(session_items=["s4e0"], filters=only, top_k=5), timeout=10)
    assert _ids(got) == ["s4e1"]


@pytest.mark.parametrize("item, field", [
    (ranker_pb2.CatalogItem(item_id="", text="x"), "items[0].item_id"),
    (ranker_pb2.CatalogItem(item_id="a"), "items[0].text"),
    (ranker_pb2.CatalogItem(item_id="a", text="x", meta={"colour": common_pb2.MetadataValue(string_value="red")}),
     "items[0].meta.colour"),
    (ranker_pb2.CatalogItem(item_id="a", text="x", meta={"in_stock": common_pb2.MetadataValue(int_value=1)}),
     "items[0].meta.in_stock"),
    (ranker_pb2.CatalogItem(item_id="a", text="x" * 30_000), "texts[0]"),
])
def test_bad_upserts_are_invalid_argument(hybrid_ranker, item, field):
    _, stub, _ = hybrid_ranker
    with pytest.raises(grpc.RpcError) as err:
        _upsert(stub, item)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


def test_invalid_utf8_text_from_the_wire_is_invalid_argument(hybrid_ranker):
    _, _, channel = hybrid_ranker
    raw = channel.unary_unary("/seqrec.proto.v1.RankerService/UpsertItems", request_serializer=None,
                              response_deserializer=None)
    item = b"\x0a\x01a" + b"\x12\x02\xc3\x28"  # item_id "a", text = an invalid two-byte sequence
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\x0a" + bytes([len(item)]) + item, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in err.value.details()


def test_embedder_down_only_text_queries_fail(cold_bundle, redis_server, milvus_server):
    path, _ = cold_bundle
    app = RankerApp(_settings(path, f"redis://{redis_server.address}/0", milvus_server,
                              SEQREC_EMBEDDER=f"127.0.0.1:{free_port()}"))  # nobody listens there
    app.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        _wait_health(channel, health_pb2.HealthCheckResponse.SERVING)  # the embedder is not needed to serve
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="zz", item_text="a new show", top_k=3), timeout=20)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "embedder" in err.value.details()
        assert len(stub.ItemToItem(ranker_pb2.ItemToItemRequest(item_id="s3e3", top_k=3), timeout=10).items) == 3
    finally:
        channel.close()
        app.stop(0)
