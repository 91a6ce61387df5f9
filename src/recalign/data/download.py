"""Fetching the public datasets recalign is evaluated on: the published splits of the papers it reproduces (by name,
pinned: ``tca4rec:Toys_and_Games``, ``minionerec:Industrial_and_Scientific``, ... see ``published``), MovieLens-1M
and the Amazon Review Data (2018) categories.

Downloads are resumable because the Amazon metadata files run to gigabytes over links that drop: bytes land in
``<file>.part`` and a rerun asks the server for the rest with a ``Range`` header, renaming only once the file is
whole (and its checksum, where one is published, matches). A file already in place is not fetched again.

Checksums: every file of a published split has a pinned size and SHA-256, checked after the transfer (a mismatch is
refused, naming the file) and again whenever a folder is reused. GroupLens publishes an MD5 for ``ml-1m.zip`` and it
is checked. Amazon publishes none, so there is nothing to check those files against; instead every file's SHA-256
and size go into ``download.json`` in the output folder, so a user can verify a copy or pin the exact bytes a result
was computed from.

Named datasets live in the data cache, ``$RECALIGN_CACHE/data/<source>/<name>`` (``recalign.cache``), where
recipes find them; ``ensure`` fetches what is missing there, or with ``offline`` says which command would.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..cache import cache_dir
from .published import DATASETS as PUBLISHED
from .published import RAW_GITHUB

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
NAME_PREFIXES = (*sorted({name.split(":")[0] + ":" for name in PUBLISHED}), AMAZON18_PREFIX)


def human_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


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
    sha256: str | None = None  # pinned, with the size: the file must be exactly these bytes
    size: int | None = None
    local: str | None = None  # the local file name, when not the last component of path

    @property
    def filename(self) -> str:
        return self.local or PurePosixPath(self.path).name

    def url(self, base_url: str | None = None) -> str:
        return f"{(base_url or self.root).rstrip('/')}/{self.path}"


STATIC: dict[str, tuple[RemoteFile, ...]] = {
    # MD5 as published by GroupLens in ml-1m.zip.md5 beside the archive.
    "movielens-1m": (RemoteFile(MOVIELENS_ROOT, "ml-1m.zip", md5="c4d9eecfca2ab87c1945afe126590906", unzip=True),),
}

DATASETS: dict[str, str] = {
    **{name: f"{published.about}; {human_size(published.size)}, pinned to {published.repo}@{published.commit[:7]}"
       for name, published in PUBLISHED.items()},
    "movielens-1m": f"MovieLens 1M ratings ({MOVIELENS_ROOT}/ml-1m.zip, MD5-checked), unzipped to ml-1m/",
    f"{AMAZON18_PREFIX}<Category>": (f"Amazon Review Data 2018: 5-core reviews and metadata of one category "
                                     f"({AMAZON18_ROOT}); no published checksums, SHA-256 recorded in {MANIFEST}"),
}


def list_datasets() -> list[str]:
    """Every name ``download`` accepts, Amazon categories spelled out, for ``--help`` and error messages."""
    return [*PUBLISHED, *STATIC, *(f"{AMAZON18_PREFIX}{c}" for c in AMAZON18_CATEGORIES)]


def is_dataset_name(text: str) -> bool:
    """Whether a recipe's path setting names a dataset (``source:Name``) rather than a local file or folder."""
    prefix, colon, _ = text.partition(":")
    return bool(colon) and f"{prefix.lower()}:" in NAME_PREFIXES


def canonical_name(name: str) -> str:
    """``name`` spelled as the registry spells it (names match case-insensitively); ValueError if unknown."""
    if name in STATIC or name in PUBLISHED:
        return name
    by_lower = {n.lower(): n for n in PUBLISHED}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    if not name.startswith(AMAZON18_PREFIX):
        close = difflib.get_close_matches(name.lower(), by_lower, n=1)
        hint = f" (did you mean {by_lower[close[0]]}?)" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint}; known: {', '.join([*PUBLISHED, *STATIC])}, "
                         f"{AMAZON18_PREFIX}<Category> with <Category> one of: {', '.join(AMAZON18_CATEGORIES)}")
    asked = name[len(AMAZON18_PREFIX):]
    by_lower = {c.lower(): c for c in AMAZON18_CATEGORIES}
    category = by_lower.get(asked.lower())
    if category is None:
        close = difflib.get_close_matches(asked.lower(), by_lower, n=1)
        hint = f" (did you mean {by_lower[close[0]]}?)" if close else ""
        raise ValueError(f"unknown Amazon 2018 category {asked!r}{hint}; the categories are: "
                         f"{', '.join(AMAZON18_CATEGORIES)}")
    return f"{AMAZON18_PREFIX}{category}"


