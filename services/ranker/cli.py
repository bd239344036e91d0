"""`seqrec publish`, `seqrec query` and `seqrec serve ranker`: the ranker's command-line front."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from seqrec.shared.logs import show_progress

EXIT_HELD = 3  # `seqrec publish`: the quality gate kept the bundle back (the live version is unchanged)


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory (or, with --rollback, the bundle root)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--milvus-uri", default=os.environ.get("MILVUS_URI", "http://127.0.0.1:19530"))
    parser.add_argument("--milvus-token", default=os.environ.get("MILVUS_TOKEN", ""))
    parser.add_argument("--index", choices=["FLAT", "HNSW"], default="FLAT",
                        help="FLAT = exact search (matches offline top-k); HNSW = approximate, for big catalogs")
    parser.add_argument("--rollback", action="store_true", help="make the previously published version live")
    parser.add_argument("--no-gate", action="store_true",
                        help="publish without the quality gate (which compares the bundle with the live one on the "
                             "newest held-out interactions; SEQREC_GATE_MARGIN, SEQREC_GATE_MIN_USERS)")
    parser.add_argument("--no-progress", action="store_true")


def run_publish(args: argparse.Namespace) -> int:
    from seqrec.services.ranker.history_store import HistoryStoreUnavailable
    from seqrec.services.ranker.publish import publish, rollback
    from seqrec.services.ranker.quality_gate import GatePolicy, QualityGate
    from seqrec.services.ranker.vector_store import VectorStoreError, VectorStoreUnavailable
    from seqrec.shared.bundle import BundleError
    from seqrec.shared.registry import GateRefused
    from seqrec.shared.settings import SettingsError

    try:
        if args.rollback:
            version = rollback(Path(args.bundle), args.redis_url, args.milvus_uri, args.milvus_token)
        else:
            gate = None if args.no_gate else QualityGate(GatePolicy.from_env())
            version = publish(Path(args.bundle), args.redis_url, args.milvus_uri, args.milvus_token,
                              progress=show_progress(args.no_progress), index_type=args.index, gate=gate).version
    except GateRefused as held:
        print(f"seqrec publish: {held}", file=sys.stderr)
        print(json.dumps({"held": held.decision["candidate"], "live": held.decision["live"], "gate": held.decision}))
        return EXIT_HELD
    except (BundleError, HistoryStoreUnavailable, VectorStoreError, VectorStoreUnavailable, SettingsError) as exc:
        print(f"seqrec publish: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"live": version}))
    return 0


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("payload", help="the JSON request, e.g. '{\"query_type\": \"user_to_item\", ...}'")
    parser.add_argument("--ranker", default=os.environ.get("SEQREC_RANKER", "127.0.0.1:50051"), help="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")


def run_query(args: argparse.Namespace) -> int:
    import grpc

    from seqrec.proto.v1 import ranker_pb2_grpc
    from seqrec.shared.json_api import RequestError, parse_request, response_to_json, rpc_name

    try:
        query_type, request = parse_request(json.loads(args.payload))
    except json.JSONDecodeError as exc:
        print(f"seqrec query: the payload is not JSON: {exc}", file=sys.stderr)
        return 2
    except RequestError as exc:
        print(f"seqrec query: {exc}", file=sys.stderr)
        return 2
    with grpc.insecure_channel(args.ranker) as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        try:
            response = getattr(stub, rpc_name(query_type))(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"seqrec query: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json.dumps({"query_type": query_type, **response_to_json(response)}, indent=2, ensure_ascii=False))
    return 0
