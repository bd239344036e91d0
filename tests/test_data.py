"""Loading interactions: columns, timestamps, ordering, k-core, split, bad input files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqrec.services.trainer.data import DataError, kcore_filter, load_interactions
from seqrec.services.trainer.split import leave_one_out, training_windows, window_bounds
from seqrec.shared.config import DataConfig


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> str:
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def test_chronological_order_with_stable_tie_break(tmp_path):
    frame = pd.DataFrame({"u": ["a", "a", "a", "a", "b"], "i": ["x", "y", "z", "w", "x"],
                          "t": [3, 1, 1, 2, 5]})
    data = load_interactions(DataConfig(data=_write(tmp_path, frame), user_col="u", item_col="i", time_col="t"))
    seq = data.vocab.decode(data.sequences[data.user_ids.index("a")])
    assert seq == ["y", "z", "w", "x"]  # y and z tie at t=1: file order decides
    assert data.stats["timestamp_tie_share"] == pytest.approx(1 / 3)


def test_iso_dates_and_parquet(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [10, 20, 30],
                          "timestamp": ["2024-01-03T00:00:00Z", "2024-01-01", "2024-01-02 10:00"]})
    data = load_interactions(DataConfig(data=_write(tmp_path, frame, "d.parquet")))
    assert data.vocab.decode(data.sequences[0]) == ["20", "30", "10"]


@pytest.mark.parametrize(("stamps", "unit", "expected_unit"), [
    ([1_767_225_600, 1_767_225_660], "auto", "s"),
    ([1_767_225_600_000, 1_767_225_660_000], "auto", "ms"),
    ([1_767_225_600_000_000, 1_767_225_660_000_000], "auto", "us"),
    ([1_767_225_600_000, 1_767_225_660_000], "ms", "ms"),
    ([3, 1], "auto", "s"),  # an ordering rather than dates: small numbers stay small
])
def test_numeric_timestamps_become_epoch_seconds_in_their_unit(tmp_path, stamps, unit, expected_unit):
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [10, 20], "timestamp": stamps})
    data = load_interactions(DataConfig(data=_write(tmp_path, frame), time_unit=unit))
    assert data.stats["timestamp_unit"] == expected_unit
    scale = {"s": 1, "ms": 1e-3, "us": 1e-6}[expected_unit]
    assert sorted(data.timestamps[0].tolist()) == pytest.approx(sorted(t * scale for t in stamps))


def test_an_unknown_time_unit_is_refused():
    from seqrec.shared.config import ConfigError, validate_data_config

    with pytest.raises(ConfigError, match="time_unit: must be one of"):
        validate_data_config(DataConfig(data="x.csv", time_unit="minutes"))


def test_unparseable_timestamps_are_an_error(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": ["2024-01-01", "yesterday"]})
    with pytest.raises(DataError, match=r"timestamp: 1 timestamp\(s\) are neither") as err:
        load_interactions(DataConfig(data=_write(tmp_path, frame)))
    # the message never quotes the file (the trainer service reports it); the local CLI adds the sample
    assert "yesterday" not in str(err.value) and "yesterday" in err.value.with_sample()


def test_missing_values_are_counted_not_lost_silently(tmp_path):
    frame = pd.DataFrame({"user_id": [1, None, 1, 1], "item_id": [1, 2, None, 3], "timestamp": [1, 2, 3, 4]})
    data = load_interactions(DataConfig(data=_write(tmp_path, frame)))
    assert data.stats["dropped_rows"] == {"missing_user_id": 1, "missing_item_id": 1}
    assert data.n_interactions == 2


def test_missing_column_is_named(tmp_path):
    frame = pd.DataFrame({"user": [1], "item_id": [1], "timestamp": [1]})
    with pytest.raises(DataError, match=r"missing column\(s\) \['user_id'\]"):
        load_interactions(DataConfig(data=_write(tmp_path, frame)))


def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_interactions(DataConfig(data=str(empty)))
    header = tmp_path / "header.csv"
    header.write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match="no rows"):
        load_interactions(DataConfig(data=str(header)))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_interactions(DataConfig(data=str(tmp_path / "nope.csv")))
    other = tmp_path / "data.xlsx"
    other.write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        load_interactions(DataConfig(data=str(other)))


def test_ids_stay_strings(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("user_id,item_id,timestamp\n007,0042,1\n007,42,2\n")
    data = load_interactions(DataConfig(data=str(path)))
    assert data.user_ids == ["007"]
    assert sorted(data.vocab.ids()) == ["0042", "42"]


def test_item_table_join_and_display_names(tmp_path, series_csv, items_csv):
    cfg = DataConfig(data=str(series_csv), items=str(items_csv), meta_cols=("genre",), name_col="title")
    data = load_interactions(cfg)
    info = data.items["s3e2"]
    assert info.display_name == "Series 3 episode 3"
    assert info.meta == {"genre": "drama"}
    assert data.stats["metadata_schema"] == {"genre": "string"}


def test_metadata_types_are_inferred_per_column(tmp_path):
    frame = pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "timestamp": [1, 2, 3],
                          "price": [1, 2.5, 3], "stock": [True, False, True], "year": [1999, 2000, 2001],
                          "brand": ["x", "y", None]})
    data = load_interactions(DataConfig(data=_write(tmp_path, frame), meta_cols=("price", "stock", "year", "brand")))
    assert data.stats["metadata_schema"] == {"price": "double", "stock": "bool", "year": "int64", "brand": "string"}
    assert data.items["a"].meta == {"price": 1.0, "stock": True, "year": 1999, "brand": "x"}
    assert data.items["c"].meta == {"price": 3.0, "stock": True, "year": 2001}


def test_item_table_missing_column(tmp_path, series_csv, items_csv):
    with pytest.raises(DataError, match=r"items: missing column\(s\) \['brand'\]"):
        load_interactions(DataConfig(data=str(series_csv), items=str(items_csv), meta_cols=("brand",)))


def test_kcore_is_iterative():
    # c has 1 interaction and z 1: both go; then b is left with 1 and goes in the second round.
    users = np.array(["a", "a", "b", "b", "c", "d", "d"])
    items = np.array(["x", "y", "x", "z", "y", "x", "y"])
    keep = kcore_filter(users, items, min_user=2, min_item=2)
    assert keep.tolist() == [True, True, False, False, False, True, True]
    assert kcore_filter(users, items, 0, 0).all()


def test_kcore_that_removes_everything_is_an_error(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1, 2]})
    with pytest.raises(DataError, match="removed every row"):
        load_interactions(DataConfig(data=_write(tmp_path, frame), min_user_interactions=5))


def test_leave_one_out_edges():
    seqs = [np.array([1, 2, 3, 4, 5]), np.array([6, 7]), np.array([8, 9, 10])]
    split = leave_one_out(seqs)
    assert [s.tolist() for s in split.train] == [[1, 2, 3], [6, 7], [8]]
    assert split.valid.targets.tolist() == [4, 9]
    assert [s.tolist() for s in split.valid.inputs] == [[1, 2, 3], [8]]
    assert split.test.targets.tolist() == [5, 10]
    assert [s.tolist() for s in split.test.inputs] == [[1, 2, 3, 4], [8, 9]]
    assert split.train_probe.targets.tolist() == [3]


def test_windows_cover_long_histories():
    assert window_bounds(5, 10, 5, "sliding_window") == [(0, 5)]
    assert window_bounds(25, 10, 5, "sliding_window") == [(15, 25), (10, 20), (5, 15), (0, 10)]
    assert window_bounds(23, 10, 5, "sliding_window") == [(13, 23), (8, 18), (3, 13), (0, 10)]
    assert window_bounds(25, 10, 5, "last") == [(15, 25)]


def test_training_windows_are_left_padded_and_skip_single_items():
    windows = training_windows([np.array([1, 2, 3]), np.array([4]), np.arange(1, 8)], max_len=4, stride=2,
                               strategy="sliding_window")
    assert windows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [2, 3, 4, 5], [1, 2, 3, 4]]
