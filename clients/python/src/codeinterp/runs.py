"""``/v1/runs``: create a run (and wait for it, or stream its events), read, list, cancel.

A stream that drops before its terminal event is picked up again with
``GET /v1/runs/{id}/events`` and ``Last-Event-ID``: the caller sees every event once, in
order. Events are also checked by ``sequence_number``, so a server replaying too much still
shows nothing twice."""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Dict, Iterator, Mapping, Optional, Sequence, TypedDict, Union

import httpx

from . import _transport
from ._transport import (
    AsyncTransport,
    RequestSpec,
    SyncTransport,
    TimeoutTypes,
    as_timeout,
    json_of,
    with_read_at_least,
)
from .errors import APIConnectionError, APIError, APITimeoutError
from .models import Container, FileObject, Run, RunEvent, event_from_dict
from .pagination import AsyncPage, Page
from .sse import ServerSentEvent, aiter_sse, iter_sse


class RunLimits(TypedDict, total=False):
    """Per-run limits; any left out take the service's defaults."""

    timeout_ms: int
    memory_mb: int
    cpu_ms: int
    cpu_millicores: int
    max_output_bytes: int
    max_artifacts: int
    max_artifact_bytes: int
    max_artifact_total_bytes: int
    max_processes: int
    disk_mb: int


# What the server adds to a run's timeout while `POST /v1/runs` waits (queueing, pod start,
# storing results: its WAIT_SLACK_SECONDS default), and the margin on top so the client
# never gives up before the server answers.
SERVER_WAIT_SLACK_SECONDS = 150.0
CLIENT_MARGIN_SECONDS = 30.0
DEFAULT_RUN_TIMEOUT_MS = 30_000
# The server sends a keep-alive comment every 15 s; a stream silent for this long is dead.
STREAM_READ_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_RESUMES = 5


def wait_read_timeout(limits: Optional[Mapping[str, Any]]) -> float:
    """Seconds a waiting ``runs.create`` may read for: the run's timeout, the server's
    slack, and a margin."""
    timeout_ms = (limits or {}).get("timeout_ms") or DEFAULT_RUN_TIMEOUT_MS
    return timeout_ms / 1000.0 + SERVER_WAIT_SLACK_SECONDS + CLIENT_MARGIN_SECONDS


def create_body(
    language: str,
    code: str,
    stdin: Optional[str] = None,
    args: Optional[Sequence[str]] = None,
    files: Optional[Sequence[Union[str, FileObject]]] = None,
    limits: Optional[Mapping[str, Any]] = None,
    container: Optional[Union[str, Container]] = None,
    wait: bool = True,
    stream: bool = False,
) -> Dict[str, Any]:
    body: Dict[str, Any] = {"language": language, "code": code}
    if stdin is not None:
        body["stdin"] = stdin
    if args:
        body["args"] = [str(a) for a in args]
    if files:
        body["files"] = [f.id if isinstance(f, FileObject) else f for f in files]
    if limits:
        body["limits"] = {k: v for k, v in dict(limits).items() if v is not None}
    if container is not None:
        body["container"] = container.id if isinstance(container, Container) else container
    if stream:
        body["stream"] = True
    elif not wait:
        body["wait"] = False
    return body


EVENT_STREAM = {"Accept": "text/event-stream"}


def _headers(idempotency_key: Optional[str]) -> Dict[str, str]:
    return {"Idempotency-Key": idempotency_key} if idempotency_key else {}


