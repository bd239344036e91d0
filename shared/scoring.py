"""The scoring contract: the one owner of "the score of item i for history h". Torch-free.

    score(i | h) = intent(h) · row(i) + prior(i | h)

- `intent(h)`: the encoder's output for `encode_histories([h])` (ONNX at serving, the torch model in
  training; the two agree), laid out like the rows, with a constant 1 in the bias column.
- `row(i)`: four column groups (`Layout`): the model's output item vector, the item's text (content
  affinity), its transition vector (factorized last-item transitions) and its bias. `item_rows` builds
  rows from an item's parts — what its id learned, its text, its flags (new, unseen) and the bundle's
  text head — at export and at UpsertItems alike.
- `prior(i | h)`: the count-based sequence prior (`SequencePrior.terms`): sequential rules from the newest
  history items and a repeat bias on the history window.

`Scorer` applies it: dense score matrices (training evaluation, every post-training fit, benchmarks), exact
top-k with filters and exclusions (`ExactSearch`, batch recommendations) and the exact merge of a vector
search with the prior (`Scorer.merge`, the ranker). Ties: higher score first, then lower item index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqrec.shared.manifest import Layout
from seqrec.shared.sequence_prior import SequencePrior

NEW_ITEM = 1  # flag bit: the item is scored as a new arrival (text and the new-item marks, no id part)
UNSEEN = 2  # flag bit: nobody has interacted with it (catalog-only or added online): gets the exposure boost
MAX_SCORE_CELLS = 1 << 25  # scores held at once by ExactSearch (128 MiB of float32)
BOUND_SLACK = 1e-3  # float error allowed between the store's inner products and numpy's

Hit = tuple[int, float, str, dict[str, Any]]  # primary key (bundle index), score, item id, display record
IndexHits = list[tuple[int, float]]  # (item index, score), best first


@dataclass(frozen=True)
class TextHead:
    """How an item's text enters its row (hybrid bundles): stored as `text_head.npy` [text_dim + 2, model + 1]."""

    weights: np.ndarray  # [text_dim + 1, model + 1]: [text, 1] @ weights = (model columns, bias) of the text
    new_item: np.ndarray  # [model + 1]: (model columns, bias) that the new-item mark adds
    new_content_weight: float  # a new item's content columns are its text times this (other items: 1)

    def array(self) -> np.ndarray:
        return np.concatenate([self.weights, self.new_item[None, :]]).astype(np.float32)

    @classmethod
    def from_array(cls, array: np.ndarray, new_content_weight: float) -> TextHead:
        return cls(array[:-1], array[-1], float(new_content_weight))


@dataclass(frozen=True)
class ItemParts:
    """What every item's row is built from."""

    layout: Layout
    id_rows: np.ndarray  # float32 [n, layout.id_width]: model, transition and bias columns learned for the id
    flags: np.ndarray  # uint8 [n]: NEW_ITEM | UNSEEN bits
    text: np.ndarray | None = None  # float32 [n, text_dim]; zero rows: no text
    head: TextHead | None = None
    exposure_boost: float = 0.0

    @classmethod
    def from_bundle(cls, bundle: Any) -> ItemParts:
        """A hybrid bundle's item parts (UpsertItems rebuilds rows from them)."""
        from seqrec.shared.bundle import ITEM_FLAGS, ITEM_ID_PARTS, TEXT_EMBEDDINGS, TEXT_HEAD

        spec = bundle.manifest.scoring
        return cls(spec.layout, bundle.array(ITEM_ID_PARTS), bundle.array(ITEM_FLAGS), bundle.array(TEXT_EMBEDDINGS),
                   TextHead.from_array(bundle.array(TEXT_HEAD), spec.new_content_weight), spec.exposure_boost)

    def with_exposure(self, boost: float) -> ItemParts:
        return dataclasses.replace(self, exposure_boost=float(boost))

    def rows(self) -> np.ndarray:
        return item_rows(self.layout, self.id_rows, self.flags, self.text, self.head, self.exposure_boost)


