"""Turn the shared datasets into interaction files `seqrec train` reads (outside the repository).

    python bench/prepare_data.py --shared ../shared --out /tmp/seqrec-bench/data

- ml-latest-small: ratings.csv is used as is (userId, movieId, timestamp); movies.csv plus the
  tags become an item table (title, genres, tags) for the hybrid engine.
- Amazon Beauty (BERT4Rec preprocessing): `user item` lines in time order per user, no timestamps;
  the line's position within its user becomes the timestamp, so a user's line order is the time order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def prepare_beauty(src: Path, dst: Path) -> Path:
    frame = pd.read_csv(src, sep=" ", header=None, names=["user_id", "item_id"], dtype=str)
    frame["timestamp"] = frame.groupby("user_id", sort=False).cumcount()
    frame.to_csv(dst, index=False)
    return dst


def prepare_movielens_items(movies: Path, tags: Path, dst: Path) -> Path:
    items = pd.read_csv(movies, dtype={"movieId": str})
    tag_text = (pd.read_csv(tags, dtype={"movieId": str}).assign(tag=lambda f: f["tag"].astype(str).str.strip())
                .groupby("movieId")["tag"].agg(lambda t: ", ".join(sorted(set(t))[:20])))
    items["genres"] = items["genres"].str.replace("|", ", ", regex=False)
    items["tags"] = items["movieId"].map(tag_text).fillna("")
    items.to_csv(dst, index=False)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--out", type=Path, default=Path("/tmp/seqrec-bench/data"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ml = args.shared / "data" / "ml-latest-small"
    print(prepare_movielens_items(ml / "movies.csv", ml / "tags.csv", args.out / "ml_items.csv"))
    print(prepare_beauty(args.shared / "data" / "amazon-beauty-bert4rec" / "beauty.txt", args.out / "beauty.csv"))


if __name__ == "__main__":
    main()
