"""Bad input: errors that name the place, and repairs that are counted rather than silent.

Every loader reports a problem in one of two ways. A problem it cannot fix without guessing raises
:class:`DataError`, naming the file, the row (1-based line of the file, header included, for text files)
and the field. A problem with a documented repair goes through :class:`Repairs`, which counts it, keeps
the first few places it happened, and ends up in the prepare summary and the dataset manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# What each repair does, for the summary and the manifest. A repair not listed here is a bug.
REPAIR_DESCRIPTIONS = {
    "empty_title": "item with an empty (or JSON null) title: title set to 'item <raw id>'",
    "empty_history": "example with an empty history: example removed",
    "duplicate_interaction": "interaction repeated with the same user, item and timestamp: copy removed",
    "malformed_line": "line that is not valid JSON (or lacks a required field): line skipped",
    "undecodable_bytes": "line with bytes invalid in the file's encoding: bytes replaced by U+FFFD",
    "unknown_item": "item id absent from the item table (with --unknown-items drop): id removed",
    "item_without_title": "item with no metadata title: its interactions removed",
    "description_not_a_list": "description written as a list literal that does not parse: brackets and quotes "
    "stripped, text kept",
    "missing_timestamp": "interaction without a usable timestamp: timestamp set to -1 (unknown), file order kept",
    "duplicate_metadata": "second metadata row for an item already described: the first row kept, this one skipped",
    "millisecond_timestamps": "a timestamp column every value of which lies past the year 5000 as seconds and "
    "before it as milliseconds: read as milliseconds",
    "fractional_timestamp": "timestamp with a fraction of a second: the fraction dropped (equal seconds keep file "
    "order)",
}

EXAMPLES_KEPT = 5


class DataError(ValueError):
    """Input the loader refuses: says which file, which row and which field, and what was expected."""

    def __init__(self, file: str | Path, message: str, row: int | None = None, field: str | None = None):
        self.file, self.row, self.field = str(file), row, field
        where = self.file
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


@dataclass
class Repair:
    count: int = 0
    examples: list[str] = field(default_factory=list)


class Repairs:
    """Counts each kind of repair and remembers where the first few happened."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Repair] = {}

    def add(self, kind: str, where: str | None = None, count: int = 1) -> None:
        if kind not in REPAIR_DESCRIPTIONS:
            raise KeyError(f"undocumented repair kind {kind!r}")
        if count <= 0:
            return
        repair = self._by_kind.setdefault(kind, Repair())
        repair.count += count
        if where is not None and len(repair.examples) < EXAMPLES_KEPT:
            repair.examples.append(where)

    def count(self, kind: str) -> int:
        return self._by_kind[kind].count if kind in self._by_kind else 0

    def __bool__(self) -> bool:
        return bool(self._by_kind)

    def to_dict(self) -> dict[str, dict]:
        return {
            kind: {"count": r.count, "what": REPAIR_DESCRIPTIONS[kind], "first": r.examples}
            for kind, r in sorted(self._by_kind.items())
        }
