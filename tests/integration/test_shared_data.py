"""The real public data in ../shared/data, prepared through the CLI as a user would (skipped when absent)."""

import ast
import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from recalign.cli import app
from recalign.data import load_dataset

pytestmark = pytest.mark.shared_data
runner = CliRunner()


def prepare(fmt, source, out, *extra):
    return runner.invoke(app, ["data", "prepare", "--format", fmt, "--source", str(source), "--out", str(out), *extra])


def stats(out):
    result = runner.invoke(app, ["data", "stats", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("category, n_items", [("Toys_and_Games", 20669), ("Office_Products", 9913)])
def test_amazon18_categories_prepare_with_their_given_splits(shared_data, tmp_path, category, n_items):
    source = shared_data / "amazon18" / category
    result = prepare("amazon18", source, tmp_path)
    assert result.exit_code == 0, result.output
    s = stats(tmp_path)
    assert s["items"] == n_items
    assert s["examples"] == {"train": 10000, "valid": 5000, "test": 5000}
    dataset = load_dataset(tmp_path)
    raw_items = pd.read_csv(source / "item.csv", dtype=str, keep_default_na=False)
    raw_test = pd.read_csv(source / "test_5000.csv")
    rawid_of_iid = dict(zip(raw_items.iid.astype(int), raw_items.rawid))
    raw_ids = dataset.items.column("raw_id").to_pylist()
    test = dataset.split("test")
    for row in range(0, 5000, 97):  # every id maps back to the same ASIN as in the source files
        assert raw_ids[test.target.iloc[row]] == rawid_of_iid[raw_test.iid.iloc[row]]
        history = ast.literal_eval(raw_test.hist_id.iloc[row])
        assert [raw_ids[i] for i in test.history.iloc[row]] == [rawid_of_iid[i] for i in history]
        assert test.timestamp.iloc[row] == raw_test.timestamp.iloc[row]
    # the shipped 'garbage' title keeps its carriage return (read without newline translation)
    assert any("\r" in title for title in dataset.titles)


def test_minionerec_keeps_its_semantic_ids_and_says_there_is_no_train_file(shared_data, tmp_path):
    source = shared_data / "minionerec" / "Industrial_and_Scientific"
    result = prepare("minionerec", source, tmp_path)
    assert result.exit_code == 0, result.output
    assert "no train file" in result.output
    s = stats(tmp_path)
    assert s["items"] == 3686 and s["examples"] == {"train": 0, "valid": 4532, "test": 4533}
    assert s["attributes"] == ["sid"] and s["duplicate_titles"] == {"titles": 15, "items": 55}
    sids = json.loads((source / "Industrial_and_Scientific.index.json").read_text())
    dataset = load_dataset(tmp_path)
    assert dataset.items.column("sid").to_pylist()[:5] == [sids[str(i)] for i in range(5)]
    assert prepare("minionerec", source, tmp_path / "v", "--minionerec-train", "valid").exit_code == 0
    assert stats(tmp_path / "v")["examples"] == {"train": 4532, "valid": 0, "test": 4533}


def corrupted_copy(shared_data, tmp_path):
    copy = tmp_path / "Office_Products"
    shutil.copytree(shared_data / "amazon18" / "Office_Products", copy)
    return copy


def test_a_missing_column_stops_prepare_naming_file_and_column(shared_data, tmp_path):
    copy = corrupted_copy(shared_data, tmp_path)
    items = pd.read_csv(copy / "item.csv", dtype=str, keep_default_na=False)
    items.drop(columns=["title"]).to_csv(copy / "item.csv", index=False)
    result = prepare("amazon18", copy, tmp_path / "out")
    assert result.exit_code == 1
    assert "item.csv" in result.output and "row 0" in result.output and "'title'" in result.output


def test_a_history_id_absent_from_the_item_table_stops_prepare_naming_file_and_row(shared_data, tmp_path):
    copy = corrupted_copy(shared_data, tmp_path)
    valid = pd.read_csv(copy / "valid_5000.csv", dtype=str, keep_default_na=False)
    valid.loc[41, "hist_id"] = "[1, 2, 99999, 4, 5, 6, 7, 8, 9, 10]"
    valid.to_csv(copy / "valid_5000.csv", index=False)
    result = prepare("amazon18", copy, tmp_path / "out")
    assert result.exit_code == 1
    assert "valid_5000.csv" in result.output and "row 42" in result.output and "99999" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()
    dropped = prepare("amazon18", copy, tmp_path / "out", "--unknown-items", "drop")
    assert dropped.exit_code == 0 and "unknown_item" in dropped.output


def test_sequence_rows_never_train_a_valid_or_test_target(shared_data, tmp_path):
    """The sequence objective's labels on real data: minionerec with --minionerec-train histories trains exactly
    the items before each user's first valid target; amazon18's labels all come from the user's train rows, and
    no train row repeats a valid or test target interaction."""
    from recalign.data.sequences import chain_examples
    from recalign.llm.recommender import LLMRecommender, RecommenderConfig

    config = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", prompt="sequence")
    ind = tmp_path / "ind"
    result = prepare("minionerec", shared_data / "minionerec" / "Industrial_and_Scientific", ind,
                     "--minionerec-train", "histories")
    assert result.exit_code == 0, result.output
    dataset = load_dataset(ind)
    assert dataset.manifest["protocol"]["train_from"] == "histories"
    rows, chained = LLMRecommender.create(dataset, config).sequence_examples(dataset, "train")
    valid = dataset.split("valid")
    first_valid = valid.groupby("user_id", sort=False).head(1)
    before = {u: list(h) for u, h in zip(first_valid.user_id, first_valid.history) if len(h) > 1}
    assert dict(zip(chained.users, chained.sequences)) == before  # each user's items before the first valid target
    # each user's valid rows chain into one log that starts with the trained items, and each valid target fills
    # one position after them: no label sits where a valid target does (test rows come later still)
    valid_log = chain_examples(valid.user_id.to_numpy(), list(valid.history), valid.target.to_numpy(),
                               valid.timestamp.to_numpy())
    valid_rows = valid.user_id.value_counts()
    for user, sequence in zip(valid_log.users, valid_log.sequences):
        if user in before:
            assert sequence[:len(before[user])] == before[user]
            assert len(sequence) - len(before[user]) == valid_rows[user]
    labels = sum(len(row.target_spans()) for row in rows)
    assert labels == chained.targets == sum(len(s) - 1 for s in before.values())

    office = tmp_path / "office"
    assert prepare("amazon18", shared_data / "amazon18" / "Office_Products", office).exit_code == 0
    dataset = load_dataset(office)
    rows, chained = LLMRecommender.create(dataset, config).sequence_examples(dataset, "train")
    train = dataset.split("train")
    items_of = {}
    for user, history, target in zip(train.user_id, train.history, train.target):
        items_of.setdefault(user, set()).update([*map(int, history), int(target)])
    for user, sequence in zip(chained.users, chained.sequences):
        assert set(sequence) <= items_of[user]  # every label is an item of the user's own train rows
    held_out = {(u, int(t), int(s)) for name in ("valid", "test") for u, t, s in
                zip(dataset.split(name).user_id, dataset.split(name).target, dataset.split(name).timestamp)}
    assert not held_out & set(zip(train.user_id, train.target.astype(int), train.timestamp.astype(int)))
    assert train.timestamp.max() <= min(dataset.split(n).timestamp.min() for n in ("valid", "test"))
    assert chained.targets > 5 * len(train)
