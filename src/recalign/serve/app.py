"""The REST app: ``POST /recommend``, ``POST /recommend/batch``, ``GET /items/{item_id}``, ``GET /health``, and the
OpenAPI description at ``/openapi.json`` (browsable at ``/docs``).

Every request is decoded with the same number of beams (``ServeSettings.beams``), so whether a request shares a
decoder call with others never changes which items it gets; ``k`` may be at most that number. Exclusions are removed
from the beams' ranked items before the top ``k`` are taken, so a response holds fewer than ``k`` items only when
the exclusions took more than the beams had to spare. History items are recalign item ids (JSON integers) or the
dataset's raw ids (JSON strings), mixed freely.

A hostile client cannot hold the server: a body over ``max_body_bytes`` is refused (413) before it is read, list
lengths are bounded by the request schema, the JSON is parsed and validated (strictly: no ``"3"`` for 3) in a worker
thread, errors never echo the input, and a request whose client disconnects is dropped before it is decoded. Every
error body has one shape, ``{"detail": "<message>"}``.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool

from ..decode import BeamConfig
from ..decode.recommend import Recommendation, recommend
from ..llm.recommender import LLMRecommender
from .batcher import MicroBatcher


@dataclass
class ServeSettings:
    beams: int = 10  # beams for every request; k may be at most this
    max_batch: int = 8  # histories per decoder call (1: no micro-batching)
    max_wait_ms: float = 5.0  # how long a call waits for more requests once one arrived
    max_history: int = 200  # items per history a request may send (the prompt keeps the most recent ones)
    max_exclude: int = 10_000  # items per exclude list
    max_batch_request: int = 64  # histories per /recommend/batch request
    max_body_bytes: int = 1 << 20  # request body; larger ones are refused (413) before they are read
    model: str = ""  # shown by /health


def shorten(text: str, limit: int = 40) -> str:
    """A piece of input for an error message: never the whole of an unbounded one."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def item_ref(value: Any) -> int | str:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    raise PydanticCustomError("item_ref", "an item is a JSON integer (recalign item id) or string (raw id), not "
                                          "{value}", {"value": shorten(json.dumps(value))})


# an integer is a recalign item id, a string the dataset's raw id; nothing else (no true, 1.5 or "3" for 3)
ItemRef = Annotated[int | str, PlainValidator(item_ref),
                    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]})]
STRICT = ConfigDict(strict=True, extra="forbid")


def request_models(settings: ServeSettings) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request bodies, their list lengths bounded by the server's settings (and shown in the OpenAPI schema)."""

    class RecommendRequest(BaseModel):
        model_config = STRICT
        history: list[ItemRef] = Field(min_length=1, max_length=settings.max_history,
                                       description="The user's items, oldest first.")
        k: int | None = Field(None, ge=1, description="How many items to return: at most the server's beams, "
                                                      "which is the default.")
        exclude: list[ItemRef] = Field(default_factory=list, max_length=settings.max_exclude,
                                       description="Items never to return.")
        exclude_history: bool = Field(False, description="Never return an item of the history.")

    class BatchRequest(BaseModel):
        model_config = STRICT
        requests: list[RecommendRequest] = Field(min_length=1, max_length=settings.max_batch_request)

    return RecommendRequest, BatchRequest


class RecommendedItem(BaseModel):
    item: int
    raw_id: str
    title: str
    score: float  # the identifier's length-normalised log-probability under the LLM


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]


class BatchResponse(BaseModel):
    results: list[RecommendResponse]


class ItemResponse(BaseModel):
    item: int
    raw_id: str
    title: str


class ErrorResponse(BaseModel):
    detail: str  # what was wrong, naming the field and position (``history[2]: ...``)


ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (413, "The body is over the server's limit."), (422, "The body is not a valid request."))}


def describe(errors: list[dict], limit: int = 10) -> str:
    """pydantic's errors as one message, ``history[1]: Input should be ...; k: ...``, without their inputs."""
    parts = []
    for error in errors[:limit]:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" if len(part) < 40 else f".{shorten(part)}"
                        for part in error["loc"]).lstrip(".")  # a field name is input too (an unknown one)
        parts.append(f"{where}: {error['msg'][:300]}" if where else error["msg"][:300])
    return "; ".join(parts) + (f" (and {len(errors) - limit} more)" if len(errors) > limit else "")


