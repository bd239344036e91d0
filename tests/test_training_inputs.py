"""Awkward training inputs through the real `seqrec train` path (run_training, or the CLI), on tiny models.

Each case ends in a clear error naming the problem, or trains and says what it saw in the report
(metrics["warnings"], report.md). tests/test_data.py covers the loader alone; these go end to end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.services.trainer.data import DataError, load_interactions
from seqrec.services.trainer.messages import warning_message
from seqrec.services.trainer.pipeline import run_training
from seqrec.services.trainer.split import leave_one_out, training_windows, window_bounds
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.config import DataConfig, TrainConfig, build_hparams

HP = {"max_len": 8, "hidden_size": 16, "heads": 2, "depth": 1, "epochs": 1, "batch_size": 32,
      "negative_samples": 0, "patience": 2, "eval_every": 1}
# 150 items, every one in some user's training part: the sampled-100 test metric needs 100 drawable negatives
# per user, and evaluation hangs without them (see test_evaluation_with_fewer_than_100_negatives_finishes)
N_ITEMS = 150


def normal_users(n_users: int = 30, seed: int = 0) -> pd.DataFrame:
    """User u walks the catalog in order from item 5u, 8-12 items; one timestamp per row (no ties)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        for k in range(int(rng.integers(8, 13))):
            rows.append((f"u{user:02d}", item(5 * user + k), 1_700_000_000 + 1000 * user + 60 * k))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def item(k: int) -> str:
    return f"i{k % N_ITEMS:03d}"


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def train(data: Path, out: Path, epochs: int = 1, **data_cfg) -> tuple[Path, dict]:
    cfg = TrainConfig(data=DataConfig(data=str(data), **data_cfg), hparams=build_hparams(**{**HP, "epochs": epochs}),
                      seed=3)
    return run_training(cfg, out, progress=False)


def report(bundle: Path) -> str:
    return (bundle / "report.md").read_text()


def histories(bundle: Path) -> dict[str, list[str]]:
    return {row["user_id"]: row["items"] for row in Bundle.open(bundle).iter_jsonl(HISTORIES)}


def the_warning(metrics: dict, needle: str) -> str:
    """The one warning containing `needle` (it must also be in report.md: checked by the callers)."""
    found = [w for w in metrics["warnings"] if needle in w]
    assert len(found) == 1, metrics["warnings"]
    return found[0]


def cli_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqrec.services.cli", "train", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=300)


# ---- row order, duplicates, missing timestamps ---------------------------------------------------

def test_unsorted_rows_train_exactly_like_the_sorted_file(tmp_path):
    frame = normal_users()
    ordered = write(frame.sort_values(["user_id", "timestamp"]), tmp_path / "sorted.csv")
    shuffled = write(frame.sample(frac=1.0, random_state=1), tmp_path / "shuffled.csv")
    assert pd.read_csv(shuffled)["user_id"].tolist() != pd.read_csv(ordered)["user_id"].tolist()

    a, metrics_a = train(ordered, tmp_path / "a", epochs=2)
    b, metrics_b = train(shuffled, tmp_path / "b", epochs=2)
    assert histories(a) == histories(b)
    assert json.loads((a / "vocab.json").read_text()) == json.loads((b / "vocab.json").read_text())
    np.testing.assert_array_equal(Bundle.open(a).item_vectors(), Bundle.open(b).item_vectors())
    for key in ("valid", "test", "popularity_test", "data", "warnings", "epochs", "best_epoch"):
        assert metrics_a[key] == metrics_b[key], key


