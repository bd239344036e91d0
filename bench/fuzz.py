"""The large fuzzing campaign: the properties of tests/test_fuzz_gateway.py and tests/test_fuzz_grpc.py,
with many more (random, not derandomized) cases, counted and reported instead of stopping at the first.

    python bench/fuzz.py --http 10000 --grpc 1000 --out docs/fuzzing.md

Starts a redis-server and `milvus-lite server` in a scratch directory, the synthetic fuzz bundle
(tests/test_fuzz_grpc.py: string, bool and double metadata columns), a real ranker, the gateway's HTTP
app (in process, over ASGI, as schemathesis drives it) and the gateway's gRPC front door, then runs:

- HTTP: schemathesis cases from the gateway's OpenAPI document for POST /v1/recommend and POST /v1/events,
  positive and negative, split evenly; checks: no 5xx, every 4xx names a field of the request, and
  schemathesis' status-code, content-type, response-schema and negative-data checks;
- gRPC: hypothesis messages for every RankerService RPC (typed, and raw wire bytes: unknown fields, other
  messages, invalid UTF-8, over-long varints, random bytes) and for the front door, split evenly; checks:
  no INTERNAL/UNKNOWN/UNAVAILABLE/DEADLINE_EXCEEDED/DATA_LOSS/UNIMPLEMENTED, INVALID_ARGUMENT names the
  field, answered queries honour their filters;
- the explicit cases of both test files (injections, NaN/Infinity, beyond-64-bit numbers, huge messages).

Writes the Markdown report (counts, status codes, every distinct failure with one example) to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests package holds the strategies and checks
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # milvus-lite

import grpc  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from seqrec.shared.local_services import free_port, start_milvus_lite, start_redis  # noqa: E402
from seqrec.shared.settings import Env  # noqa: E402
from tests import test_fuzz_gateway as http_fuzz  # noqa: E402
from tests import test_fuzz_grpc as grpc_fuzz  # noqa: E402


@dataclass
class Tally:
    """Cases, outcomes and distinct failures of one target (an operation or an RPC)."""

    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    failures: dict[str, list[Any]] = field(default_factory=dict)  # signature → [count, example, detail]
    failed_cases: set[str] = field(default_factory=set)  # names of the explicit cases that failed

    def record(self, outcome: str, failure: str | None = None, example: str = "") -> None:
        self.cases += 1
        self.outcomes[outcome] += 1
        if failure:
            signature = failure.split("\n")[0][:160]
            entry = self.failures.setdefault(signature, [0, example[:600], failure[:1500]])
            entry[0] += 1


def run_property(strategy: st.SearchStrategy, examples: int, random_seed: int, body: Callable[[Any], None]) -> None:
    """`body` on `examples` generated values; it records outcomes itself and never raises."""

    @seed(random_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(value=strategy)
    def run(value: Any) -> None:
        body(value)

    run()


# ---- HTTP -----------------------------------------------------------------------------------------------------


def http_case(tally: Tally, case: Any) -> None:
    example = f"{case.method} {case.path} {case.body!r:.500}"
    try:
        response = case.call()
    except Exception as exc:  # noqa: BLE001 - a transport failure is a finding too
        tally.record("exception", f"the call raised {type(exc).__name__}: {exc}", example)
        return
    failure = None
    try:
        case.validate_response(response, checks=http_fuzz.schema_checks())
    except Exception as exc:  # noqa: BLE001 - schemathesis reports failed checks as exceptions
        failure = f"schemathesis: {str(exc).strip()}"
    fault = http_fuzz.http_fault(case.body, response.status_code, response.text)
    if fault:
        failure = fault
    tally.record(str(response.status_code), failure, f"{example} -> {response.status_code} {response.text[:300]}")


def http_campaign(schema: Any, total: int, random_seed: int) -> dict[str, Tally]:
    from schemathesis import GenerationMode

    tallies: dict[str, Tally] = {}
    targets = [(p, m, mode) for p, m in http_fuzz.OPERATIONS for mode in ("positive", "negative")]
    for n, (path, method, mode) in enumerate(targets):
        tally = tallies.setdefault(f"{method} {path} ({mode})", Tally())
        strategy = schema[path][method].as_strategy(generation_mode=GenerationMode(mode))
        started = time.perf_counter()
        run_property(strategy, max(1, total // len(targets)), random_seed + n, lambda case, t=tally: http_case(t, case))
        print(f"  {method} {path} {mode}: {tally.cases} cases in {time.perf_counter() - started:.0f} s, "
              f"{sum(c for c, *_ in tally.failures.values())} failures", flush=True)
    return tallies


def http_explicit(client: Any) -> Tally:
    tally = Tally()
    for name, (path, payload, expected) in http_fuzz.EXPLICIT.items():
        try:
            http_fuzz.check_explicit(client, path, payload, expected)
            tally.record("as expected")
        except AssertionError as exc:
            tally.record("failed", f"{name}: {exc}", f"POST {path} {http_fuzz._body(payload)[:300]!r}")
            tally.failed_cases.add(name)
    return tally


# ---- gRPC -----------------------------------------------------------------------------------------------------


def grpc_case(tally: Tally, channel: grpc.Channel, rpc: str, payload: bytes) -> None:
    method = grpc_fuzz.FRONT_DOOR if rpc == "Recommend" else f"/{grpc_fuzz.RANKER_SERVICE}/{rpc}"
    code, details, answer = grpc_fuzz.call_raw(channel, method, payload)
    fault = grpc_fuzz.grpc_fault(rpc, payload, code, details, answer)
    tally.record(code.name, fault, f"{rpc}({payload[:400]!r}) -> {code.name}: {details[:300]}")


def grpc_campaign(ranker: grpc.Channel, front_door: grpc.Channel, total: int, random_seed: int) -> dict[str, Tally]:
    targets: list[tuple[str, str, st.SearchStrategy[bytes], grpc.Channel]] = []
    for rpc in grpc_fuzz.RPCS:
        typed = grpc_fuzz.REQUESTS[rpc].map(lambda m: m.SerializeToString())
        targets.append((f"RankerService/{rpc} (typed)", rpc, typed, ranker))
        targets.append((f"RankerService/{rpc} (wire)", rpc, grpc_fuzz.wire_payloads(rpc), ranker))
    targets.append(("RecommendService/Recommend (front door)", "Recommend", grpc_fuzz.front_door_payloads, front_door))
    tallies: dict[str, Tally] = {}
    for n, (name, rpc, strategy, channel) in enumerate(targets):
        tally = tallies.setdefault(name, Tally())
        started = time.perf_counter()
        run_property(strategy, max(1, total // len(targets)), random_seed + 100 + n,
                     lambda payload, t=tally, r=rpc, c=channel: grpc_case(t, c, r, payload))
        print(f"  {name}: {tally.cases} cases in {time.perf_counter() - started:.0f} s, "
              f"{sum(c for c, *_ in tally.failures.values())} failures", flush=True)
    return tallies


def grpc_explicit(ranker: grpc.Channel) -> Tally:
    tally = Tally()
    for name, (rpc, payload, expected) in grpc_fuzz.EXPLICIT.items():
        code, details, answer = grpc_fuzz.call_raw(ranker, f"/{grpc_fuzz.RANKER_SERVICE}/{rpc}", payload)
        fault = grpc_fuzz.grpc_fault(rpc, payload, code, details, answer)
        if code not in expected and not fault:
            fault = f"{name}: expected {sorted(c.name for c in expected)}, got {code.name}: {details[:200]}"
        tally.record(code.name, fault and f"{name}: {fault}", f"{rpc}({payload[:200]!r})")
        if fault:
            tally.failed_cases.add(name)
    return tally


# ---- the stack and the report --------------------------------------------------------------------------------


@contextlib.contextmanager
def stack(scratch: Path) -> Iterator[tuple[str, Any, grpc.Channel, grpc.Channel]]:
    """(ranker address, the gateway's FastAPI app, a channel to the ranker, a channel to the front door)."""
    from seqrec.services.gateway.grpc_front import GrpcFrontDoor
    from seqrec.services.gateway.http_app import create_app
    from seqrec.services.gateway.metrics import GatewayMetrics
    from seqrec.services.gateway.settings import GatewaySettings

    redis = start_redis(scratch / "redis", appendonly=False)
    milvus = start_milvus_lite(scratch / "milvus")
    options = [("grpc.max_send_message_length", 64 << 20)]
    try:
        bundle = grpc_fuzz.fuzz_bundle(scratch)
        with grpc_fuzz.running_ranker(bundle, redis.address, f"http://{milvus.address}") as ranker:
            door = GrpcFrontDoor(GatewaySettings.from_env(Env({
                "SEQREC_RANKER": ranker, "SEQREC_GATEWAY_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
                "SEQREC_DEADLINE_S": "30", "SEQREC_HEALTH_INTERVAL_S": "1"})), GatewayMetrics())
            door.start()
            try:
                with grpc.insecure_channel(ranker, options=options) as to_ranker, \
                        grpc.insecure_channel(f"127.0.0.1:{door.port}", options=options) as to_door:
                    grpc_fuzz.wait_serving(to_door, "seqrec.proto.v1.RecommendService")
                    yield ranker, create_app(http_fuzz.gateway_settings(ranker)), to_ranker, to_door
            finally:
                door.stop(0)
    finally:
        milvus.stop()
        redis.stop()


# What the campaigns found, by the explicit cases that reproduce it; each run reports whether it still fails.
FINDINGS = [
    (("range-bound-beyond-float",),
     "POST /v1/recommend with an integer range bound beyond the float range, e.g. "
     "`{\"query_type\": \"sequential\", \"session_items\": [\"i000001\"], \"filters\": {\"meta.price\": "
     "{\"gte\": 1000…000}}}` (401 digits) answers **500**. pydantic refuses the bound, then "
     "`services/gateway/validation.py` `describe_invalid` re-parses the body with `shared/json_api.py` "
     "`parse_filters`, whose `math.isfinite(bound)` raises OverflowError for an int that no float can hold. "
     "Fix: refuse integers with `abs(bound) > sys.float_info.max` there (as `services/ranker/filters.py` "
     "`_number` does) with a RequestError naming `filters.meta.price.gte`."),
    (("surrogate-in-id", "surrogate-in-filter-value", "surrogate-in-filter-key"),
     "POST /v1/recommend with a lone UTF-16 surrogate written as a JSON escape (`\"\\ud800\"`, valid JSON that "
     "Python decodes to a str UTF-8 cannot encode) answers **500**: in an id, `describe_invalid` → `json_api."
     "parse_request` builds the protobuf message and protobuf raises UnicodeEncodeError; in a filter value, "
     "pydantic accepts it and `json_api.to_metadata_value` fails the same way; in a filter key, pydantic's error "
     "names the key and `services/gateway/errors.py` `error_response` cannot encode it as JSON. Fix: in "
     "`json_api`, refuse strings (ids, texts, filter keys and values) that do not encode as UTF-8 with a "
     "RequestError naming the field, and make `error_response` robust to such text (e.g. "
     "`encode('utf-8', 'backslashreplace')`)."),
    (("exclusions-over-the-search-limit",),
     "`RankerService/Sequential` (and the other queries; also through the gateway's gRPC front door) with "
     "`top_k` plus the number of distinct `exclude_item_ids` above 16 384, e.g. top_k 1000 and 16 000 unknown "
     "ids, answers **INTERNAL**: `services/ranker/vector_store.py` `MilvusItemStore.search` raises "
     "`ValueError(\"top_k plus excluded items exceeds 16384\")`, which the ranker's error mapping does not "
     "know. The HTTP API caps `exclude_item_ids` at 1 000, so HTTP is not affected. Fix: cap "
     "`exclude_item_ids` in the ranker (`Recommender`, InvalidQuery `exclude_item_ids: at most N`)."),
    (("invalid-utf8", "deep-nesting", "deep-nesting-in-a-field"),
     "Bodies FastAPI cannot parse (invalid UTF-8, nesting beyond Python's recursion limit) answered 400 "
     "without `error.field`. Fixed during the campaign: `services/gateway/http_app.py` `on_http_error` names "
     "the field `body` for 400s."),
    (("empty-key",),
     "A JSON key `\"\"` (e.g. `{\"query_type\": \"item_to_item\", \"item_id\": \"0\", \"\": null}`) answered "
     "400 without `error.field` (an empty field name was dropped). Fixed during the campaign: "
     "`shared/json_api.py` `parse_request` names it `\"\"`."),
]


def _findings(sections: dict[str, dict[str, Tally]]) -> list[str]:
    failed = set().union(*(t.failed_cases for t in sections.get("explicit cases", {}).values()))
    lines = []
    for cases, text in FINDINGS:
        status = "**open** (fails in this run)" if failed & set(cases) else "passes in this run"
        lines += [f"- {text} Cases: {', '.join(f'`{c}`' for c in cases)}; {status}.", ""]
    return lines


def _table(tallies: dict[str, Tally]) -> list[str]:
    lines = ["| target | cases | outcomes | failures |", "|---|---:|---|---:|"]
    for name, t in tallies.items():
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(t.outcomes.items()))
        lines.append(f"| {name} | {t.cases} | {outcomes} | {sum(c for c, *_ in t.failures.values())} |")
    return lines


