"""Published splits by name: pinned files fetched from a loopback mirror into the data cache, verified (a tampered
byte is refused, naming the file), resumed after a broken transfer, and read by recipes without the network.

The mechanics run on tiny fabricated files with their own pins; the real pins are checked against copies of the
files in ../shared/data, served from the loopback mirror (skipped when that folder is absent)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from tests.conftest import PREFIX, Server
from typer.testing import CliRunner

from recalign.cli import app
from recalign.data import download as dl
from recalign.data.download import DownloadError, cache_folder, download, ensure
from recalign.data.formats import prepare
from recalign.data.published import PinnedFile, PublishedDataset
from recalign.pipeline import RecipeError, load_recipe, named_data, packaged_recipes, with_local_data

# The datasets ../shared/data holds, and where (under the local file names the cache uses).
SHARED_COPIES = {
    "tca4rec:Toys_and_Games": "amazon18/Toys_and_Games",
    "tca4rec:Office_Products": "amazon18/Office_Products",
    "minionerec:Industrial_and_Scientific": "minionerec/Industrial_and_Scientific",
    "tsrec:Industrial_and_Scientific": "minionerec/Industrial_and_Scientific",
}
TINY = "tca4rec:Tiny"
TINY_FILES = {"item.csv": b"rawid,title,iid\nA1,first,1\nA2,second,2\n" * 50, "data_stat.json": b'{"num_item": 2}'}


def pinned(files: dict[str, bytes], repo: str = "someone/tiny") -> PublishedDataset:
    return PublishedDataset(repo, "0" * 40, "fabricated for the tests", "amazon18", tuple(
        PinnedFile(f"data/{local}", local, len(body), hashlib.sha256(body).hexdigest())
        for local, body in files.items()))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    monkeypatch.setitem(dl.PUBLISHED, TINY, pinned(TINY_FILES))
    return TINY_FILES


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def serve(server: Server, name: str, bodies: dict[str, bytes]) -> None:
    for remote in dl.resolve(name):
        server.files[f"{PREFIX}/{remote.path}"] = bodies[remote.filename]


def shared_bodies(shared: Path, name: str) -> dict[str, bytes]:
    return {r.filename: (shared / SHARED_COPIES[name] / r.filename).read_bytes() for r in dl.resolve(name)}


def tampered(body: bytes) -> bytes:
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 1]) + body[middle + 1:]


def test_download_by_name_says_its_size_first_and_lands_verified_in_the_cache(server: Server, cache: Path,
                                                                              tiny: dict[str, bytes]) -> None:
    serve(server, TINY, tiny)
    heard: list[tuple[str, int]] = []

    paths = download(TINY, base_url=server.base_url, progress=False,
                     report=lambda line: heard.append((line, len(server.requests))))

    size = dl.human_size(sum(map(len, tiny.values())))
    assert heard == [(f"{TINY}: downloading 2 of 2 files, {size}, from {server.base_url} into "
                      f"{cache / 'tca4rec' / 'Tiny'}", 0)]  # said before the first request
    assert paths == [cache / "tca4rec" / "Tiny" / name for name in tiny]
    assert [p.read_bytes() for p in paths] == list(tiny.values())
    assert [p for p, _ in server.requests] == [f"{PREFIX}/someone/tiny/{'0' * 40}/data/{n}" for n in tiny]

    heard.clear()
    assert download(TINY.upper(), base_url=server.base_url, progress=False, report=lambda line: heard.append(
        (line, 0))) == paths  # names match case-insensitively
    assert len(server.requests) == 2 and "already in" in heard[0][0]


def test_a_tampered_byte_is_refused_naming_the_file(server: Server, cache: Path, tiny: dict[str, bytes]) -> None:
    serve(server, TINY, {**tiny, "data_stat.json": tampered(tiny["data_stat.json"])})

    with pytest.raises(DownloadError, match=r"checksum mismatch for data_stat\.json .*SHA-256"):
        download(TINY, base_url=server.base_url, progress=False)

    folder = cache_folder(TINY)
    assert sorted(p.name for p in folder.iterdir()) == ["download.json", "item.csv"]  # nothing half-trusted left
    serve(server, TINY, tiny)
    download(TINY, base_url=server.base_url, progress=False)
    assert (folder / "data_stat.json").read_bytes() == tiny["data_stat.json"]
    assert [p for p, _ in server.requests].count(f"{PREFIX}/someone/tiny/{'0' * 40}/data/item.csv") == 1


def test_an_interrupted_transfer_resumes_where_it_stopped(server: Server, cache: Path, tiny: dict[str, bytes]) -> None:
    serve(server, TINY, tiny)
    server.cut_after = 100

    with pytest.raises(DownloadError, match="rerun to resume"):
        download(TINY, base_url=server.base_url, progress=False)
    assert (cache_folder(TINY) / "item.csv.part").stat().st_size == 100

    server.cut_after = None
    download(TINY, base_url=server.base_url, progress=False)

    item_url = f"{PREFIX}/someone/tiny/{'0' * 40}/data/item.csv"
    assert server.gets(item_url)[-1]["Range"] == "bytes=100-"
    assert server.sent[item_url] == len(tiny["item.csv"])  # every byte sent once
    assert (cache_folder(TINY) / "item.csv").read_bytes() == tiny["item.csv"]


def test_offline_names_the_command_and_refuses_a_tampered_cache(server: Server, cache: Path, tiny: dict[str, bytes],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DownloadError, match=re.escape(f"run `recalign data download {TINY}`")) as info:
        ensure(TINY, offline=True)
    assert f"{cache_folder(TINY)} does not exist" in str(info.value) and not server.requests
    cache_folder(TINY).mkdir(parents=True)
    with pytest.raises(DownloadError, match=r"item\.csv is missing"):
        ensure(TINY, offline=True)

    serve(server, TINY, tiny)
    assert ensure(TINY, base_url=server.base_url, progress=False) == cache_folder(TINY)
    assert ensure(TINY, offline=True) == cache_folder(TINY)

    cached = cache_folder(TINY) / "item.csv"
    cached.write_bytes(tampered(tiny["item.csv"]))
    with pytest.raises(DownloadError, match=r"item\.csv has SHA-256 .* expected"):
        ensure(TINY, offline=True)
    assert cached.exists()  # offline reports, never deletes

    ensure(TINY, base_url=server.base_url, progress=False)  # online, the bad copy is fetched again
    assert cached.read_bytes() == tiny["item.csv"] and "downloading it again" in caplog.text


def test_a_complete_folder_is_read_without_writing(server: Server, cache: Path, tiny: dict[str, bytes]) -> None:
    """The cache may link to a read-only copy (the shared data): a verified folder is used as it is."""
    serve(server, TINY, tiny)
    download(TINY, base_url=server.base_url, progress=False)
    folder = cache_folder(TINY)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        download(TINY, base_url=server.base_url, progress=False)
    finally:
        folder.chmod(stat.S_IRWXU)


def test_cli_download_lists_names_and_fetches_into_the_cache(server: Server, cache: Path,
                                                             tiny: dict[str, bytes]) -> None:
    runner = CliRunner()
    listing = runner.invoke(app, ["data", "download"])
    assert listing.exit_code == 0 and "tsrec:Industrial_and_Scientific" in listing.output
    assert "pinned to critical88/TCA4Rec@baeca9e" in listing.output
    assert max(map(len, listing.output.splitlines())) <= 80

    serve(server, TINY, tiny)
    result = runner.invoke(app, ["data", "download", TINY, "--base-url", server.base_url])
    assert result.exit_code == 0, result.output
    assert str(cache_folder(TINY) / "item.csv") in result.output
    assert (cache_folder(TINY) / "item.csv").read_bytes() == tiny["item.csv"]


def test_pins_match_the_shared_copies(shared_data: Path) -> None:
    """The SHA-256s were computed from the official repositories' blobs; the benchmark copies are the same bytes."""
    for name, folder in SHARED_COPIES.items():
        for remote in dl.resolve(name):
            body = (shared_data / folder / remote.filename).read_bytes()
            assert (len(body), hashlib.sha256(body).hexdigest()) == (remote.size, remote.sha256), (name, remote)
            assert remote.url().startswith(f"https://raw.githubusercontent.com/{dl.PUBLISHED[name].repo}/")


