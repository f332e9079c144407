"""The MCP endpoint, seen by the official MCP Python SDK (`mcp` on PyPI) over Streamable HTTP,
against the live API `make up` leaves at CODEINTERP_URL (http://localhost:8080) with the key
CODEINTERP_API_KEY (dev_123). A server that cannot be reached fails these tests; none skips.

Run by hack/mcp/test.sh, which `make test` calls after the SDK's live tests.
"""

import base64
import os
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

BASE = os.environ.get("CODEINTERP_URL", "http://localhost:8080").rstrip("/")
KEY = os.environ.get("CODEINTERP_API_KEY", "dev_123")
MCP = f"{BASE}/mcp"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT = """\
print("hello from mcp", flush=True)
import matplotlib.pyplot as plt
plt.plot([1, 2])
plt.savefig('/work/outputs/p.png')
"""


@pytest.fixture
def anyio_backend():
    return "asyncio"


@asynccontextmanager
async def session(headers=None):
    """An initialized MCP session with the key (or the given headers)."""
    headers = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
    timeout = httpx2.Timeout(30, read=300)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with streamable_http_client(MCP, http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                yield s


def raw_initialize(headers, version="2025-06-18"):
    """An `initialize` posted by hand, to look at the HTTP answer itself."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "codeinterp-test", "version": "1"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream", **headers}
    return httpx2.post(MCP, json=body, headers=headers, timeout=30)


def texts(result):
    return "\n".join(c.text for c in result.content if c.type == "text")


def test_the_server_is_reachable():
    # Fails (never skips) when `make up` has not left the API running.
    assert httpx2.get(f"{BASE}/healthz", timeout=10).status_code == 200


def test_the_2025_06_18_protocol_is_agreed_with_a_key():
    answer = raw_initialize({"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"]["name"] == "codeinterp"


@pytest.mark.anyio
async def test_the_sdk_lists_the_tools_with_their_schemas():
    async with session() as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
    assert {"run_code", "list_runs", "get_run"} <= set(tools)
    schema = tools["run_code"].input_schema
    assert schema["properties"]["language"]["enum"] == ["python", "node", "ruby", "php"]
    assert set(schema["required"]) == {"language", "code"}
    assert "timeout_ms" in schema["properties"]


@pytest.mark.anyio
async def test_python_that_prints_and_plots_gives_text_an_image_and_progress():
    progress = []

    async def on_progress(value, total, message):
        progress.append((value, message))

    async with session() as s:
        result = await s.call_tool(
            "run_code",
            {"language": "python", "code": PLOT, "timeout_ms": 60000},
            progress_callback=on_progress,
        )
        assert not result.is_error, texts(result)
        assert "hello from mcp" in texts(result)
        assert "completed, exit code 0" in texts(result)
        images = [c for c in result.content if c.type == "image"]
        assert len(images) == 1, result.content
        assert images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data).startswith(PNG_SIGNATURE)
        # The output came as progress too, in order, before the result.
        assert "hello from mcp" in "".join(m or "" for _, m in progress), progress
        values = [v for v, _ in progress]
        assert values == sorted(values) and len(set(values)) == len(values)
        # The same run, read back by id and found in the list.
        run_id = result.structured_content["id"]
        again = await s.call_tool("get_run", {"run_id": run_id})
        assert "hello from mcp" in texts(again)
        assert [c.type for c in again.content].count("image") == 1
        listed = await s.call_tool("list_runs", {"limit": 100})
        assert run_id in [r["id"] for r in listed.structured_content["runs"]]


@pytest.mark.anyio
async def test_a_timeout_is_a_tool_error_not_a_protocol_error():
    async with session() as s:
        result = await s.call_tool(
            "run_code",
            {"language": "python", "code": "import time; time.sleep(10)", "timeout_ms": 1000},
        )
    assert result.is_error
    assert "timed_out" in texts(result), texts(result)


@pytest.mark.anyio
async def test_a_bad_language_is_a_tool_error_with_the_rest_apis_message():
    rest = httpx2.post(
        f"{BASE}/v1/runs",
        json={"language": "cobol", "code": "x"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert rest.status_code == 400
    async with session() as s:
        result = await s.call_tool("run_code", {"language": "cobol", "code": "x"})
    assert result.is_error
    assert texts(result) == rest.json()["error"]["message"]


def test_without_a_key_the_answer_is_401_with_the_challenge():
    answer = raw_initialize({})
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge
    metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
    assert metadata_url.endswith("/.well-known/oauth-protected-resource/mcp")
    metadata = httpx2.get(f"{BASE}/.well-known/oauth-protected-resource/mcp", timeout=10)
    assert metadata.json()["resource"].endswith("/mcp")


@pytest.mark.anyio
async def test_the_sdk_is_refused_without_a_key():
    with pytest.raises(Exception):
        async with session(headers={}) as s:
            await s.list_tools()


def test_a_foreign_origin_is_refused_with_403_even_with_a_key():
    answer = raw_initialize({"Authorization": f"Bearer {KEY}", "Origin": "https://evil.example"})
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "origin_not_allowed"


@pytest.mark.anyio
async def test_a_container_keeps_state_and_files_between_run_code_calls():
    async with session() as s:
        tools = {t.name for t in (await s.list_tools()).tools}
        assert {
            "create_container",
            "list_containers",
            "list_container_files",
            "upload_container_file",
            "delete_container",
        } <= tools
        made = await s.call_tool("create_container", {"name": "mcp-test", "idle_minutes": 5})
        assert not made.is_error, texts(made)
        cid = made.structured_content["id"]
        try:
            up = await s.call_tool(
                "upload_container_file",
                {"container_id": cid, "filename": "data.csv", "content": "a,b\n1,2\n3,4\n"},
            )
            assert not up.is_error, texts(up)
            assert up.structured_content["path"] == "/mnt/data/data.csv"
            first = await s.call_tool(
                "run_code",
                {
                    "language": "python",
                    "container": cid,
                    "code": "import csv\nx = len(list(csv.DictReader(open('data.csv'))))\n"
                    "open('out.txt', 'w').write('written')\nprint(f'rows={x}')",
                },
            )
            assert not first.is_error, texts(first)
            assert "rows=2" in texts(first)
            second = await s.call_tool(
                "run_code", {"language": "python", "container": cid, "code": "x += 40\nprint(f'x={x}')"}
            )
            assert not second.is_error, texts(second)
            assert "x=42" in texts(second)
            # The control: a run without the container starts from nothing.
            fresh = await s.call_tool("run_code", {"language": "python", "code": "print(x)"})
            assert fresh.is_error and "NameError" in texts(fresh), texts(fresh)
            files = await s.call_tool("list_container_files", {"container_id": cid})
            paths = {f["path"] for f in files.structured_content["files"]}
            assert {"/mnt/data/data.csv", "/mnt/data/out.txt"} <= paths, paths
            listed = await s.call_tool("list_containers", {})
            assert cid in [c["id"] for c in listed.structured_content["containers"]]
            # A wrong call is a tool error with the REST API's message.
            bad = await s.call_tool("upload_container_file", {"container_id": cid, "content": "x"})
            assert bad.is_error and "filename" in texts(bad), texts(bad)
        finally:
            gone = await s.call_tool("delete_container", {"container_id": cid})
        assert not gone.is_error, texts(gone)
        after = await s.call_tool(
            "run_code", {"language": "python", "container": cid, "code": "print(1)"}
        )
        assert after.is_error, texts(after)
