"""Item identifiers as token sequences (titles now, semantic IDs later) stored as one flat trie type."""

from .trie import IndexReport, ItemIndex

__all__ = ["IndexReport", "ItemIndex"]