def resolve(name: str) -> tuple[RemoteFile, ...]:
    """The files behind a dataset name (see ``canonical_name``). A published split's files hang below
    raw.githubusercontent.com as ``<repo>/<commit>/<path>``, so one mirror of that host serves every one of them."""
    name = canonical_name(name)
    if name in STATIC:
        return STATIC[name]
    if name in PUBLISHED:
        published = PUBLISHED[name]
        return tuple(RemoteFile(RAW_GITHUB, f"{published.repo}/{published.commit}/{f.path}", sha256=f.sha256,
                                size=f.size, local=f.local) for f in published.files)
    category = name[len(AMAZON18_PREFIX):]
    return (RemoteFile(AMAZON18_ROOT, f"categoryFilesSmall/{category}_5.json.gz"),
            RemoteFile(AMAZON18_ROOT, f"metaFiles2/meta_{category}.json.gz"))


def download(name: str, out: str | Path | None = None, base_url: str | None = None, progress: bool = True,
             report: Callable[[str], None] | None = None) -> list[Path]:
    """Fetch dataset ``name`` (see ``list_datasets``) into ``out`` (default: its folder in the data cache,
    ``cache_folder``) and return its files there.

    ``base_url`` replaces each file's root URL, as ``<base_url>/<path>`` (see ``RemoteFile``), to use a mirror.
    The returned paths are the downloaded files followed, for archives, by the files extracted from them; files
    already present (and, where pinned, intact) are reused, so a rerun is cheap and finishes an interrupted one.
    ``download.json`` in ``out`` maps each downloaded file name to its URL, size, SHA-256 and MD5. ``report``
    (default: this module's logger) hears, before any byte moves, how much there is to fetch.
    """
    files = resolve(name)
    out = Path(out) if out is not None else cache_folder(name)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path)
    records = {remote.filename: _complete_record(remote, out, base_url, manifest["files"].get(remote.filename))
               for remote in files}
    _announce(canonical_name(name), files, records, out, base_url, report or log.info)
    written: list[Path] = []
    for remote in files:
        record = records[remote.filename] or _download_file(remote, out, base_url, progress)
        if manifest["files"].get(remote.filename) != record:
            manifest["files"][remote.filename] = record
            # Written after each file so that an interrupted multi-file run still leaves the finished files pinned;
            # a complete folder is not written to (it may be a read-only copy the cache links to).
            _write_manifest(manifest_path, manifest)
        dest = out / remote.filename
        written.append(dest)
        if remote.unzip:
            written += _extract(dest, out)
    return written


def _announce(name: str, files: tuple[RemoteFile, ...], records: dict, out: Path, base_url: str | None,
              report: Callable[[str], None]) -> None:
    missing = [remote for remote in files if records[remote.filename] is None]
    if not missing:
        report(f"{name}: all {len(files)} files already in {out}, verified")
        return
    known = [remote.size for remote in missing if remote.size is not None]
    unknown = len(missing) - len(known)
    size = human_size(sum(known)) if not unknown else (
        f"{human_size(sum(known))} and {unknown} of unpublished size" if known else "size not published")
    host = base_url or missing[0].root
    report(f"{name}: downloading {len(missing)} of {len(files)} files, {size}, from {host} into {out}")


