"""Diagnosis, never a choice: a served bundle's NDCG@10 on the held-out items with its sequence prior at other
transition weights (the repeat bias and everything else as shipped). Reads the test split, so nothing it prints may
set a weight; it shows how far the weight fitted on validation is from what fresh interactions prefer.

    python bench/prior_weight_diagnosis.py BUNDLE /tmp/seqrec-served/ml_heldout.csv

The held-out CSV comes from `bench/served_quality.py`; seen items (the bundle's history) are excluded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from served_quality import BLOCK_USERS, _histories, _ranked  # noqa: E402

from seqrec.services.ranker.encoder import OnnxEncoder  # noqa: E402
from seqrec.shared.bundle import Bundle  # noqa: E402
from seqrec.shared.metrics import ranking_metrics  # noqa: E402
from seqrec.shared.scoring import Scorer  # noqa: E402

WEIGHTS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def main() -> None:
    bundle = Bundle.open(Path(sys.argv[1]))
    heldout = pd.read_csv(sys.argv[2], dtype=str)
    histories, targets = _histories(bundle, heldout)
    scorer = Scorer.from_bundle(bundle)
    prior = scorer.prior
    encoder = OnnxEncoder(bundle)
    intents = np.concatenate([encoder.intents(histories[s:s + BLOCK_USERS])
                              for s in range(0, len(histories), BLOCK_USERS)])
    print(f"fitted transition weight {prior.transition_weight}, repeat bias {prior.repeat_bias}")
    for weight in WEIGHTS:
        weighted = scorer.with_prior(prior.weighted(weight, prior.repeat_bias))
        ranks = [_ranked(weighted.scores(intents[s:s + BLOCK_USERS], histories[s:s + BLOCK_USERS]),
                         histories[s:s + BLOCK_USERS], targets[s:s + BLOCK_USERS])
                 for s in range(0, len(histories), BLOCK_USERS)]
        ndcg = ranking_metrics(np.concatenate(ranks), cutoffs=(10,))["ndcg@10"]
        print(f"transition weight {weight:g}: NDCG@10 {ndcg:.4f}")


if __name__ == "__main__":
    main()
