"""``recalign demo``: the main job on the embedded default catalogue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cf import train_cf
from .common import console, evaluate_scorers, make_protocol, metrics_table
from .data import data_synth, prepare_and_save


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's artefacts.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic catalogue and of training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Most SASRec epochs (early stopping usually ends sooner).")] = 40,
    llm_backbone: Annotated[str, typer.Option(help="Backbone of the LLM recommender ('none' skips it).")] =
        "smollm2-135m",
    llm_rows: Annotated[int, typer.Option(help="Training rows of the LLM recommender (one epoch, LoRA).")] = 384,
    llm_eval_rows: Annotated[int, typer.Option(help="Test rows the LLM recommender decodes.")] = 100,
) -> None:
    """Synthesise a catalogue, prepare it, train SASRec and an LLM recommender, and compare them with the
    baselines on the test split."""
    from ..data.formats import PrepareOptions
    from ..eval.baselines import make_baseline

    raw, prepared = out / "raw", out / "data"
    data_synth(out=raw, seed=seed)
    prepare_and_save("csv", raw, prepared, PrepareOptions())
    dataset, sasrec = train_cf(prepared, "sasrec", out / "sasrec",
                               train_options=dict(epochs=epochs, patience=3, seed=seed))
    scorers = {name: make_baseline(name, dataset, seed) for name in ("popularity", "random", "markov")}
    ks = (1, 5, 10, 20)
    results = evaluate_scorers(dataset, {**scorers, "sasrec": sasrec}, "test", ks, make_protocol("full", False, 19, 0))
    console.print(metrics_table(f"{prepared} (test, full ranking, ± = 95% interval)", results["models"], ks))
    if llm_backbone != "none":
        results["llm"] = demo_llm(dataset, {**scorers, "sasrec": sasrec}, out, llm_backbone, llm_rows,
                                  llm_eval_rows, seed)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results written to {out / 'results.json'}")


def demo_llm(dataset, scorers: dict, out: Path, backbone: str, rows: int, eval_rows: int, seed: int) -> dict:
    """A LoRA-tuned LLM recommender, compared with the other models on the same first ``eval_rows`` test rows."""
    import numpy as np

    from ..decode import BeamConfig
    from ..decode.recommend import evaluate_llm
    from ..eval.metrics import confidence_95, ranking_metrics
    from ..eval.protocols import full_ranking_ranks, split_histories
    from ..llm.recommender import LLMRecommender, RecommenderConfig
    from ..llm.train import SFTConfig, sft_train

    recommender = LLMRecommender.create(dataset, RecommenderConfig(backbone=backbone, domain="products", seed=seed))
    examples = recommender.examples(dataset, "train", rows)
    config = SFTConfig(epochs=1, batch_size=8, micro_batch_size=4, lr=5e-4, warmup_steps=4, seed=seed)
    result = sft_train(recommender.model, examples, config, out / "llm" / "train", pad_id=recommender.pad_id)
    recommender.save_pretrained(out / "llm")
    trained = LLMRecommender.from_pretrained(out / "llm", dataset)
    ks = (1, 5, 10)
    llm = evaluate_llm(trained, dataset, "test", ks, BeamConfig(num_beams=10), eval_rows)
    histories = split_histories(*dataset.histories("test"))[:eval_rows]
    targets = dataset.table("test").column("target").to_numpy()[:eval_rows].astype(np.int64)
    models = {}
    for name, scorer in scorers.items():
        ranks = full_ranking_ranks(scorer, histories, targets, False)
        models[name] = {"metrics": ranking_metrics(ranks, ks), "ci95": confidence_95(ranks, ks)}
    models[f"llm ({backbone})"] = {"metrics": llm.metrics, "ci95": llm.ci95}
    console.print(metrics_table(f"LLM recommender ({backbone} + LoRA, {len(examples)} training rows, "
                                f"{result.tokens_per_second:,.0f} tokens/s) on the first {llm.n_examples} test rows "
                                f"({llm.users_per_second:.2f} users/s, 10 beams)", models, ks))
    return {"n_examples": llm.n_examples, "models": models, "tokens_per_second": result.tokens_per_second,
            "users_per_second": llm.users_per_second}