def _failures(tallies: dict[str, Tally]) -> list[str]:
    lines = []
    for name, t in tallies.items():
        for signature, (count, example, detail) in t.failures.items():
            quoted = signature.replace("`", "'")
            lines += [f"- **{name}** — {count}×: `{quoted}`", "",
                      "  ```text", *(f"  {line}" for line in f"{example}\n{detail}".splitlines()[:12]), "  ```", ""]
    return lines


def write_report(out: Path, args: argparse.Namespace, sections: dict[str, dict[str, Tally]], seconds: float) -> None:
    http_cases = sum(t.cases for t in sections["HTTP (schemathesis)"].values())
    grpc_cases = sum(t.cases for t in sections["gRPC (hypothesis)"].values())
    explicit = sum(t.cases for t in sections["explicit cases"].values())
    failures = sum(c for tallies in sections.values() for t in tallies.values() for c, *_ in t.failures.values())
    lines = [
        "# Fuzzing the gateway and the ranker",
        "",
        f"`python bench/fuzz.py --http {args.http} --grpc {args.grpc} --seed {args.seed}` on "
        f"{platform.node() or 'this machine'} ({os.cpu_count()} CPUs, Python {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: **{http_cases} HTTP cases, {grpc_cases} gRPC "
        f"cases and {explicit} explicit cases in {seconds / 60:.1f} min; {failures} failing cases**.",
        "",
        "What runs and what is checked: see the docstrings of `bench/fuzz.py`, `tests/test_fuzz_gateway.py` and "
        "`tests/test_fuzz_grpc.py` (the CI corpus: the same properties, 20 derandomized examples each). The "
        "stack: a synthetic bundle (300 items with `category`, `in_stock` and `price` metadata) in redis-server "
        "and `milvus-lite server`, a real ranker without an embedder (so `item_text` and `UpsertItems` end in "
        "FAILED_PRECONDITION once valid), the gateway's HTTP app over ASGI and its gRPC front door.",
        "",
    ]
    for title, tallies in sections.items():
        lines += [f"## {title}", "", *_table(tallies), ""]
    lines += ["## Findings", "", *_findings(sections), "## Failures of this run", ""]
    lines += _failures({f"{title}: {name}": t for title, tallies in sections.items() for name, t in tallies.items()}) \
        or ["None.", ""]
    out.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", type=int, default=10_000, help="HTTP cases (split over 2 operations × 2 modes)")
    parser.add_argument("--grpc", type=int, default=1_000, help="gRPC cases (split over 15 targets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fuzzing.md")
    parser.add_argument("--scratch", type=Path, default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    started = time.perf_counter()
    with contextlib.ExitStack() as exits:
        scratch = args.scratch or Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="seqrec-fuzz-")))
        scratch.mkdir(parents=True, exist_ok=True)
        import schemathesis
        from fastapi.testclient import TestClient

        from seqrec.services.gateway.http_app import create_app

        # the servers' logs (every refused call, and the traceback of every unhandled error) go to a file
        logging.basicConfig(filename=scratch / "fuzz.log", level=logging.INFO, force=True)
        ranker, app, to_ranker, to_door = exits.enter_context(stack(scratch))
        print(f"ranker at {ranker}; HTTP campaign ({args.http} cases)", flush=True)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        sections: dict[str, dict[str, Tally]] = {}
        try:
            sections["HTTP (schemathesis)"] = http_campaign(schema, args.http, args.seed)
            print(f"gRPC campaign ({args.grpc} cases)", flush=True)
            sections["gRPC (hypothesis)"] = grpc_campaign(to_ranker, to_door, args.grpc, args.seed)
            with TestClient(create_app(http_fuzz.gateway_settings(ranker)), raise_server_exceptions=False) as client:
                sections["explicit cases"] = {"HTTP": http_explicit(client), "gRPC": grpc_explicit(to_ranker)}
        except Exception:
            traceback.print_exc()
            return 1
    write_report(args.out, args, sections, time.perf_counter() - started)
    failures = sum(c for tallies in sections.values() for t in tallies.values() for c, *_ in t.failures.values())
    print(f"wrote {args.out}: {failures} failing cases", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
