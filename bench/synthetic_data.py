"""Synthetic interaction logs with real sequential structure, written streaming (bounded memory).

    python bench/synthetic_data.py --items 1000000 --interactions 10000000 --out /tmp/seqrec-bench/synth-1m.parquet

The catalog is a set of *series* (shows, book series, courses) of 1..~60 *episodes* in order, each
series in one of --categories categories; item `i0001234` is one episode. Users watch in *runs*:
pick a series (mostly from their favourite category), start at its first episode (or, less often,
anywhere in it) and go through the next few episodes in order. So the next item is usually the
next episode of the same series: a sequential model can learn it, popularity cannot. Series
popularity follows a Zipf law (`ZIPF_EXPONENT` of bench/synthetic_bundle.py by default) over a
random permutation, categories are Zipf-skewed too, and later episodes are rarer than first ones
(people drop out of series), as in real catalogs.

Users are generated and written in chunks of about --chunk-rows interactions, so memory stays at
a few hundred MB whatever --interactions is; rows of a user are contiguous and in time order.
Output: `user_id,item_id,timestamp` (string ids, int64 seconds) as Parquet (one row group per
chunk) or CSV (by the suffix of --out), and the item table (`item_id,series,episode,category`)
beside it as `<out stem>.items.<suffix>`. Train on it with
`seqrec train --data OUT --user-col user_id --item-col item_id --time-col timestamp`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_bundle import START_TIME, ZIPF_EXPONENT, item_ids  # noqa: E402

MEAN_EPISODES = 8  # mean series length (geometric, capped at MAX_EPISODES)
MAX_EPISODES = 60
N_CATEGORIES = 50
FAVOURITE_SHARE = 0.8  # share of a user's runs in their favourite category
FROM_START_SHARE = 0.7  # share of runs starting at episode 1 (the rest start anywhere in the series)
MEAN_RUN = 4.0  # mean episodes watched in a row (geometric), cut at the series' end
MEAN_HISTORY = 50.0  # mean interactions per user (lognormal), clipped to [MIN_HISTORY, MAX_HISTORY]
MIN_HISTORY, MAX_HISTORY = 5, 500
EPISODE_GAP_S = (1_200, 3_600)  # seconds between episodes of one run
RUN_GAP_S = (3_600, 3 * 86_400)  # seconds between runs
START_SPREAD_S = 365 * 86_400  # users start within a year of START_TIME


@dataclass
class Catalog:
    """Series layout and sampling tables of a synthetic catalog."""

    first_item: np.ndarray  # (S,) item index (0-based) of every series' first episode
    size: np.ndarray  # (S,) episodes per series
    category: np.ndarray  # (S,) category of every series
    popularity: np.ndarray  # (S,) Zipf probability of every series
    category_popularity: np.ndarray  # (K,) share of users whose favourite each category is
    in_category_cdf: np.ndarray  # (S,) series sorted by category; category + within-category cdf
    by_category: np.ndarray  # (S,) series ids in that sorted order
    global_cdf: np.ndarray  # (S,) cdf of `popularity`

    @property
    def n_items(self) -> int:
        return int(self.size.sum())


@dataclass
class Summary:
    out: str
    items_file: str
    items: int
    series: int
    categories: int
    users: int
    rows: int
    items_with_interactions: int
    seconds: float
    peak_rss_mb: float
    zipf_exponent: float
    seed: int


def zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities r ** -exponent over a random permutation of n ranks (popularity independent of id)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    probs = np.empty(n)
    probs[rng.permutation(n)] = weights / weights.sum()
    return probs


def make_catalog(n_items: int, n_categories: int, exponent: float, rng: np.random.Generator) -> Catalog:
    """Cut n_items into series of geometric length, give each a category and a Zipf popularity."""
    sizes = np.minimum(rng.geometric(1 / MEAN_EPISODES, size=n_items // MEAN_EPISODES * 2 + 16), MAX_EPISODES)
    ends = np.cumsum(sizes)
    n_series = int(np.searchsorted(ends, n_items)) + 1
    sizes = sizes[:n_series].copy()
    sizes[-1] -= int(ends[n_series - 1] - n_items)  # the last series ends at the catalog's end
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    category_popularity = zipf(n_categories, 1.0, rng)
    category = rng.choice(n_categories, size=n_series, p=category_popularity)
    popularity = zipf(n_series, exponent, rng)
    # Sampling a series within category c: u ~ U(0, 1), searchsorted(c + within-category cdf, c + u).
    order = np.lexsort((np.arange(n_series), category))
    cdf = np.empty(n_series)
    for c in range(n_categories):
        block = order[category[order] == c]
        if len(block):
            within = np.cumsum(popularity[block])
            cdf[np.flatnonzero(category[order] == c)] = c + within / within[-1]
    global_cdf = np.cumsum(popularity)
    global_cdf[-1] = 1.0
    return Catalog(first_item=first, size=sizes, category=category, popularity=popularity,
                   category_popularity=category_popularity, in_category_cdf=cdf, by_category=order,
                   global_cdf=global_cdf)


def _pick_series(catalog: Catalog, favourite: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One series per run: from the favourite category (FAVOURITE_SHARE of runs) or the whole catalog."""
    n = len(favourite)
    u = rng.random(n)
    present = np.bincount(catalog.category, minlength=len(catalog.category_popularity)) > 0
    in_fav = (rng.random(n) < FAVOURITE_SHARE) & present[favourite]
    pos = np.searchsorted(catalog.in_category_cdf, favourite + np.minimum(u, 1 - 1e-12), side="right")
    fav_series = catalog.by_category[np.minimum(pos, len(catalog.by_category) - 1)]
    any_series = np.minimum(np.searchsorted(catalog.global_cdf, u, side="right"), len(catalog.global_cdf) - 1)
    return np.where(in_fav, fav_series, any_series)


