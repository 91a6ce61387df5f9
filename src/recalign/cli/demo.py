"""``recalign demo``: the main job, the packaged ``demo`` recipe, on the embedded synthetic catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import PrecisionOption, ThreadsOption
from .run import run_recipe_and_report


def demo(
    out: Annotated[Path, typer.Option(help="Folder of the demo run.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic catalogue and of training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Most SASRec epochs (early stopping usually ends sooner).")] = 40,
    llm_backbone: Annotated[str, typer.Option(help="Backbone of the LLM recommender ('none' skips it).")] =
        "smollm2-135m",
    llm_rows: Annotated[int, typer.Option(help="Training rows of the LLM recommender (one epoch, LoRA).")] = 384,
    eval_rows: Annotated[int, typer.Option(help="Test rows every model is evaluated on.")] = 100,
    precision: PrecisionOption = "auto",
    threads: ThreadsOption = None,
) -> None:
    """Synthesise a catalogue, prepare it, train SASRec and an LLM recommender, and compare them with the
    baselines on the same test rows (`recalign run demo` with these settings)."""
    overrides = [f"data.synth.seed={seed}", f"cf.train.seed={seed}", f"cf.train.epochs={epochs}",
                 f"eval.rows={eval_rows}"]
    if llm_backbone == "none":
        overrides.append("llm=null")
    else:
        overrides += [f"llm.recommender.backbone={llm_backbone}", f"llm.recommender.seed={seed}",
                      f"llm.train.seed={seed}", f"llm.max_train_rows={llm_rows}",
                      f"llm.recommender.precision={precision}", f"llm.train.precision={precision}"]
    run_recipe_and_report("demo", out, overrides, threads)
