"""Issue 19's hostile inputs: each case reproduced, each answered by a clear error naming the file (and row and
field where there is one) or by a documented, counted repair; finished work is never overwritten unasked."""

from __future__ import annotations

import hashlib

import pytest
import torch
from tests.conftest import rule_dataset
from typer.testing import CliRunner

from recalign.cli import app

runner = CliRunner()


def invoke(*args, ok: bool = True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def refused(*args) -> str:
    """The command's output, after checking it failed with a message (not a traceback)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return " ".join(result.output.split())  # rich wraps long lines


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data(tmp_path):
    return rule_dataset(with_valid=True).save(tmp_path / "data")


# ----- 7: a seed reproduces a run, whatever the process did before -------------------------------------------------

CF_SMALL = ("--epochs", "2", "--hidden", "8", "--max-len", "6", "--batch-size", "32")
LLM_SMALL = ("--backbone", "tiny", "--precision", "fp32", "--max-train-rows", "16", "--batch-size", "8",
             "--micro-batch-size", "8", "--eval-split", "")


def twice(tmp_path, command: list, weights: str) -> tuple[str, str]:
    """The command run twice with the same seed, the global RNG disturbed in between (as other work in the process,
    or a different import order, would); the digests of the two runs' weight files."""
    digests = []
    for run in ("first", "second"):
        torch.rand(97)  # a draw that the seed must make irrelevant
        invoke(*command, "--out", tmp_path / run)
        digests.append(file_digest(tmp_path / run / weights))
    return digests[0], digests[1]


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "bert4rec", "nextitnet", "mf", "ncf"])
def test_cf_train_with_a_seed_is_reproducible(tmp_path, data, model):
    first, second = twice(tmp_path, ["cf", "train", "--data", data, "--model", model, *CF_SMALL, "--seed", "3"],
                          "model.safetensors")
    assert first == second


def test_llm_train_with_a_seed_is_reproducible(tmp_path, data):
    first, second = twice(tmp_path, ["llm", "train", "--data", data, *LLM_SMALL, "--seed", "3"],
                          "model/model.safetensors")  # tiny: a full model
    assert first == second


def test_index_build_with_a_seed_is_reproducible(tmp_path, data, monkeypatch):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    first, second = twice(tmp_path, ["index", "build", "--data", data, "--levels", "2", "--codebook-size", "3",
                                     "--epochs", "3", "--batch-size", "8", "--seed", "3"], "sids.json")
    assert first == second


@pytest.mark.slow
def test_allmrec_stages_with_a_seed_are_reproducible(tmp_path, data, monkeypatch):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    invoke("cf", "train", "--data", data, "--model", "sasrec", *CF_SMALL, "--out", tmp_path / "cf")
    first, second = twice(tmp_path / "stage1", ["allmrec", "stage1", "--data", data, "--cf", tmp_path / "cf",
                                                "--epochs", "2", "--batch-size", "16", "--seed", "3"], "joint.npy")
    assert first == second
    first, second = twice(tmp_path / "stage2", ["allmrec", "stage2", "--data", data, "--cf", tmp_path / "cf",
                                                "--stage1", tmp_path / "stage1" / "first", "--backbone", "tiny",
                                                "--precision", "fp32", "--max-train-rows", "8", "--n-candidates", "4",
                                                "--seed", "3"], "allmrec_projectors.safetensors")
    assert first == second


# ----- 9: finished work is not overwritten unasked ----------------------------------------------------------------

def test_cf_train_refuses_to_replace_a_trained_model(tmp_path, data):
    command = ["cf", "train", "--data", data, "--model", "sasrec", *CF_SMALL, "--out", tmp_path / "cf"]
    invoke(*command)
    before = file_digest(tmp_path / "cf" / "model.safetensors")
    message = refused(*command, "--seed", "5")
    assert "already holds the work of an earlier run (model.safetensors, checkpoint)" in message
    assert "--resume continues it, --overwrite replaces it" in message
    assert file_digest(tmp_path / "cf" / "model.safetensors") == before
    invoke(*command, "--resume")  # continuing is allowed
    invoke(*command, "--seed", "5", "--overwrite")
    assert file_digest(tmp_path / "cf" / "model.safetensors") != before