def user_chunk(catalog: Catalog, lengths: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user offset within the chunk, item index 0-based, timestamp) for users of the given lengths,
    users contiguous, each in time order; a user may end up a little shorter than asked (runs end early
    at a series' end, so not every user's runs fill it)."""
    n_users = len(lengths)
    favourite = rng.choice(len(catalog.category_popularity), size=n_users, p=catalog.category_popularity)
    n_runs = np.ceil(lengths / MEAN_RUN * 1.5).astype(np.int64) + 2  # enough runs to fill the user, cut below
    run_user = np.repeat(np.arange(n_users), n_runs)
    series = _pick_series(catalog, favourite[run_user], rng)
    size = catalog.size[series]
    start = np.where(rng.random(len(series)) < FROM_START_SHARE, 0, (rng.random(len(series)) * size).astype(np.int64))
    run_len = np.minimum(rng.geometric(1 / MEAN_RUN, size=len(series)), size - start)
    # Items of every run, runs of a user in order.
    run_offset = np.repeat(np.cumsum(run_len) - run_len, run_len)
    within_run = np.arange(int(run_len.sum())) - run_offset
    items = np.repeat(catalog.first_item[series] + start, run_len) + within_run
    users = np.repeat(run_user, run_len)
    # Position of every item in its user's sequence; keep the first `lengths[user]`.
    user_start = np.searchsorted(users, np.arange(n_users))
    position = np.arange(len(items)) - user_start[users]
    keep = position < lengths[users]
    first_of_run = within_run == 0
    gap = np.where(first_of_run, rng.integers(*RUN_GAP_S, size=len(items)),
                   rng.integers(*EPISODE_GAP_S, size=len(items)))
    users, items, gap, position = users[keep], items[keep], gap[keep], position[keep]
    clock = np.cumsum(gap)
    user_first = np.searchsorted(users, np.arange(n_users))
    has_rows = user_first < len(users)
    base = np.zeros(n_users, dtype=np.int64)
    base[has_rows] = clock[user_first[has_rows]]
    starts = START_TIME + rng.integers(0, START_SPREAD_S, size=n_users)
    stamps = starts[users] + clock - base[users]
    return users, items, stamps


def history_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """Lognormal history lengths with mean about MEAN_HISTORY, clipped to [MIN_HISTORY, MAX_HISTORY]."""
    sigma = 0.8
    mu = np.log(MEAN_HISTORY) - sigma ** 2 / 2
    return np.clip(np.round(rng.lognormal(mu, sigma, size=n)), MIN_HISTORY, MAX_HISTORY).astype(np.int64)


def chunks(catalog: Catalog, n_interactions: int, chunk_rows: int, rng: np.random.Generator
           ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(global user number, item index, timestamp) chunks until n_interactions rows are out."""
    written, next_user = 0, 0
    users_per_chunk = max(1, int(chunk_rows / MEAN_HISTORY))
    while written < n_interactions:
        lengths = history_lengths(users_per_chunk, rng)
        users, items, stamps = user_chunk(catalog, lengths, rng)
        if written + len(users) > n_interactions:  # the last chunk: whole users only, up to the target
            ends = np.searchsorted(users, np.arange(users_per_chunk), side="right")
            n_keep = int(np.searchsorted(ends, n_interactions - written, side="right"))
            cut = int(ends[n_keep - 1]) if n_keep else 0
            users, items, stamps = users[:cut], items[:cut], stamps[:cut]
            if not cut:
                break
        yield users + next_user, items, stamps
        written += len(users)
        next_user += users_per_chunk


