"""`seqrec train` end to end as a user runs it: a subprocess, JSON on the last stdout line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqrec.shared.bundle import Bundle


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqrec.services.cli", "train", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=300)


def test_train_prints_summary_json_last(series_csv, tmp_path):
    out = tmp_path / "bundles"
    proc = _train("--data", str(series_csv), "--epochs", "2", "--max-len", "10", "--hidden-size", "16",
                  "--heads", "2", "--negative-samples", "0", "--sampling", "last", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) == {"bundle", "valid", "test", "epochs", "train_seconds"}
    assert summary["epochs"] == 2 and "ndcg@10" in summary["test"] and "hr@10" in summary["valid"]
    bundle = Bundle.open(summary["bundle"])
    assert Path(summary["bundle"]).parent == out
    hp = bundle.manifest.config["hparams"]
    assert (hp["negative_samples"], hp["sampling"], hp["hidden_size"]) == (0, "last", 16)


def test_bad_config_is_a_clear_error(series_csv, tmp_path):
    proc = _train("--data", str(series_csv), "--hidden-size", "30", "--heads", "4", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "hidden_size: 30 is not divisible by heads=4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_data_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,ts\n1,2,3\n")
    proc = _train("--data", str(bad), "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "missing column(s) ['user_id', 'item_id', 'timestamp']" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_timestamps_in_milliseconds_are_read_as_such_and_a_misread_unit_is_not_published(series_csv, tmp_path,
                                                                                          redis_url):
    """Data in ms, read by magnitude, becomes epoch seconds in the bundle; forced to seconds it would sort every
    training event after every live one, and publishing that bundle is refused before any store is touched."""
    import pandas as pd

    from seqrec.services.ranker.publish import check_history_times
    from seqrec.shared.bundle import HISTORIES, BundleError

    frame = pd.read_csv(series_csv)
    frame["timestamp"] = 1_700_000_000_000 + (frame["timestamp"] - frame["timestamp"].min()).astype("int64") * 1000
    data = tmp_path / "ms.csv"
    frame.to_csv(data, index=False)
    tiny = ("--epochs", "1", "--max-len", "10", "--hidden-size", "16", "--heads", "2", "--negative-samples", "0",
            "--sampling", "last")
    bundles = {}
    for unit in ("auto", "s"):
        proc = _train("--data", str(data), *tiny, "--time-unit", unit, "--out", str(tmp_path / unit))
        assert proc.returncode == 0, proc.stderr
        bundles[unit] = Bundle.open(json.loads(proc.stdout.strip().splitlines()[-1])["bundle"])
    newest = max(max(row["timestamps"]) for row in bundles["auto"].iter_jsonl(HISTORIES))
    assert 1.7e9 < newest < 1.8e9  # seconds
    check_history_times(bundles["auto"])
    with pytest.raises(BundleError, match=r"in the future \(time_unit was 's'\); retrain"):
        check_history_times(bundles["s"])
    proc = subprocess.run([sys.executable, "-m", "seqrec.services.cli", "publish", str(bundles["s"].path),
                           "--redis-url", redis_url, "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "time_unit" in proc.stderr and "Traceback" not in proc.stderr