def test_llm_train_refuses_to_replace_a_trained_recommender(tmp_path, data):
    command = ["llm", "train", "--data", data, *LLM_SMALL, "--out", tmp_path / "llm"]
    invoke(*command)
    before = file_digest(tmp_path / "llm" / "model" / "model.safetensors")
    assert "already holds the work of an earlier run (config.json, train)" in refused(*command, "--seed", "5")
    assert file_digest(tmp_path / "llm" / "model" / "model.safetensors") == before
    invoke(*command, "--seed", "5", "--overwrite")
    assert file_digest(tmp_path / "llm" / "model" / "model.safetensors") != before


def test_index_commands_refuse_to_replace_sids_and_out_must_be_a_folder(tmp_path, data, monkeypatch):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    command = ["index", "build", "--data", data, "--method", "rqkmeans", "--levels", "2", "--codebook-size", "3"]
    invoke(*command, "--out", tmp_path / "sids")
    assert "already holds the work of an earlier run (sids.json): --overwrite replaces it" in refused(
        *command, "--out", tmp_path / "sids", "--seed", "4")
    invoke(*command, "--out", tmp_path / "sids", "--seed", "4", "--overwrite")
    (tmp_path / "file").write_text("x")
    assert f"--out {tmp_path / 'file'} is a file" in refused(*command, "--out", tmp_path / "file")


# ----- 8: --resume continues only the run it belongs to -----------------------------------------------------------

def retitled(dataset, folder):
    """The same raw ids and interactions under other titles: another catalogue to anything that generates titles."""
    import pandas as pd

    from recalign.data.dataset import Dataset, item_table

    items = pd.DataFrame({"raw_id": dataset.raw_ids, "title": [f"other {t}" for t in dataset.titles]})
    return Dataset(item_table(items), dataset.examples).save(folder)


def test_cf_resume_refuses_a_checkpoint_of_other_settings_data_or_catalogue(tmp_path, data):
    from recalign.data import load_dataset

    command = ["cf", "train", "--model", "sasrec", *CF_SMALL, "--out", tmp_path / "cf", "--resume"]
    invoke(*command, "--data", data)
    message = refused(*command, "--data", data, "--lr", "0.01", "--hidden", "16")
    assert "it belongs to a run with other settings: hidden 8 (now 16); lr 0.001 (now 0.01)" in message
    other_rows = rule_dataset(seed=1, with_valid=True).save(tmp_path / "other")
    assert "training rows '" in refused(*command, "--data", other_rows)
    assert "catalogue '" in refused(*command, "--data", retitled(load_dataset(data), tmp_path / "retitled"))
    invoke(*command, "--epochs", "3", "--data", data)  # a longer run is the same run (the last --epochs counts)


def test_llm_resume_refuses_other_training_rows_and_names_changed_settings(tmp_path, data):
    command = ["llm", "train", "--data", data, *LLM_SMALL, "--out", tmp_path / "llm", "--resume"]
    invoke(*command)
    message = refused(*command[:-1], "--max-train-rows", "8", "--lr", "0.001", "--resume")
    assert "lr 0.0002 (now 0.001)" in message
    assert "training examples 16 rows, digest" in message and "(now 8 rows, digest" in message


# ----- 11: a catalogue is its raw ids and its titles --------------------------------------------------------------

