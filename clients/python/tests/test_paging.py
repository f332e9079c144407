import asyncio

import httpx
from conftest import make_async_client, make_client, run_json

RUN_IDS = [f"run-{i}" for i in range(7)]


def paged_runs(requests):
    """GET /v1/runs over RUN_IDS, newest first, as the server pages them."""

    def handler(request):
        requests.append(request)
        limit = int(request.url.params.get("limit", 20))
        after = request.url.params.get("after")
        start = RUN_IDS.index(after) + 1 if after else 0
        data = RUN_IDS[start : start + limit]
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": [run_json(i) for i in data],
                "has_more": start + limit < len(RUN_IDS),
                "first_id": data[0] if data else None,
                "last_id": data[-1] if data else None,
            },
        )

    return handler


def test_list_all_follows_the_cursor_through_every_page():
    requests = []
    runs = list(make_client(paged_runs(requests)).runs.list_all(limit=3))
    assert [r.id for r in runs] == RUN_IDS
    assert [r.url.params.get("after") for r in requests] == [None, "run-2", "run-5"]
    assert all(r.url.params["limit"] == "3" for r in requests)


def test_a_page_is_one_page_and_iterating_it_goes_on():
    requests = []
    page = make_client(paged_runs(requests)).runs.list(limit=2, after="run-0")
    assert [r.id for r in page.data] == ["run-1", "run-2"] and page.has_next_page()
    assert page.next_page().data[0].id == "run-3"
    assert [r.id for r in page] == RUN_IDS[1:]


def test_the_last_page_has_no_next_page():
    page = make_client(paged_runs([])).runs.list(limit=100)
    assert len(page.data) == 7 and not page.has_next_page()


def test_a_server_that_repeats_its_cursor_does_not_loop_forever():
    def handler(request):
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": [run_json("run-a")],
                "has_more": True,
                "first_id": "run-a",
                "last_id": "run-a",
            },
        )

    assert [r.id for r in make_client(handler).runs.list_all()] == ["run-a", "run-a"]


def test_the_async_list_pages_too():
    requests = []

    async def handler(request):
        return paged_runs(requests)(request)

    async def main():
        async with make_async_client(handler) as client:
            return [r.id async for r in client.runs.list_all(limit=4)]

    assert asyncio.run(main()) == RUN_IDS
    assert [r.url.params.get("after") for r in requests] == [None, "run-3"]
