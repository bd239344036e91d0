"""The `seqrec` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys

from seqrec.shared.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqrec", description="Hybrid BERT4Rec sequential recommender")
    sub = parser.add_subparsers(dest="command", required=True)

    from seqrec.services.trainer.cli import add_train_arguments, run_train

    train = sub.add_parser("train", help="train on an interaction file and write a versioned bundle")
    add_train_arguments(train)
    train.set_defaults(func=run_train)

    from seqrec.services.ranker.cli import (
        add_publish_arguments,
        add_query_arguments,
        run_publish,
        run_query,
    )

    publish = sub.add_parser("publish", help="load a bundle into Redis and Milvus and make it live (or roll back)")
    add_publish_arguments(publish)
    publish.set_defaults(func=run_publish)

    query = sub.add_parser("query", help="send one JSON request to a ranker and print the JSON answer")
    add_query_arguments(query)
    query.set_defaults(func=run_query)

    from seqrec.services.ranker.batch_cli import add_batch_arguments, run_batch_cli

    batch = sub.add_parser("batch-recommend", help="user_to_item top-k for every user (or a list), or "
                                                   "the answers to a file of gap queries, into Parquet, resumably")
    add_batch_arguments(batch)
    batch.set_defaults(func=run_batch_cli)

    from seqrec.services.ranker.events_cli import add_events_arguments, run_events

    events = sub.add_parser("events", help="the durable event log: export it for the next training, or trim it")
    add_events_arguments(events)
    events.set_defaults(func=run_events)

    serve = sub.add_parser("serve", help="run a service (settings from environment variables)")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.set_defaults(func=run_serve)

    from seqrec.services.stack import add_up_arguments, run_up

    up = sub.add_parser("up", help="start the whole stack locally (trains and publishes a demo model if needed)")
    add_up_arguments(up)
    up.set_defaults(func=run_up)

    from seqrec.shared.certs import add_certs_arguments, run_certs

    certs = sub.add_parser("certs", help="write a private CA and a certificate per service, for mutual TLS")
    add_certs_arguments(certs)
    certs.set_defaults(func=run_certs)

    from seqrec.shared.health_check import add_health_arguments, run_health

    health = sub.add_parser("health", help="ask a service's gRPC health (exit 0 when SERVING), over TLS when "
                                           "SEQREC_TLS_CA is set: the probe for containers")
    add_health_arguments(health)
    health.set_defaults(func=run_health)

    verify = sub.add_parser("verify", help="check a bundle's manifest and checksums")
    verify.add_argument("bundle")
    verify.set_defaults(func=run_verify)
    return parser


# `seqrec serve NAME` → the module whose `main() -> int` runs that service until SIGTERM.
SERVICES = {
    "ranker": "seqrec.services.ranker.server",
    "embedder": "seqrec.services.embedder.server",
    "gateway": "seqrec.services.gateway.server",
    "trainer": "seqrec.services.trainer.server",
}


def run_serve(args: argparse.Namespace) -> int:
    import importlib

    return int(importlib.import_module(SERVICES[args.service]).main())


def run_verify(args: argparse.Namespace) -> int:
    from seqrec.shared.bundle import Bundle, BundleError

    try:
        bundle = Bundle.open(args.bundle)
    except BundleError as exc:
        print(f"seqrec verify: {exc}", file=sys.stderr)
        return 1
    print(f"ok: bundle {bundle.version}, {len(bundle.manifest.files)} files verified")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        configure_logging()
    except ValueError as exc:  # a bad SEQREC_LOG_FORMAT
        print(f"seqrec: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
