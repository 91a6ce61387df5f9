"""Fetching the public datasets recalign is evaluated on: MovieLens-1M and the Amazon Review Data (2018) categories.

Downloads are resumable because the Amazon metadata files run to gigabytes over links that drop: bytes land in
``<file>.part`` and a rerun asks the server for the rest with a ``Range`` header, renaming only once the file is
whole (and its checksum, where one is published, matches). A file already in place is not fetched again.

Checksums: GroupLens publishes an MD5 for ``ml-1m.zip`` and it is checked. Amazon publishes none, so there is
nothing to check those files against; instead every file's SHA-256 and size go into ``download.json`` in the
output folder, so a user can verify a copy or pin the exact bytes a result was computed from.

Status lines (skips, restarts) go to the ``recalign.data.download`` logger: skips at INFO, restarts at WARNING.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import logging
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

log = logging.getLogger(__name__)

MOVIELENS_ROOT = "https://files.grouplens.org/datasets/movielens"
AMAZON18_ROOT = "https://jmcauley.ucsd.edu/data/amazon_v2"
MANIFEST = "download.json"
SOCKET_TIMEOUT_S = 60.0
CHUNK = 1 << 20
USER_AGENT = "recalign-downloader/1"

# The spellings are the ones in the file names on the 2018 site (AMAZON_FASHION is upper case there).
AMAZON18_CATEGORIES = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books", "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards",
    "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific", "Kindle_Store", "Luxury_Beauty",
    "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden",
    "Pet_Supplies", "Prime_Pantry", "Software", "Sports_and_Outdoors", "Tools_and_Home_Improvement",
    "Toys_and_Games", "Video_Games",
)
AMAZON18_PREFIX = "amazon18:"


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum; the message names the URL or file."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset, addressed relative to the dataset's root so that a mirror can stand in for the root.

    The URL is ``<root>/<path>``; with a mirror it is ``<base_url>/<path>``, ``path`` unchanged (for example
    ``ml-1m.zip`` or ``categoryFilesSmall/Toys_and_Games_5.json.gz``), so a mirror must keep the site's layout
    below the root. The local copy is ``<out>/<last component of path>``.
    """

    root: str
    path: str
    md5: str | None = None
    unzip: bool = False

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name

    def url(self, base_url: str | None = None) -> str:
        return f"{(base_url or self.root).rstrip('/')}/{self.path}"


STATIC: dict[str, tuple[RemoteFile, ...]] = {
    # MD5 as published by GroupLens in ml-1m.zip.md5 beside the archive.
    "movielens-1m": (RemoteFile(MOVIELENS_ROOT, "ml-1m.zip", md5="c4d9eecfca2ab87c1945afe126590906", unzip=True),),
}

DATASETS: dict[str, str] = {
    "movielens-1m": f"MovieLens 1M ratings ({MOVIELENS_ROOT}/ml-1m.zip, MD5-checked), unzipped to ml-1m/",
    f"{AMAZON18_PREFIX}<Category>": (f"Amazon Review Data 2018: 5-core reviews and metadata of one category "
                                     f"({AMAZON18_ROOT}); no published checksums, SHA-256 recorded in {MANIFEST}"),
}


def list_datasets() -> list[str]:
    """Every name ``download`` accepts, Amazon categories spelled out, for ``--help`` and error messages."""
    return [*STATIC, *(f"{AMAZON18_PREFIX}{c}" for c in AMAZON18_CATEGORIES)]


def resolve(name: str) -> tuple[RemoteFile, ...]:
    """The files behind a dataset name; Amazon categories match case-insensitively, to the site's spelling."""
    if name in STATIC:
        return STATIC[name]
    if not name.startswith(AMAZON18_PREFIX):
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(STATIC)}, {AMAZON18_PREFIX}<Category> "
                         f"with <Category> one of: {', '.join(AMAZON18_CATEGORIES)}")
    asked = name[len(AMAZON18_PREFIX):]
    by_lower = {c.lower(): c for c in AMAZON18_CATEGORIES}
    category = by_lower.get(asked.lower())
    if category is None:
        close = difflib.get_close_matches(asked.lower(), by_lower, n=1)
        hint = f" (did you mean {by_lower[close[0]]}?)" if close else ""
        raise ValueError(f"unknown Amazon 2018 category {asked!r}{hint}; the categories are: "
                         f"{', '.join(AMAZON18_CATEGORIES)}")
    return (RemoteFile(AMAZON18_ROOT, f"categoryFilesSmall/{category}_5.json.gz"),
            RemoteFile(AMAZON18_ROOT, f"metaFiles2/meta_{category}.json.gz"))


