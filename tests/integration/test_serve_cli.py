"""`recalign serve`'s options reach the app: --max-history (the 200-item limit, settable) and --precision."""

from __future__ import annotations

import uvicorn
from fastapi.testclient import TestClient
from tests.conftest import rule_dataset
from typer.testing import CliRunner

from recalign.cli import app
from recalign.llm.recommender import LLMRecommender, RecommenderConfig


def test_serve_takes_max_history_and_precision(tmp_path, monkeypatch):
    LLMRecommender.create(rule_dataset(), RecommenderConfig(backbone="tiny", precision="fp32", finetune="full")) \
        .save_pretrained(tmp_path / "model")
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda served, **kwargs: started.update(app=served, **kwargs))
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "model"), "--max-history", "3",
                                      "--precision", "fp32", "--beams", "3"])
    assert result.exit_code == 0, result.output
    with TestClient(started["app"]) as client:
        assert client.post("/recommend", json={"history": [1, 2, 3]}).status_code == 200
        refused = client.post("/recommend", json={"history": [1, 2, 3, 4]})
        assert refused.status_code == 422 and "at most 3" in refused.text
    bad = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "model"), "--precision", "fp16"])
    assert bad.exit_code == 1 and "unknown precision 'fp16'" in bad.output