def test_duplicate_rows_are_kept_counted_and_warned(tmp_path):
    frame = normal_users()
    dupes = frame.iloc[[0, 3, 7, 20, 21]]
    path = write(pd.concat([frame, dupes], ignore_index=True), tmp_path / "dupes.csv")
    bundle, metrics = train(path, tmp_path / "out")
    assert metrics["data"]["duplicate_rows"] == 5
    assert metrics["data"]["rows_used"] == metrics["data"]["rows_read"] == len(frame) + 5  # kept, as repeats
    warning = the_warning(metrics, "duplicate")
    assert warning.startswith("5 duplicate (user, item, timestamp) rows") and warning in report(bundle)
    assert warning_message(warning).code == "duplicate_rows"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_nan_timestamps_are_dropped_and_counted(tmp_path, suffix):
    frame = normal_users()
    frame["timestamp"] = frame["timestamp"].astype("float64")
    frame.loc[[2, 9, 30, 31], "timestamp"] = np.nan
    path = write(frame, tmp_path / f"nan{suffix}")
    if suffix == ".csv":  # the spellings pandas reads as missing, not only the empty field it writes
        lines = path.read_text().splitlines()
        lines[3] = lines[3].rsplit(",", 1)[0] + ",NaN"
        lines[10] = lines[10].rsplit(",", 1)[0] + ",nan"
        path.write_text("\n".join(lines) + "\n")
    bundle, metrics = train(path, tmp_path / "out")
    assert metrics["data"]["dropped_rows"] == {"missing_timestamp": 4}
    assert metrics["data"]["rows_used"] == metrics["data"]["rows_read"] - 4 == len(frame) - 4
    warning = the_warning(metrics, "dropped for missing values")
    assert warning.startswith("4 row(s) were dropped") and "missing_timestamp" in warning
    assert warning in report(bundle) and warning_message(warning).code == "dropped_rows"


def test_non_finite_timestamps_are_an_error_naming_them(tmp_path):
    frame = normal_users().astype({"timestamp": "float64"})
    frame.loc[5, "timestamp"] = np.inf
    with pytest.raises(DataError, match=r"timestamp: timestamps must be finite numbers; 1 are not$") as err:
        train(write(frame, tmp_path / "inf.csv"), tmp_path / "out")
    assert err.value.sample == "such as ['inf']"


# ---- mixed types -----------------------------------------------------------------------------

