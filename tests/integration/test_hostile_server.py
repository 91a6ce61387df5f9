"""The REST server against hostile clients, over real HTTP on loopback, each case bounded in time: bodies over the
limit refused before they are read (declared or streamed), errors that never echo the input, strict types (no
coercion of "3", true or "yes"; NaN and Infinity a 422, not a 500), one error shape, the event loop free while the
decoder works, the work of a client that disconnected dropped, and `serve --port 99999` a clear error."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from tests.conftest import loopback_server, rule_dataset
from typer.testing import CliRunner

import recalign.serve.app as serve_app
from recalign.cli import app as cli
from recalign.llm.recommender import LLMRecommender, RecommenderConfig
from recalign.serve import ServeSettings, create_app

LIMIT = 64 * 1024
SETTINGS = ServeSettings(beams=3, max_batch=4, max_wait_ms=5, max_history=20, max_exclude=100, max_batch_request=4,
                         max_body_bytes=LIMIT)
HUGE = 50 * 1024 * 1024  # the size the attacker sent


class Gate:
    """Wraps the decoder so that a test can hold it busy (``close``) and count its calls."""

    def __init__(self, decode):
        self.decode, self.open, self.histories, self.entered = decode, threading.Event(), [], 0
        self.open.set()

    def __call__(self, recommender, histories, *args):
        self.entered += 1
        self.open.wait(30)
        self.histories.extend(map(list, histories))
        return self.decode(recommender, histories, *args)


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    recommender = LLMRecommender.create(rule_dataset(), RecommenderConfig(backbone="tiny", precision="fp32",
                                                                          finetune="full"))
    gate = Gate(serve_app.recommend)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_app, "recommend", gate)
        with loopback_server(create_app(recommender, SETTINGS)) as base, \
                httpx.Client(base_url=base, timeout=30) as client:
            yield client, gate


def healthy(client: httpx.Client) -> dict:
    started = time.monotonic()
    health = client.get("/health", timeout=5)
    assert health.status_code == 200 and time.monotonic() - started < 2
    return health.json()


def raw_exchange(base: str, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Sends ``head`` and ``body`` on a fresh connection and returns what the server answers until it closes."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(head + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_huge_declared_body_is_refused_before_it_is_read(served):
    client, _ = served
    started = time.monotonic()
    head = (f"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {HUGE}\r\n"
            f"\r\n").encode()
    answer = raw_exchange(str(client.base_url).rstrip("/"), head, b'{"history": [')  # the rest never comes
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"limit of 65,536 bytes" in answer and len(answer) < 1000
    assert time.monotonic() - started < 5  # answered and closed without waiting for the 50 MB
    healthy(client)


def test_a_huge_streamed_body_is_cut_off_at_the_limit(served):
    client, _ = served
    sent = 0
    chunk = b"[" + b"1," * 32767 + b"1]"  # 64 KiB of exclusions per chunk, the same buffer every time

    def body():
        nonlocal sent
        while sent < HUGE:
            sent += len(chunk)
            yield chunk

    rss = rss_bytes()
    started = time.monotonic()
    try:  # no Content-Length: chunked, so the server can only count what arrives
        response = client.post("/recommend", content=body(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and len(response.content) < 1000
    except httpx.TransportError:  # the server closed the connection while the client was still sending
        pass
    assert time.monotonic() - started < 10 and sent < HUGE // 4  # the server stopped reading early
    assert rss_bytes() - rss < 20 * 1024 * 1024
    healthy(client)


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


ECHO_BAIT = "B" * 60_000


@pytest.mark.parametrize("body,message", [
    ({"history": [1], "exclude": [ECHO_BAIT]}, "exclude[0] = 'BBBB"),
    ({"history": [ECHO_BAIT] * 1}, "unknown item: history[0]"),
    ({"history": ECHO_BAIT}, "history: Input should be a valid array"),
    ({"history": [1], "exclude": [1] * 20_000}, "at most 100 items"),
    ({"history": [1], ECHO_BAIT: 1}, "Extra inputs are not permitted"),
    ({"history": [[ECHO_BAIT]]}, "history[0]: an item is a JSON integer"),
])
def test_errors_never_echo_the_input(served, body, message):
    client, _ = served
    response = client.post("/recommend", json=body)
    assert response.status_code == 422 and message in response.json()["detail"]
    assert len(response.content) < 1000


STRICT_CASES = [  # raw bodies: NaN and Infinity are not JSON, so no JSON library would write them
    (b'{"history": [1], "k": "3"}', "k: Input should be a valid integer"),
    (b'{"history": [1], "k": true}', "k: Input should be a valid integer"),
    (b'{"history": [1], "k": 2.0}', "k: Input should be a valid integer"),
    (b'{"history": [true, false]}', "history[0]: an item is a JSON integer (recalign item id) or string (raw id), "
                                    "not true"),
    (b'{"history": [1.5]}', "not 1.5"),
    (b'{"history": [null]}', "not null"),
    (b'{"history": ["3"]}', "unknown item: history[0] = '3'"),  # a string is a raw id, never the item id 3
    (b'{"history": [1], "exclude_history": "yes"}', "exclude_history: Input should be a valid boolean"),
    (b'{"history": [1], "exclude_history": 1}', "exclude_history: Input should be a valid boolean"),
    (b'{"history": [NaN]}', "history[0]: an item is a JSON integer (recalign item id) or string (raw id), not NaN"),
    (b'{"history": [1], "k": Infinity}', "k: Input should be a valid integer"),
    (b'{"history": [1], "k": -Infinity}', "k: Input should be a valid integer"),
    (b'{"history": [1], "exclude": [1, NaN]}', "exclude[1]: an item is a JSON integer"),
    (b'{"history": [1e400]}', "history[0]: an item is a JSON integer (recalign item id) or string (raw id), "
                              "not Infinity"),
    (b'{"history": [1], "k": 1180591620717411303424}', "k = 1180591620717411303424 is more than this server's 3"),
    (b'[1, 2]', "Input should be an object"),
    (b'null', "Input should be an object"),
    (b'{"history": [1], "k": 1', "Invalid JSON"),
    (b'\xff\xfe{"history": [1]}', "Invalid JSON"),
    (b'', "Invalid JSON"),
]


@pytest.mark.parametrize("body,message", STRICT_CASES)
def test_strict_types_and_non_finite_numbers_are_a_422(served, body, message):
    client, _ = served
    response = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail
    batch = client.post("/recommend/batch", content=b'{"requests": [{"history": [1]}, ' + body + b"]}",
                        headers={"content-type": "application/json"})
    assert batch.status_code == 422 and isinstance(batch.json()["detail"], str)
    if body.startswith(b'{"history"') and "Invalid JSON" not in message:
        assert "requests[1]." in batch.json()["detail"], batch.text  # the position inside the batch is named


def test_every_error_has_one_shape(served):
    client, _ = served
    for response in (client.post("/recommend", json={"k": 1}), client.get("/items/999"),
                     client.get("/items/1", params={"raw": "maybe"}), client.get("/nowhere"),
                     client.get("/recommend"), client.post("/recommend/batch", json={"requests": []})):
        assert response.status_code in (404, 405, 422), response.text
        assert set(response.json()) == {"detail"} and isinstance(response.json()["detail"], str), response.text


def test_the_event_loop_is_free_while_the_decoder_works(served):
    client, gate = served
    with held_decoder(client, gate, [1, 2]):
        for _ in range(3):  # health, item lookups and validation errors all answer while the decoder is held
            healthy(client)
            assert client.get("/items/3", timeout=2).status_code == 200
            assert client.post("/recommend", json={"history": ["nope"]}, timeout=2).status_code == 422


@contextmanager
def held_decoder(client: httpx.Client, gate: Gate, history: list[int]) -> Iterator[None]:
    """While inside, a request for ``history`` holds the decoder; on leaving it is answered."""
    entered = gate.entered
    gate.open.clear()
    with httpx.Client(base_url=client.base_url, timeout=30) as other:
        holder = threading.Thread(target=lambda: other.post("/recommend", json={"history": history}))
        holder.start()
        try:
            wait_for(lambda: gate.entered > entered, "the request to reach the decoder")
            yield
        finally:
            gate.open.set()
            holder.join(30)
    assert not holder.is_alive()


def test_the_work_of_a_client_that_disconnected_is_dropped(served):
    client, gate = served
    before, decoded = healthy(client), len(gate.histories)
    with held_decoder(client, gate, [1]):
        host, port = str(client.base_url).rstrip("/").removeprefix("http://").split(":")
        body = b'{"history": [7, 7, 7]}'
        with socket.create_connection((host, int(port)), timeout=10) as leaver:  # queues, then hangs up
            leaver.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: healthy(client)["waiting"] == 1, "the second request to queue")
        time.sleep(0.5)  # the server notices the hang-up
    wait_for(lambda: healthy(client)["dropped_requests"] == before["dropped_requests"] + 1, "the drop")
    assert gate.histories[decoded:] == [[1]]  # [7, 7, 7] was never decoded
    assert client.post("/recommend", json={"history": [7, 7, 7]}).status_code == 200  # and the server goes on


def wait_for(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("arguments,message", [
    (["--port", "99999"], "--port"),
    (["--port", "0"], "--port"),
    (["--beams", "0"], "--beams"),
    (["--max-body-kb", "0"], "--max-body-kb"),
    (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid:8000"),
])
def test_serve_refuses_bad_options_before_loading_the_model(tmp_path, arguments, message):
    result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "absent"), *arguments])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None)))


def test_serve_says_when_the_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "absent"), "--port", str(port)])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.output