def item_rows(layout: Layout, id_rows: np.ndarray, flags: np.ndarray, text: np.ndarray | None = None,
              head: TextHead | None = None, exposure_boost: float = 0.0) -> np.ndarray:
    """Rows [n, layout.dim] of items from their id parts, flags and text (the one definition of a row).

    model      = id part + text @ W + b (items with text) + the new-item vector (new items)
    content    = text, times new_content_weight for new items
    transition = id part
    bias       = id part + text bias (items with text) + the new-item bias (new items) + exposure_boost (unseen)
    """
    id_rows = np.asarray(id_rows, dtype=np.float32)
    if id_rows.ndim != 2 or id_rows.shape[1] != layout.id_width:
        raise ValueError(f"id parts must be [n, {layout.id_width}], got {id_rows.shape}")
    m, t = layout.model, layout.transition
    rows = np.zeros((len(id_rows), layout.dim), dtype=np.float32)
    rows[:, layout.model_cols] = id_rows[:, :m]
    rows[:, layout.transition_cols] = id_rows[:, m:m + t]
    rows[:, layout.bias_col] = id_rows[:, -1]
    flags = np.asarray(flags)
    new = (flags & NEW_ITEM) > 0
    if head is not None:
        if text is None:
            raise ValueError("a text head needs the items' text")
        text = np.asarray(text, dtype=np.float32)
        has_text = np.any(text != 0, axis=1)
        part = (text @ head.weights[:-1] + head.weights[-1]) * has_text[:, None] + new[:, None] * head.new_item
        rows[:, layout.model_cols] += part[:, :m]
        rows[:, layout.bias_col] += part[:, -1]
        if layout.content:
            rows[:, layout.content_cols] = text * np.where(new, head.new_content_weight, 1.0)[:, None]
    if exposure_boost:
        rows[:, layout.bias_col] += np.float32(exposure_boost) * ((flags & UNSEEN) > 0)
    return rows


