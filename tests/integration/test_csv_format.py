import pytest
from tests.conftest import write_csv_source

from recalign.data import DataError, load_dataset
from recalign.data.formats import PrepareOptions, prepare
from recalign.data.sequences import SplitProtocol

LOOSE = SplitProtocol("loo", min_user_interactions=1, min_item_interactions=1)
ITEMS = [("a", "Alpha Widget", "Acme"), ("b", "Beta Gadget", "Acme"), ("c", "Gamma Gizmo", "Zed")]
LOG = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "c", 1), ("u2", "a", 2), ("u2", "b", 3)]


def run(folder, **options):
    return prepare("csv", folder, PrepareOptions(protocol=LOOSE, **options))


def test_a_clean_source_round_trips_through_disk(tmp_path):
    dataset, repairs = run(write_csv_source(tmp_path / "src", ITEMS, LOG))
    assert not repairs
    dataset.save(tmp_path / "out")
    loaded = load_dataset(tmp_path / "out")
    assert loaded.titles == ["Alpha Widget", "Beta Gadget", "Gamma Gizmo"]
    assert loaded.split("test").history.map(list).tolist() == [[0, 1], [2, 0]]
    assert loaded.manifest["source"]["files"]["items.csv"]["bytes"] > 0


def test_missing_column_names_file_and_field(tmp_path):
    folder = write_csv_source(tmp_path, ITEMS, [r[:2] for r in LOG], log_header="user,item")
    with pytest.raises(DataError, match=r"interactions.csv, row 0, field 'timestamp': missing column"):
        run(folder)


def test_unknown_item_is_an_error_or_a_counted_drop(tmp_path):
    folder = write_csv_source(tmp_path, ITEMS, LOG + [("u2", "zz", 4)])
    with pytest.raises(DataError, match=r"interactions.csv, row 7, field 'item': item 'zz'"):
        run(folder)
    dataset, repairs = run(folder, unknown_items="drop")
    assert repairs.count("unknown_item") == 1 and dataset.interactions.num_rows == 6


def test_empty_titles_are_repaired_and_duplicate_titles_kept(tmp_path):
    items = [("a", "", "Acme"), ("b", "Same", "Acme"), ("c", "Same", "Zed")]
    dataset, repairs = run(write_csv_source(tmp_path, items, LOG))
    assert dataset.titles == ["item a", "Same", "Same"]
    assert repairs.to_dict()["empty_title"]["count"] == 1
    assert repairs.to_dict()["empty_title"]["first"] == ["items.csv row 1"]


def test_duplicate_item_ids_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"items.csv, row 1, field 'item': item id 'a' appears more than once"):
        run(write_csv_source(tmp_path, ITEMS + [("a", "Again", "X")], LOG))


def test_timestamps_may_be_dates_missing_or_bad(tmp_path):
    log = [("u1", "a", "2020-01-01"), ("u1", "b", "2020-01-02T10:00:00"), ("u1", "c", "")]
    dataset, repairs = run(write_csv_source(tmp_path / "ok", ITEMS, log))
    assert repairs.count("missing_timestamp") == 1
    assert dataset.interactions.column("timestamp").to_pylist() == [-1, 1577836800, 1577959200]
    with pytest.raises(DataError, match=r"row 2, field 'timestamp'"):
        run(write_csv_source(tmp_path / "bad", ITEMS, [("u1", "a", 1), ("u1", "b", "soon")]))


def test_wrong_encoding_is_an_error_or_a_counted_repair(tmp_path):
    folder = write_csv_source(tmp_path, ITEMS, LOG)
    (folder / "items.csv").write_bytes((folder / "items.csv").read_bytes().replace(b"Alpha", b"Alph\xe4"))
    with pytest.raises(DataError, match=r"items.csv, row 2"):
        run(folder)
    dataset, repairs = run(folder, encoding_errors="replace")
    assert dataset.titles[0] == "Alph\ufffd Widget" and repairs.count("undecodable_bytes") == 1
    assert run(folder, encoding="latin-1")[0].titles[0] == "Alphä Widget"


def test_custom_column_names(tmp_path):
    from recalign.data.formats import CsvColumns

    folder = write_csv_source(tmp_path, ITEMS, LOG, item_header="sku,name,maker", log_header="who,sku,when")
    columns = CsvColumns(user="who", item="sku", timestamp="when", item_id="sku", title="name", brand="maker")
    dataset, _ = run(folder, columns=columns)
    assert dataset.items.column("brand").to_pylist() == ["Acme", "Acme", "Zed"]
