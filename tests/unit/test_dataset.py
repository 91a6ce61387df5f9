import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recalign.data import Dataset, load_dataset
from recalign.data.dataset import item_table
from recalign.data.sequences import examples_from_lists


def small_dataset(target=2):
    items = pd.DataFrame({"raw_id": ["A", "B", "C"], "title": ["x", "y", "z"],
                          "sid": [["<a_1>"], ["<a_2>"], ["<a_3>"]]})
    split = examples_from_lists([0, 1], ["u0", "u1"], [[0, 1], [2]], [target, 0], [5, 6])
    return Dataset(item_table(items), {"train": split, "valid": split, "test": split}, {"name": "small"})


def test_save_and_load_round_trip_with_a_stable_content_hash(tmp_path):
    dataset = small_dataset()
    dataset.save(tmp_path)
    loaded = load_dataset(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["content_hash"] == loaded.content_hash() == dataset.content_hash()
    assert manifest["counts"] == {"items": 3, "users": 2, "interactions": None,
                                  "examples": {"train": 2, "valid": 2, "test": 2}}
    assert loaded.items.column("sid").to_pylist() == [["<a_1>"], ["<a_2>"], ["<a_3>"]]
    offsets, values = loaded.histories("train")
    assert offsets.tolist() == [0, 2, 3] and values.tolist() == [0, 1, 2]
    assert list(loaded.examples) == ["train", "valid", "test"]


def test_content_hash_changes_with_the_data():
    assert small_dataset(target=2).content_hash() != small_dataset(target=1).content_hash()


def test_out_of_range_ids_are_caught_before_saving(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        small_dataset(target=7).save(tmp_path)


def test_loading_something_else_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="recalign data prepare"):
        load_dataset(tmp_path)
    small_dataset().save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        load_dataset(tmp_path)


def test_split_frames_hold_numpy_histories():
    frame = small_dataset().split("test")
    assert isinstance(frame.history.iloc[0], np.ndarray) and frame.target.tolist() == [2, 0]
    with pytest.raises(KeyError, match="no split"):
        small_dataset().split("dev")
    assert small_dataset().examples["test"].schema.field("history").type == pa.list_(pa.int32())
