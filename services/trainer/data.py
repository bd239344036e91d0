"""Interaction loading: file → validated, chronologically ordered, k-core filtered sequences.

Every dropped row is counted by reason and reported; nothing is lost silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seqrec.shared.config import TIME_UNITS, DataConfig
from seqrec.shared.vocab import ItemVocab


class DataError(ValueError):
    """Interaction data that cannot be trained on; the message names the problem, never the file's contents.

    `sample` quotes what of the contents would help (column names, offending values). Only the local CLI
    prints it (`with_sample`): the trainer service reports `str(exc)`, since its caller need not be allowed
    to read the file it named.
    """

    def __init__(self, message: str, sample: str = ""):
        super().__init__(message)
        self.sample = sample

    def with_sample(self) -> str:
        return f"{self}; {self.sample}" if self.sample else str(self)


@dataclass
class ItemInfo:
    """What serving shows for an item."""

    display_name: str | None
    meta: dict[str, Any]


@dataclass
class Interactions:
    """Per-user item-index sequences in time order, with everything learned while loading them."""

    vocab: ItemVocab
    user_ids: list[str]
    sequences: list[np.ndarray]  # item indices, oldest first
    timestamps: list[np.ndarray]  # float64 UTC epoch seconds (DataConfig.time_unit), aligned
    items: dict[str, ItemInfo]
    stats: dict[str, Any] = field(default_factory=dict)
    n_warm: int = 0  # indices 1..n_warm have interactions; the rest are catalog-only items (text, no history)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def read_table(path: str | Path, what: str = "data", id_cols: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet file; `id_cols` are read as strings so `007` stays `007`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what}: file not found: {path}")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            frame = pd.read_parquet(path)
        elif suffix.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            sep = "\t" if ".tsv" in suffix else ","
            frame = pd.read_csv(path, sep=sep, dtype=dict.fromkeys(id_cols, str), keep_default_na=True)
        else:
            raise DataError(f"{what}: {path.name}: unsupported format; use .csv, .tsv or .parquet")
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{what}: {path} is empty (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{what}: cannot read {path} ({type(exc).__name__})", sample=str(exc)) from exc
    return frame


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}; the file has {len(frame.columns)} other column(s)",
                        sample=f"the file has {list(frame.columns)}")


def timestamp_unit(seconds_or_more: np.ndarray) -> str:
    """The unit of numeric epoch timestamps, by magnitude: below 1e11 seconds (until the year 5138), below
    1e14 milliseconds, below 1e17 microseconds, else nanoseconds. Small numbers (1, 2, 3: an ordering, not a
    date) read as seconds, which keeps them before any live event."""
    largest = float(np.abs(seconds_or_more).max()) if len(seconds_or_more) else 0.0
    return next((unit for unit, bound in (("s", 1e11), ("ms", 1e14), ("us", 1e17)) if largest < bound), "ns")


def parse_timestamps(values: pd.Series, column: str, unit: str = "auto") -> tuple[np.ndarray, str]:
    """UTC epoch seconds, and the unit the column was read in: numbers are scaled from `unit` ("auto":
    `timestamp_unit`), ISO date strings are parsed ("iso"). Unparseable → DataError."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        raw = numeric.to_numpy(dtype=np.float64)
        if unit == "auto":
            unit = timestamp_unit(raw[np.isfinite(raw)])
        out = raw * TIME_UNITS[unit]
    else:
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        is_number, is_date = numeric.notna(), parsed.notna() & numeric.isna()
        if is_number.any() and is_date.any():  # no common unit: epoch seconds? ms? refuse rather than guess
            raise DataError(f"{column}: mixes numbers ({int(is_number.sum())} row(s)) and ISO dates "
                            f"({int(is_date.sum())} row(s)); use one format in the whole column",
                            sample=f"numbers such as {values[is_number].astype(str).unique()[:3].tolist()}, "
                                   f"dates such as {values[is_date].astype(str).unique()[:3].tolist()}")
        bad = parsed.isna()
        if bad.any():
            examples = values[bad].astype(str).unique()[:3].tolist()
            raise DataError(f"{column}: {int(bad.sum())} timestamp(s) are neither numbers nor ISO dates; "
                            "fix or drop those rows", sample=f"such as {examples}")
        out, unit = (parsed.astype("int64") / 1e9).to_numpy(dtype=np.float64), "iso"
    infinite = ~np.isfinite(out)
    if infinite.any():
        raise DataError(f"{column}: timestamps must be finite numbers; {int(infinite.sum())} are not",
                        sample=f"such as {values[infinite].astype(str).unique()[:3].tolist()}")
    return out, unit


