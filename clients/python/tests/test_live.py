"""Against a real server: ``CODEINTERP_URL`` and ``CODEINTERP_API_KEY`` must be set (the
tests fail, not skip, without them), e.g.

    CODEINTERP_URL=http://localhost:8080 CODEINTERP_API_KEY=dev_123 \
        python -m pytest tests/test_live.py

Each test makes a handful of requests; none loops on the API faster than ``runs.wait``'s
polling."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import List

import httpx
import pytest
from conftest import live_settings

from codeinterp import (
    AsyncClient,
    AuthenticationError,
    Client,
    NotFoundError,
    OutputDeltaEvent,
    PermissionDeniedError,
)
from codeinterp.models import RunCreatedEvent

QUICK = {"timeout_ms": 20_000}


def stdout_of(events) -> str:
    return "".join(
        e.delta for e in events if isinstance(e, OutputDeltaEvent) and e.stream == "stdout"
    )


def assert_whole_sequence(events) -> None:
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    assert all(e.id for e in events)


def test_create_waits_for_the_run_and_returns_its_output(live_client):
    run = live_client.runs.create("python", "print(1+1)", limits={"timeout_ms": 3000})
    assert run.status == "completed", run
    assert run.stdout == "2\n" and run.exit_code == 0
    assert run.id.startswith("run-") and run.usage is not None


def test_the_async_client_creates_and_waits():
    async def main():
        async with AsyncClient(**live_settings()) as client:
            waited = await client.runs.create("python", "print(1+1)", limits=QUICK)
            queued = await client.runs.create("python", "print(2+2)", limits=QUICK, wait=False)
            finished = await client.runs.wait(queued.id, timeout=120)
            return waited, queued, finished

    waited, queued, finished = asyncio.run(main())
    assert waited.status == "completed" and waited.stdout == "2\n"
    assert queued.id == finished.id
    assert finished.status == "completed" and finished.stdout == "4\n"


def test_a_stream_shows_output_while_the_program_runs(live_client):
    code = "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second', flush=True)\n"
    received = []
    with live_client.runs.stream("python", code, limits=QUICK) as stream:
        for event in stream:
            received.append((time.monotonic(), event))
    events = [e for _, e in received]
    assert isinstance(events[0], RunCreatedEvent) and events[-1].is_terminal
    assert_whole_sequence(events)
    assert stdout_of(events) == "first\nsecond\n"
    assert stream.run.status == "completed" and stream.run.stdout == "first\nsecond\n"
    first_at = next(
        t for t, e in received if isinstance(e, OutputDeltaEvent) and "first" in e.delta
    )
    ended_at = received[-1][0]
    assert ended_at - first_at >= 1.0, (
        "the first line came only with the end of the run: it was not streamed"
    )


def test_a_stream_resumes_after_a_last_event_id(live_client):
    code = "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.3)\n"
    with live_client.runs.stream("python", code, limits=QUICK) as stream:
        before = []
        for event in stream:
            before.append(event)
            if isinstance(event, OutputDeltaEvent):
                break
        run_id, last_id = stream.run_id, stream.last_event_id
    assert run_id and last_id
    after = list(live_client.runs.events(run_id, last_event_id=last_id))
    assert after[0].sequence_number == before[-1].sequence_number + 1
    assert_whole_sequence(before + after)
    assert stdout_of(before + after) == "0\n1\n2\n3\n4\n"
    assert after[-1].is_terminal and after[-1].run.stdout == "0\n1\n2\n3\n4\n"


class _CutAfterFirstDelta(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self.inner = inner

    def __iter__(self):
        for chunk in self.inner:
            yield chunk
            if b"run.output.delta" in chunk:
                raise httpx.RemoteProtocolError("connection cut by the test")

    def close(self) -> None:
        self.inner.close()


class _DropFirstStream(httpx.HTTPTransport):
    """Breaks the first event stream after its first output, as a flaky network would."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: List[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        self.streams.append(f"{request.method} {request.url.path}")
        if len(self.streams) > 1:
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CutAfterFirstDelta(response.stream),
            extensions=response.extensions,
        )


def test_the_client_picks_a_dropped_stream_up_by_itself():
    transport = _DropFirstStream()
    code = "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.3)\n"
    with Client(**live_settings(), http_client=httpx.Client(transport=transport)) as client:
        events = list(client.runs.stream("python", code, limits=QUICK))
    assert len(transport.streams) >= 2 and transport.streams[1].endswith("/events"), (
        transport.streams
    )
    assert events[0].sequence_number == 0 and events[-1].is_terminal
    assert_whole_sequence(events)
    assert stdout_of(events) == "0\n1\n2\n3\n4\n" == events[-1].run.stdout


