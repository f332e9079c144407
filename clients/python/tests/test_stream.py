"""Streaming a run's events, and picking a dropped stream up again."""

import asyncio
import json

import httpx
import pytest
from conftest import error_json, event_stream, make_async_client, make_client, run_events

from codeinterp import APIConnectionError, NotFoundError, OutputDeltaEvent, RunFinishedEvent
from codeinterp.models import RunCreatedEvent, RunInProgressEvent, RunQueuedEvent


def test_a_stream_yields_typed_events_in_order_and_ends_with_the_run(sleeps):
    seen = []

    def handler(request):
        seen.append(request)
        return event_stream([b": keep-going\n\n"] + run_events(stdout=["hello\n"]))

    with make_client(handler).runs.stream("python", "print('hello')") as stream:
        events = list(stream)
    assert [type(e) for e in events] == [
        RunCreatedEvent,
        RunQueuedEvent,
        RunInProgressEvent,
        OutputDeltaEvent,
        RunFinishedEvent,
    ]
    assert [e.sequence_number for e in events] == [0, 1, 2, 3, 4]
    assert events[3].delta == "hello\n" and events[3].id == "4.0.0.0"
    assert stream.run.status == "completed" and stream.run.stdout == "hello\n"
    assert stream.run_id == "run-1"
    body = json.loads(seen[0].content)
    assert body["stream"] is True and "wait" not in body
    assert seen[0].method == "POST" and seen[0].url.path == "/v1/runs"
    assert seen[0].headers["accept"] == "text/event-stream"


def dropping_server(all_events, drop_after, replay_from_id=True):
    """POST answers the first `drop_after` events then breaks; GET .../events answers what
    follows the Last-Event-ID (the id is `<count>.x.y.z`)."""
    requests = []

    def handler(request):
        requests.append(request)
        if request.method == "POST":
            return event_stream(
                all_events[:drop_after], then_raise=httpx.RemoteProtocolError("peer closed")
            )
        last = request.headers.get("last-event-id")
        start = int(last.split(".")[0]) if (last and replay_from_id) else 0
        return event_stream(all_events[start:])

    return requests, handler


def test_a_dropped_stream_resumes_from_the_last_event_id_with_no_gap_and_no_repeat(sleeps):
    events = run_events(stdout=["one\n", "two\n", "three\n"])
    requests, handler = dropping_server(events, drop_after=4)
    received = list(make_client(handler).runs.stream("python", "..."))
    assert [e.sequence_number for e in received] == list(range(len(events)))
    assert (
        "".join(e.delta for e in received if isinstance(e, OutputDeltaEvent)) == "one\ntwo\nthree\n"
    )
    assert [r.method for r in requests] == ["POST", "GET"]
    assert requests[1].url.path == "/v1/runs/run-1/events"
    assert requests[1].headers["last-event-id"] == "4.0.0.0"
    assert requests[1].headers["accept"] == "text/event-stream"
    assert received[-1].run.stdout == "one\ntwo\nthree\n"


def test_events_a_server_sends_again_are_not_shown_twice(sleeps):
    events = run_events(stdout=["one\n", "two\n"])
    requests, handler = dropping_server(events, drop_after=4, replay_from_id=False)
    received = list(make_client(handler).runs.stream("python", "..."))
    assert [e.sequence_number for e in received] == list(range(len(events)))


def test_a_stream_that_ends_without_its_terminal_event_is_resumed(sleeps):
    events = run_events()
    requests = []

    def handler(request):
        requests.append(request)
        if request.method == "POST":
            return event_stream(events[:3])  # a clean end, but too early
        return event_stream(events[3:])

    received = list(make_client(handler).runs.stream("python", "..."))
    assert received[-1].is_terminal and len(received) == len(events)
    assert requests[1].headers["last-event-id"] == "3.0.0.0"


def test_resuming_gives_up_after_max_resumes(sleeps):
    events = run_events()
    requests = []

    def handler(request):
        requests.append(request)
        if request.method == "POST":
            return event_stream(events[:2], then_raise=httpx.ReadError("reset"))
        raise httpx.ConnectError("refused")

    client = make_client(handler, max_retries=0)
    with pytest.raises(APIConnectionError) as caught:
        list(client.runs.stream("python", "...", max_resumes=3))
    assert "run-1" in str(caught.value) and "2.0.0.0" in str(caught.value)
    assert [r.method for r in requests] == ["POST", "GET", "GET", "GET"]


def test_a_drop_before_the_run_exists_is_not_repeated_without_an_idempotency_key(sleeps):
    requests = []

    def handler(request):
        requests.append(request)
        return event_stream([b": hello\n\n"], then_raise=httpx.ReadError("reset"))

    with pytest.raises(APIConnectionError):
        list(make_client(handler).runs.stream("python", "..."))
    assert len(requests) == 1


def test_a_drop_before_the_run_exists_repeats_the_post_with_its_idempotency_key(sleeps):
    events = run_events()
    requests = []

    def handler(request):
        requests.append(request)
        if len(requests) == 1:
            return event_stream([], then_raise=httpx.ReadError("reset"))
        return event_stream(events)

    received = list(make_client(handler).runs.stream("python", "...", idempotency_key="k-1"))
    assert len(received) == len(events)
    assert [(r.method, r.headers.get("idempotency-key")) for r in requests] == [
        ("POST", "k-1"),
        ("POST", "k-1"),
    ]


def test_events_of_an_existing_run_start_after_the_given_id(sleeps):
    events = run_events(stdout=["x\n", "y\n"])
    requests = []

    def handler(request):
        requests.append(request)
        return event_stream(events[4:])

    received = list(make_client(handler).runs.events("run-1", last_event_id="4.2.0.0"))
    assert requests[0].method == "GET" and requests[0].headers["last-event-id"] == "4.2.0.0"
    assert [e.sequence_number for e in received] == [4, 5]


def test_an_error_answer_to_a_stream_is_raised():
    client = make_client(
        lambda r: httpx.Response(404, json=error_json("No such run: run-9", param="id"))
    )
    with pytest.raises(NotFoundError):
        list(client.runs.events("run-9"))


def test_closing_a_stream_early_lets_go_of_the_connection(sleeps):
    closed = []

    class Body(httpx.SyncByteStream):
        def __iter__(self):
            yield from run_events()

        def close(self):
            closed.append(True)

    client = make_client(
        lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body())
    )
    with client.runs.stream("python", "...") as stream:
        next(iter(stream))
    assert closed == [True]


def test_the_async_stream_resumes_too(sleeps):
    events = run_events(stdout=["one\n", "two\n"])
    requests = []

    async def handler(request):
        requests.append(request)
        if request.method == "POST":
            return event_stream(events[:5], then_raise=httpx.ReadError("reset"), is_async=True)
        start = int(request.headers["last-event-id"].split(".")[0])
        return event_stream(events[start:], is_async=True)

    async def main():
        async with make_async_client(handler) as client:
            stream = client.runs.stream("python", "...")
            received = [e async for e in stream]
            return received, stream.run

    received, run = asyncio.run(main())
    assert [e.sequence_number for e in received] == list(range(len(events)))
    assert requests[1].headers["last-event-id"] == "5.0.0.0"
    assert run.stdout == "one\ntwo\n"
