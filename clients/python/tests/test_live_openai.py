"""OpenAI's own Python SDK, unchanged, against a real server: ``containers.*`` and
``containers.files.*`` pointed at ``$CODEINTERP_URL/v1`` with the service's key. Runs have no
place in OpenAI's SDK (its Code Interpreter runs through the Responses API), so the program
between the upload and the download runs through ours."""

from __future__ import annotations

import uuid

import openai
import pytest

from codeinterp import Client

from conftest import live_settings


@pytest.fixture(scope="module")
def oai() -> openai.OpenAI:
    s = live_settings()
    return openai.OpenAI(
        base_url=s["base_url"].rstrip("/") + "/v1", api_key=s["api_key"], max_retries=0
    )


def test_openais_sdk_drives_a_container_and_its_files_unchanged(oai, live_client: Client):
    name = f"openai-{uuid.uuid4().hex[:8]}"
    created = oai.containers.create(
        name=name, expires_after={"anchor": "last_active_at", "minutes": 5}, memory_limit="1g"
    )
    try:
        assert created.object == "container" and created.name == name
        assert created.status == "running"
        assert created.expires_after is not None and created.expires_after.minutes == 5
        assert oai.containers.retrieve(created.id).id == created.id
        assert any(c.id == created.id for c in oai.containers.list(limit=100).data)

        # A file in by multipart, read by a run, a file out downloaded by OpenAI's SDK.
        uploaded = oai.containers.files.create(created.id, file=("data.csv", b"a,b\n1,2\n3,4\n"))
        assert uploaded.path == "/mnt/data/data.csv" and uploaded.source == "user"
        assert uploaded.bytes == 12
        code = (
            "import csv\n"
            "rows = list(csv.DictReader(open('data.csv')))\n"
            "total = sum(int(r['b']) for r in rows)\n"
            "open('total.txt', 'w').write(str(total))\n"
            "print(total)\n"
        )
        run = live_client.runs.create(
            "python", code, container=created.id, limits={"timeout_ms": 20_000}
        )
        assert run.status == "completed", run
        assert run.stdout == "6\n"

        files = oai.containers.files.list(created.id).data
        by_path = {f.path: f for f in files}
        assert set(by_path) == {"/mnt/data/data.csv", "/mnt/data/total.txt"}, by_path
        written = by_path["/mnt/data/total.txt"]
        assert written.source == "assistant"
        assert oai.containers.files.retrieve(written.id, container_id=created.id).bytes == 1
        content = oai.containers.files.content.retrieve(written.id, container_id=created.id)
        assert content.read() == b"6"

        oai.containers.files.delete(uploaded.id, container_id=created.id)
        remaining = [f.path for f in oai.containers.files.list(created.id).data]
        assert remaining == ["/mnt/data/total.txt"]
        with pytest.raises(openai.NotFoundError):
            oai.containers.files.retrieve(uploaded.id, container_id=created.id)
    finally:
        oai.containers.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.containers.retrieve(created.id)


def test_openais_sdk_gets_a_clear_400_for_what_is_not_offered(oai):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.containers.create(name="too-big", memory_limit="64g")
    assert "memory_limit" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        oai.containers.create(
            name="net",
            network_policy={"type": "allowlist", "allowed_domains": ["localhost"]},
        )
    assert "network_policy" in str(refused.value)
