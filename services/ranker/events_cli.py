"""`seqrec events export|trim`: the durable event log, read back for the next training and trimmed after it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_events_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    sub = parser.add_subparsers(dest="events_command", required=True)
    export = sub.add_parser("export", help="write the logged events to a CSV file (user_id, item_id, "
                                           "timestamp_ms, event_id, logged_ms, recommendation_id, event_type), "
                                           "in event time order")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--since-ms", type=int, default=0, help="only events applied at or after this time")
    export.add_argument("--until-ms", type=int, default=None, help="only events applied before this time")
    export.add_argument("--append-to", type=Path, default=None,
                        help="an interaction CSV to extend: the output is its rows, then the logged events in "
                             "its columns (see --user-col, --item-col, --time-col, --time-unit)")
    export.add_argument("--user-col", default="user_id")
    export.add_argument("--item-col", default="item_id")
    export.add_argument("--time-col", default="timestamp")
    export.add_argument("--time-unit", choices=["s", "ms"], default="s",
                        help="the unit of --append-to's time column (the events are written in it)")
    trim = sub.add_parser("trim", help="drop the events applied before a time (e.g. a trained bundle's cut-off)")
    trim.add_argument("--before-ms", type=int, required=True)


def run_events(args: argparse.Namespace) -> int:
    from seqrec.services.ranker.event_log import export_csv, extend_csv, trim_log
    from seqrec.services.ranker.history_store import HistoryStoreUnavailable, RedisHistoryStore

    try:
        store = RedisHistoryStore(args.redis_url)
        if args.events_command == "trim":
            print(json.dumps({"trimmed": store.call(lambda c: trim_log(c, args.before_ms))}))
            return 0
        if args.append_to is None:
            count = store.call(lambda c: export_csv(c, args.out, args.since_ms, args.until_ms))
        else:
            count = store.call(lambda c: extend_csv(c, args.append_to, args.out, (args.user_col, args.item_col,
                                                    args.time_col), args.time_unit, args.since_ms, args.until_ms))
    except (ValueError, OSError, HistoryStoreUnavailable) as exc:
        print(f"seqrec events: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"exported": count, "out": str(args.out)}))
    return 0
