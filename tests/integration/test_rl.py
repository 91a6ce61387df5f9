"""`recalign llm rl` on a tiny random recommender: groups are catalogue items, the first step's KL is 0 (the policy
starts as the reference), a resumed run ends with the weights of an uninterrupted one, the CLI writes its artefacts
and refuses a model of another catalogue."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
import torch
from tests.conftest import rule_dataset
from typer.testing import CliRunner

import recalign.align.rl as rl
from recalign.align.rl import RL_LOG, RL_LOG_COLUMNS, RLConfig, rl_prompts, rl_train
from recalign.cf import build_model
from recalign.cli import app
from recalign.data.dataset import Dataset, item_table
from recalign.llm.recommender import LLMRecommender, RecommenderConfig

runner = CliRunner()
SFT = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", prompt="tca4rec", domain="things",
                        max_history=4)
SETTINGS = dict(num_beams=4, batch_size=4, micro_batch_size=2, lr=1e-3, precision="fp32", seed=3, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    dataset = rule_dataset(n_users=4)
    folder = tmp_path_factory.mktemp("sft")
    LLMRecommender.create(dataset, SFT).save_pretrained(folder)
    dataset.save(folder.parent / "data")
    return folder


def load(sft_dir):
    dataset = rule_dataset(n_users=4)
    recommender = LLMRecommender.from_pretrained(sft_dir, dataset, device="cpu")
    return dataset, recommender


def trainable(recommender):
    return {n: p.detach().clone() for n, p in recommender.model.named_parameters() if p.requires_grad}


def test_groups_are_catalogue_items_and_the_first_kl_is_zero(sft_dir, tmp_path, monkeypatch):
    dataset, recommender = load(sft_dir)
    prompts, _ = rl_prompts(recommender, dataset, max_rows=8)
    seen = []
    real = rl.group_log_probs

    def recording(model, prompt_ids, groups, *args):
        seen.extend(groups)
        return real(model, prompt_ids, groups, *args)

    monkeypatch.setattr(rl, "group_log_probs", recording)
    result = rl_train(recommender, prompts, RLConfig(**SETTINGS, max_steps=2, reward="ranking+cf"), tmp_path,
                      cf_model=build_model("sasrec", dataset.n_items, max_len=4), progress=False)
    identifiers = {tuple(recommender.index.tokens(i)) for i in range(dataset.n_items)}
    assert seen and all(len(group) == 4 and len({tuple(c) for c in group}) == 4 for group in seen)
    assert all(tuple(c) in identifiers for group in seen for c in group)
    assert result.steps == 2 and result.log[0]["kl"] == 0.0  # a fresh adapter: the policy is the reference
    with open(tmp_path / RL_LOG) as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == RL_LOG_COLUMNS and len(rows) == 2 and float(rows[1]["kl"]) > 0


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(sft_dir, tmp_path, finetune):
    config = RLConfig(**SETTINGS, finetune=finetune, sync_ref_every=1 if finetune == "full" else 0, beta=0.5)
    dataset, whole = load(sft_dir)
    prompts, _ = rl_prompts(whole, dataset, max_rows=12)
    uninterrupted = rl_train(whole, prompts, config, tmp_path / "a", progress=False)
    _, first = load(sft_dir)
    rl_train(first, prompts, RLConfig(**{**config.__dict__, "max_steps": 2}), tmp_path / "b", progress=False)
    _, resumed = load(sft_dir)
    result = rl_train(resumed, prompts, config, tmp_path / "b", resume=True, progress=False)
    assert result.steps == uninterrupted.steps == 3
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in result.log] == \
        [{k: v for k, v in r.items() if k not in drop} for r in uninterrupted.log]
    a, b = trainable(whole), trainable(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ValueError, match="beta"):
        rl_train(load(sft_dir)[1], prompts, RLConfig(**{**config.__dict__, "beta": 0.1}), tmp_path / "b",
                 resume=True, progress=False)


def test_cli_trains_saves_and_refuses_another_catalogue(sft_dir, tmp_path):
    data = sft_dir.parent / "data"
    out = tmp_path / "rl"
    done = runner.invoke(app, ["llm", "rl", "--model", str(sft_dir), "--data", str(data), "--out", str(out),
                               "--beams", "3", "--batch-size", "2", "--micro-batch-size", "1", "--max-steps", "1",
                               "--precision", "fp32", "--eval-rows", "2", "--threads", "1"])
    assert done.exit_code == 0, done.output
    record = json.loads((out / "rl.json").read_text())
    assert record["steps"] == 1 and "HR@1" in record["eval"]["metrics"]
    assert (out / "train" / RL_LOG).exists()
    again = runner.invoke(app, ["llm", "rl", "--model", str(sft_dir), "--data", str(data), "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output

    other = rule_dataset(n_users=4)
    items = pd.DataFrame({"raw_id": [f"x{i}" for i in range(other.n_items)], "title": other.titles})
    Dataset(item_table(items), {s: other.table(s) for s in ("train", "valid", "test")}).save(tmp_path / "other")
    refused = runner.invoke(app, ["llm", "rl", "--model", str(sft_dir), "--data", str(tmp_path / "other"),
                                  "--out", str(tmp_path / "x"), "--precision", "fp32"])
    assert refused.exit_code != 0 and "catalogue" in refused.output.lower()
    assert not (tmp_path / "x" / "rl.json").exists()


def test_reference_sync_is_trls_moving_average():
    policy, reference = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.6 * p.detach() + 0.4 * r.detach() for p, r in zip(policy.parameters(), reference.parameters())]
    rl._sync_reference(reference, policy, 0.6)
    assert all(torch.allclose(r, e) for r, e in zip(reference.parameters(), expected))


def test_an_rl_stage_in_a_recipe_post_trains_the_llm_and_is_reported(tmp_path):
    from tests.integration.test_pipeline import SMALL, write

    recipe = {**SMALL, "rl": {"train": {"num_beams": 3, "batch_size": 2, "micro_batch_size": 1, "max_steps": 2,
                                        "precision": "fp32", "reward": "ranking+cf"}, "max_train_rows": 4}}
    done = runner.invoke(app, ["run", str(write(tmp_path, recipe)), "--run-dir", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    assert "stages run: data, cf, llm, rl, eval" in done.output
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    results = json.loads((tmp_path / "run" / stages["eval"] / "results.json").read_text())
    assert "llm (tiny) + rl (ranking+cf)" in results["models"]
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## RL post-training" in report and "ranking+cf: 2 steps" in report
    assert (tmp_path / "run" / "report" / "rl.png").stat().st_size > 1000


def test_the_reference_target_lookup_flag_gives_every_same_prompt_the_last_rows_target(sft_dir):
    from recalign.data.sequences import examples_from_lists

    _, recommender = load(sft_dir)
    rows = [([1, 2], 3), ([1, 2], 4), ([5, 6], 7), ([1, 2], 8)]
    train = examples_from_lists(list(range(4)), [str(u) for u in range(4)], [h for h, _ in rows],
                                [t for _, t in rows], [0] * 4)
    base = rule_dataset(n_users=4)
    dataset = Dataset(base.items, {"train": train, "valid": base.table("valid"), "test": base.table("test")})
    own, changed = rl_prompts(recommender, dataset)
    assert [p.target for p in own] == [3, 4, 7, 8] and changed == 0
    last, changed = rl_prompts(recommender, dataset, reference_target_lookup=True)
    assert [p.target for p in last] == [8, 8, 7, 8] and changed == 2


def test_a_lora_policy_shares_the_models_weights_with_its_reference(sft_dir):
    _, recommender = load(sft_dir)
    before = {n: p.data_ptr() for n, p in recommender.model.named_parameters()}
    policy, reference, frozen = rl.policy_and_reference(recommender.model, RLConfig(finetune="lora"))
    after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p.data_ptr()
             for n, p in policy.named_parameters() if "lora_" not in n}
    assert frozen is None and after == before  # the base weights are the reference's: no second copy
    assert all("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