def test_models_refuse_a_catalogue_with_the_same_ids_and_other_titles(tmp_path, data):
    from recalign.data import load_dataset

    other = retitled(load_dataset(data), tmp_path / "retitled")
    invoke("cf", "train", "--data", data, "--model", "sasrec", *CF_SMALL, "--out", tmp_path / "cf")
    expected = "same 12 raw ids but other titles: 12 differ, the first item 'i0' titled 't0' then, 'other t0' now"
    assert expected in refused("cf", "eval", "--data", other, "--model-dir", tmp_path / "cf")
    assert expected in refused("llm", "train", "--data", other, *LLM_SMALL, "--out", tmp_path / "tca", "--align",
                               "tca", "--cf", tmp_path / "cf")
    invoke("llm", "train", "--data", data, *LLM_SMALL, "--out", tmp_path / "llm")
    assert expected in refused("llm", "eval", "--data", other, "--model", tmp_path / "llm")


# ----- 12: damaged checkpoints and folders of another kind --------------------------------------------------------

def test_damaged_cf_files_and_an_llm_folder_get_messages_naming_the_file(tmp_path, data):
    out = tmp_path / "cf"
    command = ["cf", "train", "--data", data, "--model", "sasrec", *CF_SMALL, "--out", out, "--resume"]
    invoke(*command)
    state = out / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated by a full disk
    assert f"cannot resume from {state}: the file is unreadable" in refused(*command)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    assert f"{weights} is damaged or truncated" in refused("cf", "eval", "--data", data, "--model-dir", out)
    (out / "config.json").write_text("{not json")
    assert f"{out / 'config.json'} is damaged (not JSON" in refused("cf", "eval", "--data", data, "--model-dir", out)
    invoke("llm", "train", "--data", data, *LLM_SMALL, "--out", tmp_path / "llm")
    assert "is not a CF model's config (no model_type) (an LLM recommender's: use `recalign llm eval`)" in refused(
        "cf", "eval", "--data", data, "--model-dir", tmp_path / "llm")


def test_a_damaged_llm_checkpoint_is_named(tmp_path, data):
    command = ["llm", "train", "--data", data, *LLM_SMALL, "--out", tmp_path / "llm", "--resume"]
    invoke(*command)
    checkpoint = tmp_path / "llm" / "train" / "checkpoint"
    for path in checkpoint.iterdir():
        if path.suffix in (".bin", ".pkl", ".safetensors"):
            path.write_bytes(path.read_bytes()[:64])
    message = refused(*command)
    assert f"cannot resume from {checkpoint}: a checkpoint file is damaged or truncated" in message
    (checkpoint / "progress.json").write_text("{")
    assert f"cannot resume from {checkpoint / 'progress.json'}: the file is damaged" in refused(*command)


# ----- 4, 5, 6: data that would be corrupted, tracebacks, stale and oversized data --------------------------------

def prepared(format_name, folder, **options):
    from recalign.data.formats import PrepareOptions, prepare
    from recalign.data.sequences import SplitProtocol

    loose = SplitProtocol("loo", min_user_interactions=1, min_item_interactions=1)
    return prepare(format_name, folder, PrepareOptions(protocol=loose, **options))


def data_error(format_name, folder, **options) -> str:
    from recalign.data import DataError

    with pytest.raises(DataError) as caught:
        prepared(format_name, folder, **options)
    return str(caught.value)


def csv_source(folder, times: list, items=("a", "b", "c")):
    from tests.conftest import write_csv_source

    log = [(f"u{u}", item, time) for u in range(2) for item, time in zip(items, times)]
    return write_csv_source(folder, [(i, f"Item {i}", "B") for i in items], log)


@pytest.mark.parametrize("bad", ["inf", "1e30", str(2 ** 70), "-1e300"])
def test_csv_timestamps_beyond_int64_are_errors_naming_the_row(tmp_path, bad):
    message = data_error("csv", csv_source(tmp_path, [1, bad, 3]))
    assert "interactions.csv, row 2, field 'timestamp'" in message and "past the year 5000" in message


