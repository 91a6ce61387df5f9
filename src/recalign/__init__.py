"""recalign: LLM-based generative recommendation aligned with collaborative and semantic signals."""

__version__ = "0.1.0"
