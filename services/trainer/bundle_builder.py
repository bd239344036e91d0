"""The trainer's bundle builder: a model, its data and its fitted scoring terms → a verified bundle on disk.

The only writer of bundles: the training pipeline calls it, and so do the benchmarks (with untrained
models for cost-only runs), so every bundle has the shape that ships.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from seqrec.services.trainer.data import Interactions
from seqrec.services.trainer.export import INPUT_NAME, OUTPUT_NAME, export_encoder
from seqrec.services.trainer.html_report import html_report
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.services.trainer.report import markdown_report, plot_curves
from seqrec.services.trainer.train import EpochRecord, history_as_dicts
from seqrec.shared import bundle as b
from seqrec.shared.config import Hyperparameters, TrainConfig
from seqrec.shared.manifest import EncoderSpec, Manifest, ScoringSpec, TextSpec
from seqrec.shared.scoring import ItemParts
from seqrec.shared.sequence_prior import SequencePrior
from seqrec.shared.similarity import item_to_item_vectors
from seqrec.shared.text import TEXT_DIM, TEXT_MODEL
from seqrec.shared.vocab import PAD_INDEX

LIBRARIES = ("torch", "numpy", "pandas", "onnx", "onnxscript", "seqrec")


def model_config(hp: Hyperparameters, n_indices: int, hybrid: bool) -> ModelConfig:
    """The encoder's architecture for these hyperparameters (the same for training and benchmarks)."""
    return ModelConfig(n_indices=n_indices, max_len=hp.max_len, hidden_size=hp.hidden_size, depth=hp.depth,
                       heads=hp.heads, dropout=hp.dropout, weight_tying=hp.weight_tying,
                       use_attention_mask=hp.use_attention_mask, text_dim=TEXT_DIM if hybrid else 0,
                       id_dropout=hp.id_dropout, content_dim=TEXT_DIM if hybrid else 0,
                       transition_dim=hp.hidden_size, causal=hp.causal)


