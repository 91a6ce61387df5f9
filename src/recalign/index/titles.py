"""Title identifiers: each item's title tokenised on its own, without special tokens, then EOS."""

from __future__ import annotations

from .trie import ItemIndex


def title_index(titles: list[str], tokenizer, batch_size: int = 4096) -> ItemIndex:
    """The index of ``titles`` (item id = position) under ``tokenizer``.

    Titles that do not decode back to themselves are counted, not repaired: decoding never decides which item a
    generated sequence is (its leaf does), so they stay reachable.
    """
    sequences: list[list[int]] = []
    for start in range(0, len(titles), batch_size):
        sequences += tokenizer(titles[start:start + batch_size], add_special_tokens=False)["input_ids"]
    mismatches = sum(tokenizer.decode(seq) != title for seq, title in zip(sequences, titles))
    meta = {"tokenizer": getattr(tokenizer, "name_or_path", ""), "roundtrip_mismatches": mismatches}
    return ItemIndex.from_sequences(sequences, tokenizer.eos_token_id, kind="title", meta=meta)
