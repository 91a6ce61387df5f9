"""Alignment of the LLM recommender with collaborative signals.

``recalign.align.tca``: TCA4Rec (token-level collaborative alignment, Lin et al., WWW 2026). A frozen CF model's
item softmax, factorised over the item index's trie into next-token distributions (the Collaborative
Tokenizer), is mixed into the SFT labels (Soft Label Alignment) through the training loop's loss hook.

``recalign.align.features``: CF features as soft tokens (TCA4Rec's ``--use_feature``, CoLLM/LLaRA style): a frozen
CF model's user and item embeddings, projected by MLPs, written into the LLM's input embeddings at ``[UserEmb]`` /
``[ItemEmb]`` placeholders through the training loop's and the beam search's embedding hook.

``recalign.align.grpo`` and ``recalign.align.rl``: RL post-training (MiniOneRec's second stage, reused by TS-Rec):
GRPO whose groups are each prompt's constrained beams, with the reference's ranking reward or a CF model's
judgement of each beam (collaborative alignment through RL). It lives here rather than in ``llm`` because it needs
the beam search (``decode``) and CF models (``cf``), which this package may import and ``llm`` may not.
"""
