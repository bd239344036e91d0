"""The `seqrec batch-recommend` command line: arguments, exit codes and error messages around `run_batch`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from seqrec.services.ranker.batch import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_PART_SIZE,
    BatchError,
    BatchOptions,
    run_batch,
)
from seqrec.services.ranker.batch_output import REDIS_KEY_PREFIX
from seqrec.shared.json_api import RequestError
from seqrec.shared.logs import show_progress

# ---- command line ---------------------------------------------------------------------------------

def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory, or a bundle root whose LIVE file names the version")
    parser.add_argument("--out", required=True, type=Path,
                        help="a directory of part files, or FILE.parquet (parts staged in FILE.parquet.parts/ "
                             "and merged at the end)")
    parser.add_argument("--users", type=Path, default=None,
                        help="file with one user id per line (default: every user in the bundle's histories)")
    parser.add_argument("--gaps", type=Path, default=None, metavar="FILE.jsonl",
                        help='answer gap queries instead of users: one JSON object per line, a gap query as the JSON '
                             'API takes it plus an "id" naming its answer, e.g. {"id": "p7", "session_items": '
                             '["a", "b"], "gap_position": 1}; the output is keyed by id')
    parser.add_argument("--history-cap", type=int,
                        default=int(os.environ.get("SEQREC_HISTORY_CAP", "1000") or 1000),
                        help="the ranker's SEQREC_HISTORY_CAP: with --gaps, a user's gap_position indexes their newest "
                             "this many events (default: $SEQREC_HISTORY_CAP or 1000)")
    parser.add_argument("--top-k", type=int, default=0, help="items per user (default: the bundle's top_k)")
    parser.add_argument("--filters", default=None,
                        help='metadata filters as in the JSON API, e.g. \'{"meta.genre": "drama", '
                             '"meta.price": {"lt": 50}}\'')
    parser.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True,
                        help="leave out the items of the user's history window, as user_to_item does online")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="users per ONNX Runtime batch")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help=f"also cap a batch at this many users x padded history length (default: "
                             f"{DEFAULT_MAX_BATCH_TOKENS} on CPU, none on CUDA; 0 = none)")
    parser.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE,
                        help="users per part file (the unit of resumption)")
    parser.add_argument("--redis-url", default=None,
                        help="read histories from this Redis (events ingested since training count) instead of the "
                             "bundle")
    parser.add_argument("--milvus-uri", default=None,
                        help="search the published version in this Milvus instead of exactly in-process")
    parser.add_argument("--milvus-token", default=os.environ.get("MILVUS_TOKEN", ""))
    parser.add_argument("--to-redis", default=None, metavar="URL",
                        help=f"also store each user's list as JSON under {REDIS_KEY_PREFIX}<version>:{{<user>}}")
    parser.add_argument("--redis-ttl", type=int, default=0, metavar="SECONDS",
                        help="expiry of the --to-redis keys (0 = none)")
    parser.add_argument("--ort-threads", type=int, default=int(os.environ.get("SEQREC_ORT_THREADS", "0") or 0),
                        help="ONNX Runtime intra-op threads (0 = its default)")
    parser.add_argument("--ort-provider", choices=["auto", "cuda", "cpu"],
                        default=os.environ.get("SEQREC_ORT_PROVIDER", "auto") or "auto")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output instead of resuming")
    parser.add_argument("--stop-after-parts", type=int, default=None, metavar="N",
                        help="stop after writing N parts (rerun to continue); for slicing long jobs and tests")
    parser.add_argument("--no-progress", action="store_true")


def run_batch_cli(args: argparse.Namespace) -> int:
    from seqrec.services.ranker.filters import FilterError
    from seqrec.services.ranker.history_store import HistoryStoreUnavailable
    from seqrec.services.ranker.vector_store import VectorStoreError, VectorStoreUnavailable
    from seqrec.shared.bundle import BundleError

    prog = "seqrec batch-recommend"
    filters = None
    if args.filters:
        try:
            filters = json.loads(args.filters)
        except json.JSONDecodeError as exc:
            print(f"{prog}: --filters is not JSON: {exc}", file=sys.stderr)
            return 2
    options = BatchOptions(
        bundle=Path(args.bundle), out=args.out, users_file=args.users, gaps_file=args.gaps,
        history_cap=args.history_cap, top_k=args.top_k, filters=filters,
        exclude_seen=args.exclude_seen, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
        part_size=args.part_size,
        redis_url=args.redis_url, milvus_uri=args.milvus_uri, milvus_token=args.milvus_token,
        to_redis=args.to_redis, redis_ttl_s=args.redis_ttl, ort_threads=args.ort_threads,
        ort_provider=args.ort_provider, overwrite=args.overwrite, progress=show_progress(args.no_progress),
        stop_after_parts=args.stop_after_parts)
    try:
        result = run_batch(options)
    except (RequestError, FilterError) as exc:
        print(f"{prog}: invalid filters: {exc}", file=sys.stderr)
        return 2
    except (BatchError, BundleError, HistoryStoreUnavailable, VectorStoreError, VectorStoreUnavailable) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished parts are kept, rerun the same command to continue", file=sys.stderr)
        return 130
    for note in result.notes:
        print(f"{prog}: note: {note}", file=sys.stderr)
    print(json.dumps(result.__dict__))
    return 0
