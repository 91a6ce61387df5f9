"""Evaluation sharded over two CPU processes (`accelerate launch --cpu --num_processes 2`) gives exactly the
metrics, intervals and per-row results of one process."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from tests.conftest import cpu_launch, rule_dataset

from recalign.decode import BeamConfig
from recalign.decode.recommend import evaluate_llm
from recalign.llm.recommender import LLMRecommender, RecommenderConfig
from recalign.llm.train import SFTConfig, sft_train


@pytest.mark.slow
def test_two_processes_give_exactly_one_process_metrics(tmp_path):
    dataset = rule_dataset(n_users=40)
    data, model = tmp_path / "data", tmp_path / "model"
    dataset.save(data)
    torch.manual_seed(0)
    recommender = LLMRecommender.create(dataset, RecommenderConfig(backbone="tiny", precision="fp32",
                                                                   finetune="full"))
    # a little training, so that the targets land at various ranks
    sft_train(recommender.model, recommender.examples(dataset, "train"),
              SFTConfig(epochs=1, batch_size=16, micro_batch_size=16, lr=3e-3, warmup_steps=2, precision="fp32"),
              tmp_path / "train", progress=False, pad_id=recommender.pad_id)
    recommender.save_pretrained(model)
    # 37 rows in batches of 4: ten batches, split 5 / 5, the last one short
    single = evaluate_llm(LLMRecommender.from_pretrained(model, dataset), dataset, "test", (1, 5),
                          BeamConfig(num_beams=5, batch_size=4), max_rows=37, progress=False)
    assert len(set(single.item_ranks.tolist())) > 2  # targets at several ranks: the comparison has teeth

    command, env = cpu_launch("-m", "recalign.cli", "llm", "eval", "--data", data, "--model", model, "--k", "1,5",
                              "--beams", "5", "--batch-size", "4", "--max-rows", "37", "--threads", "1", "--json",
                              tmp_path=tmp_path)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded, end = json.JSONDecoder().raw_decode(done.stdout, done.stdout.index("{"))
    assert not done.stdout[end:].strip(), done.stdout[end:]  # one process prints
    assert sharded["n_examples"] == 37 and sharded["processes"] == 2
    assert sharded["metrics"] == single.metrics
    assert sharded["ci95"] == single.ci95
    assert sharded["identifier_metrics"] == single.identifier_metrics