class Catalogue:
    """Resolves item references of requests, with errors that name the field and position."""

    def __init__(self, recommender: LLMRecommender):
        self.raw_ids, self.titles = recommender.raw_ids, recommender.titles
        self.by_raw = {raw: item for item, raw in enumerate(self.raw_ids)}

    def resolve(self, refs: list[int | str], field: str) -> list[int]:
        items, unknown = [], []
        for position, ref in enumerate(refs):
            item = self.by_raw.get(ref) if isinstance(ref, str) else (ref if 0 <= ref < len(self.raw_ids) else None)
            if item is None:
                unknown.append(f"{field}[{position}] = {shorten(repr(ref))}")
            items.append(item)
        if unknown:
            raise HTTPException(422, f"unknown item{'s' if len(unknown) > 1 else ''}: {', '.join(unknown[:10])}"
                                     f"{f' (and {len(unknown) - 10} more)' if len(unknown) > 10 else ''} (item ids "
                                     f"are 0..{len(self.raw_ids) - 1}; raw ids are strings, matched exactly)")
        return items


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over ``limit`` bytes: by its declared length before any
    of it is read, or while it streams in."""
    declared = request.headers.get("content-length", "")
    too_large = HTTPException(413, f"the request body is over this server's limit of {limit:,} bytes",
                              headers={"connection": "close"})  # the unread rest of the body is not waited for
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(recommender: LLMRecommender, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    if min(settings.beams, settings.max_history, settings.max_batch_request, settings.max_body_bytes) < 1:
        raise ValueError(f"beams, max_history, max_batch_request and max_body_bytes must be at least 1: {settings}")
    catalogue = Catalogue(recommender)
    config = BeamConfig(num_beams=settings.beams, batch_size=settings.max_batch)
    RecommendRequest, BatchRequest = request_models(settings)

    def decode(histories: list[list[int]]) -> list[list[Recommendation]]:
        return recommend(recommender, histories, None, config)

    batcher = MicroBatcher(decode, settings.max_batch, settings.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="recalign", lifespan=lifespan,
                  description="Generative recommendation: every answer is a catalogue item, found by constrained "
                              f"beam search ({settings.beams} beams) over the item identifiers. Every error body is "
                              '`{"detail": "<message>"}`.')

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:  # logged by uvicorn as well
        return JSONResponse({"detail": f"internal error: {type(exc).__name__} (see the server's log)"}, 500)

    def parse(request, where: str) -> tuple[list[int], set[int], int]:
        k = settings.beams if request.k is None else request.k
        if k > settings.beams:
            raise HTTPException(422, f"{where}k = {k} is more than this server's {settings.beams} beams")
        history = catalogue.resolve(request.history, f"{where}history")
        excluded = set(catalogue.resolve(request.exclude, f"{where}exclude"))
        return history, excluded | (set(history) if request.exclude_history else set()), k

    def parse_one(body: bytes) -> list[tuple[list[int], set[int], int]]:
        return [parse(RecommendRequest.model_validate_json(body), "")]

    def parse_batch(body: bytes) -> list[tuple[list[int], set[int], int]]:
        batch = BatchRequest.model_validate_json(body)
        return [parse(request, f"requests[{n}].") for n, request in enumerate(batch.requests)]

    async def answer(request: Request, parser) -> list[RecommendResponse] | Response:
        body = await read_body(request, settings.max_body_bytes)
        try:  # parsing and validation in a worker thread: the event loop goes on serving others meanwhile
            parsed = await run_in_threadpool(parser, body)
        except ValidationError as exc:
            raise HTTPException(422, describe(exc.errors(include_url=False, include_input=False))) from None
        work = asyncio.ensure_future(batcher.submit([history for history, _, _ in parsed]))
        gone = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            dropped = not work.done()
            if dropped:  # the client has gone (or the server stops): its decoding is dropped if not yet started
                work.cancel()
        if dropped:
            return Response(status_code=499)  # nobody reads it
        return [RecommendResponse(items=[RecommendedItem(**asdict(row)) for row in rows
                                         if row.item not in excluded][:k])
                for rows, (_, excluded, k) in zip(work.result(), parsed)]

    def body_of(model: type[BaseModel]) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
            "$ref": f"#/components/schemas/{model.__name__}"}}}}}

    @app.post("/recommend", response_model=RecommendResponse, openapi_extra=body_of(RecommendRequest),
              responses=ERRORS)
    async def recommend_one(request: Request):
        """The next items for one history."""
        answers = await answer(request, parse_one)
        return answers if isinstance(answers, Response) else answers[0]

    @app.post("/recommend/batch", response_model=BatchResponse, openapi_extra=body_of(BatchRequest),
              responses=ERRORS)
    async def recommend_many(request: Request):
        """The next items for several histories, answered in order."""
        answers = await answer(request, parse_batch)
        return answers if isinstance(answers, Response) else BatchResponse(results=answers)

    @app.get("/items/{item_id}", response_model=ItemResponse,
             responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    async def item(item_id: str, raw: bool = Query(False, description="item_id is the dataset's raw id")):
        """One catalogue item by recalign id (or raw id with ?raw=true)."""
        found = catalogue.by_raw.get(item_id) if raw else (int(item_id) if item_id.isascii() and item_id.isdigit()
                                                             and len(item_id) < 19 else None)
        if found is None or found >= len(catalogue.raw_ids):
            where = " (raw id)" if raw else f" (item ids are 0..{len(catalogue.raw_ids) - 1})"
            raise HTTPException(404, f"no item {shorten(repr(item_id))}{where}")
        return ItemResponse(item=found, raw_id=catalogue.raw_ids[found], title=catalogue.titles[found])

    @app.get("/health")
    async def health() -> dict:
        """Liveness, the catalogue size and the micro-batching counters."""
        return {"status": "ok", "model": settings.model, "items": len(catalogue.raw_ids), "beams": settings.beams,
                "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms, "waiting": batcher.waiting,
                "decoder_calls": batcher.stats.calls, "histories_decoded": batcher.stats.jobs,
                "largest_call": batcher.stats.largest, "dropped_requests": batcher.stats.dropped}

    request_schemas(app, [RecommendRequest, BatchRequest])
    return app


def request_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """The request bodies are parsed by the endpoints themselves (off the event loop), so FastAPI does not see them:
    their schemas join the OpenAPI components here."""
    from pydantic.json_schema import models_json_schema

    describe_app = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = describe_app()
            _, definitions = models_json_schema([(model, "validation") for model in models],
                                                ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
        return app.openapi_schema

    app.openapi = openapi
