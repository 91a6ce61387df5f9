"""Throughput and peak memory of ``recalign data prepare --format amazon-raw`` on generated Amazon 2018 dumps.

Why: the loader must stream. This writes review and metadata files shaped like the downloads (gzip, one JSON
object per line, grouped by item, ~300-byte lines with reviewText and summary; Zipf-like item popularity,
users with 5+ reviews and a heavy tail; a metadata file describing more items than are reviewed), prepares
them at a quarter, half and all of ``--lines`` in separate child processes, and reads each child's wall time
and peak RSS (``os.wait4``, so one child's peak never hides another's). A second child per size only streams
the files (``amazon_raw.read_source``): if it held the text, its peak would grow with the uncompressed size.

    .venv/bin/python benchmarks/data_amazon_raw.py --doc docs/benchmarks/data.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine

START, END = 1_104_537_600, 1_538_352_000  # 2005-01-01 .. 2018-10-01, the span of the 2018 dumps
DAY = 86_400
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
WORDS = ("great good fine works well quality price cheap sturdy broke after weeks month daughter loves easy use "
         "would buy again recommend returned small large color exactly described fast shipping arrived damaged "
         "pens paper desk office chair lamp printer ink cartridge stapler folder binder label tape scissors "
         "notebook calendar envelope marker highlighter eraser pencil sharpener clip board").split()
IMPORTS_ONLY = "import recalign.cli, recalign.data.formats.amazon_raw, recalign.data.sequences"
READ_ONLY = ("import sys; from pathlib import Path; from recalign.data.formats import PrepareOptions; "
             "from recalign.data.formats.amazon_raw import find_files, read_source; "
             "from recalign.data.problems import Repairs; "
             "read_source(*find_files(Path(sys.argv[1])), PrepareOptions(), Repairs())")


def code(index: int, length: int, multiplier: int = 1_000_000_007) -> str:
    """A distinct id-looking string per index (a bijection on [0, 36**length), so no two collide)."""
    value, digits = index * multiplier % 36 ** length, []
    for _ in range(length):
        value, digit = divmod(value, 36)
        digits.append(ALPHABET[digit])
    return "".join(digits)


def sentences(rng: np.random.Generator, count: int, mean_words: float) -> list[str]:
    lengths = np.maximum(1, rng.lognormal(np.log(mean_words), 0.8, count).astype(int))
    return [" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n)).capitalize() + "." for n in lengths]


def generate(directory: Path, lines: int, seed: int = 0) -> dict:
    """Writes ``Office_Products_5.json.gz`` and ``meta_Office_Products.json.gz``; returns their sizes."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(1, lines // 10), max(1, lines // 15)
    extra = lines - 5 * n_users  # every user has 5 reviews, the rest go to a heavy-tailed few
    activity = 5 + rng.multinomial(extra, (w := rng.lognormal(0, 1.2, n_users)) / w.sum())
    user = np.repeat(np.arange(n_users), activity)
    popularity = 1.0 / (np.arange(n_items) + 10.0)
    item = rng.choice(n_items, size=lines, p=popularity / popularity.sum())
    start = rng.integers(START, END - 400 * DAY, n_users)
    gaps = rng.exponential(40 * DAY, lines)
    first = np.r_[0, np.cumsum(activity)[:-1]]
    gaps[first] = 0
    elapsed = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], activity)
    timestamp = np.minimum(start[user] + elapsed.astype(np.int64), END) // DAY * DAY
    order = np.lexsort((timestamp, item))  # the dumps are grouped by item

    texts = [json.dumps(t) for t in sentences(rng, 4096, 10)]
    summaries = [json.dumps(t) for t in sentences(rng, 512, 4)]
    names = [json.dumps(n) for n in ("Amazon Customer", "Kindle Customer", "J. Smith", "Mary", "Bob K.")]
    user_ids = [f"A{code(i, 13)}" for i in range(n_users)]
    asins = [f"B0{code(i, 8)}" for i in range(n_items + n_items // 2)]
    picks = rng.integers(0, 1 << 30, (lines, 4))
    reviews = directory / "Office_Products_5.json.gz"
    uncompressed = 0
    with gzip.open(reviews, "wb", compresslevel=6) as handle:
        for block in range(0, lines, 20_000):
            chunk = []
            for row in order[block:block + 20_000]:
                p, t = picks[row], int(timestamp[row])
                day = time.gmtime(t)
                chunk.append(
                    f'{{"overall": {1 + p[0] % 5}.0, "verified": {"true" if p[1] % 4 else "false"}, '
                    f'"reviewTime": "{day.tm_mon:02d} {day.tm_mday}, {day.tm_year}", '
                    f'"reviewerID": "{user_ids[user[row]]}", "asin": "{asins[item[row]]}", '
                    f'"reviewerName": {names[p[2] % len(names)]}, "reviewText": {texts[p[3] % len(texts)]}, '
                    f'"summary": {summaries[p[1] % len(summaries)]}, "unixReviewTime": {t}}}\n')
            data = "".join(chunk).encode()
            uncompressed += len(data)
            handle.write(data)

    meta = directory / "meta_Office_Products.json.gz"
    descriptions = sentences(rng, 1024, 40)
    with gzip.open(meta, "wt", encoding="utf-8", compresslevel=6) as handle:
        for i, asin in enumerate(asins):  # the last third is never reviewed, as in the real metadata
            words = [WORDS[j] for j in rng.integers(0, len(WORDS), 6)]
            record = {"category": ["Office Products", "Office &amp; School Supplies", words[0].capitalize()],
                      "description": [descriptions[i % len(descriptions)]], "title": " ".join(words).title(),
                      "also_buy": [asins[j] for j in rng.integers(0, len(asins), 6)], "brand": f"Brand{i % 97}",
                      "rank": f"{i + 1:,} in Office Products (", "main_cat": "Office Products",
                      "price": f"${1 + i % 50}.99", "asin": asin}
            handle.write(json.dumps(record) + "\n")
    return {"reviews_bytes": reviews.stat().st_size, "reviews_uncompressed": uncompressed,
            "meta_bytes": meta.stat().st_size}


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process; its output is shown only if it fails."""
    began = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({child.returncode}):\n{output}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="review lines of the largest run")
    parser.add_argument("--out-dir", type=Path, help="where to generate the dumps and prepared datasets "
                        "(default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated dumps and prepared datasets")
    parser.add_argument("--doc", type=Path, help="write the results as markdown here (e.g. docs/benchmarks/data.md)")
    args = parser.parse_args()

    root = args.out_dir or Path(tempfile.mkdtemp(prefix="amazon_raw_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    made: list[Path] = [] if args.out_dir else [root]
    seconds, baseline = measure([sys.executable, "-c", IMPORTS_ONLY])
    print(f"imports only: {seconds:.2f} s, peak RSS {baseline:.0f} MB", flush=True)
    rows = []
    try:
        for lines in (args.lines // 4, args.lines // 2, args.lines):
            source, out = root / f"raw_{lines}", root / f"prepared_{lines}"
            source.mkdir(exist_ok=True)
            made += [source, out]
            began = time.perf_counter()
            sizes = generate(source, lines)
            print(f"generated {lines:,} lines in {time.perf_counter() - began:.1f} s", flush=True)
            command = [sys.executable, "-m", "recalign.cli", "data", "prepare", "--format", "amazon-raw",
                       "--source", str(source), "--out", str(out), "--overwrite"]
            seconds, peak = measure(command)
            read_seconds, read_peak = measure([sys.executable, "-c", READ_ONLY, str(source)])
            counts = json.loads((out / "manifest.json").read_text())["counts"]
            rows.append({"lines": lines, **sizes, "seconds": seconds, "peak_mb": peak, "read_seconds": read_seconds,
                         "read_peak_mb": read_peak, "counts": counts})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for path in made if not args.keep else []:
            shutil.rmtree(path, ignore_errors=True)
    table = report(rows, baseline, shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print(table)
    if args.doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(table)


def report(rows: list[dict], baseline: float, command: str) -> str:
    mb = 1024 * 1024
    lines = [
        "# Data preparation benchmarks", "",
        "## amazon-raw: streaming the Amazon 2018 dumps", "",
        f"Produced by `{command}` from the repository root, on {machine()}, with no other heavy job "
        "running (on 2 cores one distorts the times). Each run is a fresh "
        "`python -m recalign.cli data prepare --format amazon-raw` child "
        "(defaults: 5-core, leave-one-out, 50-item histories), timed from start to exit including imports and "
        "writing the parquet files; peak RSS is the child's own (`os.wait4`). The *reading* columns are a "
        "second child that only streams both files into the log and item table (`amazon_raw.read_source`), "
        "without the dedupe, k-core, split and parquet writing. torch is not imported; no thread settings "
        "apply.", "",
        "The generated dumps look like the downloads: gzip, grouped by item, Zipf-like item popularity, every "
        "user with 5+ reviews and a heavy tail, and a metadata file of which a third of the rows describe items "
        "never reviewed.", "",
        "| review lines | reviews .gz MB | uncompressed MB | meta .gz MB | seconds | lines/s | peak RSS MB "
        "| reading: seconds | reading: peak RSS MB | kept interactions / users / items |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        c = row["counts"]
        lines.append(
            f"| {row['lines']:,} | {row['reviews_bytes'] / mb:.1f} | {row['reviews_uncompressed'] / mb:.1f} "
            f"| {row['meta_bytes'] / mb:.1f} | {row['seconds']:.1f} | {row['lines'] / row['seconds']:,.0f} "
            f"| {row['peak_mb']:.0f} | {row['read_seconds']:.1f} | {row['read_peak_mb']:.0f} "
            f"| {c['interactions']:,} / {c['users']:,} / {c['items']:,} |")
    first, last = rows[0], rows[-1]
    added = last["lines"] - first["lines"]

    def growth(column: str) -> float:
        return (last[column] - first[column]) * mb / added
    lines += [
        "", f"Peak RSS of a child that only imports the loader and the CLI: {baseline:.0f} MB. From "
        f"{first['lines']:,} to {last['lines']:,} lines the uncompressed reviews grow by "
        f"{(last['reviews_uncompressed'] - first['reviews_uncompressed']) / added:.0f} bytes per added line; "
        f"the peak RSS of reading grows by {growth('read_peak_mb'):.0f} bytes and that of the whole prepare by "
        f"{growth('peak_mb'):.0f} bytes. Reading keeps three int64 per review, the id dicts and the text of reviewed "
        "items; the rest of the peak is the vectorised dedupe, k-core and split and the example tables "
        "(histories of up to 50 items), which grow with the interactions kept, not with the text.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
