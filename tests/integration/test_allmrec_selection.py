"""A-LLMRec stage 2 trained in validation rounds (``allmrec stage2 --select-every``): the model kept in --out is
the best round's, patience stops at the right round, a resumed run judges no finished round again, and settings
that cannot be honoured are refused before training. Tiny random LLM, fp32, the rule dataset."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.conftest import rule_dataset

from recalign.align import allmrec_llm
from recalign.align.allmrec_llm import (
    PromptWords,
    Stage2Selection,
    create_stage2,
    evaluate_candidates,
    load_stage2,
    train_stage2,
)
from recalign.cf import build_model
from recalign.llm.backbones import LoraSettings
from recalign.llm.recommender import RecommenderConfig
from recalign.llm.rounds import Patience
from recalign.llm.train import SFTConfig

SFT = SFTConfig(epochs=1, batch_size=4, micro_batch_size=4, lr=1e-2, warmup_steps=0, precision="fp32",
                weight_decay=0.0, seed=0)
ROWS, CANDIDATES = 12, 5


def stage2_recommender(dataset, soft: bool = True):
    """A fresh stage-2 recommender: A-LLMRec's projectors over a random CF model and joint embeddings, or the
    LoRA-tuned prompt-only baseline."""
    torch.manual_seed(0)
    cf = build_model("sasrec", dataset.n_items, hidden=8, max_len=6).attach_catalogue(dataset)
    joint = torch.rand(dataset.n_items, 4, generator=torch.Generator().manual_seed(1)).numpy() if soft else None
    config = RecommenderConfig(backbone="tiny", precision="fp32", finetune="frozen" if soft else "lora",
                               lora=LoraSettings(r=4, alpha=8), max_history=3)
    return create_stage2(dataset, cf, joint, config)


def trained_weights(recommender) -> dict[str, torch.Tensor]:
    """What stage 2 trains: the projectors (A-LLMRec) or the LoRA adapter (the baseline)."""
    hook = recommender.embedding_hook
    weights = {f"llm.{name}": p for name, p in recommender.model.named_parameters() if "lora_" in name}
    if hook is not None:
        weights.update({f"hook.{name}": p for name, p in hook.named_parameters() if not name.startswith("cf_model.")})
    return {name: p.detach().clone() for name, p in weights.items()}


def train(recommender, dataset, out, selection, resume=False, max_rows=16):
    return train_stage2(recommender, dataset, SFT, out, PromptWords(), CANDIDATES, max_rows=max_rows, resume=resume,
                        progress=False, selection=selection, log=lambda _: None)


class Interrupted(Exception):
    pass


def scripted_judge(monkeypatch, scores, recommender=None, fail_at=None):
    """Replaces the validation Hit@1 by ``scores`` in turn (the judge's calls are counted; each judged model's
    trained weights are kept); ``fail_at``: the call that raises instead, as an interruption would."""
    calls = {"n": 0, "weights": []}

    def judge(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise Interrupted
        if recommender is not None:
            calls["weights"].append(trained_weights(recommender))
        return {"groups": {"all": {"Hit@1": scores[calls["n"] - 1]}}}

    monkeypatch.setattr(allmrec_llm, "evaluate_candidates", judge)
    return calls


@pytest.mark.parametrize("soft", [True, False], ids=["A-LLMRec projectors", "LoRA adapter"])
def test_the_kept_model_is_the_best_rounds_not_the_last(tmp_path, monkeypatch, soft):
    dataset = rule_dataset(with_valid=True)
    recommender = stage2_recommender(dataset, soft)
    calls = scripted_judge(monkeypatch, [0.2, 0.5, 0.3, 0.4], recommender)
    train(recommender, dataset, tmp_path, Stage2Selection(every=1, rows=ROWS))
    rounds = json.loads((tmp_path / "selection.json").read_text())
    assert [(r["step"], r["Hit@1"], r["kept"]) for r in rounds] == [(1, 0.2, True), (2, 0.5, True), (3, 0.3, False),
                                                                      (4, 0.4, False)]
    assert all(r["seconds"] > 0 for r in rounds) and rounds[-1]["seconds"] >= rounds[0]["seconds"]
    saved, record = load_stage2(tmp_path, dataset)
    assert record["selection"]["every"] == 1 and record["variant"] == allmrec_llm.variant(soft, "frozen" if soft
                                                                                          else "lora")
    best, last = calls["weights"][1], calls["weights"][3]
    if soft:
        kept = trained_weights(saved)
        assert kept.keys() == best.keys() and kept
        assert all(torch.equal(kept[k], best[k]) for k in kept)  # round 2's projectors, bit for bit
        assert not all(torch.equal(kept[k], last[k]) for k in kept)  # not the last round's
    else:  # the LoRA baseline is saved merged into the tiny model: compare with round 2's adapter merged
        kept = saved.model.state_dict()
        for weights, same in ((best, True), (last, False)):
            merged = merged_with(recommender, weights)
            assert kept.keys() == merged.keys()
            assert all(torch.allclose(kept[k], merged[k]) for k in kept) == same


def merged_with(recommender, weights) -> dict[str, torch.Tensor]:
    """The state of the LoRA-tuned model with ``weights`` as its adapter, merged into the base model."""
    model = copy.deepcopy(recommender.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(weights[f"llm.{name}"])
    return model.merge_and_unload().state_dict()


def test_the_kept_model_scores_the_best_recorded_validation_hit_rate(tmp_path):
    dataset = rule_dataset(with_valid=True)
    rows = dataset.table("valid").num_rows
    # the LoRA baseline at a high rate: its validation Hit@1 falls after the first round (the tiny LLM's picks do
    # not move with A-LLMRec's projectors), so keeping the last model would score below the best round
    sft = replace(SFT, lr=0.03)
    train_stage2(stage2_recommender(dataset, soft=False), dataset, sft, tmp_path, PromptWords(), CANDIDATES,
                 max_rows=40, progress=False, selection=Stage2Selection(every=2, rows=rows), log=lambda _: None)
    rounds = json.loads((tmp_path / "selection.json").read_text())
    assert [r["step"] for r in rounds] == [2, 4, 6, 8, 10]
    best = max(r["Hit@1"] for r in rounds)
    assert rounds[-1]["Hit@1"] < best, f"the last round is the best here, the test cannot tell them apart: {rounds}"
    saved, record = load_stage2(tmp_path, dataset)
    again = evaluate_candidates(dataset, "valid", "sampled", CANDIDATES, sft.seed, rows, saved, record,
                                progress=False)
    assert again["groups"]["all"]["Hit@1"] == best and again["groups"]["all"]["rows"] == rows


def test_patience_stops_after_that_many_rounds_without_a_gain_above_min_delta(tmp_path, monkeypatch):
    # 0.1005 and 0.3009 gain less than 0.001 over the best so far (0.1, then 0.3): no gain, as Lightning counts
    scores = [0.1, 0.1005, 0.3, 0.3009, 0.2, 0.9]
    rule = Patience(rounds=2, min_delta=0.001)
    assert [rule.stale_rounds(scores[:n]) for n in range(1, 7)] == [0, 1, 0, 1, 2, 0]
    assert rule.stops(scores[:5]) and not rule.stops(scores[:4]) and not Patience(0).stops(scores[:5])
    dataset = rule_dataset(with_valid=True)
    recommender = stage2_recommender(dataset)
    calls = scripted_judge(monkeypatch, scores)
    train(recommender, dataset, tmp_path, Stage2Selection(every=1, rows=ROWS, patience=2), max_rows=24)
    rounds = json.loads((tmp_path / "selection.json").read_text())
    assert [r["step"] for r in rounds] == [1, 2, 3, 4, 5] and calls["n"] == 5  # round 6 (0.9) never trained
    assert [r["kept"] for r in rounds] == [True, True, True, True, False]
    progress = json.loads((tmp_path / "train" / "checkpoint" / "progress.json").read_text())
    assert progress["state"]["global_step"] == 5  # of 6: stopped, not trained on


def test_a_resumed_run_judges_no_finished_round_again(tmp_path, monkeypatch):
    dataset = rule_dataset(with_valid=True)
    selection = Stage2Selection(every=1, rows=ROWS, patience=3)
    calls = scripted_judge(monkeypatch, [0.2, 0.4, 0.3, 0.1], fail_at=3)
    with pytest.raises(Interrupted):  # interrupted while judging round 3
        train(stage2_recommender(dataset), dataset, tmp_path, selection)
    assert calls["n"] == 3 and [r["step"] for r in json.loads((tmp_path / "selection.json").read_text())] == [1, 2]
    assert not (tmp_path / "allmrec.json").exists()  # written last: the run is unfinished
    resumed = scripted_judge(monkeypatch, [0.3, 0.1])
    train(stage2_recommender(dataset), dataset, tmp_path, selection, resume=True)
    rounds = json.loads((tmp_path / "selection.json").read_text())
    assert resumed["n"] == 2 and [(r["step"], r["Hit@1"]) for r in rounds] == [(1, 0.2), (2, 0.4), (3, 0.3),
                                                                                 (4, 0.1)]
    finished = scripted_judge(monkeypatch, [])
    train(stage2_recommender(dataset), dataset, tmp_path, selection, resume=True)
    assert finished["n"] == 0 and json.loads((tmp_path / "selection.json").read_text()) == rounds
    assert json.loads((tmp_path / "allmrec.json").read_text())["selection"]["patience"] == 3


def test_selection_settings_that_cannot_be_honoured_are_refused():
    with_valid, without_valid = rule_dataset(with_valid=True), rule_dataset()
    valid_rows = with_valid.table("valid").num_rows
    Stage2Selection().check(without_valid, trains=False)  # off: nothing to check
    Stage2Selection(every=5, rows=valid_rows).check(with_valid, trains=True)
    for selection, dataset, trains, message in (
            (Stage2Selection(every=5), without_valid, True, "no valid rows"),
            (Stage2Selection(every=5, rows=0), with_valid, True, "at least 1"),
            (Stage2Selection(every=5, rows=valid_rows + 1), with_valid, True, f"only {valid_rows} rows"),
            (Stage2Selection(every=5, rows=4), with_valid, False, "zero-shot"),
            (Stage2Selection(patience=2), with_valid, True, "needs --select-every"),
            (Stage2Selection(every=-1), with_valid, True, "0 \\(off\\)"),
            (Stage2Selection(every=5, rows=4, patience=-1), with_valid, True, "cannot be negative")):
        with pytest.raises(ValueError, match=message):
            selection.check(dataset, trains)


def test_hits_table_pairs_rows_and_summarises_to_the_groups():
    dataset = rule_dataset(with_valid=True)
    cf = build_model("sasrec", dataset.n_items, hidden=8, max_len=6).attach_catalogue(dataset)
    table = allmrec_llm.candidate_hits(dataset, "test", "sampled", CANDIDATES, 0, 20, cf_model=cf, progress=False)
    assert table["row"].tolist() == list(range(20))
    assert table["target"].tolist() == dataset.split("test")["target"].iloc[:20].tolist()
    summary = allmrec_llm.hit_summary(table, "sampled", "test", CANDIDATES, 0)
    for name, entry in summary["groups"].items():
        mask = np.ones(20, dtype=bool) if name == "all" else table[name].to_numpy()
        assert entry["rows"] == mask.sum() and entry["Hit@1"] == pytest.approx(table["hit"][mask].mean(), nan_ok=True)
    assert set(summary["groups"]) == {"all", "warm items", "cold items", "cold users"}


def test_a_stage_2_with_no_training_rows_is_refused_not_saved_untrained(tmp_path):
    dataset = rule_dataset(with_valid=True)
    for selection in (Stage2Selection(), Stage2Selection(every=1, rows=ROWS)):
        with pytest.raises(ValueError, match="no training examples"):
            train(stage2_recommender(dataset), dataset, tmp_path, selection, max_rows=0)
        assert not (tmp_path / "allmrec.json").exists()
