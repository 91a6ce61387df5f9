"""Reports of a run: a markdown page with the metric tables of every model side by side, training curves and the
agreement between the LLM recommender and the CF model, as PNG plots. ``recalign report RUN_DIR`` writes it;
``recalign run`` writes it at the end of every run."""

from .report import write_report

__all__ = ["write_report"]
