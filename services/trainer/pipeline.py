"""From a training config to an evaluated, exported, verified bundle. The CLI and the service both call this."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.services.trainer import distributed
from seqrec.services.trainer.bundle_builder import BundleContents, model_config, scoring_parts, write_bundle
from seqrec.services.trainer.data import Interactions, load_interactions
from seqrec.services.trainer.evaluate import evaluate, full_ranks, model_scorer
from seqrec.services.trainer.freshness import (
    calibrate_exposure,
    expected_unseen_share,
    newest_items,
    recent_share,
)
from seqrec.services.trainer.model import BERT4Rec
from seqrec.services.trainer.prior_fit import fit_sequence_prior, sequence_rules
from seqrec.services.trainer.report import training_warnings
from seqrec.services.trainer.split import EvalSet, LeaveOneOut, everything, leave_one_out, training_windows
from seqrec.services.trainer.train import EpochRecord, TrainingError, TrainResult, train_model
from seqrec.shared.config import Hyperparameters, TrainConfig, validate_data_config, validate_hparams
from seqrec.shared.markov import markov_metrics
from seqrec.shared.metrics import ranking_metrics
from seqrec.shared.scoring import Scorer
from seqrec.shared.sequence_prior import SequencePrior
from seqrec.shared.text import TextEmbedder

log = logging.getLogger(__name__)
AFTER_TRAINING_SHARE = 0.05  # of the time budget, kept for what follows training: fits, test metrics, export


def popularity_metrics(counts: np.ndarray, eval_set: EvalSet) -> dict[str, float]:
    """Full-ranking metrics of the global-popularity baseline (same ranking rule as the model)."""
    item_scores = counts[1:].astype(np.float64)
    ordered = np.sort(item_scores)  # one score row for every user: count higher scores by binary search
    ranks = len(ordered) - np.searchsorted(ordered, item_scores[eval_set.targets - 1], side="right")
    return ranking_metrics(ranks)


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
    deadline = time.monotonic() + 60.0 * hp.time_budget * (1.0 - AFTER_TRAINING_SHARE) if hp.time_budget > 0 else None
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

    model = BERT4Rec(model_config(hp, data.vocab.n_indices, hybrid=text is not None),
                    text=None if text is None else torch.from_numpy(text), n_warm=data.n_warm,
                    newest=None if newest is None else torch.from_numpy(newest))
    model.init_output_bias(torch.from_numpy(train_counts))
    with _out_of_memory_hint(hp):
        result = train_model(model, split, hp, n_items, train_counts, cfg.seed, on_epoch, progress,
                             n_warm=data.n_warm, deadline=_selection_deadline(deadline, hp.refit_share))
    selected = distributed.on_main(lambda: _select(cfg, data, split, result, train_counts, newest))
    refit = _refit(model, data, hp, result, cfg.seed, progress, deadline)
    return distributed.on_main(lambda: _write(cfg, out_dir, data, result, selected, refit, text, progress))


def _selection_deadline(deadline: float | None, refit_share: float) -> float | None:
    """The share of the time budget model selection may use: the rest is kept for the refit, which trains
    `refit_share` of the selected epochs (validation and fits are not repeated)."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    return time.monotonic() + left / (1.0 + refit_share)


@contextlib.contextmanager
def _out_of_memory_hint(hp: Hyperparameters) -> Iterator[None]:
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise TrainingError(f"out of memory: lower batch_size ({hp.batch_size}), negative_samples "
                            f"({hp.negative_samples}) or max_len ({hp.max_len}) ({exc})") from exc


def _refit(model: BERT4Rec, data: Interactions, hp: Hyperparameters, selection: TrainResult, seed: int,
           progress: bool, deadline: float | None) -> dict[str, Any]:
    """Continue training the selected model on every interaction, the validation and test items included, for
    `refit_share` of the selected epochs (at least one), so the shipped model has learned each user's newest
    interactions. No validation is possible (nothing is held out); the selection run's metrics stand."""
    if hp.refit_share <= 0 or selection.best_epoch == 0:
        return {"epochs": 0}
    epochs = max(1, math.ceil(hp.refit_share * selection.best_epoch))
    all_data = everything(data.sequences)
    counts = np.bincount(np.concatenate(all_data.train), minlength=data.vocab.n_indices)
    log.info("refit on every interaction for %d epoch(s)", epochs)
    with _out_of_memory_hint(hp):
        result = train_model(model, all_data, dataclasses.replace(hp, epochs=epochs), data.vocab.n_items, counts,
                             seed + 1, progress=progress, n_warm=data.n_warm, deadline=deadline, select=False)
    return {"epochs": len(result.history), "planned_epochs": epochs, "train_seconds": round(result.train_seconds, 3),
            "stopped_by_budget": len(result.history) < epochs}