class Scorer:
    """The score of every catalog item for histories: `intent · row + prior`, as evaluation and serving compute it."""

    def __init__(self, rows: np.ndarray, prior: SequencePrior | None = None, unseen: np.ndarray | None = None):
        """`rows` [n_items + 2, dim] (padding, items, [MASK]); `unseen` [n_items + 2] bool (exposure boost)."""
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.n_items = len(rows) - 2
        self.prior = prior if prior is not None and prior.active else None
        self.unseen = np.zeros(len(rows), dtype=bool) if unseen is None else np.asarray(unseen, dtype=bool)

    @classmethod
    def from_parts(cls, parts: ItemParts, prior: SequencePrior | None = None) -> Scorer:
        return cls(parts.rows(), prior, (parts.flags & UNSEEN) > 0)

    @classmethod
    def from_bundle(cls, bundle: Any) -> Scorer:
        """The bundle's scorer: its item vectors and its sequence prior."""
        flags = bundle.item_flags()
        return cls(bundle.item_vectors(), SequencePrior.from_bundle(bundle), None if flags is None else
                   (flags & UNSEEN) > 0)

    def with_prior(self, prior: SequencePrior | None) -> Scorer:
        return Scorer(self.rows, prior, self.unseen)

    # ---- dense ----------------------------------------------------------------------------------
    def prior_terms(self, history: Sequence[int], following: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, score the prior adds to each) for `history`, or for the gap between `history` and
        `following`; nothing without an active prior."""
        if self.prior is None or not (len(history) or (following is not None and len(following))):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return self.prior.terms(history, following)

    def scores(self, intents: np.ndarray, histories: Sequence[Sequence[int]],
               followings: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        """Scores [len(histories), n_items] of items 1..n_items (column j is item index j + 1); with
        `followings`, each row is the gap between a history and its following items."""
        scores = np.asarray(intents, dtype=np.float32) @ self.rows[1:self.n_items + 1].T
        for row, history in enumerate(histories if self.prior is not None else ()):
            indices, bonus = self.prior_terms(history, None if followings is None else followings[row])
            inside = (indices >= 1) & (indices <= self.n_items)
            scores[row, indices[inside] - 1] += bonus[inside]
        return scores

    def shift_unseen(self, scores: np.ndarray, boost: float) -> np.ndarray:
        """`scores` [users, n_items] as they would be with `boost` more exposure boost (it enters every unseen
        item's bias, which every intent weighs 1): what calibrating the boost searches over."""
        return scores + np.float32(boost) * self.unseen[1:self.n_items + 1]

    def searcher(self, allowed: np.ndarray | None = None) -> ExactSearch:
        """Exact top-k over the items `allowed` (a bool mask over indices; None: every item)."""
        return ExactSearch(self, allowed)

    # ---- merged into a vector search -------------------------------------------------------------
    def overfetch(self, history: Sequence[int], exclude: Collection[int], following: Sequence[int] | None = None
                  ) -> int:
        """Extra search hits needed so that seen items a negative repeat bias pushes down cannot crowd out the
        top-k of a vector search."""
        if self.prior is None or self.prior.repeat_bias >= 0:
            return 0
        before, after = self.prior.context(history, following)
        return len((set(before) | set(after)) - set(exclude))

    def merge(self, history: Sequence[int], intent: np.ndarray, hits: Sequence[Hit], top_k: int, limit: int,
              exclude: Collection[int], lookup: Callable[[list[int]], dict[int, tuple[np.ndarray, str, dict]]],
              following: Sequence[int] | None = None) -> list[Hit]:
        """The exact top-k of `score` from a vector search's `hits`: the exact top-`limit` of intent · row over the
        items the query allows (`limit` = top_k + `overfetch`).

        An item the search did not return scores at most the last hit's intent · row (or is not allowed, when
        fewer than `limit` came back), so only the items whose prior term can lift them past the k-th merged
        score need a look: `lookup(indices)` returns (row, item id, display record) of those that pass the
        query's filters, from the store the search read (rows and metadata changed by UpsertItems count).
        With `following`, the query is the gap between `history` and `following`.
        """
        indices, bonus = self.prior_terms(history, following)
        keep = (indices >= 1) & (indices <= self.n_items)
        if len(exclude):
            keep &= ~np.isin(indices, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
        added = dict(zip(indices[keep].tolist(), bonus[keep].tolist(), strict=True))
        merged = {hit[0]: (hit[0], hit[1] + added.get(hit[0], 0.0), hit[2], hit[3]) for hit in hits}
        if len(hits) >= limit:  # else every allowed item is among the hits
            ranked = sorted(hit[1] for hit in merged.values())
            kth = ranked[-top_k] if len(ranked) >= top_k else -np.inf
            ceiling = hits[-1][1] + BOUND_SLACK  # no other allowed item scores more (up to float error)
            missing = [i for i, b in added.items() if i not in merged and b > 0 and ceiling + b >= kth]
            query = np.asarray(intent, dtype=np.float32).reshape(-1)
            for index, (row, item_id, display) in (lookup(missing) if missing else {}).items():
                merged[index] = (index, float(np.dot(row, query)) + added[index], item_id, display)
        return sorted(merged.values(), key=lambda hit: (-hit[1], hit[0]))[:top_k]


class ExactSearch:
    """Exact top-k of `score` over the allowed items, in numpy."""

    def __init__(self, scorer: Scorer, allowed: np.ndarray | None):
        self.scorer = scorer
        candidates = np.arange(1, scorer.n_items + 1)
        if allowed is not None:
            candidates = candidates[np.asarray(allowed, dtype=bool)[1:scorer.n_items + 1]]
        self.candidates = candidates  # item index of each column
        self.column = np.full(len(scorer.rows), -1, dtype=np.int64)  # item index -> column (-1: not a candidate)
        self.column[candidates] = np.arange(len(candidates))
        self.matrix = np.ascontiguousarray(scorer.rows[candidates].T)  # [dim, n_candidates]

    def top_k(self, intents: np.ndarray, histories: Sequence[Sequence[int]], top_k: int,
              excluded: Sequence[Collection[int]] | None = None,
              followings: Sequence[Sequence[int]] | None = None) -> list[IndexHits]:
        """(item index, score) best first per history (per gap, with `followings`); `excluded` items are never
        returned."""
        excluded = excluded if excluded is not None else [()] * len(histories)
        followings = followings if followings is not None else [None] * len(histories)
        step = max(1, MAX_SCORE_CELLS // max(len(self.candidates), 1))
        out: list[IndexHits] = []
        for start in range(0, len(histories), step):
            block = slice(start, start + step)
            out.extend(self._top_k(intents[block], histories[block], top_k, excluded[block], followings[block]))
        return out

    def _top_k(self, intents: np.ndarray, histories: Sequence[Sequence[int]], top_k: int,
               excluded: Sequence[Collection[int]], followings: Sequence[Sequence[int] | None]) -> list[IndexHits]:
        n = len(self.candidates)
        if n == 0:
            return [[] for _ in range(len(histories))]
        scores = np.asarray(intents, dtype=np.float32) @ self.matrix
        for row, history in enumerate(histories):
            indices, bonus = self.scorer.prior_terms(history, followings[row])
            cols = self.column[indices]
            scores[row, cols[cols >= 0]] += bonus[cols >= 0]
            gone = self.column[np.fromiter(excluded[row], dtype=np.int64, count=len(excluded[row]))]
            scores[row, gone[gone >= 0]] = -np.inf
        k = min(top_k, n)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(scores), 1))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)  # columns ascend with the item index
        top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
        return [[(int(i), float(s)) for i, s in zip(self.candidates[ir], sr, strict=True) if s != -np.inf]
                for ir, sr in zip(top, top_scores, strict=True)]