@pytest.mark.parametrize("name", list(SHARED_COPIES))
def test_a_named_split_from_a_mirror_is_verified_resumed_and_prepares_like_the_shared_folder(
        name: str, shared_data: Path, server: Server, cache: Path) -> None:
    bodies = shared_bodies(shared_data, name)
    largest = max(bodies, key=lambda local: len(bodies[local]))
    serve(server, name, {**bodies, largest: tampered(bodies[largest])})
    server.cut_after = 50_000

    with pytest.raises(DownloadError, match="rerun to resume"):
        download(name, base_url=server.base_url, progress=False)
    server.cut_after = None
    with pytest.raises(DownloadError, match=f"checksum mismatch for {re.escape(largest)} "):
        download(name, base_url=server.base_url, progress=False)
    serve(server, name, bodies)
    paths = download(name, base_url=server.base_url, progress=False)

    first = f"{PREFIX}/{dl.resolve(name)[0].path}"
    assert server.gets(first)[1]["Range"] == "bytes=50000-"  # the broken first file resumed
    assert {p.name: p.read_bytes() for p in paths} == bodies
    data_format = dl.PUBLISHED[name].format
    if data_format is not None:
        fetched, _ = prepare(data_format, cache_folder(name))
        shared, _ = prepare(data_format, shared_data / SHARED_COPIES[name])
        assert fetched.content_hash() == shared.content_hash()


def test_no_packaged_recipe_reads_the_shared_folder() -> None:
    for name, path in packaged_recipes().items():
        assert "shared" not in path.read_text(), name


