"""Training configuration: every parameter of the training payload, its default, presets, validation.

The defaults are the ones in the product specification (SPEC.md section 3). Everything here is plain
Python so that services which never train (ranker, gateway) can read a bundle's config too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SAMPLING_STRATEGIES = ("sliding_window", "last")


class ConfigError(ValueError):
    """A training payload that cannot be used; the message names the field and how to fix it."""


@dataclass(frozen=True)
class Hyperparameters:
    """Model and optimisation settings (SPEC.md section 3 defaults)."""

    max_len: int = 50  # max past interactions per user analysed (the [MASK] slot included)
    sampling: str = "sliding_window"  # how training sequences are cut from long histories
    window_stride: int = 0  # sliding-window step; 0 means max_len // 2
    mask_ratio: float = 0.15  # share of items hidden during training
    last_item_mask_share: float = 0.5  # share of sequences trained as next-item examples (random cut, [MASK] last)
    next_item_context_ratio: float = 0.0  # next-item rows: share of the items before the target also masked (Cloze)
    causal: bool = False  # causal next-item model (SASRec-style) instead of Cloze; masking settings then unused
    hidden_size: int = 64  # embedding width; divisible by heads
    depth: int = 2  # Transformer encoder layers
    heads: int = 4  # attention heads
    batch_size: int = 128  # sequences per step
    epochs: int = 10  # passes over the training data
    lr: float = 0.001  # AdamW step size
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    dropout: float = 0.1  # dropout on embeddings, attention and feed-forward
    weight_tying: bool = False  # share input/output item embeddings
    grad_clip: float = 1.0  # max gradient norm (0 disables clipping)
    use_attention_mask: bool = True  # padding positions are not attended
    negative_samples: int = 100  # sampled-softmax negatives per positive; 0 = full softmax
    top_k: int = 10  # items returned at inference by default
    patience: int = 5  # validations (one every eval_every epochs) without NDCG@10 gain before stopping
    eval_every: int = 0  # validate every N epochs; 0 = auto (about every 200 optimizer steps, at least each epoch)
    id_dropout: float = 0.3  # hybrid only: share of items whose id part is hidden each step (text alone stands in)
    new_item_exposure: float = -1.0  # hybrid only: top-10 share of items with no interactions (-1 = measured, 0 = off)
    refit_share: float = 0.1  # after selection, continue training on every interaction for this share of its epochs
    time_budget: float = 30.0  # wall-clock minutes for training (validations and refit included); 0 = no limit


# Numeric timestamp units, in seconds; "auto" picks one by magnitude (see trainer.data.parse_timestamps).
TIME_UNITS = {"auto": 0.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class DataConfig:
    """Where the interactions are and which columns mean what."""

    data: str  # CSV or Parquet file with one interaction per row
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    time_unit: str = "auto"  # of numeric timestamps: s, ms, us, ns, or auto (by magnitude); dates are dates
    meta_cols: tuple[str, ...] = ()  # item features; activates the hybrid text engine
    name_col: str | None = None  # human-readable item label
    items: str | None = None  # optional item table joined on item_col
    min_user_interactions: int = 0  # iterative k-core: users below are dropped (0 = off)
    min_item_interactions: int = 0  # iterative k-core: items below are dropped (0 = off)


@dataclass(frozen=True)
class TrainConfig:
    """A full training payload: data, hyperparameters, seed."""

    data: DataConfig
    hparams: Hyperparameters = field(default_factory=Hyperparameters)
    seed: int = 42
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Rebuild a config written by `to_dict` (e.g. from a bundle manifest)."""
        data = dict(raw["data"])
        data["meta_cols"] = tuple(data.get("meta_cols") or ())
        return cls(
            data=DataConfig(**data),
            hparams=Hyperparameters(**raw.get("hparams", {})),
            seed=int(raw.get("seed", 42)),
            preset=raw.get("preset"),
        )


# Presets users expect (SPEC.md section 3): only the fields they name differ from the defaults.
# `accuracy` holds the settings measured best on both benchmark sets (docs/served_quality.md), the same for
# every dataset: many negatives per step, stronger dropout and masking, next-item rows that carry Cloze
# targets too, and a larger step size.
PRESETS: dict[str, dict[str, Any]] = {
    "accuracy": {"negative_samples": 3000, "dropout": 0.3, "mask_ratio": 0.2, "next_item_context_ratio": 0.2,
                 "lr": 0.002},
    "video_streaming": {"hidden_size": 128, "heads": 4, "depth": 3, "max_len": 50, "epochs": 20},
    "ecommerce_session": {"hidden_size": 64, "heads": 2, "depth": 2, "max_len": 20, "epochs": 15},
    "music_playlist": {"hidden_size": 96, "heads": 3, "depth": 3, "max_len": 30, "epochs": 25},
}


