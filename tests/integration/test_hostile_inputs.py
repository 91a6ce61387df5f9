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
