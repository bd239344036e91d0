"""From a training config to an evaluated, exported, verified bundle. The CLI and the service both call this."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.services.trainer import distributed
from seqrec.services.trainer.data import Interactions, load_interactions
from seqrec.services.trainer.evaluate import evaluate
from seqrec.services.trainer.export import INPUT_NAME, OUTPUT_NAME, export_encoder
from seqrec.services.trainer.freshness import (
    calibrate_exposure,
    expected_unseen_share,
    newest_items,
    recent_share,
)
from seqrec.services.trainer.model import BERT4Rec, ModelConfig
from seqrec.services.trainer.prior_fit import fit_sequence_prior
from seqrec.services.trainer.report import markdown_report, plot_curves, training_warnings
from seqrec.services.trainer.split import EvalSet, LeaveOneOut, leave_one_out, training_windows
from seqrec.services.trainer.train import EpochRecord, TrainingError, TrainResult, history_as_dicts, train_model
from seqrec.shared import bundle as b
from seqrec.shared.config import TrainConfig, validate_data_config, validate_hparams
from seqrec.shared.metrics import ranking_metrics
from seqrec.shared.similarity import item_to_item_vectors
from seqrec.shared.text import TEXT_DIM, TEXT_MODEL, TextEmbedder
from seqrec.shared.vocab import PAD_INDEX

log = logging.getLogger(__name__)
LIBRARIES = ("torch", "numpy", "pandas", "onnx", "onnxscript", "seqrec")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def popularity_metrics(counts: np.ndarray, eval_set: EvalSet) -> dict[str, float]:
    """Full-ranking metrics of the global-popularity baseline (same ranking rule as the model)."""
    item_scores = counts[1:].astype(np.float64)
    ordered = np.sort(item_scores)  # one score row for every user: count higher scores by binary search
    ranks = len(ordered) - np.searchsorted(ordered, item_scores[eval_set.targets - 1], side="right")
    return ranking_metrics(ranks)


def _write_bundle(writer: b.BundleWriter, cfg: TrainConfig, model: BERT4Rec, data: Interactions,
                  counts: np.ndarray, metrics: dict[str, Any], history: list[EpochRecord],
                  warnings: list[str], text: np.ndarray | None) -> None:
    model = model.to("cpu").eval()
    export_encoder(model.fused(), writer.path(b.ENCODER))
    with torch.no_grad():
        item_vectors = model.item_vectors().float().numpy()
    writer.write_array(b.ITEM_VECTORS, item_vectors)
    for name, array in model.sequence_prior.arrays().items():
        writer.write_array(name, array)
    if text is not None:
        writer.write_array(b.TEXT_EMBEDDINGS, text)
        writer.write_array(b.TEXT_PROJECTION, model.text_projection().float().numpy())
        writer.write_array(b.ITEM_TO_ITEM, item_to_item_vectors(item_vectors, model.cfg.hidden_size, text))
    data.vocab.save(writer.path(b.VOCAB))
    writer.write_array(b.POPULARITY, counts.astype(np.int64))
    if data.items:
        writer.write_jsonl(b.ITEMS, ({"item_id": item, "display_name": info.display_name, "meta": info.meta}
                                     for item, info in data.items.items() if item in data.vocab))
    writer.write_jsonl(b.HISTORIES, ({"user_id": user, "items": data.vocab.decode(seq), "timestamps": ts}
                                     for user, seq, ts in zip(data.user_ids, data.sequences, data.timestamps,
                                                              strict=True)))
    writer.write_json(b.METRICS, metrics)
    writer.write_json("training_history.json", history_as_dicts(history))
    plot_curves(history, writer.path("training_curves.png"), f"seqrec bundle {writer.version}")
    writer.path("report.md").write_text(markdown_report(writer.version, cfg, data.stats, metrics, warnings))


def _text_features(cfg: TrainConfig, data: Interactions, embedder: TextEmbedder | None,
                   progress: bool) -> np.ndarray | None:
    """MiniLM embeddings of every item's text when metadata columns are given (the hybrid engine)."""
    if not cfg.data.meta_cols:
        return None
    from seqrec.services.trainer.text_features import catalog_texts, default_embedder, text_table

    texts = catalog_texts(data, cfg.data)
    data.stats["items_with_text"] = sum(1 for t in texts if t.strip())
    return text_table(texts, embedder or default_embedder(), progress)


