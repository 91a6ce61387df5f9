from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recalign.data.formats import prepare
from recalign.data.synth import ACCESSORY, MAIN, generate, write_synthetic


@pytest.fixture(scope="module")
def default_source(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("synth")
    return folder, write_synthetic(folder)


def read(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
    log = pd.read_csv(folder / "interactions.csv", dtype={"user": str, "item": str, "timestamp": np.int64})
    return items, log


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_synthetic(tmp_path / name, n_users=400, n_items=300, seed=seed)
    for file in ("items.csv", "interactions.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes()


def test_files_have_the_csv_format_columns_and_the_summary_counts_them(default_source):
    folder, summary = default_source
    with open(folder / "items.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["item", "title", "description", "brand", "category"]
    with open(folder / "interactions.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["user", "item", "timestamp"]
    items, log = read(folder)
    assert items["item"].is_unique
    assert set(log["item"]) <= set(items["item"])
    assert (items[["description", "brand", "category"]] != "").all().all()
    assert items["category"].str.contains(" > ").all()
    assert summary["items"] == len(items) == 1500
    assert summary["interactions"] == len(log)
    assert summary["users"] == log["user"].nunique() == 3000
    assert 15 <= len(log) / summary["users"] <= 25
    assert len(log) < 100_000


def test_every_user_has_five_interactions_in_time_order(default_source):
    _, log = read(default_source[0])
    assert log.groupby("user").size().min() >= 5
    same_user = (log["user"].to_numpy()[1:] == log["user"].to_numpy()[:-1])
    assert (np.diff(log["timestamp"].to_numpy())[same_user] >= 0).all()
    assert log["timestamp"].between(1_500_000_000, 1_800_000_000).all()  # plausible Unix seconds


def test_titles_are_unique_but_for_a_few_duplicates_and_prefixes(default_source):
    folder, summary = default_source
    items, _ = read(folder)
    titles = items["title"]
    assert (titles.str.strip() != "").all()
    shared = titles.duplicated(keep=False).sum()
    assert 0.005 * len(items) <= shared <= 0.02 * len(items)
    assert shared == summary["duplicate_title_items"]
    assert titles.value_counts().max() == 2  # re-listings come in pairs; nothing else repeats
    distinct = sorted(set(titles))
    prefixes = [s for s, t in zip(distinct, distinct[1:], strict=False) if t.startswith(s)]
    assert 1 <= len(prefixes) <= 0.01 * len(items)
    assert len(prefixes) == summary["prefix_title_items"]
    assert items["brand"].nunique() == 40
    assert all(b in t for b, t in zip(items["brand"], titles, strict=True))


def test_accessories_of_the_same_line_follow_a_main_product_far_above_their_base_rate():
    data = generate(n_users=1500, seed=5)
    items = data.items.set_index("item")
    kind = items["kind"].reindex(data.interactions["item"]).to_numpy()
    line = items["line"].reindex(data.interactions["item"]).to_numpy()
    users = data.interactions["user"].to_numpy()
    after_main = np.flatnonzero((users[1:] == users[:-1]) & (kind[:-1] == MAIN))
    follows = (kind[after_main + 1] == ACCESSORY) & (line[after_main + 1] == line[after_main])
    share = pd.Series(line[kind == ACCESSORY]).value_counts() / len(line)  # any purchase being that line's accessory
    base_rate = share.reindex(line[after_main]).fillna(0).mean()
    assert follows.mean() > 0.4
    assert follows.mean() > 10 * base_rate


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="n_items"):
        generate(n_items=20)
    with pytest.raises(ValueError, match="mean_length"):
        generate(mean_length=4)


def test_it_survives_five_core_and_a_transition_model_clearly_beats_popularity(default_source):
    from recalign.eval import evaluate_baselines

    folder, summary = default_source
    dataset, _ = prepare("csv", folder)
    counts = dataset.counts()
    assert counts["users"] == summary["users"]
    assert counts["items"] >= 0.99 * summary["items"]
    assert counts["interactions"] >= 0.99 * summary["interactions"]
    results = evaluate_baselines(dataset, split="test", names=("popularity", "random", "markov"), ks=(1, 5, 10, 20))
    hr = {name: metrics["HR@10"] for name, metrics in results.items()}
    assert hr["popularity"] > 2 * hr["random"]
    assert hr["markov"] >= 1.5 * hr["popularity"]
    assert hr["markov"] < 0.5  # the last item alone leaves most of the signal (taste, brand) to a learned model
