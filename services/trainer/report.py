"""The training report: warnings from the spec's troubleshooting list, a Markdown summary, curves as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seqrec.services.trainer.split import window_bounds
from seqrec.services.trainer.train import EpochRecord
from seqrec.shared.config import TrainConfig

FEW_INTERACTIONS = 5  # users below this give the model little sequence to learn from
SLOW_EPOCH_SECONDS = 120.0
HEAVY_HISTORY = 1000  # a user with at least this many interactions and
HEAVY_FACTOR = 50  # this many times the median user's is reported (a bot, crawler or shared account?)


def training_warnings(cfg: TrainConfig, stats: dict[str, Any], history: list[EpochRecord], best_epoch: int,
                      test: dict[str, float], popularity_test: dict[str, float], stopped_early: bool,
                      device: str, stopped_by_budget: bool = False) -> list[str]:
    """Plain-language warnings, each with the advice the specification gives."""
    out: list[str] = []
    dropped = sum(stats.get("dropped_rows", {}).values())
    if dropped:
        out.append(f"{dropped} row(s) were dropped for missing values: {stats['dropped_rows']}.")
    few = stats.get("share_users_below_5", 0.0)
    if few > 0.2:
        out.append(f"{few:.0%} of users have fewer than {FEW_INTERACTIONS} interactions: sequence models need "
                   "more; consider more data or an item-KNN baseline for these users.")
    ties = stats.get("timestamp_tie_share", 0.0)
    if ties > 0.05:
        out.append(f"{ties:.1%} of consecutive interactions of a user share a timestamp; their order falls back "
                   "to the file's row order. Use finer timestamps if the order matters.")
    if stats.get("duplicate_rows"):
        out.append(f"{stats['duplicate_rows']} duplicate (user, item, timestamp) rows were kept as repeated "
                   "interactions.")
    for column, found in (stats.get("id_spellings") or {}).items():
        if found.get("float_column"):
            out.append(f"{column}: the file stores ids as floating-point numbers, so they read like '1.0' (and "
                       "requests must spell them so); store the column as integers or strings.")
        clashes = found.get("numeric_lookalikes")
        if clashes:
            examples = ", ".join("/".join(repr(i) for i in group) for group in clashes["examples"][:3])
            out.append(f"{column}: {clashes['groups']} set(s) of distinct ids spell the same number ({examples}); "
                       "ids are compared as text, so each spelling is a different id: write each id one way "
                       "if they mean the same thing.")
    longest = stats.get("longest_history") or {}
    n_longest = int(longest.get("interactions", 0))
    if stats.get("users") == 1:
        out.append(f"All rows belong to one user ({longest.get('user_id')!r} in column {cfg.data.user_col!r}): "
                   "validation and test metrics rest on that one sequence; check that --user-col names the "
                   "user column.")
    elif n_longest >= HEAVY_HISTORY and n_longest > HEAVY_FACTOR * stats.get("median_history", 0.0):
        hp = cfg.hparams
        windows = len(window_bounds(max(n_longest - 2, 1), hp.max_len, hp.window_stride or max(1, hp.max_len // 2),
                                    hp.sampling))
        out.append(f"User {longest['user_id']!r} has {n_longest} interactions, {longest['share_of_rows']:.0%} of "
                   f"the rows (median user: {stats.get('median_history', 0.0):g}), and gives {windows} training "
                   f"window(s) ({hp.sampling}); one history outweighs the others: check for a bot, crawler or "
                   "shared account, drop it, or use --sampling last.")
    best = next((r for r in history if r.epoch == best_epoch), None)
    if best and best.train_probe and best.valid:
        train_ndcg, valid_ndcg = best.train_probe.get("ndcg@10", 0.0), best.valid.get("ndcg@10", 0.0)
        if train_ndcg > 2 * valid_ndcg and train_ndcg - valid_ndcg > 0.05:
            out.append(f"Overfitting: NDCG@10 on training targets {train_ndcg:.4f} vs validation {valid_ndcg:.4f}; "
                       "raise dropout or the masking ratio, or train fewer epochs.")
    if stopped_by_budget:
        out.append(f"The time budget ({cfg.hparams.time_budget:g} min) ended training after {len(history)} of "
                   f"{cfg.hparams.epochs} epochs (best {best_epoch}); raise --time-budget (0 = no limit) to train "
                   "until early stopping.")
    elif not stopped_early and best_epoch == len(history) and len(history) > 1:
        out.append(f"Validation NDCG@10 was still improving at the last epoch ({best_epoch}): raise --epochs "
                   "(early stopping keeps the best weights).")
    if test and popularity_test and test.get("ndcg@10", 0.0) <= popularity_test.get("ndcg@10", 0.0):
        out.append(f"Low quality: test NDCG@10 {test.get('ndcg@10', 0):.4f} does not beat global popularity "
                   f"({popularity_test.get('ndcg@10', 0):.4f}). Check the timestamp column and its order; "
                   "underfitting → larger hidden size or depth.")
    slow = [r.seconds for r in history]
    if slow and float(np.median(slow)) > SLOW_EPOCH_SECONDS:
        hint = "a smaller model (hidden size, depth, max_len) or a GPU" if device == "cpu" else "a smaller model"
        out.append(f"Slow training: {float(np.median(slow)):.0f} s per epoch; try {hint}.")
    if not cfg.data.meta_cols:
        out.append("No metadata columns: items without interactions cannot be recommended until the next "
                   "training (cold start). Give --meta-cols to enable the hybrid text engine.")
    return out


def plot_curves(history: list[EpochRecord], path: Path, title: str) -> Path:
    """Loss and validation/train-probe NDCG@10 and HR@10 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [r.loss for r in history], color="tab:red")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    evaluated = [r for r in history if r.valid]
    for key, style in (("ndcg@10", "-"), ("hr@10", "--")):
        ax_metric.plot([r.epoch for r in evaluated], [r.valid[key] for r in evaluated], style, color="tab:blue",
                       label=f"valid {key}")
        ax_metric.plot([r.epoch for r in evaluated], [r.train_probe.get(key, np.nan) for r in evaluated], style,
                       color="tab:gray", label=f"train probe {key}")
    ax_metric.set(xlabel="epoch", ylabel="metric", title="full-ranking metrics")
    ax_metric.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