def _complete_record(remote: RemoteFile, out: Path, base_url: str | None, previous: dict | None) -> dict | None:
    """The manifest record of ``remote`` when its final file is in place and passes every published check, else
    None (a file that fails a check is removed, with a warning, so that it is fetched again)."""
    dest = out / remote.filename
    if not dest.exists():
        return None
    size = dest.stat().st_size
    if remote.md5 is None and remote.sha256 is None and previous and previous.get("size") == size:
        # Files reach their final name only once complete, so with no checksum to hold them to, presence is enough.
        return previous
    problem = None if remote.size is None or size == remote.size else f"has {size} bytes, expected {remote.size}"
    digests = None
    if problem is None:
        digests = _digests(dest)
        problem = _checksum_problem(remote, digests)
    if problem is None:
        return _record(remote.url(base_url), dest, digests)
    log.warning("%s %s; downloading it again", dest, problem)
    dest.unlink()
    return None


def _checksum_problem(remote: RemoteFile, digests: dict[str, str]) -> str | None:
    if remote.sha256 is not None and digests["sha256"] != remote.sha256:
        return f"has SHA-256 {digests['sha256']}, expected {remote.sha256}"
    if remote.md5 is not None and digests["md5"] != remote.md5:
        return f"has MD5 {digests['md5']}, expected {remote.md5}"
    return None


def _download_file(remote: RemoteFile, out: Path, base_url: str | None, progress: bool) -> dict:
    dest = out / remote.filename
    url = remote.url(base_url)
    part = dest.with_name(dest.name + ".part")
    _fetch(url, part, progress)
    digests = _digests(part)
    problem = _checksum_problem(remote, digests)
    if problem is not None:
        part.unlink()
        raise DownloadError(f"checksum mismatch for {dest.name} from {url}: the download {problem}; it was removed "
                            "(a rerun starts that file clean). If the mirror is right, the file changed upstream.")
    part.replace(dest)
    return _record(url, dest, digests)


def cache_folder(name: str) -> Path:
    """Where dataset ``name`` lives in the data cache: ``$RECALIGN_CACHE/data/<source>/<name>``."""
    return cache_dir() / "data" / canonical_name(name).replace(":", "/")


def local_path(name: str) -> Path:
    """The path a recipe setting naming dataset ``name`` stands for: its cache folder, or for a dataset that is one
    file to point at (a teacher's token keywords), that file."""
    name = canonical_name(name)
    target = PUBLISHED[name].target if name in PUBLISHED else None
    return cache_folder(name) / target if target else cache_folder(name)


def cache_problems(name: str) -> list[str]:
    """Without touching the network: what keeps ``name``'s cache folder from being complete (missing files, files
    failing their pinned size or SHA-256); empty when it is. Nothing is removed."""
    folder = cache_folder(name)
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    manifest = _read_manifest(folder / MANIFEST) if (folder / MANIFEST).exists() else {"files": {}}
    problems = []
    for remote in resolve(name):
        dest = folder / remote.filename
        if not dest.exists():
            problems.append(f"{dest} is missing")
            continue
        size = dest.stat().st_size
        if remote.size is not None and size != remote.size:
            problems.append(f"{dest} has {size} bytes, expected {remote.size}")
        elif remote.md5 is not None or remote.sha256 is not None:
            problem = _checksum_problem(remote, _digests(dest))
            if problem:
                problems.append(f"{dest} {problem}")
        elif manifest["files"].get(remote.filename, {}).get("size") != size:
            problems.append(f"{dest} is not the size {MANIFEST} recorded (an interrupted download?)")
    return problems


def download_command(name: str) -> str:
    return f"recalign data download {canonical_name(name)}"


def ensure(name: str, offline: bool = False, base_url: str | None = None, progress: bool = True,
           report: Callable[[str], None] | None = None) -> Path:
    """``local_path(name)``, downloading what the cache lacks first; with ``offline`` nothing is fetched and an
    incomplete cache is a DownloadError that gives the command to run."""
    if offline:
        problems = cache_problems(name)
        if problems:
            raise DownloadError(f"{canonical_name(name)} is not in the data cache ({'; '.join(problems)}) and "
                                f"--offline forbids fetching it; run `{download_command(name)}` where the network "
                                f"is reachable (the cache is {cache_dir() / 'data'}, set by RECALIGN_CACHE)")
        (report or log.info)(f"{canonical_name(name)}: in {cache_folder(name)}, verified")
    else:
        download(name, base_url=base_url, progress=progress, report=report)
    return local_path(name)


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
