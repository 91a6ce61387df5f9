from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("RECALIGN_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The real public data beside the checkout (../shared/data); tests needing it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


def write_csv_source(folder: Path, items: list[tuple], interactions: list[tuple],
                     item_header: str = "item,title,brand", log_header: str = "user,item,timestamp") -> Path:
    """A tiny source in the csv format; rows are written verbatim (tests put bad values in on purpose)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.csv").write_text(item_header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in items))
    (folder / "interactions.csv").write_text(
        log_header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in interactions))
    return folder
