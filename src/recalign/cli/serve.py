"""``recalign serve``: the REST app over a trained LLM recommender."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DecodePrecisionOption,
    ThreadsOption,
    console,
    fail,
    quiet_transformers,
    refuse_candidate_model,
    set_threads,
)


def serve_command(
    model: Annotated[Path, typer.Option(help="A folder written by `recalign llm train`.")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    beams: Annotated[int, typer.Option(help="Beams for every request; a request's k may be at most this.",
                                       min=1)] = 10,
    max_batch: Annotated[int, typer.Option(help="Histories per decoder call (1: no micro-batching).", min=1)] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long a decoder call waits for more requests.",
                                               min=0)] = 5.0,
    max_history: Annotated[int, typer.Option(help="Most items a request's history may hold (longer ones are refused "
                                                  "with 422; the prompt keeps the model's max_history most recent "
                                                  "ones).", min=1)] = 200,
    max_body_kb: Annotated[int, typer.Option(help="Largest request body in KiB; larger ones get a 413 before they "
                                                  "are read.", min=1)] = 1024,
    precision: DecodePrecisionOption = "auto",
    threads: ThreadsOption = None,
) -> None:
    """Serve recommendations over HTTP: POST /recommend, POST /recommend/batch, GET /items/{id}, GET /health;
    OpenAPI at /openapi.json, interactive docs at /docs."""
    import uvicorn

    from ..llm.recommender import LLMRecommender
    from ..serve import ServeSettings, create_app

    check_listening(host, port)  # before the model loads, which takes a while
    set_threads(threads)
    quiet_transformers()
    refuse_candidate_model(model)
    try:
        recommender = LLMRecommender.from_pretrained(model, precision=precision)
        app = create_app(recommender, ServeSettings(beams=beams, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                                    max_history=max_history, max_body_bytes=max_body_kb * 1024,
                                                    model=str(model)))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        fail(f"{model}: {exc}")
    console.print(f"serving {model} ({len(recommender.raw_ids):,} items, {beams} beams, micro-batches of up to "
                  f"{max_batch}) on http://{host}:{port} (docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def check_listening(host: str, port: int) -> None:
    """Fails with a clear message when ``host:port`` cannot be listened on (taken, or no such interface)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