def _calibrate_new_items(cfg: TrainConfig, model: BERT4Rec, scorer: Scorer, data: Interactions,
                         split: LeaveOneOut, newest: np.ndarray) -> float:
    """The exposure boost that gives items nobody has interacted with yet their share of the top-10 slots
    (`freshness`): `new_item_exposure`, or when it is -1 the share expected from how the newest warm items were
    consumed."""
    measured = recent_share(split.train, data.timestamps, newest)
    n_newest, n_unseen = int(newest.sum()), int(scorer.unseen.sum())
    expected = expected_unseen_share(measured, n_newest, n_unseen)
    target = expected if cfg.hparams.new_item_exposure < 0 else cfg.hparams.new_item_exposure
    boost = calibrate_exposure(model, scorer, split.valid.inputs, data.vocab.mask_index, target)
    data.stats["new_item_exposure"] = {"recent_share": round(measured, 4), "newest_items": n_newest,
                                       "catalog_only_items": n_unseen, "expected_share": round(expected, 4),
                                       "target_share": round(target, 4), "bias_boost": round(boost, 4),
                                       "new_items": int(model.new_item.sum())}
    log.info("new-item exposure calibrated", extra=data.stats["new_item_exposure"])
    return boost


@dataclass(frozen=True)
class Selection:
    """What model selection on the held-out split decided: the fitted prior and exposure boost, the metrics of
    the selected model (those the bundle reports) and the warnings."""

    prior: SequencePrior
    exposure_boost: float
    metrics: dict[str, Any]
    warnings: list[str]
    heldout_ranks: np.ndarray  # each test user's rank of their last item, seen items excluded (the quality gate's)


def _select(cfg: TrainConfig, data: Interactions, split: LeaveOneOut, result: TrainResult, train_counts: np.ndarray,
            newest: np.ndarray | None) -> Selection:
    """Fits, test metrics and warnings of the selected model (rank 0's job when data-parallel). Every number is
    scored through the scoring contract the bundle ships (`shared/scoring.py`)."""
    model, mask_index = result.model.eval(), data.vocab.mask_index
    encoder_alone = model_scorer(model)
    prior_fit = fit_sequence_prior(model, encoder_alone, split.train, split.valid, mask_index, cfg.seed)
    log.info("sequence prior fitted", extra=prior_fit.summary())
    boost = 0.0
    if newest is not None:
        fitted = Scorer.from_parts(scoring_parts(model, 0.0), prior_fit.prior)
        boost = _calibrate_new_items(cfg, model, fitted, data, split, newest)
    scorer = Scorer.from_parts(scoring_parts(model, boost), prior_fit.prior)
    test = evaluate(model, split.test, mask_index, popularity=train_counts, seed=cfg.seed, scorer=scorer)
    heldout = full_ranks(model, split.test, mask_index, exclude_seen=True, scorer=scorer)  # as served
    metrics: dict[str, Any] = {
        "valid": evaluate(model, split.valid, mask_index, scorer=scorer),
        "test": test,
        "test_seen_excluded": {**ranking_metrics(heldout), "users": float(len(heldout))} if len(heldout) else {},
        "sequence_prior": {**prior_fit.summary(),
                           "test_encoder_only": evaluate(model, split.test, mask_index, scorer=encoder_alone)},
        "popularity_test": popularity_metrics(train_counts, split.test),
        "markov_test": markov_metrics(split.train, data.vocab.n_items, split.test.inputs, split.test.targets),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "stopped_by_budget": result.stopped_by_budget,
        "train_seconds": round(result.train_seconds, 3),
        "device": result.device,
        "data": data.stats,
    }
    if result.processes > 1:
        metrics["data_parallel"] = {"processes": result.processes, "backend": distributed.backend(),
                                    "batch_per_process": result.batch_per_process,
                                    "global_batch": result.batch_per_process * result.processes}
    warnings = training_warnings(cfg, data.stats, result.history, result.best_epoch, test,
                                 metrics["popularity_test"], result.stopped_early, result.device,
                                 result.stopped_by_budget)
    metrics["warnings"] = warnings
    return Selection(prior_fit.prior, boost, metrics, warnings, heldout)


def _write(cfg: TrainConfig, out_dir: str | Path, data: Interactions, result: TrainResult, selection: Selection,
           refit: dict[str, Any], text: np.ndarray | None, progress: bool) -> tuple[Path, dict[str, Any]]:
    """The verified bundle of the shipped model: after a refit its transition counts cover every interaction too,
    under the weights fitted on validation."""
    prior = selection.prior
    if refit["epochs"]:
        prior = sequence_rules(data.sequences, data.vocab.mask_index, result.model.cfg.max_len)
        prior = prior.weighted(selection.prior.transition_weight, selection.prior.repeat_bias)
    metrics = {**selection.metrics, "refit": refit}
    contents = BundleContents(cfg, data, prior, metrics, selection.exposure_boost,
                              result.history, selection.warnings, heldout_ranks=selection.heldout_ranks)
    path = write_bundle(out_dir, result.model, contents, progress)
    return path, metrics