def run_training(cfg: TrainConfig, out_dir: str | Path, progress: bool = True,
                 on_epoch: Callable[[EpochRecord], None] | None = None,
                 embedder: TextEmbedder | None = None) -> tuple[Path, dict[str, Any]]:
    """Train, evaluate, export and write a bundle; returns its path and the summary (metrics.json).

    With metadata columns the model is hybrid; item text is embedded by `embedder`, else by the
    embedder service named in SEQREC_EMBEDDER, else by MiniLM in this process.

    Under torchrun (WORLD_SIZE > 1; see `distributed`) every process calls this with the same config:
    each loads the data and trains on its shard of every epoch (`train_model`: hparams.batch_size is the
    global batch), then rank 0 alone scores the test set and writes the one bundle while the others wait.
    Every rank returns rank 0's (path, metrics), or raises rank 0's error, so all processes end the same
    way. Only rank 0 shows progress bars, calls `on_epoch` and logs at INFO.
    """
    validate_data_config(cfg.data)
    validate_hparams(cfg.hparams)
    with distributed.session():
        return _run_training(cfg, out_dir, progress and distributed.is_main(), on_epoch, embedder)


def _run_training(cfg: TrainConfig, out_dir: str | Path, progress: bool,
                  on_epoch: Callable[[EpochRecord], None] | None,
                  embedder: TextEmbedder | None) -> tuple[Path, dict[str, Any]]:
    hp = cfg.hparams
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    data = load_interactions(cfg.data)
    lengths = np.array([len(s) for s in data.sequences])
    data.stats["share_users_below_5"] = float((lengths < 5).mean())
    data.stats["mean_sequence_length"] = float(lengths.mean())
    split = leave_one_out(data.sequences)
    windows = training_windows(split.train, hp.max_len, hp.window_stride, hp.sampling)
    if len(windows) == 0:
        raise TrainingError("no training sequence has two or more items; every user needs at least 2 "
                            "interactions before validation and test (4 in all)")
    n_items = data.vocab.n_items
    text = _text_features(cfg, data, embedder, progress)
    train_counts = np.bincount(np.concatenate(split.train), minlength=data.vocab.n_indices)
    log.info("training on %d windows from %d users, %d items", len(windows), len(data.user_ids), n_items)
    newest = None if text is None else newest_items(split.train, data.timestamps, data.vocab.n_indices)

    model = BERT4Rec(ModelConfig(n_indices=data.vocab.n_indices, max_len=hp.max_len, hidden_size=hp.hidden_size,
                                 depth=hp.depth, heads=hp.heads, dropout=hp.dropout, weight_tying=hp.weight_tying,
                                 use_attention_mask=hp.use_attention_mask,
                                 text_dim=0 if text is None else TEXT_DIM, id_dropout=hp.id_dropout,
                                 content_dim=0 if text is None else TEXT_DIM, transition_dim=hp.hidden_size),
                    text=None if text is None else torch.from_numpy(text), n_warm=data.n_warm,
                    newest=None if newest is None else torch.from_numpy(newest))
    model.init_output_bias(torch.from_numpy(train_counts))
    try:
        result = train_model(model, split, hp, n_items, train_counts, cfg.seed, on_epoch, progress,
                             n_warm=data.n_warm)
    except torch.OutOfMemoryError as exc:
        raise TrainingError(f"out of memory: lower batch_size ({hp.batch_size}), negative_samples "
                            f"({hp.negative_samples}) or max_len ({hp.max_len}) ({exc})") from exc
    return distributed.on_main(lambda: _evaluate_and_write(cfg, out_dir, data, split, result, train_counts, text,
                                                           newest))


