"""The downloader against a loopback HTTP server that can honour or ignore ``Range`` and cut transfers short."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import socket
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from tests.conftest import PREFIX, Server

from recalign.data import download as dl
from recalign.data.download import DownloadError, download

ML_FILES = {
    "ml-1m/ratings.dat": b"1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n",
    "ml-1m/movies.dat": b"1::Toy Story (1995)::Animation|Children's|Comedy\n661::James (1996)::Animation\n",
    "ml-1m/users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n",
}


def fake_ml1m_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ml-1m/", b"")
        for name, data in ML_FILES.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def ml1m(server: Server, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Serve a fake ml-1m.zip and make the registry's published MD5 the fake's, as if GroupLens had made it."""
    data = fake_ml1m_zip()
    server.files[f"{PREFIX}/ml-1m.zip"] = data
    (real,) = dl.STATIC["movielens-1m"]
    monkeypatch.setitem(dl.STATIC, "movielens-1m", (replace(real, md5=hashlib.md5(data).hexdigest()),))
    return data


def serve_amazon(server: Server, category: str) -> dict[str, bytes]:
    bodies = {f"{category}_5.json.gz": bytes(range(256)) * 40, f"meta_{category}.json.gz": b"meta" * 3000}
    server.files[f"{PREFIX}/categoryFilesSmall/{category}_5.json.gz"] = bodies[f"{category}_5.json.gz"]
    server.files[f"{PREFIX}/metaFiles2/meta_{category}.json.gz"] = bodies[f"meta_{category}.json.gz"]
    return bodies


def test_movielens_downloads_checks_md5_and_unzips(server: Server, ml1m: bytes, tmp_path: Path) -> None:
    paths = download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)

    assert paths[0] == tmp_path / "ml-1m.zip" and paths[0].read_bytes() == ml1m
    assert sorted(paths[1:]) == sorted(tmp_path / name for name in ML_FILES)
    for name, data in ML_FILES.items():
        assert (tmp_path / name).read_bytes() == data
    assert [p for p, _ in server.requests] == [f"{PREFIX}/ml-1m.zip"]
    assert "Range" not in server.requests[0][1]
    record = json.loads((tmp_path / "download.json").read_text())["files"]["ml-1m.zip"]
    assert record["sha256"] == hashlib.sha256(ml1m).hexdigest() and record["size"] == len(ml1m)
    assert not list(tmp_path.glob("*.part"))


def test_resume_asks_for_the_rest_and_assembles_the_file(server: Server, ml1m: bytes, tmp_path: Path) -> None:
    half = len(ml1m) // 2
    (tmp_path / "ml-1m.zip.part").write_bytes(ml1m[:half])

    download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)

    (headers,) = server.gets(f"{PREFIX}/ml-1m.zip")
    assert headers["Range"] == f"bytes={half}-"
    assert server.sent[f"{PREFIX}/ml-1m.zip"] == len(ml1m) - half
    assert (tmp_path / "ml-1m.zip").read_bytes() == ml1m
    assert not (tmp_path / "ml-1m.zip.part").exists()


def test_server_ignoring_range_restarts_from_zero(server: Server, ml1m: bytes, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    server.honour_range = False
    (tmp_path / "ml-1m.zip.part").write_bytes(b"x" * (len(ml1m) // 2))  # wrong bytes: appending would corrupt

    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)

    assert server.sent[f"{PREFIX}/ml-1m.zip"] == len(ml1m)
    assert (tmp_path / "ml-1m.zip").read_bytes() == ml1m
    assert "starting over" in caplog.text


def test_broken_transfer_keeps_the_part_and_a_rerun_resumes(server: Server, tmp_path: Path) -> None:
    bodies = serve_amazon(server, "Office_Products")
    server.cut_after = 1000

    with pytest.raises(DownloadError, match="rerun to resume"):
        download("amazon18:Office_Products", tmp_path, base_url=server.base_url, progress=False)
    assert (tmp_path / "Office_Products_5.json.gz.part").stat().st_size == 1000
    assert not (tmp_path / "Office_Products_5.json.gz").exists()

    server.cut_after = None
    paths = download("amazon18:Office_Products", tmp_path, base_url=server.base_url, progress=False)

    assert [p.read_bytes() for p in paths] == list(bodies.values())
    assert server.gets(f"{PREFIX}/categoryFilesSmall/Office_Products_5.json.gz")[-1]["Range"] == "bytes=1000-"
    manifest = json.loads((tmp_path / "download.json").read_text())["files"]
    assert {name: rec["sha256"] for name, rec in manifest.items()} == {
        name: hashlib.sha256(data).hexdigest() for name, data in bodies.items()}
    assert manifest["meta_Office_Products.json.gz"]["url"] == (
        f"{server.base_url}/metaFiles2/meta_Office_Products.json.gz")


def test_complete_part_from_an_interrupted_rename_is_finished_without_bytes(server: Server, ml1m: bytes,
                                                                             tmp_path: Path) -> None:
    (tmp_path / "ml-1m.zip.part").write_bytes(ml1m)

    download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)

    assert server.sent.get(f"{PREFIX}/ml-1m.zip", 0) == 0
    assert (tmp_path / "ml-1m.zip").read_bytes() == ml1m


def test_part_longer_than_the_file_starts_over(server: Server, ml1m: bytes, tmp_path: Path) -> None:
    (tmp_path / "ml-1m.zip.part").write_bytes(ml1m + b"trailing junk")

    download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)

    assert [("Range" in h) for h in server.gets(f"{PREFIX}/ml-1m.zip")] == [True, False]
    assert (tmp_path / "ml-1m.zip").read_bytes() == ml1m


