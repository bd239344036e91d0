"""A walk-through of seqrec's Python client against a running ranker (and, optionally, the gateway).

    python examples/recommend.py --ranker localhost:50051 [--gateway localhost:50050 --api-key KEY --ca ca.pem]

It asks the ranker which model it serves, recommends for one of the model's example users, records that the
user clicked the first recommended item (with the response's recommendation_id, for attribution), shows that
the click is in the user's history, and filters by a metadata column when the bundle has one. With --gateway
the same query goes through the gateway's gRPC front door. It prints one line per step.
"""

from __future__ import annotations

import argparse
import sys

from seqrec.client import GatewayClient, RankerClient, SeqrecError, Tls, filters, interaction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranker", required=True, help="the ranker's target, e.g. dns:///ranker:50051")
    parser.add_argument("--gateway", help="the gateway's gRPC front door, e.g. dns:///gateway:50050")
    parser.add_argument("--api-key", help="a key of the gateway's SEQREC_API_KEYS")
    parser.add_argument("--ca", help="PEM file of the CA that signed the gateway's certificate (TLS)")
    args = parser.parse_args(argv)

    with RankerClient(args.ranker, timeout=5.0) as ranker:
        info = ranker.model_info()
        print(f"model {info.bundle_version}: {info.num_items} items, columns {sorted(info.metadata_columns)}")
        user = info.example_user_ids[0]
        answer = ranker.user_to_item(user, top_k=5)
        print(f"user_to_item {user}: {[item.item_id for item in answer.items]} (id {answer.recommendation_id})")

        clicked = answer.items[0].item_id
        stored = ranker.ingest_events([interaction(user, clicked, event_type="click",
                                                   recommendation_id=answer.recommendation_id)])
        history = ranker.history(user, limit=1)
        print(f"clicked {clicked}: accepted {stored.accepted}, newest in history {list(history.item_ids)}")

        try:
            ranker.user_to_item(user, top_k=-1)
        except SeqrecError as refused:
            print(f"refused: {refused.code.name} on field {refused.field}")

        for column in sorted(info.metadata_columns)[:1]:
            value = next((v for v in answer.items[0].meta[column].ListFields()), None)
            if value is not None and value[0].name != "list_value":
                kept = ranker.user_to_item(user, top_k=5, filters=[filters.equals(column, value[1])])
                print(f"filtered on {column}={value[1]!r}: {len(kept.items)} items")

    if args.gateway:
        tls = Tls.from_files(ca=args.ca) if args.ca else None
        with GatewayClient(args.gateway, tls=tls, api_key=args.api_key) as gateway:
            answer = gateway.sequential([clicked], top_k=3)
            print(f"gateway sequential [{clicked}]: {[item.item_id for item in answer.items]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
