"""What every request shares: the base URL and key, headers, timeouts, error mapping and
the retry policy, for the sync and the async client alike.

Retries: a 429 is retried after the server's ``Retry-After`` (the request was refused, so
nothing happened); a 502/503/504 or a lost connection only when repeating the request cannot
do a thing twice (GET, DELETE, a cancel, or a POST carrying an ``Idempotency-Key``). At most
``max_retries`` times, and never past ``max_retry_wait`` seconds of waiting in all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterator, Mapping, Optional, Union

import httpx

from . import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    error_from_response,
    parse_retry_after,
)

DEFAULT_BASE_URL = "http://localhost:8080"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_RETRY_WAIT = 60.0
RETRYABLE_WHEN_IDEMPOTENT = frozenset({502, 503, 504})

TimeoutTypes = Union[float, httpx.Timeout, None]

# Looked up at call time so tests can replace them.
_sleep = time.sleep
_asleep = asyncio.sleep


def as_timeout(value: TimeoutTypes, default: httpx.Timeout) -> httpx.Timeout:
    if value is None:
        return default
    if isinstance(value, httpx.Timeout):
        return value
    return httpx.Timeout(float(value), connect=min(float(value), default.connect or float(value)))


def with_read_at_least(timeout: httpx.Timeout, seconds: float) -> httpx.Timeout:
    """``timeout`` with a read timeout of at least ``seconds``."""
    read = timeout.read
    if read is not None and read < seconds:
        return httpx.Timeout(
            connect=timeout.connect, read=seconds, write=timeout.write, pool=timeout.pool
        )
    return timeout


class RetryBudget:
    """Decides, attempt after attempt, whether and how long to wait before the next one."""

    def __init__(self, max_retries: int, max_wait: float, idempotent: bool) -> None:
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.idempotent = idempotent
        self.retries = 0
        self.waited = 0.0

    def after_status(self, status: int, retry_after: Optional[float]) -> Optional[float]:
        if status == 429:
            return self._take(retry_after if retry_after is not None else self._backoff())
        if status in RETRYABLE_WHEN_IDEMPOTENT and self.idempotent:
            return self._take(retry_after if retry_after is not None else self._backoff())
        return None

    def after_connection_error(self) -> Optional[float]:
        return self._take(self._backoff()) if self.idempotent else None

    def _backoff(self) -> float:
        return min(0.5 * 2**self.retries, 8.0) * random.uniform(0.75, 1.0)

    def _take(self, delay: float) -> Optional[float]:
        if self.retries >= self.max_retries or self.waited + delay > self.max_wait:
            return None
        self.retries += 1
        self.waited += delay
        return delay


@dataclass
class RequestSpec:
    """One API request, rebuilt for every attempt (an upload's file is reopened)."""

    method: str
    path: str
    params: Optional[Mapping[str, Any]] = None
    json: Any = None
    data: Optional[Mapping[str, Any]] = None
    files: Optional[Callable[[], Any]] = None
    headers: Dict[str, str] = field(default_factory=dict)
    timeout: TimeoutTypes = None
    idempotent: Optional[bool] = None
    auth: bool = True

    def is_idempotent(self) -> bool:
        if self.idempotent is not None:
            return self.idempotent
        return self.method in ("GET", "HEAD", "DELETE") or "Idempotency-Key" in self.headers


class BaseTransport:
    def __init__(
        self,
        *,
        base_url: Optional[str],
        api_key: Optional[str],
        timeout: TimeoutTypes,
        max_retries: int,
        max_retry_wait: float,
        default_headers: Optional[Mapping[str, str]],
    ) -> None:
        self.base_url = (base_url or os.environ.get("CODEINTERP_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        self.api_key = api_key if api_key is not None else os.environ.get("CODEINTERP_API_KEY")
        self.timeout = as_timeout(timeout, DEFAULT_TIMEOUT)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.default_headers = dict(default_headers or {})

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + path

    def _build(
        self, http: Union[httpx.Client, httpx.AsyncClient], spec: RequestSpec
    ) -> httpx.Request:
        headers = {
            "User-Agent": f"codeinterp-python/{__version__} python/{platform.python_version()}",
            "Accept": "application/json",
            **self.default_headers,
            **spec.headers,
        }
        if spec.auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = http.build_request(
            spec.method,
            self.url(spec.path),
            params=_drop_none(spec.params),
            json=spec.json,
            data=spec.data,
            files=spec.files() if spec.files is not None else None,
            headers=headers,
            timeout=as_timeout(spec.timeout, self.timeout),
        )
        if not spec.auth:
            # A signed URL must never see the key, even one a caller's own client adds.
            request.headers.pop("Authorization", None)
        return request

    def _budget(self, spec: RequestSpec) -> RetryBudget:
        return RetryBudget(self.max_retries, self.max_retry_wait, spec.is_idempotent())


def _drop_none(params: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None}


def _connection_error(exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
    where = f"{request.method} {request.url.copy_with(query=None)}"
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{where} timed out ({type(exc).__name__})")
    return APIConnectionError(f"{where} failed: {exc or type(exc).__name__}")


class SyncTransport(BaseTransport):
    def __init__(self, *, http_client: Optional[httpx.Client] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owns_http = http_client is None
        self.http = http_client or httpx.Client()

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def request(self, spec: RequestSpec) -> httpx.Response:
        """The answer, read; a non-2xx one is raised as its exception."""
        return self._send(spec, stream=False)

    @contextlib.contextmanager
    def stream(self, spec: RequestSpec) -> Iterator[httpx.Response]:
        """The answer with its body unread (closed when the block ends)."""
        response = self._send(spec, stream=True)
        try:
            yield response
        finally:
            response.close()

    def _send(self, spec: RequestSpec, stream: bool) -> httpx.Response:
        budget = self._budget(spec)
        while True:
            request = self._build(self.http, spec)
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = _connection_error(exc, request)
                delay = budget.after_connection_error()
                if delay is None:
                    raise error from exc
                _sleep(delay)
                continue
            if response.is_success:
                return response
            try:
                response.read()
            finally:
                response.close()
            error = error_from_response(response)
            delay = budget.after_status(
                response.status_code, parse_retry_after(response.headers.get("retry-after"))
            )
            if delay is None:
                raise error
            _sleep(delay)


class AsyncTransport(BaseTransport):
    def __init__(self, *, http_client: Optional[httpx.AsyncClient] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owns_http = http_client is None
        self.http = http_client or httpx.AsyncClient()

    async def close(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def request(self, spec: RequestSpec) -> httpx.Response:
        return await self._send(spec, stream=False)

    @contextlib.asynccontextmanager
    async def stream(self, spec: RequestSpec) -> AsyncIterator[httpx.Response]:
        response = await self._send(spec, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(self, spec: RequestSpec, stream: bool) -> httpx.Response:
        budget = self._budget(spec)
        while True:
            request = self._build(self.http, spec)
            try:
                response = await self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = _connection_error(exc, request)
                delay = budget.after_connection_error()
                if delay is None:
                    raise error from exc
                await _asleep(delay)
                continue
            if response.is_success:
                return response
            try:
                await response.aread()
            finally:
                await response.aclose()
            error = error_from_response(response)
            delay = budget.after_status(
                response.status_code, parse_retry_after(response.headers.get("retry-after"))
            )
            if delay is None:
                raise error
            await _asleep(delay)


def json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise APIError(
            f"the server answered {response.request.method} {response.request.url.path} "
            f"with a body that is not JSON",
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
            response=response,
        ) from exc