def test_millisecond_timestamps_are_read_as_milliseconds_and_counted_mixed_units_refused(tmp_path):
    dataset, repairs = prepared("csv", csv_source(tmp_path / "ms", [1600000000000, 1600000001000, 1600000002500]))
    assert dataset.interactions.column("timestamp").to_pylist()[:3] == [1600000000, 1600000001, 1600000002]
    assert repairs.count("millisecond_timestamps") == 6 and repairs.count("fractional_timestamp") == 2
    message = data_error("csv", csv_source(tmp_path / "mixed", [1600000000, 1600000001000, 1600000002]))
    assert "row 2, field 'timestamp'" in message and "mixing seconds and milliseconds" in message


@pytest.mark.parametrize("date", ["13/09/2020", "09/13/2020", "01/02/2020", "Sept 13 2020"])
def test_dates_whose_day_month_order_is_a_guess_are_refused(tmp_path, date):
    message = data_error("csv", csv_source(tmp_path, ["2020-09-12", date, "2020-09-14T10:00:00"]))
    assert "row 2, field 'timestamp'" in message and "ISO 8601" in message


def ml1m_source(folder, users=("1", "1", "2"), times=("10", "20", "30")):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Animation\n2::Heat (1995)::Action\n")
    (folder / "ratings.dat").write_text("".join(f"{u}::{1 + i % 2}::5::{t}\n" for i, (u, t) in
                                                enumerate(zip(users, times))))
    return folder


def test_movielens_user_ids_past_int64_stay_distinct_users(tmp_path):
    big = 2 ** 64
    dataset, _ = prepared("movielens", ml1m_source(tmp_path, users=(str(big), str(big), str(big + 1), str(big + 1))
                                                   , times=("10", "20", "10", "20")))
    assert dataset.counts()["users"] == 2
    assert "ratings.dat, row 2, field 'user_id'" in data_error("movielens", ml1m_source(
        tmp_path / "x", users=("1", "one", "2")))
    assert "ratings.dat, row 2, field 'timestamp'" in data_error("movielens", ml1m_source(
        tmp_path / "y", times=("10", "1e30", "30")))


def amazon18_source(folder, histories=("[1]", "[1, 2]"), targets=("2", "3"), times=("10", "20"), iids=("1", "2", "3")):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "item.csv").write_text("rawid,title,iid\n" + "".join(f"A{i},Item {i},{i}\n" for i in iids))
    rows = "".join(f'u{n},{t},"{h}",{s}\n' for n, (h, t, s) in enumerate(zip(histories, targets, times)))
    for split in ("train", "valid", "test"):
        (folder / f"{split}.csv").write_text("uid,iid,hist_id,timestamp\n" + rows)
    return folder


def test_amazon18_float_and_huge_numbers_are_errors_not_truncations(tmp_path):
    message = data_error("amazon18", amazon18_source(tmp_path / "a", histories=("[1]", "[1.9, 2]")))
    assert "train.csv, row 2, field 'hist_id': expected an integer, got '1.9'" in message
    message = data_error("amazon18", amazon18_source(tmp_path / "b", times=("10", "1e999")))
    assert "train.csv, row 2, field 'timestamp': expected an integer, got '1e999'" in message  # was OverflowError
    message = data_error("amazon18", amazon18_source(tmp_path / "c", times=("10", str(2 ** 70))))
    assert "train.csv, row 2, field 'timestamp'" in message and "past the year 5000" in message
    message = data_error("amazon18", amazon18_source(tmp_path / "d", histories=("[1]", "[" * 100_000 + "]" * 100_000)))
    assert "train.csv, row 2, field 'hist_id'" in message  # was RecursionError
    message = data_error("amazon18", amazon18_source(tmp_path / "e", iids=("1", "two", "3")))
    assert "item.csv, row 2, field 'iid': expected an integer, got 'two'" in message  # was invalid literal for int()
    dataset, _ = prepared("amazon18", amazon18_source(tmp_path / "f", histories=("[1]", "[1.0, 2]")))
    assert dataset.split("train").history.map(list).tolist() == [[0], [0, 1]]  # 1.0 is exactly 1


