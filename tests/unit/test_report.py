"""The report's tables and plots: bold only for a best value whose interval clears the others', intervals
clipped to [0, 1], a note for a model with no hit, the overrides and the resolved precision recorded, and a note
when the CF model stopped at its epoch cap while still improving."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recalign.report.report import (
    best_clear_of_others,
    clipped_errors,
    metrics_markdown,
    settings_lines,
    training_curves,
    zero_notes,
)


def model(hr: float, ci: float) -> dict:
    return {"metrics": {"HR@1": hr, "NDCG@1": hr, "MRR@1": hr}, "ci95": {"HR@1": ci, "NDCG@1": ci, "MRR@1": ci}}


def test_bold_only_where_the_best_interval_clears_every_other():
    assert best_clear_of_others([0.30, 0.10, 0.0], [0.05, 0.05, 0.0]) == 0
    assert best_clear_of_others([0.30, 0.22, 0.0], [0.05, 0.05, 0.0]) is None  # 0.25 vs 0.27: overlap
    assert best_clear_of_others([0.5], [0.1]) is None
    table = metrics_markdown({"a": model(0.30, 0.05), "b": model(0.22, 0.05)}, (1,))
    assert "**" not in table
    table = metrics_markdown({"a": model(0.30, 0.05), "b": model(0.10, 0.05)}, (1,))
    assert "| HR@1 | **0.3000** ±0.0500 | 0.1000 ±0.0500 |" in table


def test_intervals_are_clipped_to_the_unit_range():
    errors = clipped_errors(np.array([0.01, 0.5, 0.99]), np.array([0.0196, 0.1, 0.05]))
    np.testing.assert_allclose(errors, [[0.01, 0.1, 0.05], [0.0196, 0.1, 0.01]])


def test_a_model_without_hits_is_named():
    assert zero_notes({"a": model(0.3, 0.1), "random": model(0.0, 0.0)}, (1,))[0].endswith(": random.")
    assert zero_notes({"a": model(0.3, 0.1)}, (1,)) == []


def test_overrides_and_the_resolved_precision_are_recorded():
    stages = {"data": {"settings": {}}, "llm": {"settings": {"train": {"precision": "auto"}},
                                                 "outcome": {"precision": {"weights": "fp32", "training": "fp32"}}}}
    lines = settings_lines({"overrides": ["llm.train.lr=1e-3"]}, stages)
    assert lines[0] == "Overrides (`--set`): `llm.train.lr=1e-3`."
    assert lines[1].startswith("Precision of the llm stage: weights fp32, training fp32 (resolved from `auto`")
    assert settings_lines({}, {})[0] == "Overrides (`--set`): none."


def test_a_cf_model_stopped_at_its_cap_while_improving_gets_a_note(tmp_path):
    cf = tmp_path / "cf"
    cf.mkdir()
    for ndcg, expect_note in (([0.1, 0.2, 0.3], True), ([0.1, 0.3, 0.2], False)):
        pd.DataFrame({"epoch": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "valid_NDCG@10": ndcg}).to_csv(
            cf / "train_log.csv", index=False)
        lines = training_curves({"cf": cf}, {"cf": {"settings": {"train": {"epochs": 3}}}}, tmp_path / "t.png")
        assert any("epoch cap (3)" in line for line in lines) == expect_note
        lines = training_curves({"cf": cf}, {"cf": {"settings": {"train": {"epochs": 10}}}}, tmp_path / "t.png")
        assert not any("epoch cap" in line for line in lines)  # early stopping ended it, not the cap