def build_hparams(preset: str | None = None, **overrides: Any) -> Hyperparameters:
    """Spec defaults, then the preset's values, then explicit overrides (None means "not given")."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    known = {f.name for f in dataclasses.fields(Hyperparameters)}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"{key}: not a hyperparameter; known: {sorted(known)}")
        if value is not None:
            values[key] = value
    hp = Hyperparameters(**values)
    validate_hparams(hp)
    return hp


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# Upper bounds: far beyond any useful setting, low enough that a typo cannot ask a trainer for terabytes
# of memory or a job that never ends.
INT_LIMITS = {"max_len": 4096, "hidden_size": 4096, "depth": 48, "heads": 64, "batch_size": 65_536,
              "epochs": 100_000, "top_k": 10_000, "negative_samples": 1_000_000, "patience": 100_000,
              "eval_every": 100_000}
FLOAT_LIMITS = {"lr": 10.0, "weight_decay": 10.0, "grad_clip": 1e6, "time_budget": 10_080.0}  # a week


def validate_hparams(hp: Hyperparameters) -> None:
    """Raise ConfigError naming the first invalid field, with the fix."""
    for name in ("max_len", "hidden_size", "depth", "heads", "batch_size", "epochs", "top_k"):
        value = getattr(hp, name)
        _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name}: must be a positive integer, got {value!r}")
    _require(hp.max_len >= 2, f"max_len: must be at least 2 (one item plus the [MASK] slot), got {hp.max_len}")
    _require(hp.hidden_size % hp.heads == 0,
             f"hidden_size: {hp.hidden_size} is not divisible by heads={hp.heads}; "
             f"choose e.g. hidden_size={hp.heads * max(1, round(hp.hidden_size / hp.heads))}")
    _require(hp.sampling in SAMPLING_STRATEGIES,
             f"sampling: must be one of {list(SAMPLING_STRATEGIES)}, got {hp.sampling!r}")
    _require(0 <= hp.window_stride <= hp.max_len,
             f"window_stride: must be between 0 (= max_len // 2) and max_len={hp.max_len}, got {hp.window_stride}")
    _require(0.0 < hp.mask_ratio < 1.0, f"mask_ratio: must be in (0, 1), got {hp.mask_ratio}")
    _require(0.0 <= hp.last_item_mask_share <= 1.0,
             f"last_item_mask_share: must be in [0, 1], got {hp.last_item_mask_share}")
    _require(0.0 <= hp.next_item_context_ratio < 1.0,
             f"next_item_context_ratio: must be in [0, 1), got {hp.next_item_context_ratio}")
    _require(0.0 <= hp.refit_share <= 1.0,
             f"refit_share: must be in [0, 1] (0 = ship the selection run's model), got {hp.refit_share}")
    _require(hp.time_budget >= 0.0, f"time_budget: must be >= 0 minutes (0 = no limit), got {hp.time_budget}")
    _require(0.0 <= hp.dropout < 1.0, f"dropout: must be in [0, 1), got {hp.dropout}")
    _require(hp.lr > 0.0, f"lr: must be positive, got {hp.lr}; if the loss turns NaN, lower it instead")
    _require(hp.weight_decay >= 0.0, f"weight_decay: must be >= 0, got {hp.weight_decay}")
    _require(hp.grad_clip >= 0.0, f"grad_clip: must be >= 0 (0 disables clipping), got {hp.grad_clip}")
    _require(isinstance(hp.negative_samples, int) and hp.negative_samples >= 0,
             f"negative_samples: must be an integer >= 0 (0 = full softmax), got {hp.negative_samples!r}")
    _require(0.0 <= hp.id_dropout < 1.0, f"id_dropout: must be in [0, 1), got {hp.id_dropout}")
    _require(hp.new_item_exposure == -1.0 or 0.0 <= hp.new_item_exposure < 1.0,
             f"new_item_exposure: must be -1 (measured from the data) or in [0, 1), got {hp.new_item_exposure}")
    _require(hp.patience >= 1, f"patience: must be at least 1, got {hp.patience}")
    _require(isinstance(hp.eval_every, int) and hp.eval_every >= 0,
             f"eval_every: must be an integer >= 0 (0 = auto), got {hp.eval_every!r}")
    for name in ("weight_tying", "use_attention_mask"):
        _require(isinstance(getattr(hp, name), bool), f"{name}: must be true or false")
    for name, limit in INT_LIMITS.items():
        _require(getattr(hp, name) <= limit, f"{name}: must be at most {limit}, got {getattr(hp, name)}")
    for name, limit in FLOAT_LIMITS.items():
        value = getattr(hp, name)
        _require(not value > limit, f"{name}: must be at most {limit:g}, got {value}")


def validate_data_config(dc: DataConfig) -> None:
    """Raise ConfigError for column settings that cannot work."""
    for name in ("user_col", "item_col", "time_col"):
        _require(bool(getattr(dc, name)), f"{name}: must name a column")
    cols = [dc.user_col, dc.item_col, dc.time_col]
    names = ("user_col", "item_col", "time_col")
    for i, name in enumerate(names):
        if cols[i] in cols[:i]:
            other = names[cols.index(cols[i])].removesuffix("_col")
            raise ConfigError(f"{name}: {cols[i]!r} is the {other} column too; user, item and time must be three "
                              "different columns")
    for col in dc.meta_cols:
        _require(col not in (dc.user_col, dc.time_col),
                 f"meta_cols: {col!r} is the user or timestamp column, not an item feature")
    _require(dc.time_unit in TIME_UNITS, f"time_unit: must be one of {list(TIME_UNITS)}, got {dc.time_unit!r}")
    _require(dc.min_user_interactions >= 0, "min_user_interactions: must be >= 0")
    _require(dc.min_item_interactions >= 0, "min_item_interactions: must be >= 0")
