"""The amazon-raw loader on small hand-written dumps: every bad line is either refused or counted, and the
examples of a hand-designed log are checked one by one against splits worked out by hand."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from recalign.data import DataError, Dataset
from recalign.data.formats import PrepareOptions, prepare
from recalign.data.sequences import SplitProtocol


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def review(user: str, asin: str, time: int, **extra) -> str:
    return json.dumps({"overall": 5.0, "reviewerID": user, "asin": asin, "reviewerName": "Jo",
                       "reviewText": "Works fine.", "summary": "ok", "unixReviewTime": time, **extra})


# The log once cleaned (user: item@time), written grouped by item as in the dumps, not in time order:
#   u1: A@100 B@200 C@300 D@400     u2: B@150 C@250 A@350     u3: C@120 D@220
# u4 reviews only E (no metadata row) and X (a title that cleans to nothing): all removed, counted.
LOG = [("u1", "A", 100), ("u2", "A", 350), ("u1", "B", 200), ("u2", "B", 150), ("u1", "C", 300), ("u2", "C", 250),
       ("u3", "C", 120), ("u1", "D", 400), ("u3", "D", 220), ("u4", "E", 500), ("u4", "E", 700), ("u4", "X", 600)]
REVIEW_LINES = [review(*row) for row in LOG] + [
    review("u1", "B", 200),  # exact repeat: duplicate_interaction
    "{not json",  # malformed_line
    json.dumps({"reviewerID": "u9", "unixReviewTime": 5}),  # no asin: malformed_line
    json.dumps({"reviewerID": "u9", "asin": "A"}),  # no time: malformed_line
    "",  # blank: holds nothing, skipped
]
META_LINES = [
    json.dumps({"asin": "A", "title": "Pens &amp; Pencils <b>Set</b>", "brand": "Acme",
                "description": ["Twelve pens.", "<p>Refillable</p>"], "category": ["Office Products", "Pens"]}),
    json.dumps({"asin": "B", "title": "\u201cQuoted\u201d  Stapler \u2014 Heavy", "description": [], "category": []}),
    repr({"asin": "C", "title": "Desk Lamp", "categories": [["Office Products", "Lighting"], ["Home"]],
          "description": "Bright & warm"}),  # the older dumps: a Python dict literal
    json.dumps({"asin": "D", "title": "Paper", "brand": ""}),
    json.dumps({"asin": "D", "title": "Other paper"}),  # duplicate_metadata: the first row wins
    json.dumps({"asin": "X", "title": " <br/> "}),  # empty once cleaned: item_without_title
    json.dumps({"asin": "Z", "title": "Never reviewed"}),
    "garbage{",  # malformed_line
]


def small_protocol(kind: str = "loo", **fractions) -> SplitProtocol:
    return SplitProtocol(kind=kind, min_user_interactions=2, min_item_interactions=1, **fractions)


@pytest.fixture(params=[".json.gz", ".json"])
def source(request, tmp_path: Path) -> Path:
    write_lines(tmp_path / f"Office_Products_5{request.param}", REVIEW_LINES)
    write_lines(tmp_path / f"meta_Office_Products{request.param}", META_LINES)
    return tmp_path


def examples(dataset: Dataset, split: str) -> set[tuple]:
    """(user, history as raw ids oldest first, target raw id, timestamp) for each example of a split."""
    raw = dataset.items.column("raw_id").to_pylist()
    frame = dataset.split(split)
    return {(row.user, tuple(raw[i] for i in row.history), raw[row.target], row.timestamp)
            for row in frame.itertuples()}


def test_leave_one_out_examples_and_repairs(source: Path):
    dataset, repairs = prepare("amazon-raw", source, PrepareOptions(protocol=small_protocol()))
    assert examples(dataset, "train") == {("u1", ("A",), "B", 200)}
    assert examples(dataset, "valid") == {("u1", ("A", "B"), "C", 300), ("u2", ("B",), "C", 250)}
    assert examples(dataset, "test") == {("u1", ("A", "B", "C"), "D", 400), ("u2", ("B", "C"), "A", 350),
                                         ("u3", ("C",), "D", 220)}
    counts = {kind: repairs.count(kind) for kind in
              ("malformed_line", "duplicate_interaction", "duplicate_metadata", "item_without_title")}
    assert counts == {"malformed_line": 4, "duplicate_interaction": 1, "duplicate_metadata": 1,
                      "item_without_title": 3}
    first = repairs.to_dict()["item_without_title"]["first"]
    assert first[0].startswith("asin E: no metadata row") and "empty title" in first[1]
    reviews, meta = (next(source.glob(f"{prefix}*")).name for prefix in ("Office", "meta_"))
    assert repairs.to_dict()["malformed_line"]["first"] == [
        f"{reviews}:14 (not a JSON object)", f"{reviews}:15 (no string 'asin')",
        f"{reviews}:16 (no integer 'unixReviewTime' >= 0)", f"{meta}:8 (not a JSON object or dict literal)"]


def test_temporal_split_by_target_time(source: Path):
    protocol = small_protocol("temporal", valid_fraction=0.17, test_fraction=0.34)  # of 6 examples: 1 valid, 2 test
    dataset, _ = prepare("amazon-raw", source, PrepareOptions(protocol=protocol))
    assert examples(dataset, "train") == {("u1", ("A",), "B", 200), ("u3", ("C",), "D", 220),
                                          ("u2", ("B",), "C", 250)}
    assert examples(dataset, "valid") == {("u1", ("A", "B"), "C", 300)}
    assert examples(dataset, "test") == {("u2", ("B", "C"), "A", 350), ("u1", ("A", "B", "C"), "D", 400)}


def test_items_are_cleaned_and_interactions_chronological(source: Path, tmp_path: Path):
    dataset, _ = prepare("amazon-raw", source, PrepareOptions(protocol=small_protocol()))
    items = {row["raw_id"]: row for row in dataset.items.to_pylist()}
    assert sorted(items) == ["A", "B", "C", "D"]
    assert items["A"]["title"] == "Pens & Pencils Set"
    assert items["A"]["description"] == "Twelve pens. Refillable"
    assert items["A"]["category"] == "Office Products > Pens" and items["A"]["brand"] == "Acme"
    assert items["B"]["title"] == '"Quoted" Stapler - Heavy'
    assert items["B"]["description"] is None and items["B"]["category"] is None
    assert items["C"]["category"] == "Office Products > Lighting" and items["C"]["description"] == "Bright & warm"
    assert items["D"]["title"] == "Paper" and items["D"]["brand"] is None

    log = dataset.interactions.to_pandas()
    assert len(log) == 9
    for _, group in log.groupby("user_id", sort=False):
        assert group["timestamp"].is_monotonic_increasing

    files = dataset.manifest["source"]["files"]
    assert dataset.manifest["source"]["format"] == "amazon-raw"
    assert sorted(files) == sorted(p.name for p in source.iterdir())
    assert all(len(record["sha256"]) == 64 for record in files.values())
    reloaded = Dataset.load(dataset.save(tmp_path / "prepared"))
    assert reloaded.manifest["repairs"]["duplicate_metadata"]["count"] == 1
    assert reloaded.content_hash() == dataset.content_hash()


def test_invalid_utf8_is_refused_by_default_and_counted_when_replaced(tmp_path: Path):
    bad = review("u1", "A", 50).encode().replace(b'"Jo"', b'"J\xff"')
    write_lines(tmp_path / "Office_Products_5.json.gz", [*REVIEW_LINES[:3], bad, *REVIEW_LINES[3:]])
    write_lines(tmp_path / "meta_Office_Products.json.gz", META_LINES)
    with pytest.raises(DataError, match=r"Office_Products_5\.json\.gz, row 4: .*not valid utf-8"):
        prepare("amazon-raw", tmp_path, PrepareOptions(protocol=small_protocol()))
    dataset, repairs = prepare("amazon-raw", tmp_path,
                               PrepareOptions(protocol=small_protocol(), encoding_errors="replace"))
    assert repairs.count("undecodable_bytes") == 1
    assert repairs.to_dict()["undecodable_bytes"]["first"] == ["Office_Products_5.json.gz:4"]
    assert ("u1", ("A", "A", "B"), "C", 300) in examples(dataset, "valid")  # the repaired line's A@50 comes first


def test_the_download_record_beside_the_dumps_is_not_taken_for_a_dump(source: Path):
    (source / "download.json").write_text('{"files": {}}')  # what `recalign data download` leaves there
    dataset, _ = prepare("amazon-raw", source, PrepareOptions(protocol=small_protocol()))
    assert dataset.n_items == 4


@pytest.mark.parametrize("names, found", [
    (["Office_Products_5.json.gz", "Toys_5.json", "meta_Office_Products.json.gz"], "Toys_5.json"),
    (["Office_Products_5.json.gz"], "metadata []"),
])
def test_directory_must_hold_one_reviews_and_one_meta_file(tmp_path: Path, names: list[str], found: str):
    for name in names:
        write_lines(tmp_path / name, META_LINES if name.startswith("meta_") else REVIEW_LINES)
    (tmp_path / "README.txt").write_text("ignored: not a JSON dump")
    with pytest.raises(DataError, match=rf"{tmp_path.name}: expected exactly one reviews file .*{re.escape(found)}"):
        prepare("amazon-raw", tmp_path)


@pytest.mark.parametrize("reviews, message", [
    ([], r"Office_Products_5\.json: the file holds no lines"),
    ([json.dumps({"reviewerID": "u1", "itemID": "A", "unixReviewTime": 1})] * 3,
     r"Office_Products_5\.json, row 1, field 'asin': none of its 3 lines is usable"),
])
def test_unusable_reviews_file_is_refused(tmp_path: Path, reviews: list[str], message: str):
    write_lines(tmp_path / "Office_Products_5.json", reviews)
    write_lines(tmp_path / "meta_Office_Products.json", META_LINES)
    with pytest.raises(DataError, match=message):
        prepare("amazon-raw", tmp_path)


def test_metadata_of_another_category_is_refused(tmp_path: Path):
    write_lines(tmp_path / "Office_Products_5.json", REVIEW_LINES)
    write_lines(tmp_path / "meta_Toys.json", [json.dumps({"asin": "T1", "title": "Ball"})])
    with pytest.raises(DataError, match=r"meta_Toys\.json, field 'title': none of the 6 reviewed items"):
        prepare("amazon-raw", tmp_path)
