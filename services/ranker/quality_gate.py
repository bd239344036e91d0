"""The publish quality gate: a new bundle goes live only if it serves the newest interactions about as well as the
live one, both scored on the same held-out slice.

The slice is the candidate's held-out test interactions (each user's last item, which its selection run never
trained on; `heldout.jsonl`) that are newer than everything the live bundle was trained on, so neither model has
seen them. The candidate's ranks are those its selection run gave (seen items excluded, through its scoring
contract); the live bundle scores the same histories through its ONNX encoder and its scoring contract, seen
items excluded, an empty history (every item new to it) by popularity as the ranker would serve it, and a
target it does not know as a miss. The candidate is published when its NDCG@10 is at least the live one's minus
`margin`; with fewer than `min_users` such interactions there is too little evidence and it is published, saying
so. Every decision is logged and appended to the root's `gate_decisions.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.shared.bundle import HELDOUT, HISTORIES, Bundle
from seqrec.shared.metrics import exclude_seen, ranking_metrics, target_ranks
from seqrec.shared.registry import GateRefused
from seqrec.shared.scoring import Scorer
from seqrec.shared.settings import Env, SettingsError

log = logging.getLogger(__name__)
DECISIONS_FILE = "gate_decisions.jsonl"
CUTOFF = 10
BATCH = 256


@dataclass(frozen=True)
class GatePolicy:
    """How much NDCG@10 the candidate may lose against the live bundle, and the evidence the gate needs."""

    margin: float = 0.0
    min_users: int = 100

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatePolicy:
        env = env or Env()
        margin = env.float("SEQREC_GATE_MARGIN", 0.0)
        if not 0.0 <= margin < 1.0:
            raise SettingsError(f"SEQREC_GATE_MARGIN: an NDCG@10 difference in [0, 1), got {margin:g}")
        return cls(margin, env.int("SEQREC_GATE_MIN_USERS", 100, minimum=1))


@dataclass(frozen=True)
class GateDecision:
    """One judgement of a candidate against the live bundle."""

    publish: bool
    reason: str
    candidate: str
    live: str | None
    users: int = 0
    newer_than: float | None = None  # the live bundle's newest training timestamp (epoch seconds)
    candidate_ndcg10: float | None = None
    live_ndcg10: float | None = None
    candidate_hr10: float | None = None
    live_hr10: float | None = None
    margin: float = 0.0
    decided_at: float = dataclasses.field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ndcg_hr(ranks: np.ndarray) -> tuple[float, float]:
    """NDCG@10 and HR@10 of 0-based ranks (one relevant item per user), as the trainer reports them."""
    metrics = ranking_metrics(ranks, cutoffs=(CUTOFF,))
    return metrics[f"ndcg@{CUTOFF}"], metrics[f"hr@{CUTOFF}"]


def newest_training_time(bundle: Bundle) -> float:
    """The newest interaction a bundle was trained on (its histories' last timestamps)."""
    newest = -math.inf
    for row in bundle.iter_jsonl(HISTORIES):
        if row["timestamps"]:
            newest = max(newest, float(row["timestamps"][-1]))
    return newest


def live_ranks(live: Bundle, histories: Sequence[Sequence[str]], targets: Sequence[str],
               ort_threads: int = 0) -> np.ndarray:
    """The live bundle's rank of each target after each history (item ids), seen items excluded, as served."""
    from seqrec.services.ranker.encoder import OnnxEncoder

    vocab, scorer = live.vocab(), Scorer.from_bundle(live)
    popularity = live.popularity()[1:scorer.n_items + 1].astype(np.float32)
    encoder = OnnxEncoder(live, ort_threads)
    known = [[i for i in (vocab.get(item) for item in history) if i is not None] for history in histories]
    wanted = [vocab.get(item) for item in targets]
    ranks = np.full(len(targets), scorer.n_items, dtype=np.int64)  # an unknown target is never recommended
    for start in range(0, len(known), BATCH):
        chunk = known[start:start + BATCH]
        model_rows = [n for n, h in enumerate(chunk) if h]
        scores = np.tile(popularity, (len(chunk), 1))  # no known item: the popularity fallback
        if model_rows:
            hist = [chunk[n] for n in model_rows]
            scores[model_rows] = scorer.scores(encoder.intents(hist), hist)
        ranked = [n for n in range(len(chunk)) if wanted[start + n] is not None]
        if ranked:
            sub, cols = scores[ranked], np.asarray([wanted[start + n] for n in ranked], dtype=np.int64) - 1
            exclude_seen(sub, [chunk[n] for n in ranked], cols)
            ranks[[start + n for n in ranked]] = target_ranks(sub, cols)
    return ranks


def judge(candidate: Bundle, live: Bundle | None, policy: GatePolicy) -> GateDecision:
    """Whether `candidate` may replace `live` (see the module docstring)."""
    base = {"candidate": candidate.version, "live": None if live is None else live.version,
            "margin": policy.margin}
    if live is None:
        return GateDecision(True, "no live version yet", **base)
    if live.version == candidate.version:
        return GateDecision(True, "the live version itself (a reload)", **base)
    if not candidate.has(HELDOUT):
        return GateDecision(False, "the candidate has no held-out ranks (trained by an older seqrec); retrain it, "
                                   "or publish it with --no-gate", **base)
    since = newest_training_time(live)
    heldout = {row["user_id"]: row for row in candidate.iter_jsonl(HELDOUT) if row["timestamp"] > since}
    base["newer_than"] = since
    if len(heldout) < policy.min_users:
        return GateDecision(True, f"too little evidence: {len(heldout)} held-out interactions are newer than the "
                                  f"live bundle's data (SEQREC_GATE_MIN_USERS={policy.min_users})",
                            users=len(heldout), **base)
    users, histories = [], []
    for row in candidate.iter_jsonl(HISTORIES):
        if row["user_id"] in heldout:
            users.append(row["user_id"])
            histories.append(row["items"][:-1])
    mine = np.asarray([heldout[u]["rank"] for u in users], dtype=np.int64)
    theirs = live_ranks(live, histories, [heldout[u]["item_id"] for u in users])
    (c_ndcg, c_hr), (l_ndcg, l_hr) = ndcg_hr(mine), ndcg_hr(theirs)
    passed = c_ndcg >= l_ndcg - policy.margin
    verdict = "at least" if c_ndcg >= l_ndcg else ("within the margin of" if passed else "below")
    reason = f"NDCG@10 {c_ndcg:.4f} {verdict} the live {l_ndcg:.4f} on {len(users)} newest held-out interactions"
    return GateDecision(passed, reason, users=len(users), candidate_ndcg10=c_ndcg, live_ndcg10=l_ndcg,
                        candidate_hr10=c_hr, live_hr10=l_hr, **base)


class QualityGate:
    """The gate `BundleRegistry.publish` calls: judge, record, and refuse (GateRefused) a candidate that loses."""

    def __init__(self, policy: GatePolicy):
        self.policy = policy

    def __call__(self, candidate: Bundle, live: Bundle | None) -> None:
        decision = judge(candidate, live, self.policy)
        record = decision.to_dict()
        (log.info if decision.publish else log.warning)(
            "quality gate: %s %s", "publish" if decision.publish else "hold", decision.reason, extra={"gate": record})
        with open(Path(candidate.path).parent / DECISIONS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if not decision.publish:
            raise GateRefused(decision.reason, record)
