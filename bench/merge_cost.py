"""What the prior's exact merge reads from Milvus, next to the search itself (milvus-lite, synthetic bundle).

    python bench/merge_cost.py 10000     # catalog size; 2,000 users, 200 requests of up to 49 history items

The bundle comes from bench/synthetic_bundle.py (the trainer's builder, prior weights 1 / -8), published into
a `milvus-lite server`; each request is the ranker's path: a FLAT search of top 10 + overfetch with the
history excluded, then `Scorer.merge` with `MilvusItemStore.rows` as its lookup. Prints p50/p99 of both and
how often a lookup ran.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from synthetic_bundle import make_bundle

from seqrec.services.ranker.encoder import OnnxEncoder
from seqrec.services.ranker.publish import publish
from seqrec.services.ranker.vector_store import MilvusItemStore
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.local_services import start_milvus_lite, start_redis
from seqrec.shared.scoring import Scorer

REQUESTS, TOP_K = 200, 10


def percentiles(seconds: list[float]) -> str:
    return f"p50 {np.percentile(seconds, 50) * 1e3:.2f} ms, p99 {np.percentile(seconds, 99) * 1e3:.2f} ms"


def main(n_items: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="merge-cost-"))
    bundle = Bundle.open(make_bundle(root / "bundles", n_items, 2000, seed=1))
    vocab = bundle.vocab()
    redis, milvus = start_redis(root / "redis"), start_milvus_lite(root / "milvus")
    try:
        uri = f"http://{milvus.address}"
        publish(bundle.path, f"redis://{redis.address}/0", uri, progress=False)
        store, encoder, scorer = MilvusItemStore(uri), OnnxEncoder(bundle), Scorer.from_bundle(bundle)
        histories = [vocab.encode(r["items"])[0][-(bundle.max_len - 1):] for r in bundle.iter_jsonl(HISTORIES)]
        search_s, merge_s, looked_up = [], [], []
        for history in histories[:REQUESTS]:
            intent, seen = encoder.intents([history]), set(history)
            limit = TOP_K + scorer.overfetch(history, seen)
            started = time.perf_counter()
            hits = store.search(bundle.version, intent, limit, "", [sorted(seen)])[0]
            searched = time.perf_counter()
            asked: list[int] = []

            def lookup(indices: list[int], asked: list[int] = asked) -> dict:
                asked.append(len(indices))
                return store.rows(bundle.version, indices, "")

            scorer.merge(history, intent, hits, TOP_K, limit, seen, lookup)
            search_s.append(searched - started)
            merge_s.append(time.perf_counter() - searched)
            looked_up.append(sum(asked))
        print(f"{n_items} items: search {percentiles(search_s)}; merge (with its Milvus read) {percentiles(merge_s)}; "
              f"a read in {sum(1 for n in looked_up if n)} of {len(looked_up)} requests, "
              f"{np.mean(looked_up):.0f} items per request on average")
    finally:
        redis.stop()
        milvus.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
