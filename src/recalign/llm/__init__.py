"""LLM recommender: backbones, prompts, the SFT loop and the saved recommender."""