def download(name: str, out: str | Path, base_url: str | None = None, progress: bool = True) -> list[Path]:
    """Fetch dataset ``name`` (see ``list_datasets``) into ``out`` and return its files there.

    ``base_url`` replaces each file's root URL, as ``<base_url>/<path>`` (see ``RemoteFile``), to use a mirror.
    The returned paths are the downloaded files followed, for archives, by the files extracted from them; files
    already present are reused, so a rerun is cheap and finishes an interrupted one. ``download.json`` in ``out``
    maps each downloaded file name to its URL, size, SHA-256 and MD5.
    """
    files = resolve(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path)
    written: list[Path] = []
    for remote in files:
        record = _ensure_file(remote, out, base_url, progress, manifest["files"].get(remote.filename))
        manifest["files"][remote.filename] = record
        # Written after each file so that an interrupted multi-file run still leaves the finished files pinned.
        _write_manifest(manifest_path, manifest)
        dest = out / remote.filename
        written.append(dest)
        if remote.unzip:
            written += _extract(dest, out)
    return written


def _ensure_file(remote: RemoteFile, out: Path, base_url: str | None, progress: bool,
                 previous: dict | None) -> dict:
    dest = out / remote.filename
    url = remote.url(base_url)
    if dest.exists():
        # Files reach their final name only once complete, so with no checksum to hold them to, presence is enough.
        if remote.md5 is None and previous and previous.get("size") == dest.stat().st_size:
            log.info("%s is already complete; skipping", dest)
            return previous
        digests = _digests(dest)
        if remote.md5 is None or digests["md5"] == remote.md5:
            log.info("%s is already complete; skipping", dest)
            return _record(url, dest, digests)
        log.warning("%s has MD5 %s, expected %s; downloading it again", dest, digests["md5"], remote.md5)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    _fetch(url, part, progress)
    digests = _digests(part)
    if remote.md5 is not None and digests["md5"] != remote.md5:
        part.unlink()
        raise DownloadError(f"checksum mismatch for {dest.name} from {url}: expected MD5 {remote.md5}, "
                            f"got {digests['md5']}; the download was removed, so a rerun starts clean")
    part.replace(dest)
    return _record(url, dest, digests)


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Bring ``part`` up to the whole remote file, asking only for the bytes it lacks."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=SOCKET_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            if _content_range(exc.headers.get("Content-Range", ""))[1] == offset:
                return  # an earlier run received every byte but stopped before the rename
            log.warning("%s is larger than %s; starting over", part, url)
            part.unlink()
            _fetch(url, part, progress)
            return
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, refused connections, timeouts
        raise DownloadError(f"could not fetch {url}: {getattr(exc, 'reason', exc)}") from exc
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                raise DownloadError(f"{url} answered with bytes from {start}, asked for bytes from {offset}")
            mode = "ab"
        else:
            if offset:
                log.warning("%s ignored the request to resume at byte %d (HTTP %d); starting over",
                            url, offset, response.status)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        _copy(response, part, mode, offset, total, url, progress)


def _copy(response, part: Path, mode: str, offset: int, total: int | None, url: str, progress: bool) -> None:
    with open(part, mode) as sink, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                        desc=part.name.removesuffix(".part"), disable=not progress) as bar:
        try:
            while chunk := response.read(CHUNK):
                sink.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"download from {url} broke off after {sink.tell()} bytes ({exc}); "
                                f"rerun to resume from {part}") from exc
        got = sink.tell()
    if total is not None and got != total:
        raise DownloadError(f"download from {url} ended at {got} of {total} bytes; rerun to resume from {part}")


def _content_range(header: str) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of a ``Content-Range`` header, ``None`` for a part it leaves unknown."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", header.strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _digests(path: Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _record(url: str, path: Path, digests: dict[str, str]) -> dict:
    return {"url": url, "size": path.stat().st_size, **digests}


def _extract(archive: Path, out: Path) -> list[Path]:
    """Unpack what is missing or a different size, so a rerun neither rewrites nor trusts half-extracted files."""
    extracted = []
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            if member.is_dir():
                continue
            if member.filename.startswith("/") or ".." in PurePosixPath(member.filename).parts:
                raise DownloadError(f"{archive} holds {member.filename!r}, which would land outside {out}")
            target = out / member.filename
            if not target.exists() or target.stat().st_size != member.file_size:
                zf.extract(member, out)
            extracted.append(target)
    return extracted


def _read_manifest(path: Path) -> dict:
    if not path.exists():
        return {"about": "size and SHA-256 of each file as downloaded, to verify copies or pin them", "files": {}}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DownloadError(f"{path} is not a download manifest; move it away and rerun")
    return manifest


def _write_manifest(path: Path, manifest: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