def minionerec_source(folder, items: str | None = None, index: str | None = None):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "X.item.json").write_text(items or json.dumps({str(i): {"title": f"Item {i}"} for i in range(3)}))
    (folder / "X.index.json").write_text(index or json.dumps({str(i): [f"<a_{i}>", "<b_0>"] for i in range(3)}))
    for split in ("valid", "test"):
        (folder / f"{split}.csv").write_text('user_id,history_item_id,item_id\nu0,"[0, 1]",2\nu1,"[2]",0\n')
    return folder


def test_minionerec_titles_and_sids_of_the_wrong_type(tmp_path):
    import json

    titled = {"0": {"title": None}, "1": {"title": 12345}, "2": {"title": "Item 2"}}
    message = data_error("minionerec", minionerec_source(tmp_path / "a", items=json.dumps(titled)))
    assert "X.item.json, field '1.title': title must be text, found int '12345'" in message
    titled["1"]["title"] = "Item 1"
    dataset, repairs = prepared("minionerec", minionerec_source(tmp_path / "b", items=json.dumps(titled)))
    assert dataset.titles[0] == "item 0" and repairs.count("empty_title") == 1  # null: a counted repair
    sids = {"0": "<a_0><b_0>", "1": ["<a_1>"], "2": ["<a_2>"]}
    message = data_error("minionerec", minionerec_source(tmp_path / "c", index=json.dumps(sids)))
    assert "X.index.json, field '0': a semantic ID must be a non-empty list of token strings" in message
    message = data_error("minionerec", minionerec_source(tmp_path / "d", items=json.dumps([{"title": "x"}])))
    assert "X.item.json: expected a JSON object keyed by item id, found a list" in message  # was AttributeError
    message = data_error("minionerec", minionerec_source(tmp_path / "e", items=json.dumps({"x1": {"title": "x"}})))
    assert "X.item.json, field 'x1': item keys must be integers" in message


def amazon_raw_source(folder, gzip_reviews: bytes | None = None, bom: bool = False):
    import json

    folder.mkdir(parents=True, exist_ok=True)
    reviews = "".join(json.dumps({"reviewerID": f"u{u}", "asin": f"A{i}", "unixReviewTime": 10 * i}) + "\n"
                      for u in range(2) for i in range(3))
    (folder / "meta_X.json").write_text("".join(json.dumps({"asin": f"A{i}", "title": f"Item {i}"}) + "\n"
                                                for i in range(3)))
    if gzip_reviews is not None:
        (folder / "X_5.json.gz").write_bytes(gzip_reviews)
    else:
        (folder / "X_5.json").write_text(("\ufeff" if bom else "") + reviews)
    return folder