@dataclass
class BundleContents:
    """Everything a bundle is made of besides the model."""

    cfg: TrainConfig
    data: Interactions
    prior: SequencePrior  # the fitted sequence prior (weights zero: off)
    metrics: dict[str, Any]
    exposure_boost: float = 0.0  # fitted by freshness.calibrate_exposure (hybrid)
    history: list[EpochRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form manifest notes
    heldout_ranks: np.ndarray | None = None  # `Selection.heldout_ranks`, one per user with a test item


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def scoring_parts(model: BERT4Rec, exposure_boost: float) -> ItemParts:
    """The model's item parts with the fitted exposure boost: what the bundle's rows are built from."""
    return model.eval().item_parts().with_exposure(exposure_boost)


# What the export bar shows, in order.
EXPORT_STEPS = ("ONNX encoder", "item vectors", "vocabulary and histories", "reports", "manifest and checks")


def write_bundle(out_dir: str | Path, model: BERT4Rec, contents: BundleContents, progress: bool = False) -> Path:
    """Export the encoder, build the item rows through the scoring contract, write every file and the
    manifest, commit atomically and verify; returns the bundle's path."""
    data = contents.data
    model = model.to("cpu").eval()
    parts = scoring_parts(model, contents.exposure_boost)
    text = parts.text
    writer = b.BundleWriter(Path(out_dir))
    with tqdm(total=len(EXPORT_STEPS), desc="export", unit="step", leave=False, disable=not progress) as bar:
        def step(name: str) -> None:  # the previous step is done, `name` starts
            bar.update(0 if name == EXPORT_STEPS[0] else 1)
            bar.set_postfix_str(name)
        try:
            step(EXPORT_STEPS[0])
            export_encoder(model.fused(), writer.path(b.ENCODER))
            step(EXPORT_STEPS[1])
            rows = parts.rows()
            writer.write_array(b.ITEM_VECTORS, rows)
            for name, array in contents.prior.arrays().items():
                writer.write_array(name, array)
            if parts.head is not None and text is not None:
                writer.write_array(b.TEXT_EMBEDDINGS, text)
                writer.write_array(b.ITEM_ID_PARTS, parts.id_rows)
                writer.write_array(b.ITEM_FLAGS, parts.flags)
                writer.write_array(b.TEXT_HEAD, parts.head.array())
                writer.write_array(b.ITEM_TO_ITEM, item_to_item_vectors(rows, parts.layout, text))
            step(EXPORT_STEPS[2])
            _write_tables(writer, data)
            if contents.heldout_ranks is not None:
                _write_heldout(writer, data, contents.heldout_ranks)
            step(EXPORT_STEPS[3])
            _write_reports(writer, contents)
            step(EXPORT_STEPS[4])
            path = writer.commit(_manifest(model.cfg, parts, contents))
            b.Bundle.open(path)  # verify what was written
            bar.update(1)
        except BaseException:
            writer.abort()
            raise
    return path


def _write_tables(writer: b.BundleWriter, data: Interactions) -> None:
    """Vocabulary, popularity, item metadata and the histories the ranker seeds Redis with."""
    data.vocab.save(writer.path(b.VOCAB))
    counts = np.bincount(np.concatenate(data.sequences or [np.zeros(0, np.int64)]), minlength=data.vocab.n_indices)
    writer.write_array(b.POPULARITY, counts.astype(np.int64))
    if data.items:
        writer.write_jsonl(b.ITEMS, ({"item_id": item, "display_name": info.display_name, "meta": info.meta}
                                     for item, info in data.items.items() if item in data.vocab))
    writer.write_jsonl(b.HISTORIES, ({"user_id": user, "items": data.vocab.decode(seq),
                                      "timestamps": np.asarray(ts).tolist()}
                                     for user, seq, ts in zip(data.user_ids, data.sequences, data.timestamps,
                                                              strict=True)))


def _write_heldout(writer: b.BundleWriter, data: Interactions, ranks: np.ndarray) -> None:
    """Each test user's held-out last item, when it happened, and the rank the selection run gave it (seen
    items excluded, as served): the candidate's side of the publish quality gate (services/ranker/quality_gate.py),
    the one model of this bundle that never learned those items."""
    tested = [(user, seq, ts) for user, seq, ts in zip(data.user_ids, data.sequences, data.timestamps, strict=True)
              if len(seq) >= 3]  # the users `leave_one_out` tests, in its order
    if len(tested) != len(ranks):
        raise ValueError(f"{len(ranks)} held-out ranks for {len(tested)} tested users")
    writer.write_jsonl(b.HELDOUT, ({"user_id": user, "item_id": data.vocab.decode(seq[-1:])[0],
                                    "timestamp": float(ts[-1]), "rank": int(rank)}
                                   for (user, seq, ts), rank in zip(tested, ranks, strict=True)))


def _write_reports(writer: b.BundleWriter, contents: BundleContents) -> None:
    """Metrics, the training history and curves, and the Markdown and HTML reports."""
    cfg, data = contents.cfg, contents.data
    writer.write_json(b.METRICS, contents.metrics)
    writer.write_json("training_history.json", history_as_dicts(contents.history))
    curves = writer.path("training_curves.png") if contents.history else None
    if curves is not None:
        plot_curves(contents.history, curves, f"seqrec bundle {writer.version}")
    writer.path("report.md").write_text(markdown_report(writer.version, cfg, data.stats, contents.metrics,
                                                        contents.warnings))
    writer.path(b.REPORT_HTML).write_text(html_report(writer.version, cfg, data.stats, contents.metrics,
                                                    contents.warnings, curves), encoding="utf-8")


def _manifest(model_cfg: ModelConfig, parts: ItemParts, contents: BundleContents) -> Manifest:
    cfg, data = contents.cfg, contents.data
    head = parts.head
    return Manifest(
        config=cfg.to_dict(), model=dataclasses.asdict(model_cfg), max_len=model_cfg.max_len, pad_index=PAD_INDEX,
        mask_index=data.vocab.mask_index, n_items=data.vocab.n_items, n_users=len(data.user_ids),
        metadata_schema=dict(data.stats.get("metadata_schema") or {}),
        scoring=ScoringSpec(parts.layout, contents.prior.spec(),
                            head.new_content_weight if head is not None else 1.0, parts.exposure_boost),
        encoder=EncoderSpec(INPUT_NAME, OUTPUT_NAME),
        text=None if head is None else TextSpec(TEXT_MODEL, TEXT_DIM, list(cfg.data.meta_cols), cfg.data.name_col),
        n_catalog_only_items=data.vocab.n_items - data.n_warm, gap_filling=True,
        libraries=_versions(), extra=contents.extra)