def id_spellings(frame: pd.DataFrame, column: str, ids: np.ndarray) -> dict[str, Any]:
    """How an id column could surprise: ids are compared as text (`007` is not `7`, `1.0` is not `1`).

    `float_column`: the file stores the ids as floating point (Parquet), so every id reads like `1.0`.
    `numeric_lookalikes`: distinct ids that spell the same number, e.g. `1` and `1.0`; at most 5 examples.
    """
    out: dict[str, Any] = {}
    if frame[column].dtype.kind == "f":
        out["float_column"] = True
    unique = pd.Series(pd.unique(ids))
    number = pd.to_numeric(unique, errors="coerce")
    spelled = unique[number.notna()].groupby(number[number.notna()]).agg(sorted)
    clashes = [group for group in spelled.tolist() if len(group) > 1]
    if clashes:
        out["numeric_lookalikes"] = {"groups": len(clashes), "examples": sorted(clashes)[:5]}
    return out


def kcore_filter(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Boolean keep-mask after iterative k-core filtering (repeat until every count holds)."""
    keep = np.ones(len(users), dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    u_codes, u_idx = np.unique(users, return_inverse=True)
    i_codes, i_idx = np.unique(items, return_inverse=True)
    while True:
        u_count = np.bincount(u_idx[keep], minlength=len(u_codes))
        i_count = np.bincount(i_idx[keep], minlength=len(i_codes))
        new_keep = keep & (u_count[u_idx] >= min_user) & (i_count[i_idx] >= min_item)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def _clean_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _item_table(frame: pd.DataFrame, cfg: DataConfig, stats: dict[str, Any]) -> dict[str, ItemInfo]:
    """First non-missing value per item for the metadata and display-name columns."""
    cols = list(cfg.meta_cols) + ([cfg.name_col] if cfg.name_col else [])
    if not cols:
        return {}
    table = frame[[cfg.item_col, *cols]].drop_duplicates(subset=[cfg.item_col], keep="first")
    out: dict[str, ItemInfo] = {}
    for row in table.itertuples(index=False):
        values = dict(zip([cfg.item_col, *cols], row, strict=True))
        name = _clean_value(values.get(cfg.name_col)) if cfg.name_col else None
        meta = {c: _clean_value(values[c]) for c in cfg.meta_cols}
        out[str(values[cfg.item_col])] = ItemInfo(display_name=None if name is None else str(name),
                                                  meta={k: v for k, v in meta.items() if v is not None})
    return out


def metadata_schema(items: dict[str, ItemInfo], columns: tuple[str, ...]) -> dict[str, str]:
    """Type of each metadata column over all items: bool, int64, double or string (mixed → string)."""
    schema: dict[str, str] = {}
    for col in columns:
        kinds = {type(info.meta[col]) for info in items.values() if col in info.meta}
        if kinds <= {bool}:
            schema[col] = "bool"
        elif kinds <= {int}:
            schema[col] = "int64"
        elif kinds <= {int, float}:
            schema[col] = "double"
        else:
            schema[col] = "string"
    return schema


def _normalise_meta(items: dict[str, ItemInfo], schema: dict[str, str]) -> None:
    """Store every value in its column's type (ints in a double column become floats, etc.)."""
    cast = {"bool": bool, "int64": int, "double": float, "string": str}
    for info in items.values():
        info.meta = {k: cast[schema[k]](v) for k, v in info.meta.items()}


def load_interactions(cfg: DataConfig) -> Interactions:
    """Load, validate, order, filter and index interactions as the config describes."""
    frame = read_table(cfg.data, "data", (cfg.user_col, cfg.item_col))
    stats: dict[str, Any] = {"rows_read": len(frame)}
    if frame.empty:
        raise DataError(f"data: {cfg.data} has a header but no rows")
    _require_columns(frame, [cfg.user_col, cfg.item_col, cfg.time_col], "data")
    item_cols = list(cfg.meta_cols) + ([cfg.name_col] if cfg.name_col else [])
    items_frame = None
    if cfg.items:
        items_frame = read_table(cfg.items, "items", (cfg.item_col,))
        _require_columns(items_frame, [cfg.item_col, *item_cols], "items")
        items_frame = items_frame.assign(**{cfg.item_col: items_frame[cfg.item_col].astype(str).str.strip()})
        stats["item_table_duplicate_ids"] = int(items_frame[cfg.item_col].duplicated().sum())
    else:
        _require_columns(frame, item_cols, "data")

    frame = frame.reset_index(drop=True)
    frame["_row"] = np.arange(len(frame), dtype=np.int64)
    dropped: dict[str, int] = {}
    for col in (cfg.user_col, cfg.item_col, cfg.time_col):
        missing = frame[col].isna() | (frame[col].astype(str).str.strip() == "")
        if missing.any():
            dropped[f"missing_{col}"] = int(missing.sum())
            frame = frame[~missing]
    stats["dropped_rows"] = dropped
    if frame.empty:
        raise DataError(f"data: every row lacks a user, item or timestamp value ({dropped})")

    users = frame[cfg.user_col].astype(str).str.strip().to_numpy()
    items = frame[cfg.item_col].astype(str).str.strip().to_numpy()
    spellings = {col: found for col, ids in ((cfg.user_col, users), (cfg.item_col, items))
                 if (found := id_spellings(frame, col, ids))}
    stats["id_spellings"] = spellings
    seen_items = set(items.tolist())
    times, stats["timestamp_unit"] = parse_timestamps(frame[cfg.time_col], cfg.time_col, cfg.time_unit)
    rows = frame["_row"].to_numpy()

    keep = kcore_filter(users, items, cfg.min_user_interactions, cfg.min_item_interactions)
    stats["dropped_by_kcore"] = int((~keep).sum())
    if not keep.any():
        raise DataError(f"k-core filtering (users >= {cfg.min_user_interactions}, items >= "
                        f"{cfg.min_item_interactions} interactions) removed every row; lower the minimums")
    users, items, times, rows = users[keep], items[keep], times[keep], rows[keep]

    # Chronological per user; ties keep the file's row order (stable tie-break).
    order = np.lexsort((rows, times, users))
    users, items, times = users[order], items[order], times[order]

    source = items_frame if items_frame is not None else frame.assign(**{cfg.item_col: frame[cfg.item_col]
                                                                         .astype(str).str.strip()})
    item_info = _item_table(source, cfg, stats)
    warm = sorted(set(items.tolist()))
    # Items of the item table never seen in the interactions join the catalog after the warm items: with
    # metadata they get text-only vectors (recommendable on day one). Items removed by k-core stay out.
    cold = sorted(set(item_info) - seen_items) if cfg.meta_cols else []
    vocab = ItemVocab(warm + cold)
    index_of = {item: vocab.index(item) for item in vocab.ids()}
    item_idx = np.fromiter((index_of[i] for i in items), dtype=np.int64, count=len(items))
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    bounds = np.r_[starts, len(users)]
    user_ids = users[starts].tolist()
    sequences = [item_idx[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    timestamps = [times[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    lengths = np.diff(bounds)
    longest = int(np.argmax(lengths))
    stats["longest_history"] = {"user_id": user_ids[longest], "interactions": int(lengths[longest]),
                                "share_of_rows": float(lengths[longest] / len(users))}
    stats["median_history"] = float(np.median(lengths))

    same_user = users[1:] == users[:-1]
    ties = same_user & (times[1:] == times[:-1])
    stats.update({
        "rows_used": int(len(users)),
        "users": len(user_ids),
        "items": vocab.n_items,
        "catalog_only_items": len(cold),
        "timestamp_tie_share": float(ties.sum() / max(same_user.sum(), 1)),
        "duplicate_rows": int(pd.DataFrame({"u": users, "i": items, "t": times}).duplicated().sum()),
    })

    stats["metadata_schema"] = metadata_schema(item_info, cfg.meta_cols)
    _normalise_meta(item_info, stats["metadata_schema"])
    return Interactions(vocab=vocab, user_ids=user_ids, sequences=sequences, timestamps=timestamps,
                        items=item_info, stats=stats, n_warm=len(warm))
