"""The async client behaves as the sync one."""

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
from conftest import error_json, make_async_client, run_json

from codeinterp import Artifact, NotFoundError, RateLimitError


def run(coro):
    return asyncio.run(coro)


def test_async_create_and_get():
    seen = []

    async def handler(request):
        seen.append(request)
        return httpx.Response(200, json=run_json(stdout="2\n"))

    async def main():
        async with make_async_client(handler) as client:
            created = await client.runs.create("python", "print(1+1)", limits={"timeout_ms": 3000})
            fetched = await client.runs.get(created.id)
            return created, fetched

    created, fetched = run(main())
    assert created.stdout == "2\n" and fetched.id == "run-1"
    assert json.loads(seen[0].content)["limits"] == {"timeout_ms": 3000}
    assert seen[0].headers["authorization"] == "Bearer sk-test"


def test_async_errors_and_retries(sleeps):
    calls = []

    async def handler(request):
        calls.append(request)
        if request.url.path == "/v1/runs/nope":
            return httpx.Response(404, json=error_json("No such run: nope", param="id"))
        return httpx.Response(
            429,
            json=error_json("slow", type="requests", code="rate_limit_exceeded"),
            headers={"retry-after": "1"},
        )

    async def main():
        client = make_async_client(handler, max_retries=1)
        with pytest.raises(NotFoundError):
            await client.runs.get("nope")
        with pytest.raises(RateLimitError):
            await client.files.list()
        await client.close()

    run(main())
    assert len(calls) == 3 and sleeps == [1.0]


def test_async_wait_polls_until_the_run_ends(sleeps):
    statuses = iter(["queued", "running", "completed"])

    async def handler(request):
        return httpx.Response(200, json=run_json(status=next(statuses)))

    async def main():
        async with make_async_client(handler) as client:
            return await client.runs.wait("run-1")

    assert run(main()).status == "completed"
    assert len(sleeps) == 2


def test_async_artifact_download_sends_no_key(tmp_path):
    seen = []

    async def handler(request):
        seen.append(request)
        return httpx.Response(200, content=b"data")

    async def main():
        async with make_async_client(handler) as client:
            art = Artifact(
                id="file-1",
                filename="x.txt",
                bytes=4,
                url="http://pub.test/v1/files/file-1/content?expires=1&signature=a",
            )
            return await client.download_artifact(art, tmp_path)

    assert run(main()).read_bytes() == b"data"
    assert "authorization" not in seen[0].headers


def test_python_dash_m_runs_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "codeinterp", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("codeinterp ")
    done = subprocess.run(
        [sys.executable, "-m", "codeinterp", "run", "--language", "cobol", "x"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