def test_mixed_number_and_iso_timestamps_are_a_clear_error(tmp_path):
    frame = normal_users().astype({"timestamp": object})
    frame.loc[[4, 5], "timestamp"] = ["2023-11-14T22:20:00Z", "2023-11-14 22:21:00"]
    with pytest.raises(DataError, match=r"timestamp: mixes numbers \(\d+ row\(s\)\) and ISO dates \(2 row\(s\)\); "
                                        r"use one format") as err:
        train(write(frame, tmp_path / "mixed.csv"), tmp_path / "out")
    assert re.match(r"numbers such as \['1700000000'.*dates such as \['2023-11-14T22:20:00Z'", err.value.sample)
    # every row in one format is fine, either way
    iso = normal_users()
    iso["timestamp"] = pd.to_datetime(iso["timestamp"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    _, metrics = train(write(iso, tmp_path / "iso.csv"), tmp_path / "iso")
    assert metrics["data"]["rows_used"] == len(iso)


def test_item_ids_of_mixed_types_are_text_deterministic_and_reported(tmp_path):
    """1 and "1" are one id (CSV quoting is not a type); 1.0 is another, as written: the report says so."""
    frame = normal_users()
    extra = 'u90,1,1700100000\nu90,"1",1700100060\nu90,1.0,1700100120\nu90,i003,1700100180\nu90, 1 ,1700100240\n'
    path = tmp_path / "ids.csv"
    path.write_text(frame.to_csv(index=False) + extra)
    bundle, metrics = train(path, tmp_path / "out")
    assert histories(bundle)["u90"] == ["1", "1", "1.0", "i003", "1"]
    assert metrics["data"]["id_spellings"] == {"item_id": {"numeric_lookalikes": {"groups": 1,
                                                                                  "examples": [["1", "1.0"]]}}}
    warning = the_warning(metrics, "spell the same number")
    assert warning.startswith("item_id: 1 set(s) of distinct ids") and "'1'/'1.0'" in warning
    assert warning in report(bundle) and warning_message(warning).code == "training"

    shuffled = tmp_path / "ids_shuffled.csv"  # the same rows in another order: the same ids, the same sequences
    lines = path.read_text().splitlines()
    shuffled.write_text("\n".join([lines[0], *np.random.default_rng(5).permutation(lines[1:]).tolist()]) + "\n")
    first, again = (load_interactions(DataConfig(data=str(p))) for p in (path, shuffled))
    assert again.vocab.ids() == first.vocab.ids() and again.user_ids == first.user_ids
    assert [again.vocab.decode(s) for s in again.sequences] == [first.vocab.decode(s) for s in first.sequences]
    assert again.stats["id_spellings"] == metrics["data"]["id_spellings"]


def test_float_item_column_in_parquet_is_reported(tmp_path):
    frame = normal_users().assign(item_id=lambda f: f["item_id"].str[1:].astype(int).astype("float64"))
    assert frame["item_id"].dtype == np.float64
    bundle, metrics = train(write(frame, tmp_path / "float_ids.parquet"), tmp_path / "out")
    assert all(item.endswith(".0") for items in histories(bundle).values() for item in items)
    assert metrics["data"]["id_spellings"] == {"item_id": {"float_column": True}}
    warning = the_warning(metrics, "floating-point")
    assert warning.startswith("item_id: the file stores ids as floating-point numbers") and warning in report(bundle)


# ---- users -----------------------------------------------------------------------------------

SOLO = textwrap.dedent("""
    import json, sys
    from seqrec.services.trainer.pipeline import run_training
    from seqrec.shared.config import DataConfig, TrainConfig, build_hparams
    cfg = TrainConfig(data=DataConfig(data=sys.argv[1]), hparams=build_hparams(**json.loads(sys.argv[3])), seed=3)
    path, metrics = run_training(cfg, sys.argv[2], progress=False)
    print(json.dumps({"bundle": str(path), **metrics}))
""")


def test_a_user_column_with_one_value_trains_and_warns(tmp_path):
    frame = pd.DataFrame({"user_id": "everyone", "item_id": [item(k) for k in range(30)],
                          "timestamp": 1_700_000_000 + 60 * np.arange(30)})
    path = write(frame, tmp_path / "one_user.csv")
    assert load_interactions(DataConfig(data=str(path))).stats["users"] == 1
    proc = subprocess.run([sys.executable, "-c", SOLO, str(path), str(tmp_path / "out"), json.dumps(HP)],
                          capture_output=True, text=True, timeout=45)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["data"]["users"] == 1 and metrics["valid"]["users"] == metrics["test"]["users"] == 1
    warning = the_warning(metrics, "one user")
    assert warning.startswith("All rows belong to one user ('everyone' in column 'user_id')")
    assert "--user-col" in warning and warning in report(Path(metrics["bundle"]))


def test_the_one_user_warning_is_in_the_report():
    """What the run above reports once it finishes: the warning itself, from the loader's stats."""
    from seqrec.services.trainer.report import training_warnings

    cfg = TrainConfig(data=DataConfig(data="x.csv"), hparams=build_hparams(**HP))
    stats = {"users": 1, "longest_history": {"user_id": "everyone", "interactions": 30, "share_of_rows": 1.0},
             "median_history": 30.0}
    warning = the_warning({"warnings": training_warnings(cfg, stats, [], 0, {}, {}, False, "cpu")}, "one user")
    assert warning == ("All rows belong to one user ('everyone' in column 'user_id'): validation and test metrics "
                       "rest on that one sequence; check that --user-col names the user column.")
    assert warning_message(warning).message.startswith("All rows belong to one user")


SAMPLED = textwrap.dedent("""
    import numpy as np
    from seqrec.services.trainer.evaluate import _sampled_ranks
    from seqrec.services.trainer.split import EvalSet
    # 50 items (indices 1..50, 51 = [MASK]), every item trained on: fewer than 100 negatives exist
    popularity = np.r_[0, np.full(50, 3), 0]
    eval_set = EvalSet([np.array([1, 2, 3])], np.array([4]))
    print(_sampled_ranks(np.zeros((1, 50), dtype=np.float32), eval_set, popularity, np.random.default_rng(0)))
""")


def test_evaluation_with_fewer_than_100_negatives_finishes():
    proc = subprocess.run([sys.executable, "-c", SAMPLED], capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0, proc.stderr


def test_a_huge_single_user_history_is_windowed_bounded_and_warned(tmp_path):
    normal = normal_users()
    n = 20_000
    # the bot cycles through 40 items
    heavy = pd.DataFrame({"user_id": "bot", "item_id": [item(k % 40) for k in range(n)],
                          "timestamp": 1_600_000_000 + np.arange(n)})
    path = write(pd.concat([normal, heavy]).sample(frac=1.0, random_state=0), tmp_path / "heavy.csv")

    data = load_interactions(DataConfig(data=str(path)))
    windows = training_windows(leave_one_out(data.sequences).train, HP["max_len"], 0, "sliding_window")
    heavy_windows = len(window_bounds(n - 2, HP["max_len"], HP["max_len"] // 2, "sliding_window"))
    assert heavy_windows == -(-(n - 2 - HP["max_len"]) // (HP["max_len"] // 2)) + 1  # ceil(...) + 1
    others = sum(len(window_bounds(len(seq) - 2, HP["max_len"], HP["max_len"] // 2, "sliding_window"))
                 for user, seq in zip(data.user_ids, data.sequences, strict=True) if user != "bot")
    assert windows.shape == (heavy_windows + others, HP["max_len"])  # linear in the history, max_len wide

    # peak memory of the whole training run, in a process of its own, against the same run without the bot
    base = _peak_rss(write(normal, tmp_path / "base.csv"), tmp_path / "base")
    big = _peak_rss(path, tmp_path / "big")
    assert big["rss_mb"] - base["rss_mb"] < 150, (base, big)
    warning = the_warning(big, "'bot' has 20000 interactions")
    assert f"gives {heavy_windows} training window(s) (sliding_window)" in warning
    assert "--sampling last" in warning and warning in (Path(big["bundle"]) / "report.md").read_text()
    assert big["data"]["longest_history"] == {"user_id": "bot", "interactions": n,
                                              "share_of_rows": pytest.approx(n / (n + len(normal)))}
    assert big["test_users"] == len(normal["user_id"].unique()) + 1


PEAK_RSS = textwrap.dedent("""
    import json, resource, sys
    from seqrec.services.trainer.pipeline import run_training
    from seqrec.shared.config import DataConfig, TrainConfig, build_hparams
    cfg = TrainConfig(data=DataConfig(data=sys.argv[1]), hparams=build_hparams(**json.loads(sys.argv[3])), seed=3)
    path, metrics = run_training(cfg, sys.argv[2], progress=False)
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "bundle": str(path),
                      "warnings": metrics["warnings"], "data": metrics["data"],
                      "test_users": metrics["test"]["users"]}))
""")


def _peak_rss(data: Path, out: Path) -> dict:
    hp = {**HP, "batch_size": 256}  # the bot's ~5000 windows in few steps
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, str(data), str(out), json.dumps(hp)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- files with nothing to train on: the CLI's clear error -------------------------------------

@pytest.mark.parametrize(("content", "message"), [
    ("", "data: {path} is empty (no header, no rows)"),
    ("user_id,item_id,timestamp\n", "data: {path} has a header but no rows"),
    ("user_id,item_id,timestamp\n,,\n,,\n", "data: every row lacks a user, item or timestamp value"),
])
def test_files_without_rows_are_a_clear_cli_error(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_text(content)
    proc = cli_train("--data", str(path), "--out", str(tmp_path / "out"), "--epochs", "1", "--max-len", "8",
                     "--hidden-size", "16", "--heads", "2")
    assert proc.returncode == 2, proc.stderr
    assert message.format(path=path) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
