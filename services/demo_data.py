"""A demo catalog with real sequential structure: series watched episode after episode, with item text.

`seqrec up` trains on it when no bundle or data is given, so a newcomer sees recommendations that
make sense (the next episode, more of the same genre) and filters that do something (genre, in_stock).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GENRES = {
    "drama": ["harbour town", "family", "hospital", "courtroom"],
    "comedy": ["office", "flatmates", "wedding planners", "small-town radio"],
    "documentary": ["deep sea", "mountain wildlife", "ancient cities", "space probes"],
    "kids": ["talking trains", "dinosaur friends", "robot school", "pirate cats"],
    "sci-fi": ["colony ship", "time loop", "android detectives", "first contact"],
}
NAMES = ["The Long {}", "Inside the {}", "{} Chronicles", "Beyond the {}"]
EPISODES = 8


def demo_items() -> pd.DataFrame:
    """One row per episode: id, title, genre, in_stock flag and a one-line description."""
    rows = []
    series = 0
    for genre, topics in GENRES.items():
        for topic, pattern in zip(topics, NAMES, strict=True):
            show = pattern.format(topic.title())
            for episode in range(1, EPISODES + 1):
                rows.append({
                    "item_id": f"s{series:02d}e{episode:02d}",
                    "title": f"{show}, episode {episode}",
                    "genre": genre,
                    "in_stock": bool((series + episode) % 5),
                    "description": f"Episode {episode} of {show}, a {genre} series about {topic}.",
                })
            series += 1
    return pd.DataFrame(rows)


def demo_interactions(n_users: int = 600, seed: int = 0) -> pd.DataFrame:
    """Users follow one or two favourite genres and watch shows from a random episode onwards, in order."""
    rng = np.random.default_rng(seed)
    items = demo_items()
    shows = items.assign(show=items["item_id"].str[:3]).groupby("show")["genre"].first()
    by_genre = {g: shows.index[shows == g].tolist() for g in GENRES}
    popularity = np.linspace(2.0, 1.0, len(GENRES))
    rows = []
    for user in range(n_users):
        t = 1_700_000_000 + int(rng.integers(0, 86_400 * 30))
        genres = rng.choice(list(GENRES), size=int(rng.integers(1, 3)), replace=False,
                            p=popularity / popularity.sum())
        for _ in range(int(rng.integers(2, 5))):
            show = rng.choice(by_genre[rng.choice(genres)])
            start = int(rng.integers(1, EPISODES // 2 + 1))
            for episode in range(start, int(rng.integers(start + 2, EPISODES + 2))):
                if episode > EPISODES:
                    break
                t += int(rng.integers(600, 7_200))
                rows.append((f"user_{user:04d}", f"{show}e{episode:02d}", t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def write_demo_dataset(out_dir: Path) -> tuple[Path, Path]:
    """interactions.csv and items.csv in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data, items = out_dir / "interactions.csv", out_dir / "items.csv"
    demo_interactions().to_csv(data, index=False)
    demo_items().to_csv(items, index=False)
    return data, items