METRIC_COLUMNS = ("hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")


def report_rows(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The rows of the report's metrics table: the model on each split, then the baselines on the test split."""
    rows = {"valid": metrics.get("valid"), "test": metrics.get("test"),
            "test_seen_excluded": metrics.get("test_seen_excluded"),
            "test, encoder alone": (metrics.get("sequence_prior") or {}).get("test_encoder_only"),
            "popularity_test": metrics.get("popularity_test"),
            "test, first-order Markov chain": metrics.get("markov_test")}
    return {name: m for name, m in rows.items() if m}


def test_headline(metrics: dict[str, Any]) -> str:
    """The test figures a person looks at first, next to popularity's on the same split."""
    test, popular = metrics["test"], metrics["popularity_test"]
    return (f"test HR@10 {test['hr@10']:.4f}, NDCG@10 {test['ndcg@10']:.4f} (popularity on the same split: "
            f"HR@10 {popular['hr@10']:.4f}, NDCG@10 {popular['ndcg@10']:.4f})")


def markdown_report(version: str, cfg: TrainConfig, stats: dict[str, Any], metrics: dict[str, Any],
                    warnings: list[str]) -> str:
    lines = [f"# Training report — bundle {version}", "",
             f"Data: `{cfg.data.data}` — {stats['users']} users, {stats['items']} items, "
             f"{stats['rows_used']} interactions used of {stats['rows_read']} read.", "",
             "| split | HR@1 | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | MRR |", "|---|" + "---|" * 8]
    for split, m in report_rows(metrics).items():
        lines.append(f"| {split} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in METRIC_COLUMNS) + " |")
    sampled = (metrics.get("test") or {}).get("sampled100_ndcg@10")
    if sampled is not None:
        lines += ["", f"Secondary (sampled, 100 popularity negatives; inflates numbers, for comparison with the "
                      f"BERT4Rec paper only): test HR@10 {metrics['test']['sampled100_hr@10']:.4f}, "
                      f"NDCG@10 {sampled:.4f}."]
    prior = metrics.get("sequence_prior")
    if prior:
        lines += ["", f"Sequence prior (fitted on validation): transition weight {prior['transition_weight']}, "
                      f"repeat bias {prior['repeat_bias']}; validation NDCG@10 "
                      f"{prior['valid_ndcg@10_encoder_only']:.4f} for the encoder alone, "
                      f"{prior['valid_ndcg@10']:.4f} with the prior "
                      f"({prior['calibration_users']} users)."]
    if "epochs" in metrics:
        lines += ["", f"Epochs run: {metrics['epochs']} (best {metrics['best_epoch']}), training time "
                      f"{metrics['train_seconds']:.1f} s on {metrics['device']}."]
    else:
        lines += ["", "Not trained by the training pipeline (a bundle built for a benchmark)."]
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in warnings] or ["- none"]
    lines += ["", "![training curves](training_curves.png)", ""]
    return "\n".join(lines)
