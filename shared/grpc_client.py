"""Options of seqrec's gRPC client channels: message limits, keepalive, and calls spread over replicas.

A channel holds one HTTP/2 connection per backend address; with the default `pick_first` policy every call
goes to the first address, so a gateway behind a Kubernetes ClusterIP sticks to one ranker pod. Here the
channels use `round_robin` over every address the target resolves to: give a target that resolves to the
replicas (`dns:///ranker.seqrec.svc.cluster.local:50051` over a headless Service, or `ipv4:a:p,b:p`). The
servers close connections after a maximum age (shared/grpc_server.py), and the channel re-resolves the name
then (at most every DNS_MIN_RESOLUTION_MS), so replicas added later get calls without a client restart.
"""

from __future__ import annotations

import json

from seqrec.shared.grpc_server import MAX_MESSAGE_BYTES

SERVICE_CONFIG = {"loadBalancingConfig": [{"round_robin": {}}]}
DNS_MIN_RESOLUTION_MS = 5_000  # gRPC's default is 30 s: new replicas would wait that long after a GOAWAY

CLIENT_OPTIONS: list[tuple[str, object]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RESOLUTION_MS),
]
