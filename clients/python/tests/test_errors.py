import httpx
import pytest
from conftest import error_json, make_client

from codeinterp import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
)
from codeinterp.errors import parse_retry_after


@pytest.mark.parametrize(
    "status, cls",
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (500, InternalServerError),
        (503, InternalServerError),
        (415, APIError),
    ],
)
def test_each_status_raises_its_exception_with_the_servers_fields(status, cls, sleeps):
    def handler(request):
        return httpx.Response(
            status,
            json=error_json("nope", param="limits.timeout_ms", code="some_code"),
            headers={"x-request-id": "req-42"},
        )

    with make_client(handler, max_retries=0) as client, pytest.raises(cls) as caught:
        client.runs.get("run-x")
    err = caught.value
    assert isinstance(err, APIError)
    assert (err.status_code, err.message, err.type, err.param, err.code, err.request_id) == (
        status,
        "nope",
        "invalid_request_error",
        "limits.timeout_ms",
        "some_code",
        "req-42",
    )
    assert "req-42" in str(err) and "some_code" in str(err)


def test_an_unknown_run_is_not_found_with_the_servers_detail():
    body = {
        "error": {
            "message": "No such run: run-x",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    }
    client = make_client(lambda r: httpx.Response(404, json=body))
    with pytest.raises(NotFoundError) as caught:
        client.runs.get("run-x")
    assert caught.value.status_code == 404 and caught.value.param == "id"
    assert caught.value.body == body


def test_a_rate_limit_error_carries_retry_after_and_the_code(sleeps):
    def handler(request):
        return httpx.Response(
            429,
            json=error_json("full", type="requests", code="queue_full"),
            headers={"retry-after": "10"},
        )

    client = make_client(handler, max_retries=0)
    with pytest.raises(RateLimitError) as caught:
        client.runs.create("python", "print(1)")
    assert caught.value.retry_after == 10.0 and caught.value.code == "queue_full"


def test_a_body_that_is_not_json_still_gives_a_message():
    client = make_client(
        lambda r: httpx.Response(502, text="Bad Gateway from proxy"), max_retries=0
    )
    with pytest.raises(InternalServerError) as caught:
        client.files.list()
    assert caught.value.message == "Bad Gateway from proxy" and caught.value.code is None


def test_retry_after_as_seconds_or_a_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
