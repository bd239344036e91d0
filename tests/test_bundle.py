"""The bundle: contents, verification, ONNX/torch parity, offline metrics reproduced from the bundle alone."""

import json
import re
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from seqrec.services.trainer.export import export_encoder
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.shared import bundle as b
from seqrec.shared.history import encode_histories
from seqrec.shared.manifest import FORMAT_VERSION, Layout
from seqrec.shared.metrics import ranking_metrics
from seqrec.shared.scoring import ItemParts, Scorer
from seqrec.shared.sequence_prior import SequencePrior


@pytest.mark.parametrize("tying,attn_mask,causal", [(False, True, False), (True, False, False), (False, True, True)])
def test_onnx_matches_torch_at_several_lengths_with_padding(tmp_path, tying, attn_mask, causal):
    torch.manual_seed(0)
    model = BERT4Rec(ModelConfig(n_indices=202, max_len=16, hidden_size=32, heads=4, weight_tying=tying,
                                 use_attention_mask=attn_mask, transition_dim=16, causal=causal)).eval()
    path = export_encoder(model, tmp_path / "encoder.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for lengths in ([1], [0, 3], [3, 7], [15, 2, 9], [40, 1]):
        histories = [rng.integers(1, 201, size=n).tolist() for n in lengths]
        ids = encode_histories(histories, 16, 201)
        onnx_out = session.run(["intent"], {"item_ids": ids})[0]
        torch_out = model(torch.from_numpy(ids)).detach().numpy()
        assert onnx_out.shape == (len(lengths), 32 + 16 + 1)  # output vector, transition query, bias
        assert np.abs(onnx_out - torch_out).max() <= 1e-4
        if attn_mask:  # padding is invisible: each row scores the same alone, in a batch, or padded to max_len
            alone = np.concatenate([session.run(None, {"item_ids": encode_histories([h], 16, 201)})[0]
                                    for h in histories])
            full = session.run(None, {"item_ids": encode_histories(histories, 16, 201, pad_to=16)})[0]
            assert np.abs(alone - onnx_out).max() <= 1e-4
            assert np.abs(full - onnx_out).max() <= 1e-4


def test_onnx_answers_gaps_at_the_mask_slot_as_torch_does(tmp_path):
    """The encoder answers at the [MASK] slot wherever it sits: ONNX equals torch for gaps at several positions
    and lengths, a gap at the end is the next-item row, and a gap's logit is the one Cloze training gives that
    slot (projected hidden state, transition from the item before; content affinity only at the last slot)."""
    torch.manual_seed(0)
    text = torch.randn(202, 8) * (torch.arange(202) % 201 > 0)[:, None]  # padding and [MASK] have no text
    model = BERT4Rec(ModelConfig(n_indices=202, max_len=16, hidden_size=32, heads=4, transition_dim=16,
                                 content_dim=8), text=text).eval()
    with torch.no_grad():
        model.content_taps.normal_()
    session = ort.InferenceSession(str(export_encoder(model, tmp_path / "encoder.onnx")),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for sides in ([(1, 1)], [(0, 4), (3, 2)], [(7, 7), (2, 12), (20, 1)], [(5, 0), (40, 40)]):
        before = [rng.integers(1, 201, size=n).tolist() for n, _ in sides]
        after = [rng.integers(1, 201, size=n).tolist() for _, n in sides]
        ids = encode_histories(before, 16, 201, following=after)
        onnx_out = session.run(["intent"], {"item_ids": ids})[0]
        torch_out = model(torch.from_numpy(ids)).detach().numpy()
        assert np.abs(onnx_out - torch_out).max() <= 1e-4
        with torch.no_grad():
            tensor = torch.from_numpy(ids)
            slot = (tensor == 201).int().argmax(1)
            rows = torch.arange(len(ids))
            hidden = model.project(model.encode(tensor)[rows, slot])
            previous = model.previous_items(tensor)[rows, slot]
            logit = (hidden @ model.output_weight().T + model.transition_query(previous) @ model.transition_out().T
                     + model.output_bias())
            at_end = slot == ids.shape[1] - 1
            logit[at_end] += model.content_query(tensor[at_end]) @ model.output_content().T
        scores = torch_out @ model.item_vectors().detach().numpy().T
        assert np.abs(scores - logit.numpy()).max() <= 1e-4
    history = rng.integers(1, 201, size=9).tolist()
    gap_at_end = encode_histories([history], 16, 201, following=[[]])
    assert np.array_equal(gap_at_end, encode_histories([history], 16, 201))


def test_gap_rows_keep_the_items_nearest_the_gap():
    rows = encode_histories([[1, 2, 3, 4, 5, 6], [1], [1, 2, 3, 4, 5, 6]], 6, 99,
                            following=[[7, 8, 9, 10, 11], [7, 8, 9, 10, 11], []])
    assert rows.tolist() == [[4, 5, 6, 99, 7, 8], [1, 99, 7, 8, 9, 10], [2, 3, 4, 5, 6, 99]]


def test_bundle_contents(trained_bundle):
    path, metrics = trained_bundle
    bundle = b.Bundle.open(path)
    m = bundle.manifest
    assert m.format_version == FORMAT_VERSION == 2 and m.bundle_version == path.name
    assert m.pad_index == 0 and m.mask_index == m.n_items + 1 and m.max_len == 12
    for name in (b.ENCODER, b.ITEM_VECTORS, b.VOCAB, b.POPULARITY, b.ITEMS, b.HISTORIES, b.METRICS,
                 b.ITEM_ID_PARTS, b.ITEM_FLAGS, b.TEXT_HEAD, "report.md", b.REPORT_HTML, "training_curves.png"):
        assert name in m.files and len(m.files[name]["sha256"]) == 64
    assert m.config["hparams"]["hidden_size"] == 32 and m.libraries["torch"]
    vectors = bundle.item_vectors()
    assert m.hybrid and m.scoring.layout == Layout(model=32, content=384, transition=32)
    assert m.dim == 32 + 384 + 32 + 1  # output vector, item text, transition vector, bias
    assert vectors.dtype == np.float32 and vectors.shape == (m.n_items + 2, m.dim)
    assert bundle.popularity().shape == (m.n_items + 2,)
    raw = json.loads((path / b.MANIFEST).read_text())
    assert raw["scoring"]["layout"] == {"model": 32, "content": 384, "transition": 32} and raw["dim"] == m.dim
    on_disk = bundle.metrics()
    assert set(on_disk) >= {"valid", "test", "epochs", "train_seconds"}
    assert on_disk["test"]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"])
    items = {row["item_id"]: row for row in bundle.iter_jsonl(b.ITEMS)}
    assert items["s0e0"]["display_name"] == "Series 0 episode 1"
    assert items["s0e0"]["meta"] == {"genre": "drama", "in_stock": False}
    assert m.metadata_schema == {"genre": "string", "in_stock": "bool"}
    assert not list(path.glob("*.pkl")) and not list(path.glob("*.pt"))


def test_the_html_report_is_one_self_contained_page(trained_bundle):
    """report.html names no external file (it opens offline), inlines the curves, and puts the model next to
    popularity and a first-order Markov chain on the same test split, with the numbers of metrics.json."""
    path, metrics = trained_bundle
    page = (path / b.REPORT_HTML).read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.findall(r"(?:src|href)=['\"](?!data:)", page) and "http" not in page.replace(str(path), "")
    assert "src='data:image/png;base64," in page
    for name, key in (("the model", "test"), ("popularity", "popularity_test"), ("Markov chain", "markov_test")):
        assert re.search(rf"{name}</td><td class=n>{metrics[key]['ndcg@10']:.4f}<", page), name
    assert set(metrics["markov_test"]) == set(metrics["popularity_test"])


def test_sequence_model_beats_popularity(trained_bundle):
    _, metrics = trained_bundle
    assert metrics["test"]["hr@10"] > 0.5
    assert metrics["test"]["ndcg@10"] > 2 * metrics["popularity_test"]["ndcg@10"]


def test_item_rows_rebuild_from_the_bundle_parts(trained_bundle):
    """The rows the bundle ships are `item_rows` of the parts it ships (what UpsertItems rebuilds from)."""
    bundle = b.Bundle.open(trained_bundle[0])
    np.testing.assert_allclose(ItemParts.from_bundle(bundle).rows(), bundle.item_vectors(), atol=1e-6)


def test_metrics_reproduce_from_the_bundle_alone(trained_bundle):
    """ONNX Runtime + the bundle's scorer + histories (what serving reads) give the trainer's test metrics."""
    path, metrics = trained_bundle
    bundle = b.Bundle.open(path)
    vocab = bundle.vocab()
    session = ort.InferenceSession(str(bundle.file(b.ENCODER)), providers=["CPUExecutionProvider"])
    histories = [vocab.encode(row["items"])[0] for row in bundle.iter_jsonl(b.HISTORIES)]
    histories = [h for h in histories if len(h) >= 3]
    inputs, targets = [h[:-1] for h in histories], np.array([h[-1] for h in histories])
    intent = session.run(None, {"item_ids": encode_histories(inputs, bundle.max_len, bundle.mask_index)})[0]
    assert SequencePrior.from_bundle(bundle) is not None, "the trainer writes a fitted sequence prior"
    scores = Scorer.from_bundle(bundle).scores(intent, inputs)
    target_scores = scores[np.arange(len(targets)), targets - 1]
    ranks = (scores > target_scores[:, None] + 1e-5).sum(1)
    online = ranking_metrics(ranks)
    assert online["hr@10"] == pytest.approx(metrics["test"]["hr@10"], abs=0.01)
    assert online["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=0.01)


@pytest.fixture
def bundle_copy(trained_bundle, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(trained_bundle[0], path)
    return path


def test_verification_rejects_a_tampered_file(bundle_copy):
    vectors = bundle_copy / b.ITEM_VECTORS
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(b.BundleError, match="item_vectors.npy does not match its sha256"):
        b.Bundle.open(bundle_copy)


def test_verification_rejects_a_truncated_file(bundle_copy):
    encoder = bundle_copy / b.ENCODER
    encoder.write_bytes(encoder.read_bytes()[:100])
    with pytest.raises(b.BundleError, match="encoder.onnx has 100 bytes"):
        b.Bundle.open(bundle_copy)


def test_verification_rejects_missing_file_and_wrong_format(bundle_copy):
    manifest = json.loads((bundle_copy / b.MANIFEST).read_text())
    manifest["format_version"] = 999
    (bundle_copy / b.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(b.BundleError, match="format 999 is not supported"):
        b.Bundle.open(bundle_copy)
    manifest["format_version"] = 1  # bundles of earlier seqrec versions: one clear error, naming both versions
    (bundle_copy / b.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(b.BundleError, match=r"bundle format 1 is not supported \(this seqrec reads format 2\)"):
        b.Bundle.open(bundle_copy)
    manifest["format_version"] = FORMAT_VERSION
    (bundle_copy / b.MANIFEST).write_text(json.dumps(manifest))
    (bundle_copy / b.VOCAB).unlink()
    with pytest.raises(b.BundleError, match="vocab.json is missing"):
        b.Bundle.open(bundle_copy)


def test_manifest_cannot_point_outside_the_bundle(bundle_copy):
    manifest = json.loads((bundle_copy / b.MANIFEST).read_text())
    manifest["files"]["../escape"] = {"sha256": "0" * 64, "bytes": 1}
    (bundle_copy / b.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(b.BundleError, match="outside the bundle"):
        b.Bundle.open(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(b.BundleError, match="not a bundle"):
        b.Bundle.open(tmp_path)
