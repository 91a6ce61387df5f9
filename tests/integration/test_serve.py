"""The REST server on loopback, over real HTTP: answers equal the decoder's, raw ids, exclusions, the batch
endpoint, concurrent requests micro-batched without changing answers, and every bad input a 4xx that leaves
the server serving."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from tests.conftest import N_ITEMS, loopback_server, rule_dataset

from recalign.decode import BeamConfig
from recalign.decode.recommend import recommend
from recalign.llm.recommender import LLMRecommender, RecommenderConfig
from recalign.serve import ServeSettings, create_app

BEAMS = 5
SETTINGS = ServeSettings(beams=BEAMS, max_batch=8, max_wait_ms=20, max_history=20, max_batch_request=4)


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)  # an untrained tiny model: its answers are arbitrary, but always catalogue items
    recommender = LLMRecommender.create(rule_dataset(), RecommenderConfig(backbone="tiny", precision="fp32",
                                                                          finetune="full"))
    with loopback_server(create_app(recommender, SETTINGS)) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client, recommender


def expected(recommender, history: list[int], k: int, excluded: set[int] = frozenset()) -> list[dict]:
    (rows,) = recommend(recommender, [history], None, BeamConfig(num_beams=BEAMS))
    return [{"item": r.item, "raw_id": r.raw_id, "title": r.title} for r in rows if r.item not in excluded][:k]


def items_of(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [{key: row[key] for key in ("item", "raw_id", "title")} for row in response.json()["items"]]


def test_answers_are_the_decoders(served):
    client, recommender = served
    for history, k in (([1, 2, 3], 5), ([7], 1), ([0, 11, 4, 4], 3)):
        response = client.post("/recommend", json={"history": history, "k": k})
        assert items_of(response) == expected(recommender, history, k)
        scores = [row["score"] for row in response.json()["items"]]
        assert scores == sorted(scores, reverse=True)
    # raw ids (strings) and item ids (integers) name the same items, mixed freely
    assert items_of(client.post("/recommend", json={"history": ["i1", 2, "i3"], "k": 5})) == \
        expected(recommender, [1, 2, 3], 5)


def test_exclusions_are_removed_before_the_top_k(served):
    client, recommender = served
    full = expected(recommender, [1, 2, 3], BEAMS)
    banned = {full[0]["item"], full[2]["item"]}
    got = items_of(client.post("/recommend", json={"history": [1, 2, 3], "k": 3, "exclude": sorted(banned)}))
    assert got == expected(recommender, [1, 2, 3], 3, banned)
    assert not banned & {row["item"] for row in got}
    history = [row["item"] for row in full[:2]]
    got = items_of(client.post("/recommend", json={"history": history, "k": 3, "exclude_history": True}))
    assert got == expected(recommender, history, 3, set(history))


def test_the_batch_endpoint_answers_each_request_in_order(served):
    client, recommender = served
    requests = [{"history": [1, 2], "k": 2}, {"history": ["i5"], "k": 4, "exclude": [0]}, {"history": [9, 9, 9]}]
    response = client.post("/recommend/batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    assert [row["item"] for row in results[0]["items"]] == [r["item"] for r in expected(recommender, [1, 2], 2)]
    assert [row["item"] for row in results[1]["items"]] == [r["item"] for r in expected(recommender, [5], 4, {0})]
    assert [row["item"] for row in results[2]["items"]] == [r["item"] for r in expected(recommender, [9, 9, 9], BEAMS)]
    assert len(results[2]["items"]) == BEAMS  # k defaults to the server's beams


def test_concurrent_requests_share_decoder_calls_without_changing_answers(served):
    client, recommender = served
    histories = [[a, b] for a in range(4) for b in range(4)]
    before = client.get("/health").json()
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda h: client.post("/recommend", json={"history": h, "k": 3}), histories))
    for history, response in zip(histories, responses):
        assert items_of(response) == expected(recommender, history, 3)
        # scores agree to float rounding only: a padded batch runs other matrix shapes (the README says so)
        alone = recommend(recommender, [history], None, BeamConfig(num_beams=BEAMS))[0][:3]
        assert [row["score"] for row in response.json()["items"]] == pytest.approx([r.score for r in alone], abs=1e-4)
    after = client.get("/health").json()
    assert after["histories_decoded"] - before["histories_decoded"] == len(histories)
    assert after["decoder_calls"] - before["decoder_calls"] < len(histories)  # some requests were batched
    assert after["largest_call"] > 1


def test_items_endpoint(served):
    client, _ = served
    assert client.get("/items/3").json() == {"item": 3, "raw_id": "i3", "title": "t3"}
    assert client.get("/items/i3", params={"raw": "true"}).json()["item"] == 3
    for path, params in (("/items/999", {}), ("/items/abc", {}), ("/items/-1", {}), ("/items/i999", {"raw": "true"}),
                         ("/items/²", {}), ("/items/" + "9" * 5000, {})):
        response = client.get(path, params=params)
        assert response.status_code == 404 and "no item" in response.json()["detail"]


BAD_REQUESTS = [
    ({"history": [N_ITEMS + 5]}, "history[0] = 17"),
    ({"history": [1, "nope"]}, "history[1] = 'nope'"),
    ({"history": [-1]}, "history[0] = -1"),
    ({"history": []}, "at least 1 item"),
    ({"history": [1], "k": 0}, "greater than or equal to 1"),
    ({"history": [1], "k": BEAMS + 1}, "beams"),
    ({"history": [1], "exclude": ["zzz"]}, "exclude[0]"),
    ({"history": list(range(N_ITEMS)) * 2}, "at most 20"),
    ({"history": "1,2,3"}, "valid array"),
    ({"history": [1.5]}, "history"),
    ({"k": 3}, "Field required"),
]


@pytest.mark.parametrize("body,message", BAD_REQUESTS)
def test_bad_input_is_a_4xx_with_a_message(served, body, message):
    client, _ = served
    response = client.post("/recommend", json=body)
    assert response.status_code == 422
    assert message in response.text
    assert client.get("/health").json()["status"] == "ok"


def test_malformed_json_and_bad_batches(served):
    client, _ = served
    response = client.post("/recommend", content=b'{"history": [1, 2', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "Invalid JSON" in response.text
    response = client.post("/recommend/batch", json={"requests": [{"history": [1]}] * 5})
    assert response.status_code == 422 and "at most 4" in response.text
    response = client.post("/recommend/batch", json={"requests": [{"history": [1]}, {"history": [99]}]})
    assert response.status_code == 422 and "requests[1].history[0] = 99" in response.text
    assert client.post("/recommend/batch", json={"requests": []}).status_code == 422
    assert client.get("/health").status_code == 200


def test_openapi_describes_the_endpoints(served):
    client, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/recommend/batch", "/items/{item_id}", "/health"} <= set(paths)
    assert "post" in paths["/recommend"] and "get" in paths["/items/{item_id}"]
