"""Exceptions. Every non-2xx answer of the service has the body
``{"error": {"message", "type", "param", "code"}}``; its fields and the ``x-request-id``
header travel on the exception, so a failure can be told apart and reported."""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

import httpx


class APIError(Exception):
    """Base of every error this client raises.

    ``status_code`` is None when no answer came (connection errors, timeouts)."""

    status_code: Optional[int] = None

    def __init__(
        self,
        message: str,
        *,
        status_code: Optional[int] = None,
        type: Optional[str] = None,
        param: Optional[str] = None,
        code: Optional[str] = None,
        request_id: Optional[str] = None,
        body: Any = None,
        response: Optional[httpx.Response] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.request_id = request_id
        self.body = body
        self.response = response

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.insert(0, f"{self.status_code}")
        if self.code:
            parts.append(f"(code: {self.code})")
        if self.request_id:
            parts.append(f"[request {self.request_id}]")
        return " ".join(parts)


class BadRequestError(APIError):
    status_code = 400


class AuthenticationError(APIError):
    status_code = 401


class PermissionDeniedError(APIError):
    """403: also what an expired or altered signed URL answers."""

    status_code = 403


class NotFoundError(APIError):
    """404: also any id of another tenant."""

    status_code = 404


class ConflictError(APIError):
    status_code = 409


class PayloadTooLargeError(APIError):
    status_code = 413


class RateLimitError(APIError):
    """429: over the key's rate, too many open streams, or the tenant's queue is full
    (``code == "queue_full"``). ``retry_after`` is the server's ``Retry-After`` in seconds."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class InternalServerError(APIError):
    """Any 5xx."""


class APIConnectionError(APIError):
    """No answer: the connection failed or dropped."""


class APITimeoutError(APIConnectionError):
    """No answer in time."""


_BY_STATUS: Dict[int, Type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a ``Retry-After`` header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for a non-2xx answer (its body must have been read)."""
    status = response.status_code
    body: Any = None
    detail: Dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"]
    except ValueError:
        body = response.text
    message = (
        detail.get("message")
        or (
            body.strip()[:500] if isinstance(body, str) and body.strip() else response.reason_phrase
        )
        or f"HTTP {status}"
    )
    kwargs: Dict[str, Any] = dict(
        status_code=status,
        type=detail.get("type"),
        param=detail.get("param"),
        code=detail.get("code"),
        request_id=response.headers.get("x-request-id"),
        body=body,
        response=response,
    )
    if status == 429:
        return RateLimitError(
            message, retry_after=parse_retry_after(response.headers.get("retry-after")), **kwargs
        )
    if status >= 500:
        return InternalServerError(message, **kwargs)
    return _BY_STATUS.get(status, APIError)(message, **kwargs)