def _calibrate_new_items(cfg: TrainConfig, model: BERT4Rec, data: Interactions, split: LeaveOneOut,
                         newest: np.ndarray) -> None:
    """Give items nobody has interacted with yet their share of the top-10 slots (`freshness`):
    `new_item_exposure`, or when it is -1 the share expected from how the newest warm items were consumed."""
    measured = recent_share(split.train, data.timestamps, newest)
    n_newest, n_unseen = int(newest.sum()), int(model.catalog_only.sum())
    expected = expected_unseen_share(measured, n_newest, n_unseen)
    target = expected if cfg.hparams.new_item_exposure < 0 else cfg.hparams.new_item_exposure
    model.exposure_boost = calibrate_exposure(model, split.valid.inputs, data.vocab.mask_index, target)
    data.stats["new_item_exposure"] = {"recent_share": round(measured, 4), "newest_items": n_newest,
                                       "catalog_only_items": n_unseen, "expected_share": round(expected, 4),
                                       "target_share": round(target, 4), "bias_boost": round(model.exposure_boost, 4),
                                       "new_items": int(model.new_item.sum())}
    log.info("new-item exposure calibrated", extra=data.stats["new_item_exposure"])


def _evaluate_and_write(cfg: TrainConfig, out_dir: str | Path, data: Interactions, split: LeaveOneOut,
                        result: TrainResult, train_counts: np.ndarray,
                        text: np.ndarray | None, newest: np.ndarray | None) -> tuple[Path, dict[str, Any]]:
    """Test metrics, warnings and the verified bundle of a trained model (rank 0's job when data-parallel)."""
    hp = cfg.hparams
    n_items = data.vocab.n_items
    mask_index = data.vocab.mask_index
    prior_fit = fit_sequence_prior(result.model, split.train, split.valid, mask_index, cfg.seed)
    encoder_only = evaluate(result.model, split.test, mask_index)
    result.model.sequence_prior = prior_fit.prior
    log.info("sequence prior fitted", extra=prior_fit.summary())
    if newest is not None:
        _calibrate_new_items(cfg, result.model, data, split, newest)
    test = evaluate(result.model, split.test, mask_index, popularity=train_counts, seed=cfg.seed)
    metrics: dict[str, Any] = {
        "valid": evaluate(result.model, split.valid, mask_index),
        "test": test,
        "test_seen_excluded": evaluate(result.model, split.test, mask_index, exclude_seen=True),
        "sequence_prior": {**prior_fit.summary(), "test_encoder_only": encoder_only},
        "popularity_test": popularity_metrics(train_counts, split.test),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 3),
        "device": result.device,
        "data": data.stats,
    }
    if result.processes > 1:
        metrics["data_parallel"] = {"processes": result.processes, "backend": distributed.backend(),
                                    "batch_per_process": result.batch_per_process,
                                    "global_batch": result.batch_per_process * result.processes}
    warnings = training_warnings(cfg, data.stats, result.history, result.best_epoch, test,
                                 metrics["popularity_test"], result.stopped_early, result.device)
    metrics["warnings"] = warnings

    writer = b.BundleWriter(Path(out_dir))
    try:
        all_counts = np.bincount(np.concatenate(data.sequences), minlength=data.vocab.n_indices)
        _write_bundle(writer, cfg, result.model, data, all_counts, metrics, result.history, warnings, text)
        path = writer.commit({
            "config": cfg.to_dict(),
            "model": dataclasses.asdict(result.model.cfg),
            "max_len": hp.max_len,
            "pad_index": PAD_INDEX,
            "mask_index": mask_index,
            "n_items": n_items,
            "n_users": len(data.user_ids),
            "dim": result.model.cfg.vector_dim,
            "hybrid": text is not None,
            "n_catalog_only_items": n_items - data.n_warm,
            "text": None if text is None else {
                "model": TEXT_MODEL, "dim": TEXT_DIM, "columns": list(cfg.data.meta_cols),
                "name_column": cfg.data.name_col, "template": "name: <display name>; <column>: <value>; ...",
                "item_vector": "[text_embedding, 1] @ text_projection for an item known only by its text"},
            "metadata_schema": data.stats["metadata_schema"],
            "sequence_prior": result.model.sequence_prior.manifest_entry(),
            "encoder": {"input": INPUT_NAME, "input_dtype": "int64", "input_shape": ["batch", "length<=max_len"],
                        "output": OUTPUT_NAME, "output_dtype": "float32", "output_shape": ["batch", "dim"],
                        "layout": "history oldest→newest, then mask_index; left-padded with pad_index",
                        "score": "intent · item_vectors[i] is the logit of item index i; sequence_prior adds "
                                 "its terms"},
            "libraries": _versions(),
        })
    except BaseException:
        writer.abort()
        raise
    b.Bundle.open(path)  # verify what was written
    return path, metrics
