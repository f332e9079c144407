"""Helpers for the unit tests (a client on ``httpx.MockTransport``, no server; canned
objects and event streams) and, at the end, the live tests' settings."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import httpx
import pytest

import codeinterp._transport
from codeinterp import AsyncClient, Client

BASE = "http://api.test"
KEY = "sk-test"


def make_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Client:
    return Client(
        api_key=KEY,
        base_url=BASE,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        **kwargs,
    )


def make_async_client(handler: Callable[[httpx.Request], Any], **kwargs: Any) -> AsyncClient:
    return AsyncClient(
        api_key=KEY,
        base_url=BASE,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        **kwargs,
    )


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """Waits the client would have slept, recorded instead of slept."""
    waited: List[float] = []

    async def asleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(codeinterp._transport, "_sleep", waited.append)
    monkeypatch.setattr(codeinterp._transport, "_asleep", asleep)
    return waited


def run_json(id: str = "run-1", status: str = "completed", **fields: Any) -> Dict[str, Any]:
    run = {
        "id": id,
        "object": "run",
        "status": status,
        "language": "python",
        "created_at": 1700000000,
        "started_at": 1700000001,
        "completed_at": 1700000002,
        "exit_code": 0,
        "signal": None,
        "stdout": "",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "usage": {"wall_ms": 12, "cpu_ms": 8, "memory_peak_bytes": 1024},
        "artifacts": [],
        "error": None,
        "queue_position": None,
    }
    run.update(fields)
    return run


def error_json(
    message: str,
    type: str = "invalid_request_error",
    param: Optional[str] = None,
    code: Optional[str] = None,
) -> Dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def sse_event(data: Dict[str, Any], id: Optional[str] = None) -> bytes:
    lines = [f"event: {data['type']}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data))
    return ("\n".join(lines) + "\n\n").encode()


def run_events(
    run_id: str = "run-1", stdout: Iterable[str] = ("a\n", "b\n"), final_status: str = "completed"
) -> List[bytes]:
    """A whole stream, one server-sent event per item, with ids as the server makes them."""
    out: List[bytes] = []
    seq = 0

    def add(data: Dict[str, Any]) -> None:
        nonlocal seq
        data["sequence_number"] = seq
        seq += 1
        out.append(sse_event(data, id=f"{seq}.0.0.0"))

    add({"type": "run.created", "run": run_json(run_id, "queued", exit_code=None)})
    add({"type": "run.queued", "run_id": run_id, "queue_position": None})
    add({"type": "run.in_progress", "run": run_json(run_id, "running", exit_code=None)})
    for delta in stdout:
        add({"type": "run.output.delta", "run_id": run_id, "stream": "stdout", "delta": delta})
    terminal = "run." + final_status
    add({"type": terminal, "run": run_json(run_id, final_status, stdout="".join(stdout))})
    return out


class Chunks(httpx.SyncByteStream):
    """A response body sent chunk by chunk, which may break off like a dropped connection."""

    def __init__(self, chunks: Iterable[bytes], then_raise: Optional[Exception] = None) -> None:
        self.chunks = list(chunks)
        self.then_raise = then_raise

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.then_raise is not None:
            raise self.then_raise


class AsyncChunks(httpx.AsyncByteStream):
    def __init__(self, chunks: Iterable[bytes], then_raise: Optional[Exception] = None) -> None:
        self.chunks = list(chunks)
        self.then_raise = then_raise

    async def __aiter__(self):  # type: ignore[override]
        for chunk in self.chunks:
            yield chunk
        if self.then_raise is not None:
            raise self.then_raise


def event_stream(
    chunks: Iterable[bytes], then_raise: Optional[Exception] = None, is_async: bool = False
) -> httpx.Response:
    body = AsyncChunks(chunks, then_raise) if is_async else Chunks(chunks, then_raise)
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)


# --- live tests -------------------------------------------------------------------------------

LIVE_ENV = ("CODEINTERP_URL", "CODEINTERP_API_KEY")


def live_settings() -> Dict[str, str]:
    """The server the live tests run against. Missing settings fail the test, never skip it."""
    missing = [name for name in LIVE_ENV if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"live tests need a running server: set {' and '.join(missing)} "
            "(e.g. CODEINTERP_URL=http://localhost:8080 CODEINTERP_API_KEY=dev_123)",
            pytrace=False,
        )
    return {"base_url": os.environ["CODEINTERP_URL"], "api_key": os.environ["CODEINTERP_API_KEY"]}


@pytest.fixture(scope="session")
def live_client() -> Iterator[Client]:
    with Client(**live_settings(), timeout=60) as client:
        yield client