def fill_cache_with_fabricated_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every published dataset in the cache, as small files pinned to themselves (the real pins need the real
    files, checked above)."""
    for name, published in list(dl.PUBLISHED.items()):
        bodies = {f.local: f"fabricated {name} {f.local}".encode() for f in published.files}
        monkeypatch.setitem(dl.PUBLISHED, name, replace(published, files=tuple(
            replace(f, size=len(bodies[f.local]), sha256=hashlib.sha256(bodies[f.local]).hexdigest())
            for f in published.files)))
        cache_folder(name).mkdir(parents=True)
        for local, body in bodies.items():
            (cache_folder(name) / local).write_bytes(body)


def test_every_packaged_recipe_resolves_its_data_offline_from_the_cache(cache: Path, no_network: None,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    recipes = {name: load_recipe(name) for name in packaged_recipes()}
    for recipe in recipes.values():
        if recipe.data.format != "synth":
            with pytest.raises(DownloadError, match=f"run `recalign data download {recipe.data.source}`"):
                with_local_data(recipe, offline=True)
    fill_cache_with_fabricated_copies(monkeypatch)

    for name, recipe in recipes.items():
        local = with_local_data(recipe, offline=True, log=lambda line: None)
        assert not named_data(local), name
        if recipe.data.format != "synth":
            assert local.data.source == str(cache_folder(recipe.data.source)), name
        if recipe.llm is not None and recipe.llm.semantics.startswith("tsrec:"):
            assert local.llm.semantics == str(cache_folder(recipe.llm.semantics) / "description_keywords.json")
            assert os.path.isfile(local.llm.semantics)


def test_recipes_resolve_from_a_cache_linked_to_the_shared_copies(shared_data: Path, cache: Path,
                                                                  no_network: None) -> None:
    for name, folder in SHARED_COPIES.items():
        cache_folder(name).parent.mkdir(parents=True, exist_ok=True)
        cache_folder(name).symlink_to(shared_data / folder)
    ready = [n for n, r in ((n, load_recipe(n)) for n in packaged_recipes())
             if set(named_data(r).values()) <= set(SHARED_COPIES) and named_data(r)]
    assert {"tca4rec-toys-cpu", "tca4rec-office-cpu", "tsrec-industrial-cpu", "tsrec-industrial"} <= set(ready)
    for name in ready:
        local = with_local_data(load_recipe(name), offline=True, log=lambda line: None)
        shared = shared_data / SHARED_COPIES[load_recipe(name).data.source]
        assert Path(local.data.source).resolve() == shared.resolve()


def test_recipe_data_names_are_checked_when_the_recipe_loads(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {format: minionerec, source: tca4rec:Toys_and_Games}\n")
    with pytest.raises(RecipeError, match="tca4rec:Toys_and_Games holds amazon18 data, but data.format is minionerec"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="did you mean tca4rec:Toys_and_Games"):
        load_recipe(recipe, ["data.format=amazon18", "data.source=tca4rec:Toys_and_Gmes"])
    assert load_recipe(recipe, ["data.format=amazon18", "data.source=TCA4REC:toys_and_games"]).data.source == (
        "tca4rec:Toys_and_Games")
    with pytest.raises(RecipeError, match="llm.semantics: tca4rec:Toys_and_Games is a dataset, not a single file"):
        load_recipe("tsrec-industrial-cpu", ["llm.semantics=tca4rec:Toys_and_Games"])
    assert load_recipe(recipe, ["data.source=./local:folder"]).data.source == "./local:folder"  # not a name


def test_cli_run_offline_names_the_command_and_a_gpu_recipe_warns_first(cache: Path, no_network: None) -> None:
    runner = CliRunner()
    cpu = runner.invoke(app, ["run", "tca4rec-toys-cpu", "--offline"])
    assert cpu.exit_code == 1 and "run `recalign data download tca4rec:Toys_and_Games`" in cpu.output, cpu.output
    assert "GPU recipe" not in cpu.output

    gpu = runner.invoke(app, ["run", "tca4rec-toys", "--offline"])
    assert gpu.exit_code == 1
    assert gpu.output.index("tca4rec-toys is a GPU recipe and this machine has no CUDA GPU") < gpu.output.index(
        "recalign data download"), gpu.output
    assert "`recalign run tca4rec-toys-cpu` is its CPU-scale version" in gpu.output


def test_recipes_lists_data_gpu_need_and_time() -> None:
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0
    blocks = dict(re.findall(r"^(\S+)\n((?:    .*\n)+)", result.output, re.M))
    assert set(blocks) == set(packaged_recipes())
    assert "data: tca4rec:Toys_and_Games (" in blocks["tca4rec-toys-cpu"]
    assert "GPU: needed (this machine has none)" in blocks["tca4rec-toys"]
    assert "GPU: not needed" in blocks["tca4rec-toys-cpu"]
    assert "minionerec:Industrial_and_Scientific" in blocks["tsrec-industrial-cpu"]
    assert "tsrec:Industrial_and_Scientific" in blocks["tsrec-industrial-cpu"]
    assert all("time: " in block for block in blocks.values())
    assert max(map(len, result.output.splitlines())) <= 80
