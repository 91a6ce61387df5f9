import gzip
from pathlib import Path

import numpy as np
import pytest

from recalign.data.problems import DataError, Repairs
from recalign.data.textio import clean_title, iter_lines, parse_int, parse_list, read_csv, unix_seconds


def test_undecodable_bytes_are_an_error_naming_the_line_or_a_counted_repair(tmp_path):
    path = tmp_path / "log.json"
    path.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n{"c": 3}\n')
    with pytest.raises(DataError, match=r"log.json, row 2: .*utf-8"):
        list(iter_lines(path, Repairs()))
    repairs = Repairs()
    lines = list(iter_lines(path, repairs, errors="replace"))
    assert lines[1] == (2, '{"b": "caf\ufffd"}') and repairs.count("undecodable_bytes") == 1
    assert [line for _, line in iter_lines(path, Repairs(), encoding="latin-1")][1] == '{"b": "café"}'


def test_gzip_is_read_transparently(tmp_path):
    path = tmp_path / "log.json.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"one\r\ntwo\n")
    assert list(iter_lines(path, Repairs())) == [(1, "one"), (2, "two")]


def test_csv_keeps_carriage_returns_inside_quoted_fields_and_names_missing_columns(tmp_path):
    path = tmp_path / "item.csv"
    path.write_bytes(b'iid,title\n1,"line\rbreak"\n2,plain\n')
    frame = read_csv(path, ["iid", "title"], Repairs())
    assert frame.title.tolist() == ["line\rbreak", "plain"]
    with pytest.raises(DataError, match=r"item.csv, row 0, field 'rawid': missing column"):
        read_csv(path, ["rawid", "title"], Repairs())
    with pytest.raises(DataError, match="file not found"):
        read_csv(tmp_path / "absent.csv", ["iid"], Repairs())


def test_csv_decoding_error_names_the_line(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes(b"item,title\n1,ok\n2,Cr\xe8me\n")
    with pytest.raises(DataError, match="row 3"):
        read_csv(path, ["item"], Repairs())
    repairs = Repairs()
    assert read_csv(path, ["item"], repairs, errors="replace").title.tolist() == ["ok", "Cr\ufffdme"]
    assert repairs.count("undecodable_bytes") == 1


def test_list_and_int_parsing():
    assert parse_list("[1, 2, 3]", "f", 1, "h") == [1, 2, 3]
    assert parse_list("['<a_1><b_2>', 'x']", "f", 1, "h") == ["<a_1><b_2>", "x"]
    with pytest.raises(DataError, match=r"f, row 4, field 'hist_id': expected a list"):
        parse_list("[1, 2", "f", 4, "hist_id")
    with pytest.raises(DataError, match="expected a list"):
        parse_list("7", "f", 4, "hist_id")
    assert parse_int("5.0", "f", 1, "x") == 5
    with pytest.raises(DataError, match="field 'iid'"):
        parse_int("abc", "f", 2, "iid")


def test_title_cleaning():
    assert clean_title("  Tom &amp; Jerry <b>Deluxe</b>\n Set ") == "Tom & Jerry Deluxe Set"


def test_repairs_refuse_undocumented_kinds():
    with pytest.raises(KeyError):
        Repairs().add("silently_fixed")


def test_unix_seconds_detects_milliseconds_refuses_the_rest_and_counts_fractions():
    rows = np.array([2, 3, 4])
    repairs = Repairs()
    assert unix_seconds(np.array([1.5, np.nan, 7.0]), rows, Path("f.csv"), "t", repairs).tolist() == [1, -1, 7]
    assert repairs.count("fractional_timestamp") == 1 and not repairs.count("millisecond_timestamps")
    ms = unix_seconds(np.array([1e12, 1e12 + 999, np.nan]), rows, Path("f.csv"), "t", repairs)
    assert ms.tolist() == [10 ** 9, 10 ** 9, -1] and repairs.count("millisecond_timestamps") == 2
    for values, row in (([1e9, 1e12, 1e9], 3), ([1e14, 1e14, 1e14], 2), ([np.inf, 1.0, 2.0], 2)):
        with pytest.raises(DataError, match=rf"f.csv, row {row}, field 't'"):
            unix_seconds(np.array(values), rows, Path("f.csv"), "t", Repairs())