class _Writer:
    """Parquet (row group per write) or CSV, chosen by the file suffix."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.parquet = path.suffix.lower() in (".parquet", ".pq")
        if not self.parquet and path.suffix.lower() != ".csv":
            raise SystemExit(f"{path}: use a .parquet or .csv file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(path, schema) if self.parquet else pa_csv.CSVWriter(path, schema)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()


def items_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.items{out.suffix}")


def generate(out: Path, n_items: int, n_interactions: int, seed: int = 0, exponent: float = ZIPF_EXPONENT,
             n_categories: int = N_CATEGORIES, chunk_rows: int = 1_000_000, progress: bool = True) -> Summary:
    """Write the interaction file `out` and its item table; returns what was written."""
    if n_items < 2 or n_interactions < MIN_HISTORY:
        raise ValueError(f"need at least 2 items and {MIN_HISTORY} interactions")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    catalog = make_catalog(n_items, n_categories, exponent, rng)
    ids = np.array(item_ids(n_items))  # fixed-width unicode: a per-chunk take, no Python strings per row
    user_width = max(8, len(str(n_interactions // MIN_HISTORY)))
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
    writer = _Writer(out, schema)
    seen = np.zeros(n_items, dtype=np.int64)
    rows, users = 0, 0
    try:
        for user_no, items, stamps in chunks(catalog, n_interactions, chunk_rows, rng):
            distinct, first = np.unique(user_no, return_index=True)
            names = np.char.add("u", np.char.zfill(distinct.astype(str), user_width))
            user_col = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(len(distinct)),
                                                                         np.diff(np.r_[first, len(user_no)]))),
                                                      pa.array(names)).cast(pa.string())
            writer.write(pa.table({"user_id": user_col, "item_id": pa.array(ids[items]),
                                   "timestamp": pa.array(stamps, pa.int64())}, schema=schema))
            seen += np.bincount(items, minlength=n_items)
            rows += len(items)
            users += len(distinct)
            if progress:
                print(f"  {rows:,} / {n_interactions:,} rows, {users:,} users", file=sys.stderr, flush=True)
    finally:
        writer.close()
    episode = np.arange(n_items) - np.repeat(catalog.first_item, catalog.size)
    series = np.repeat(np.arange(len(catalog.size)), catalog.size)
    item_writer = _Writer(items_path(out), pa.schema([("item_id", pa.string()), ("series", pa.string()),
                                                      ("episode", pa.int64()), ("category", pa.string())]))
    try:
        for lo in range(0, n_items, chunk_rows):
            sl = slice(lo, lo + chunk_rows)
            item_writer.write(pa.table({
                "item_id": pa.array(ids[sl]),
                "series": pa.array(np.char.add("s", series[sl].astype(str))),
                "episode": pa.array(episode[sl] + 1, pa.int64()),
                "category": pa.array(np.char.add("cat", np.char.zfill(catalog.category[series[sl]].astype(str), 2)))}))
    finally:
        item_writer.close()
    return Summary(out=str(out), items_file=str(items_path(out)), items=n_items, series=len(catalog.size),
                   categories=n_categories, users=users, rows=rows, items_with_interactions=int((seen > 0).sum()),
                   seconds=round(time.perf_counter() - started, 2),
                   peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                   zipf_exponent=exponent, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, required=True, help="catalog size")
    parser.add_argument("--interactions", type=int, required=True, help="rows to write (whole users)")
    parser.add_argument("--out", type=Path, required=True, help=".parquet or .csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zipf", type=float, default=ZIPF_EXPONENT, help="series popularity exponent")
    parser.add_argument("--categories", type=int, default=N_CATEGORIES)
    parser.add_argument("--chunk-rows", type=int, default=1_000_000, help="about this many rows per write")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    summary = generate(args.out, args.items, args.interactions, args.seed, args.zipf, args.categories,
                       args.chunk_rows, progress=not args.quiet)
    print(json.dumps(asdict(summary)))


if __name__ == "__main__":
    main()