def test_checksum_mismatch_fails_and_leaves_nothing_behind(server: Server, ml1m: bytes, tmp_path: Path) -> None:
    server.files[f"{PREFIX}/ml-1m.zip"] = ml1m[:-1] + b"!"
    expected = dl.STATIC["movielens-1m"][0].md5

    with pytest.raises(DownloadError) as info:
        download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)

    message = str(info.value)
    assert "ml-1m.zip" in message and expected in message
    assert hashlib.md5(ml1m[:-1] + b"!").hexdigest() in message
    assert not (tmp_path / "ml-1m.zip").exists() and not (tmp_path / "ml-1m.zip.part").exists()


def test_corrupt_final_file_is_downloaded_again(server: Server, ml1m: bytes, tmp_path: Path) -> None:
    (tmp_path / "ml-1m.zip").write_bytes(b"not the archive")

    download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)

    assert (tmp_path / "ml-1m.zip").read_bytes() == ml1m


def test_http_404_names_the_url(server: Server, tmp_path: Path) -> None:
    url = f"{server.base_url}/categoryFilesSmall/Toys_and_Games_5.json.gz"
    with pytest.raises(DownloadError, match=re.escape(url)) as info:
        download("amazon18:Toys_and_Games", tmp_path, base_url=server.base_url, progress=False)
    assert "404" in str(info.value)


def test_unreachable_server_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=re.escape(f"http://127.0.0.1:{port}/ml-1m.zip")):
        download("movielens-1m", tmp_path, base_url=f"http://127.0.0.1:{port}", progress=False)


def test_second_run_skips_complete_files(server: Server, ml1m: bytes, tmp_path: Path) -> None:
    serve_amazon(server, "Toys_and_Games")
    first = download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)
    first += download("amazon18:Toys_and_Games", tmp_path, base_url=server.base_url, progress=False)
    seen = len(server.requests)

    again = download("movielens-1m", tmp_path, base_url=server.base_url, progress=False)
    again += download("amazon18:Toys_and_Games", tmp_path, base_url=server.base_url, progress=False)

    assert len(server.requests) == seen == 3
    assert again == first
    assert set(json.loads((tmp_path / "download.json").read_text())["files"]) == {
        "ml-1m.zip", "Toys_and_Games_5.json.gz", "meta_Toys_and_Games.json.gz"}


def test_real_urls_and_case_insensitive_categories() -> None:
    assert [f.url() for f in dl.resolve("amazon18:toys_and_games")] == [
        "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/Toys_and_Games_5.json.gz",
        "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_Toys_and_Games.json.gz",
    ]
    assert [f.url() for f in dl.resolve("movielens-1m")] == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]
    assert "amazon18:AMAZON_FASHION" in dl.list_datasets() and "movielens-1m" in dl.list_datasets()


def test_unknown_dataset_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="movielens-1m") as info:
        download("movielens-100m", tmp_path, progress=False)
    assert "Toys_and_Games" in str(info.value)


def test_unknown_amazon_category_lists_the_categories(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Office_Products") as info:
        download("amazon18:Toys_and_Game", tmp_path, progress=False)
    assert "did you mean Toys_and_Games" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_cli_downloads_then_prepares_movielens(server: Server, ml1m: bytes, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recalign.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["data", "download", "movielens-1m", "--out", str(tmp_path / "dl"),
                                 "--base-url", server.base_url])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "prepare", "-f", "movielens", "--source", str(tmp_path / "dl"),
                                 "--out", str(tmp_path / "data"), "--min-user", "1", "--min-item", "1",
                                 "--unknown-items", "drop"])
    # the fake ratings name two movies the fake movies.dat lacks: one rating is left, too few to learn from
    assert result.exit_code == 1 and "no example to make" in result.output, result.output
    missing = runner.invoke(app, ["data", "download", "movielens-1m", "--out", str(tmp_path / "x"),
                                  "--base-url", server.base_url + "/nowhere"])
    assert missing.exit_code == 1 and "404" in missing.output