def events_spec(run_id: str, last_event_id: Optional[str], timeout: TimeoutTypes) -> RequestSpec:
    """``GET /v1/runs/{id}/events``, after ``last_event_id`` when given."""
    headers = dict(EVENT_STREAM)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return RequestSpec("GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=timeout)


def create_spec(
    body: Dict[str, Any],
    idempotency_key: Optional[str],
    transport_timeout: httpx.Timeout,
    timeout: TimeoutTypes,
) -> RequestSpec:
    """``POST /v1/runs``: answered by the run, or (``body["stream"]``) by its events."""
    headers = _headers(idempotency_key)
    if body.get("stream"):
        headers.update(EVENT_STREAM)
        timeout = _stream_timeout(transport_timeout, timeout)
    else:
        timeout = _create_timeout(
            transport_timeout, timeout, body.get("wait", True), body.get("limits")
        )
    return RequestSpec("POST", "/v1/runs", json=body, headers=headers, timeout=timeout)


class StreamState:
    """Where a reader of a run's events is: the run, the last event id and sequence number,
    and the resumes left. Pure: the sync and async readers share it."""

    def __init__(
        self,
        first: RequestSpec,
        run_id: Optional[str],
        last_event_id: Optional[str],
        max_resumes: int,
    ) -> None:
        self.first = first
        self.run_id = run_id
        self.last_event_id = last_event_id
        self.last_sequence = -1
        self.run: Optional[Run] = None
        self.max_resumes = max_resumes
        self.failures = 0

    def accept(self, sse: ServerSentEvent) -> Optional[RunEvent]:
        """The event to hand to the caller, or None for one already seen."""
        if sse.id is not None:
            self.last_event_id = sse.id
        try:
            data = json.loads(sse.data)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise APIError(f"an event of the run's stream is not a JSON object: {sse.data[:200]!r}")
        event = event_from_dict(data, event_id=sse.id, event_type=sse.event)
        if self.run_id is None and event.run_id:
            self.run_id = event.run_id
        if 0 <= event.sequence_number <= self.last_sequence:
            return None
        self.last_sequence = max(self.last_sequence, event.sequence_number)
        self.failures = 0  # progress: a later drop gets the whole budget again
        if event.is_terminal:
            self.run = getattr(event, "run", None)
        return event

    def next_attempt(self, cause: Optional[BaseException]) -> RequestSpec:
        """The request that picks the stream up again, or the error that ends it."""
        self.failures += 1
        if self.run_id is None and "Idempotency-Key" not in self.first.headers:
            if isinstance(cause, APIError):
                raise cause
            raise APIConnectionError(
                "the event stream broke before the run was created, and a POST without an "
                "idempotency_key is not repeated"
            ) from cause
        if self.failures > self.max_resumes:
            raise APIConnectionError(
                f"the event stream of run {self.run_id} broke {self.failures} times in a row; "
                f"resume it with runs.events({self.run_id!r}, last_event_id={self.last_event_id!r})"
            ) from cause
        if self.run_id is None:
            return self.first  # the same key finds the same run
        return events_spec(self.run_id, self.last_event_id, self.first.timeout)

    def delay(self) -> float:
        return min(0.25 * 2 ** (self.failures - 1), 4.0)


def _check_event_stream(response: httpx.Response) -> None:
    kind = response.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise APIError(
            f"expected an event stream, got {kind or 'no content type'}",
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
        )


# Errors that mean the stream broke and may be picked up again.
_DROPS = (httpx.TransportError, APIConnectionError)


class RunStream:
    """The events of one run, as they come. Iterate it; ``run`` is the finished run once the
    terminal event has been read. Use it in a ``with`` block (or ``close()`` it) to let go
    of the connection early."""

    def __init__(self, transport: SyncTransport, state: StreamState) -> None:
        self._state = state
        self._events = self._follow(transport, state)

    @property
    def run_id(self) -> Optional[str]:
        return self._state.run_id

    @property
    def last_event_id(self) -> Optional[str]:
        return self._state.last_event_id

    @property
    def run(self) -> Optional[Run]:
        return self._state.run

    def __iter__(self) -> Iterator[RunEvent]:
        return self._events

    def __next__(self) -> RunEvent:
        return next(self._events)

    def until_done(self) -> Optional[Run]:
        """Read to the end; the finished run."""
        for _ in self._events:
            pass
        return self.run

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> RunStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def _follow(transport: SyncTransport, state: StreamState) -> Iterator[RunEvent]:
        spec = state.first
        while True:
            cause: Optional[BaseException] = None
            try:
                with transport.stream(spec) as response:
                    _check_event_stream(response)
                    for sse in iter_sse(response.iter_bytes()):
                        event = state.accept(sse)
                        if event is None:
                            continue
                        yield event
                        if event.is_terminal:
                            return
            except _DROPS as exc:
                cause = exc
            spec = state.next_attempt(cause)
            _transport._sleep(state.delay())


class AsyncRunStream:
    """The async twin of :class:`RunStream` (``async for``, ``async with``)."""

    def __init__(self, transport: AsyncTransport, state: StreamState) -> None:
        self._state = state
        self._events = self._follow(transport, state)

    @property
    def run_id(self) -> Optional[str]:
        return self._state.run_id

    @property
    def last_event_id(self) -> Optional[str]:
        return self._state.last_event_id

    @property
    def run(self) -> Optional[Run]:
        return self._state.run

    def __aiter__(self) -> AsyncIterator[RunEvent]:
        return self._events

    async def __anext__(self) -> RunEvent:
        return await self._events.__anext__()

    async def until_done(self) -> Optional[Run]:
        async for _ in self._events:
            pass
        return self.run

    async def close(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> AsyncRunStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @staticmethod
    async def _follow(transport: AsyncTransport, state: StreamState) -> AsyncIterator[RunEvent]:
        spec = state.first
        while True:
            cause: Optional[BaseException] = None
            try:
                async with transport.stream(spec) as response:
                    _check_event_stream(response)
                    async for sse in aiter_sse(response.aiter_bytes()):
                        event = state.accept(sse)
                        if event is None:
                            continue
                        yield event
                        if event.is_terminal:
                            return
            except _DROPS as exc:
                cause = exc
            spec = state.next_attempt(cause)
            await _transport._asleep(state.delay())


def _stream_timeout(transport_timeout: httpx.Timeout, timeout: TimeoutTypes) -> httpx.Timeout:
    if timeout is not None:
        return as_timeout(timeout, transport_timeout)
    return with_read_at_least(transport_timeout, STREAM_READ_TIMEOUT_SECONDS)


def _create_timeout(
    transport_timeout: httpx.Timeout,
    timeout: TimeoutTypes,
    wait: bool,
    limits: Optional[Mapping[str, Any]],
) -> httpx.Timeout:
    if timeout is not None:
        return as_timeout(timeout, transport_timeout)
    if not wait:
        return transport_timeout
    return with_read_at_least(transport_timeout, wait_read_timeout(limits))


class Runs:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def create(
        self,
        language: str,
        code: str,
        stdin: Optional[str] = None,
        args: Optional[Sequence[str]] = None,
        files: Optional[Sequence[Union[str, FileObject]]] = None,
        limits: Optional[RunLimits] = None,
        container: Optional[Union[str, Container]] = None,
        wait: bool = True,
        idempotency_key: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Run:
        """Create a run. With ``wait`` (the default) the server answers once the run has
        finished, or when its own wait runs out (then the run is not terminal yet: see
        :meth:`wait`). ``files`` are ids of uploaded files, placed in the working directory."""
        body = create_body(language, code, stdin, args, files, limits, container, wait)
        spec = create_spec(body, idempotency_key, self._t.timeout, timeout)
        return Run.from_dict(json_of(self._t.request(spec)))

    def stream(
        self,
        language: str,
        code: str,
        stdin: Optional[str] = None,
        args: Optional[Sequence[str]] = None,
        files: Optional[Sequence[Union[str, FileObject]]] = None,
        limits: Optional[RunLimits] = None,
        container: Optional[Union[str, Container]] = None,
        idempotency_key: Optional[str] = None,
        *,
        max_resumes: int = DEFAULT_MAX_RESUMES,
        timeout: TimeoutTypes = None,
    ) -> RunStream:
        """Create a run and read its events as they happen (see :class:`RunStream`)."""
        body = create_body(language, code, stdin, args, files, limits, container, stream=True)
        spec = create_spec(body, idempotency_key, self._t.timeout, timeout)
        return RunStream(self._t, StreamState(spec, None, None, max_resumes))

    def events(
        self,
        run_id: str,
        last_event_id: Optional[str] = None,
        *,
        max_resumes: int = DEFAULT_MAX_RESUMES,
        timeout: TimeoutTypes = None,
    ) -> RunStream:
        """The events of an existing run, from the start or from after ``last_event_id``.
        A finished run replays its events."""
        spec = events_spec(run_id, last_event_id, _stream_timeout(self._t.timeout, timeout))
        return RunStream(self._t, StreamState(spec, run_id, last_event_id, max_resumes))

    def get(self, run_id: str, *, timeout: TimeoutTypes = None) -> Run:
        return Run.from_dict(
            json_of(self._t.request(RequestSpec("GET", f"/v1/runs/{run_id}", timeout=timeout)))
        )

    retrieve = get

    def list(
        self,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Page[Run]:
        """One page of runs, newest first (iterating it goes on through the next pages).
        A listed run carries at most the first 4 KiB of its stdout and stderr."""

        def fetch(cursor: Optional[str]) -> Page[Run]:
            spec = RequestSpec(
                "GET", "/v1/runs", params={"limit": limit, "after": cursor}, timeout=timeout
            )
            return Page(json_of(self._t.request(spec)), Run, fetch)

        return fetch(after)

    def list_all(
        self, limit: Optional[int] = None, *, timeout: TimeoutTypes = None
    ) -> Iterator[Run]:
        """Every run, newest first, ``limit`` per request."""
        return self.list(limit=limit, timeout=timeout).iter_all()

    def cancel(self, run_id: str, *, timeout: TimeoutTypes = None) -> Run:
        spec = RequestSpec("POST", f"/v1/runs/{run_id}/cancel", idempotent=True, timeout=timeout)
        return Run.from_dict(json_of(self._t.request(spec)))

    def wait(
        self, run_id: str, timeout: Optional[float] = None, poll_interval: float = 0.25
    ) -> Run:
        """Poll the run until it has finished; :class:`APITimeoutError` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll_interval
        while True:
            run = self.get(run_id)
            if run.is_terminal:
                return run
            if deadline is not None and time.monotonic() + interval > deadline:
                raise APITimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            _transport._sleep(interval)
            interval = min(interval * 1.5, 2.0)


class AsyncRuns:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        language: str,
        code: str,
        stdin: Optional[str] = None,
        args: Optional[Sequence[str]] = None,
        files: Optional[Sequence[Union[str, FileObject]]] = None,
        limits: Optional[RunLimits] = None,
        container: Optional[Union[str, Container]] = None,
        wait: bool = True,
        idempotency_key: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Run:
        body = create_body(language, code, stdin, args, files, limits, container, wait)
        spec = create_spec(body, idempotency_key, self._t.timeout, timeout)
        return Run.from_dict(json_of(await self._t.request(spec)))

    def stream(
        self,
        language: str,
        code: str,
        stdin: Optional[str] = None,
        args: Optional[Sequence[str]] = None,
        files: Optional[Sequence[Union[str, FileObject]]] = None,
        limits: Optional[RunLimits] = None,
        container: Optional[Union[str, Container]] = None,
        idempotency_key: Optional[str] = None,
        *,
        max_resumes: int = DEFAULT_MAX_RESUMES,
        timeout: TimeoutTypes = None,
    ) -> AsyncRunStream:
        body = create_body(language, code, stdin, args, files, limits, container, stream=True)
        spec = create_spec(body, idempotency_key, self._t.timeout, timeout)
        return AsyncRunStream(self._t, StreamState(spec, None, None, max_resumes))

    def events(
        self,
        run_id: str,
        last_event_id: Optional[str] = None,
        *,
        max_resumes: int = DEFAULT_MAX_RESUMES,
        timeout: TimeoutTypes = None,
    ) -> AsyncRunStream:
        spec = events_spec(run_id, last_event_id, _stream_timeout(self._t.timeout, timeout))
        return AsyncRunStream(self._t, StreamState(spec, run_id, last_event_id, max_resumes))

    async def get(self, run_id: str, *, timeout: TimeoutTypes = None) -> Run:
        spec = RequestSpec("GET", f"/v1/runs/{run_id}", timeout=timeout)
        return Run.from_dict(json_of(await self._t.request(spec)))

    retrieve = get

    async def list(
        self,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> AsyncPage[Run]:
        async def fetch(cursor: Optional[str]) -> AsyncPage[Run]:
            spec = RequestSpec(
                "GET", "/v1/runs", params={"limit": limit, "after": cursor}, timeout=timeout
            )
            return AsyncPage(json_of(await self._t.request(spec)), Run, fetch)

        return await fetch(after)

    async def list_all(
        self, limit: Optional[int] = None, *, timeout: TimeoutTypes = None
    ) -> AsyncIterator[Run]:
        page = await self.list(limit=limit, timeout=timeout)
        async for run in page.iter_all():
            yield run

    async def cancel(self, run_id: str, *, timeout: TimeoutTypes = None) -> Run:
        spec = RequestSpec("POST", f"/v1/runs/{run_id}/cancel", idempotent=True, timeout=timeout)
        return Run.from_dict(json_of(await self._t.request(spec)))

    async def wait(
        self, run_id: str, timeout: Optional[float] = None, poll_interval: float = 0.25
    ) -> Run:
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll_interval
        while True:
            run = await self.get(run_id)
            if run.is_terminal:
                return run
            if deadline is not None and time.monotonic() + interval > deadline:
                raise APITimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            await _transport._asleep(interval)
            interval = min(interval * 1.5, 2.0)