def test_amazon_raw_keeps_the_first_review_after_a_bom_and_names_bad_gzip(tmp_path):
    import gzip

    dataset, repairs = prepared("amazon-raw", amazon_raw_source(tmp_path / "bom", bom=True))
    assert dataset.counts()["interactions"] == 6 and not repairs.count("malformed_line")
    message = data_error("amazon-raw", amazon_raw_source(tmp_path / "plain", gzip_reviews=b'{"asin": "A1"}\n'))
    assert "X_5.json.gz: not a readable gzip file" in message  # was BadGzipFile
    whole = gzip.compress(b"".join(b'{"reviewerID": "u%d", "asin": "A1", "unixReviewTime": 1}\n' % u
                                   for u in range(5000)))
    message = data_error("amazon-raw", amazon_raw_source(tmp_path / "cut", gzip_reviews=whole[:len(whole) // 2]))
    assert "X_5.json.gz: not a readable gzip file" in message and "truncated" in message  # was "Aborted."


def test_a_folder_named_like_a_file_and_an_out_that_is_a_file(tmp_path):
    folder = csv_source(tmp_path / "src", [1, 2, 3])
    (folder / "interactions.csv").unlink()
    (folder / "interactions.csv").mkdir()
    assert "interactions.csv: is a folder; a file was expected here" in data_error("csv", folder)
    good = csv_source(tmp_path / "good", [1, 2, 3])
    (tmp_path / "file").write_text("x")
    message = refused("data", "prepare", "-f", "csv", "--source", good, "--out", tmp_path / "file", "--min-item", "1",
                      "--min-user", "1")
    assert f"--out {tmp_path / 'file'} is a file" in message


def test_a_title_too_long_to_be_an_identifier_is_refused_at_prepare(tmp_path):
    from tests.conftest import write_csv_source

    folder = write_csv_source(tmp_path, [("a", "x" * 1_000_000, "B"), ("b", "Item b", "B")],
                              [("u", "a", 1), ("u", "b", 2)])
    message = data_error("csv", folder)
    assert "items.csv, row 1, field 'title': a title of 1,000,000 characters" in message and "at most 2,000" in message


def test_re_preparing_into_a_used_out_leaves_nothing_stale_and_changed_tables_are_caught(tmp_path):
    import pyarrow.parquet as pq

    from recalign.data import load_dataset

    out = tmp_path / "out"
    first, _ = prepared("csv", csv_source(tmp_path / "csv", [1, 2, 3]))
    first.save(out)
    second, _ = prepared("amazon18", amazon18_source(tmp_path / "a18"))  # ships examples only: no interactions
    second.save(out)
    loaded = load_dataset(out)
    assert loaded.interactions is None and loaded.content_hash() == second.content_hash()
    options = ["--min-item", "1", "--min-user", "1"]
    message = refused("data", "prepare", "-f", "csv", "--source", tmp_path / "csv", "--out", out, *options)
    assert "already holds the work of an earlier run (manifest.json): --overwrite replaces it" in message
    invoke("data", "prepare", "-f", "csv", "--source", tmp_path / "csv", "--out", out, *options, "--overwrite")
    pq.write_table(second.examples["test"], out / "examples" / "test.parquet")  # a table swapped in by hand
    with pytest.raises(ValueError, match="do not match the content hash in"):
        load_dataset(out)


# ----- 10: one `recalign run` per run folder -----------------------------------------------------------------------

def test_a_second_run_into_a_busy_run_folder_is_refused_naming_the_holder(tmp_path):
    import os

    from recalign.pipeline.run import run_dir_lock

    with run_dir_lock(tmp_path / "run"):
        message = refused("run", "demo", "--run-dir", tmp_path / "run")
    assert f"is in use by another `recalign run` (process {os.getpid()} on" in message
    assert not any(p.name.startswith("data-") for p in (tmp_path / "run").iterdir())  # no stage was started
    with run_dir_lock(tmp_path / "run"):  # released: the next run takes it
        pass


def test_llm_resume_with_another_adapter_size_and_a_damaged_stage1_checkpoint(tmp_path, data, monkeypatch):
    command = ["llm", "train", "--data", data, *LLM_SMALL, "--out", tmp_path / "llm", "--resume"]
    invoke(*command, "--finetune", "lora", "--lora-r", "4")
    message = refused(*command, "--finetune", "lora", "--lora-r", "8")
    assert "does not hold this model's trainable weights" in message and str(tmp_path / "llm") in message
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    invoke("cf", "train", "--data", data, "--model", "sasrec", *CF_SMALL, "--out", tmp_path / "cf")
    stage1 = ["allmrec", "stage1", "--data", data, "--cf", tmp_path / "cf", "--epochs", "1", "--out", tmp_path / "s1"]
    invoke(*stage1)
    (tmp_path / "s1" / "stage1_checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    assert f"cannot resume from {tmp_path / 's1' / 'stage1_checkpoint.pt'}: the file is unreadable" in refused(
        *stage1)