def test_listing_pages_through_the_runs(live_client):
    created = {
        live_client.runs.create("python", f"print({i})", limits=QUICK, wait=False).id
        for i in range(3)
    }
    first = live_client.runs.list(limit=2)
    assert len(first.data) == 2 and first.has_more and first.last_id == first.data[-1].id
    seen: List[str] = []
    for run in live_client.runs.list_all(limit=2):
        seen.append(run.id)
        if created <= set(seen) or len(seen) >= 200:
            break
    assert created <= set(seen)
    assert len(seen) == len(set(seen)), "a run came twice"
    for run_id in created:
        assert live_client.runs.wait(run_id, timeout=120).status == "completed"


def test_cancel_stops_a_running_program(live_client):
    run = live_client.runs.create(
        "python", "import time; time.sleep(30)", limits={"timeout_ms": 60_000}, wait=False
    )
    started = time.monotonic()
    while live_client.runs.get(run.id).status == "queued" and time.monotonic() - started < 60:
        time.sleep(0.5)
    live_client.runs.cancel(run.id)
    ended = live_client.runs.wait(run.id, timeout=60)
    assert ended.status == "cancelled", ended
    assert ended.error is not None and ended.error.code == "cancelled"
    assert time.monotonic() - started < 30


def test_files_upload_list_content_delete(live_client):
    name = f"live-{uuid.uuid4().hex[:8]}.txt"
    meta = live_client.files.create(b"some bytes\n", filename=name)
    assert meta.filename == name and meta.bytes == 11 and meta.id.startswith("file-")
    assert any(f.id == meta.id for f in live_client.files.list().iter_all())
    assert live_client.files.retrieve(meta.id).filename == name
    assert live_client.files.content(meta.id) == b"some bytes\n"
    assert live_client.files.delete(meta.id).deleted is True
    with pytest.raises(NotFoundError):
        live_client.files.retrieve(meta.id)


def test_a_run_reads_an_uploaded_file(live_client):
    meta = live_client.files.create(b"a,b\n1,2\n", filename="data.csv")
    try:
        run = live_client.runs.create(
            "python", "print(open('data.csv').read(), end='')", files=[meta.id], limits=QUICK
        )
        assert run.status == "completed", run
        assert run.stdout == "a,b\n1,2\n"
    finally:
        live_client.files.delete(meta.id)


def test_an_output_file_downloads_through_its_signed_url(live_client, tmp_path):
    code = (
        "import os\nos.makedirs('/work/outputs', exist_ok=True)\n"
        "open('/work/outputs/x.txt', 'w').write('hello artifact')\n"
    )
    run = live_client.runs.create("python", code, limits=QUICK)
    assert run.status == "completed", run
    (artifact,) = run.artifacts
    assert artifact.filename == "x.txt" and artifact.bytes == 14
    saved = live_client.download_artifact(artifact, tmp_path)
    assert saved == tmp_path / "x.txt" and saved.read_bytes() == b"hello artifact"
    # The link is the credential: a bare request with no key works, a changed one is refused.
    assert httpx.get(artifact.url).content == b"hello artifact"
    tampered = artifact.url[:-1] + ("0" if artifact.url[-1] != "0" else "1")
    with pytest.raises(PermissionDeniedError):
        live_client.download_artifact({**artifact.to_dict(), "url": tampered}, tmp_path / "no.txt")
    assert not (tmp_path / "no.txt").exists()


def test_an_unknown_run_is_not_found(live_client):
    with pytest.raises(NotFoundError) as caught:
        live_client.runs.get("run-" + "0" * 20)
    err = caught.value
    assert err.status_code == 404 and err.type == "invalid_request_error"
    assert err.code == err.body["error"].get("code") and err.param == "id"
    assert err.request_id


def test_a_wrong_key_is_refused():
    settings = live_settings()
    with Client(
        base_url=settings["base_url"], api_key="wrong-" + uuid.uuid4().hex, max_retries=0
    ) as client:
        with pytest.raises(AuthenticationError) as caught:
            client.runs.list()
    assert caught.value.status_code == 401


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m codeinterp ...``, configured by the environment as a user would."""
    settings = live_settings()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(
        os.environ,
        CODEINTERP_URL=settings["base_url"],
        CODEINTERP_API_KEY=settings["api_key"],
        PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
    )
    return subprocess.run(
        [sys.executable, "-m", "codeinterp", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_line_runs_a_script_with_an_input_file(tmp_path):
    (tmp_path / "script.py").write_text("import sys; print(open('data.csv').read()); sys.exit(3)\n")
    (tmp_path / "data.csv").write_text("x,y\n1,2\n")
    done = cli("run", "--file", "data.csv", "script.py", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "x,y\n1,2\n\n"


def test_the_command_line_exits_124_when_the_program_times_out(tmp_path):
    (tmp_path / "slow.py").write_text("import time; time.sleep(10)\n")
    done = cli("run", "--timeout-ms", "1000", "slow.py", cwd=tmp_path)
    assert done.returncode == 124, done.stderr
    assert "timed_out" in done.stderr
