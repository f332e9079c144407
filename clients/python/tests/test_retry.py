"""Retries, timeouts and the connection settings."""

import json

import httpx
import pytest
from conftest import error_json, make_client, run_json

from codeinterp import (
    APIConnectionError,
    APITimeoutError,
    Client,
    InternalServerError,
    RateLimitError,
)
from codeinterp.runs import wait_read_timeout


def rate_limited_then_ok(times, retry_after="2", ok=None):
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) <= times:
            return httpx.Response(
                429,
                json=error_json("slow down", type="requests", code="rate_limit_exceeded"),
                headers={"retry-after": retry_after},
            )
        return httpx.Response(200, json=ok or run_json())

    return calls, handler


def test_a_429_is_retried_after_the_servers_retry_after(sleeps):
    calls, handler = rate_limited_then_ok(2, retry_after="2")
    run = make_client(handler).runs.create("python", "print(1+1)")
    assert run.id == "run-1"
    assert len(calls) == 3 and sleeps == [2.0, 2.0]


def test_429_gives_up_after_max_retries(sleeps):
    calls, handler = rate_limited_then_ok(10, retry_after="1")
    with pytest.raises(RateLimitError) as caught:
        make_client(handler, max_retries=2).runs.get("run-1")
    assert len(calls) == 3 and sleeps == [1.0, 1.0]
    assert caught.value.retry_after == 1.0 and caught.value.code == "rate_limit_exceeded"


def test_a_retry_after_past_the_wait_cap_is_not_waited_for(sleeps):
    calls, handler = rate_limited_then_ok(1, retry_after="120")
    with pytest.raises(RateLimitError):
        make_client(handler, max_retry_wait=60).runs.get("run-1")
    assert len(calls) == 1 and sleeps == []


def test_the_total_wait_is_capped(sleeps):
    calls, handler = rate_limited_then_ok(10, retry_after="25")
    with pytest.raises(RateLimitError):
        make_client(handler, max_retries=5, max_retry_wait=60).runs.get("run-1")
    assert sleeps == [25.0, 25.0] and len(calls) == 3


def failing_then_ok(failures, exc=None):
    exc = exc or httpx.ConnectError("refused")
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) <= failures:
            raise exc
        return httpx.Response(200, json=run_json())

    return calls, handler


def test_a_get_is_retried_after_a_connection_error(sleeps):
    calls, handler = failing_then_ok(1)
    assert make_client(handler).runs.get("run-1").id == "run-1"
    assert len(calls) == 2 and len(sleeps) == 1


def test_a_post_without_an_idempotency_key_is_never_repeated_after_a_connection_error(sleeps):
    calls, handler = failing_then_ok(1, httpx.ReadError("reset"))
    with pytest.raises(APIConnectionError):
        make_client(handler).runs.create("python", "print(1)")
    assert len(calls) == 1 and sleeps == []


def test_a_post_with_an_idempotency_key_is_repeated_with_the_same_key(sleeps):
    calls, handler = failing_then_ok(1, httpx.ReadError("reset"))
    make_client(handler).runs.create("python", "print(1)", idempotency_key="job-7")
    assert len(calls) == 2
    assert [c.headers["idempotency-key"] for c in calls] == ["job-7", "job-7"]


def test_a_timeout_is_raised_as_api_timeout_error(sleeps):
    calls, handler = failing_then_ok(5, httpx.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError):
        make_client(handler, max_retries=1).runs.get("run-1")
    assert len(calls) == 2


def test_a_503_is_retried_for_a_get_but_not_for_a_create(sleeps):
    def handler(request):
        return httpx.Response(503, json=error_json("busy", type="server_error", code="unavailable"))

    counting = []
    client = make_client(lambda r: counting.append(r) or handler(r), max_retries=2)
    with pytest.raises(InternalServerError):
        client.runs.get("run-1")
    assert len(counting) == 3
    counting.clear()
    with pytest.raises(InternalServerError) as caught:
        client.runs.create("python", "x")
    assert len(counting) == 1 and caught.value.code == "unavailable"


def test_a_cancel_is_safe_to_repeat(sleeps):
    calls, handler = failing_then_ok(1)
    make_client(handler).runs.cancel("run-1")
    assert len(calls) == 2


def read_timeout(request):
    return request.extensions["timeout"]["read"]


def test_a_waiting_create_reads_for_the_runs_timeout_plus_the_servers_slack():
    seen = []
    client = make_client(
        lambda r: seen.append(r) or httpx.Response(200, json=run_json()), timeout=10
    )
    client.runs.create("python", "x", limits={"timeout_ms": 120_000})
    client.runs.create("python", "x")
    client.runs.create("python", "x", wait=False)
    client.runs.create("python", "x", limits={"timeout_ms": 120_000}, timeout=5)
    assert read_timeout(seen[0]) == wait_read_timeout({"timeout_ms": 120_000}) >= 120 + 150
    assert read_timeout(seen[1]) == wait_read_timeout(None) >= 30 + 150
    assert read_timeout(seen[2]) == 10
    assert read_timeout(seen[3]) == 5
    assert json.loads(seen[2].content)["wait"] is False
    assert "wait" not in json.loads(seen[0].content)


def test_the_create_body_has_only_what_was_given():
    seen = []
    client = make_client(lambda r: seen.append(r) or httpx.Response(200, json=run_json()))
    client.runs.create(
        "python",
        "print(1)",
        stdin="in",
        args=["a", 2],
        files=["file-1"],
        limits={"timeout_ms": 3000, "memory_mb": None},
        container="cntr_1",
    )
    client.runs.create("node", "console.log(1)")
    assert json.loads(seen[0].content) == {
        "language": "python",
        "code": "print(1)",
        "stdin": "in",
        "args": ["a", "2"],
        "files": ["file-1"],
        "limits": {"timeout_ms": 3000},
        "container": "cntr_1",
    }
    assert json.loads(seen[1].content) == {"language": "node", "code": "console.log(1)"}


def test_url_and_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CODEINTERP_URL", "http://from-env:9000/")
    monkeypatch.setenv("CODEINTERP_API_KEY", "env-key")
    seen = []
    transport = httpx.MockTransport(
        lambda r: seen.append(r) or httpx.Response(200, json=run_json())
    )
    Client(http_client=httpx.Client(transport=transport)).runs.get("run-1")
    assert str(seen[0].url) == "http://from-env:9000/v1/runs/run-1"
    assert seen[0].headers["authorization"] == "Bearer env-key"
    Client(
        api_key="arg", base_url="http://arg", http_client=httpx.Client(transport=transport)
    ).runs.get("r")
    assert (
        str(seen[1].url) == "http://arg/v1/runs/r"
        and seen[1].headers["authorization"] == "Bearer arg"
    )


def test_the_default_url_is_localhost(monkeypatch):
    monkeypatch.delenv("CODEINTERP_URL", raising=False)
    assert Client(api_key="k").base_url == "http://localhost:8080"


def test_wait_polls_until_the_run_ends(sleeps):
    statuses = iter(["queued", "running", "completed"])
    client = make_client(lambda r: httpx.Response(200, json=run_json(status=next(statuses))))
    assert client.runs.wait("run-1").status == "completed"
    assert sleeps == [0.25, 0.375]


def test_wait_gives_up_after_its_timeout(sleeps):
    client = make_client(lambda r: httpx.Response(200, json=run_json(status="running")))
    with pytest.raises(APITimeoutError):
        client.runs.wait("run-1", timeout=0)
