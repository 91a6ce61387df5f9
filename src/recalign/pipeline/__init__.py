"""Recipes and ``recalign run``: one YAML file declares the data, the CF model, the LLM recommender, its
alignment and the evaluation; the run executes the stages in order, each in a folder keyed by the hash of the
settings that produced it (its own and its inputs'), skips stages already finished with the same settings and
resumes an interrupted one from its checkpoints."""

from .recipe import Recipe, RecipeError, load_recipe, named_data, packaged_recipes, with_local_data
from .run import StageOutcome, run_recipe, stage_keys

__all__ = ["Recipe", "RecipeError", "StageOutcome", "load_recipe", "named_data", "packaged_recipes", "run_recipe",
           "stage_keys", "with_local_data"]
