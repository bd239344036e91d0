"""The chaos benchmark's short version: a few SIGKILLs of Redis, the ranker and the gateway while clients
send events with ids and retry, on standalone Redis and a Redis Cluster; nothing lost, nothing doubled."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "chaos.py"


def test_no_acknowledged_event_is_lost_or_doubled_while_components_are_killed(tmp_path):
    out = tmp_path / "chaos.md"
    proc = subprocess.run([sys.executable, str(BENCH), "--events", "3000", "--per-user", "200", "--clients", "4",
                           "--kills", "2", "--min-pause", "0.5", "--max-pause", "1.5", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.with_suffix(".json").read_text())
    assert [r["redis"] for r in results] == ["standalone", "cluster"]
    for r in results:
        assert r["kills"] == {"redis": 2, "ranker": 2, "gateway": 2}, r
        assert r["acknowledged"] >= 3000 and r["retried_requests"] > 0, r
        assert (r["lost_from_log"], r["lost_from_histories"], r["duplicated_in_log"], r["duplicated_in_histories"],
                r["histories_out_of_order"], r["client_errors"]) == (0, 0, 0, 0, 0, []), r
