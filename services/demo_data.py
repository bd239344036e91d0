"""A demo catalog with the texture of real viewing data, generated deterministically.

`seqrec up` trains on it when no bundle or data is given. Series are watched mostly in order, so the
sequence model has something to learn (the next episode, more of the same genre), but as in real logs:

- popularity is skewed (a few shows draw most views; titles follow a Zipf law within each genre);
- users have one or two favourite genres and stray from them; they start series at episode 1 or
  drop in later, skip episodes, give up, rewatch, and click on whatever is popular now and then;
- history lengths are heavy-tailed (many light users, a few heavy ones);
- a share of the catalog is new (listed, with text, never watched): only the text engine can
  recommend those, which is what the hybrid model is for.

The metrics of a model trained on it are therefore plausible: well above popularity, well below perfect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GENRES = {
    "drama": ["harbour town", "family", "hospital", "courtroom", "vineyard", "boarding school"],
    "comedy": ["office", "flatmates", "wedding planners", "small-town radio", "food truck", "campsite"],
    "documentary": ["deep sea", "mountain wildlife", "ancient cities", "space probes", "rivers", "volcanoes"],
    "kids": ["talking trains", "dinosaur friends", "robot school", "pirate cats", "garden bugs", "moon bakery"],
    "sci-fi": ["colony ship", "time loop", "android detectives", "first contact", "ice moon", "mind archive"],
    "crime": ["harbour police", "cold cases", "art thieves", "border patrol", "night court", "forensic lab"],
}
NAMES = ["The Long {}", "Inside the {}", "{} Chronicles", "Beyond the {}", "{} Stories", "Return to the {}"]
NEW_SHOWS_PER_GENRE = 1  # the last show of each genre is new: listed with text, never watched
START = 1_700_000_000  # seconds; the demo's history spans the 60 days after


def demo_items() -> pd.DataFrame:
    """One row per episode: id, title, genre, in_stock flag and a one-line description."""
    rng = np.random.default_rng(7)
    rows = []
    series = 0
    for genre, topics in GENRES.items():
        for topic, pattern in zip(topics, NAMES, strict=True):
            show = pattern.format(topic.title())
            for episode in range(1, int(rng.integers(4, 13)) + 1):
                rows.append({
                    "item_id": f"s{series:02d}e{episode:02d}",
                    "title": f"{show}, episode {episode}",
                    "genre": genre,
                    "in_stock": bool(rng.random() < 0.85),
                    "description": f"Episode {episode} of {show}, a {genre} series about {topic}.",
                })
            series += 1
    return pd.DataFrame(rows)


def _shows(items: pd.DataFrame) -> pd.DataFrame:
    """Per show: genre, episode count, rank within its genre, and whether it is new (never watched)."""
    shows = items.assign(show=items["item_id"].str[:3]).groupby("show", sort=True).agg(
        genre=("genre", "first"), episodes=("item_id", "count"))
    shows["rank"] = shows.groupby("genre").cumcount()
    shows["new"] = shows["rank"] >= shows.groupby("genre")["rank"].transform("max") + 1 - NEW_SHOWS_PER_GENRE
    return shows


def demo_interactions(n_users: int = 800, seed: int = 0) -> pd.DataFrame:
    """Interactions (user_id, item_id, timestamp in seconds) of `n_users` users over 60 days."""
    rng = np.random.default_rng(seed)
    items = demo_items()
    shows = _shows(items)
    watched = shows[~shows["new"]]
    genre_share = rng.dirichlet(np.full(len(GENRES), 2.0))  # some genres are simply more watched
    within = {g: (group.index.to_numpy(), 1.0 / (1.0 + group["rank"].to_numpy()) ** 1.1)
              for g, group in watched.groupby("genre")}
    # "popular right now": the first episodes of the watched shows, in a skewed order of their own
    popular = np.array([f"{show}e01" for show in watched.index])
    popular_p = rng.permutation(1.0 / (1.0 + np.arange(len(popular))) ** 0.8)
    popular_p /= popular_p.sum()
    genres = list(GENRES)
    rows: list[tuple[str, str, int]] = []
    for user in range(n_users):
        t = START + int(rng.integers(0, 86_400 * 30))
        liked = rng.choice(len(genres), size=int(rng.integers(1, 3)), replace=False, p=genre_share)
        sessions = 1 + int(rng.pareto(1.6) * 1.5)  # heavy-tailed: most users watch one or two shows
        seen: list[str] = []
        for _ in range(min(sessions, 12)):
            genre = genres[int(rng.choice(liked))] if rng.random() < 0.8 else genres[int(rng.integers(len(genres)))]
            names, weights = within[genre]
            show = str(rng.choice(names, p=weights / weights.sum()))
            total = int(shows.loc[show, "episodes"])
            episode = 1 if rng.random() < 0.6 else int(rng.integers(1, total + 1))
            while episode <= total:
                if rng.random() < 0.12:  # a click on something popular between episodes
                    t += int(rng.integers(300, 3_600))
                    rows.append((f"user_{user:04d}", str(rng.choice(popular, p=popular_p)), t))
                t += int(rng.integers(600, 7_200))
                item = f"{show}e{episode:02d}"
                rows.append((f"user_{user:04d}", item, t))
                seen.append(item)
                if rng.random() < 0.15:  # gives up on the show
                    break
                episode += 2 if rng.random() < 0.08 else 1  # now and then skips one
            if seen and rng.random() < 0.05:  # rewatches something
                t += int(rng.integers(3_600, 86_400))
                rows.append((f"user_{user:04d}", str(rng.choice(seen)), t))
            t += int(rng.integers(3_600, 86_400 * 3))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def write_demo_dataset(out_dir: Path) -> tuple[Path, Path]:
    """interactions.csv and items.csv in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data, items = out_dir / "interactions.csv", out_dir / "items.csv"
    demo_interactions().to_csv(data, index=False)
    demo_items().to_csv(items, index=False)
    return data, items
