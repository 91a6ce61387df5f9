"""The REST app: ``POST /recommend``, ``POST /recommend/batch``, ``GET /items/{item_id}``, ``GET /health``, and the
OpenAPI description at ``/openapi.json`` (browsable at ``/docs``).

Every request is decoded with the same number of beams (``ServeSettings.beams``), so whether a request shares a
decoder call with others never changes its answer; ``k`` may be at most that number. Exclusions are removed from
the beams' ranked items before the top ``k`` are taken, so a response holds fewer than ``k`` items only when the
exclusions took more than the beams had to spare. History items are recalign item ids (JSON integers) or the
dataset's raw ids (JSON strings), mixed freely.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from ..decode import BeamConfig
from ..decode.recommend import Recommendation, recommend
from ..llm.recommender import LLMRecommender
from .batcher import MicroBatcher

ItemRef = int | str  # an integer is a recalign item id, a string the dataset's raw id


@dataclass
class ServeSettings:
    beams: int = 10  # beams for every request; k may be at most this
    max_batch: int = 8  # histories per decoder call (1: no micro-batching)
    max_wait_ms: float = 5.0  # how long a call waits for more requests once one arrived
    max_history: int = 200  # items per history a request may send (the prompt keeps the most recent ones)
    max_batch_request: int = 64  # histories per /recommend/batch request
    model: str = ""  # shown by /health


class RecommendRequest(BaseModel):
    history: list[ItemRef] = Field(min_length=1, description="The user's items, oldest first.")
    k: int | None = Field(None, ge=1, description="How many items to return: at most the server's beams, which is "
                                                  "the default.")
    exclude: list[ItemRef] = Field(default_factory=list, max_length=10_000, description="Items never to return.")
    exclude_history: bool = Field(False, description="Never return an item of the history.")


class RecommendedItem(BaseModel):
    item: int
    raw_id: str
    title: str
    score: float  # the identifier's length-normalised log-probability under the LLM


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]


class BatchRequest(BaseModel):
    requests: list[RecommendRequest] = Field(min_length=1)


class BatchResponse(BaseModel):
    results: list[RecommendResponse]


class ItemResponse(BaseModel):
    item: int
    raw_id: str
    title: str


class Catalogue:
    """Resolves item references of requests, with errors that name the field and position."""

    def __init__(self, recommender: LLMRecommender):
        self.raw_ids, self.titles = recommender.raw_ids, recommender.titles
        self.by_raw = {raw: item for item, raw in enumerate(self.raw_ids)}

    def resolve(self, refs: list[ItemRef], field: str) -> list[int]:
        items, unknown = [], []
        for position, ref in enumerate(refs):
            item = self.by_raw.get(ref) if isinstance(ref, str) else (ref if 0 <= ref < len(self.raw_ids) else None)
            if item is None:
                unknown.append(f"{field}[{position}] = {ref!r}")
            items.append(item)
        if unknown:
            raise HTTPException(422, f"unknown item{'s' if len(unknown) > 1 else ''}: {', '.join(unknown[:10])} "
                                     f"(item ids are 0..{len(self.raw_ids) - 1}; raw ids are strings, matched "
                                     "exactly)")
        return items


def create_app(recommender: LLMRecommender, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    if settings.beams < 1 or settings.max_history < 1 or settings.max_batch_request < 1:
        raise ValueError(f"beams, max_history and max_batch_request must be at least 1: {settings}")
    catalogue = Catalogue(recommender)
    config = BeamConfig(num_beams=settings.beams, batch_size=settings.max_batch)

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
                              f"beam search ({settings.beams} beams) over the item identifiers.")

    def parse(request: RecommendRequest, where: str) -> tuple[list[int], set[int]]:
        if request.k is None:
            request.k = settings.beams
        if request.k > settings.beams:
            raise HTTPException(422, f"{where}k = {request.k} is more than this server's {settings.beams} beams")
        if len(request.history) > settings.max_history:
            raise HTTPException(422, f"{where}history has {len(request.history)} items; at most "
                                     f"{settings.max_history}")
        history = catalogue.resolve(request.history, f"{where}history")
        excluded = set(catalogue.resolve(request.exclude, f"{where}exclude"))
        return history, excluded | (set(history) if request.exclude_history else set())

    def answer(rows: list[Recommendation], excluded: set[int], k: int) -> RecommendResponse:
        kept = [row for row in rows if row.item not in excluded][:k]
        return RecommendResponse(items=[RecommendedItem(**asdict(row)) for row in kept])

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend_one(request: RecommendRequest) -> RecommendResponse:
        """The next items for one history."""
        history, excluded = parse(request, "")
        (rows,) = await batcher.submit([history])
        return answer(rows, excluded, request.k)

    @app.post("/recommend/batch", response_model=BatchResponse)
    async def recommend_many(batch: BatchRequest) -> BatchResponse:
        """The next items for several histories, answered in order."""
        if len(batch.requests) > settings.max_batch_request:
            raise HTTPException(422, f"{len(batch.requests)} requests in one batch; at most "
                                     f"{settings.max_batch_request}")
        parsed = [parse(request, f"requests[{n}].") for n, request in enumerate(batch.requests)]
        results = await batcher.submit([history for history, _ in parsed])
        return BatchResponse(results=[answer(rows, excluded, request.k)
                                      for rows, (_, excluded), request in zip(results, parsed, batch.requests)])

    @app.get("/items/{item_id}", response_model=ItemResponse)
    async def item(item_id: str, raw: bool = Query(False, description="item_id is the dataset's raw id")):
        """One catalogue item by recalign id (or raw id with ?raw=true)."""
        found = catalogue.by_raw.get(item_id) if raw else (int(item_id) if item_id.isascii() and item_id.isdigit()
                                                             and len(item_id) < 19 else None)
        if found is None or found >= len(catalogue.raw_ids):
            raise HTTPException(404, f"no item {item_id!r}" + (" (raw id)" if raw else
                                                              f" (item ids are 0..{len(catalogue.raw_ids) - 1})"))
        return ItemResponse(item=found, raw_id=catalogue.raw_ids[found], title=catalogue.titles[found])

    @app.get("/health")
    async def health() -> dict:
        """Liveness, the catalogue size and the micro-batching counters."""
        return {"status": "ok", "model": settings.model, "items": len(catalogue.raw_ids), "beams": settings.beams,
                "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms, "waiting": batcher.waiting,
                "decoder_calls": batcher.stats.calls, "histories_decoded": batcher.stats.jobs,
                "largest_call": batcher.stats.largest}

    return app

