"""`seqrec health ADDRESS` (or `python -m seqrec.shared.health_check ADDRESS`): one gRPC health check.

The readiness probe of the gRPC services in containers. Kubernetes' built-in gRPC probe cannot speak TLS,
and seqrec services beyond loopback serve mutual TLS, so the probe runs inside the container: it dials with
the service's own SEQREC_TLS_* settings (its CA, and its certificate as client) and exits 0 when the
service reports SERVING, 1 otherwise (with the reason on stderr), 2 on bad settings.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqrec.shared.settings import Env, SettingsError
from seqrec.shared.tls import TlsSettings, open_channel


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="host:port of the service, e.g. 127.0.0.1:50051")
    parser.add_argument("--service", default="", help="the health service name ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")
    parser.add_argument("--server-name", default="",
                        help="the name expected in the service's certificate, when the address is not in it")


def run_health(args: argparse.Namespace) -> int:
    try:
        tls = TlsSettings.from_env(Env())
    except SettingsError as exc:
        print(f"seqrec health: error: {exc}", file=sys.stderr)
        return 2
    if args.server_name:
        tls = replace(tls, server_name=args.server_name)  # channel_options applies it when dialling TLS
    with open_channel(args.address, tls) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout).status
        except grpc.RpcError as exc:
            print(f"seqrec health: {args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if status != health_pb2.HealthCheckResponse.SERVING:
        print(f"seqrec health: {args.address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seqrec health", description=__doc__.splitlines()[0])
    add_health_arguments(parser)
    return run_health(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
