import json

import httpx
import pytest
from conftest import make_client, run_json

from codeinterp import Container

CONTAINER = {
    "id": "cntr_1",
    "object": "container",
    "name": "sess",
    "status": "running",
    "created_at": 1,
    "last_active_at": 2,
    "expires_after": {"anchor": "last_active_at", "minutes": 20},
    "memory_limit": "1g",
}
CFILE = {
    "id": "cfile_1",
    "object": "container.file",
    "container_id": "cntr_1",
    "created_at": 3,
    "bytes": 5,
    "path": "/mnt/data/notes/a.txt",
    "source": "user",
}


def recording(seen, answer):
    def handler(request):
        request.read()
        seen.append(request)
        return answer(request)

    return handler


def test_create_sends_openais_body_shape():
    seen = []
    client = make_client(recording(seen, lambda r: httpx.Response(200, json=CONTAINER)))
    c = client.containers.create(
        "sess", expires_after_minutes=30, file_ids=["file-1"], memory_limit="4g"
    )
    client.containers.create("bare")
    assert c.id == "cntr_1" and c.expires_after.minutes == 20
    assert json.loads(seen[0].content) == {
        "name": "sess",
        "expires_after": {"anchor": "last_active_at", "minutes": 30},
        "file_ids": ["file-1"],
        "memory_limit": "4g",
    }
    assert json.loads(seen[1].content) == {"name": "bare"}
    assert (seen[0].method, seen[0].url.path) == ("POST", "/v1/containers")


def test_list_retrieve_delete():
    def answer(r):
        if r.method == "DELETE":
            return httpx.Response(
                200, json={"id": "cntr_1", "object": "container.deleted", "deleted": True}
            )
        if r.url.path == "/v1/containers":
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [CONTAINER],
                    "first_id": "cntr_1",
                    "last_id": "cntr_1",
                    "has_more": False,
                },
            )
        return httpx.Response(200, json=CONTAINER)

    seen = []
    client = make_client(recording(seen, answer))
    assert [c.name for c in client.containers.list(limit=5)] == ["sess"]
    assert seen[0].url.params["limit"] == "5"
    assert client.containers.retrieve("cntr_1").status == "running"
    gone = client.containers.delete("cntr_1")
    assert gone.deleted and gone.object == "container.deleted"


def test_a_container_file_is_uploaded_as_multipart_or_copied_by_id():
    seen = []
    client = make_client(recording(seen, lambda r: httpx.Response(200, json=CFILE)))
    f = client.containers.files.create("cntr_1", b"hello", filename="a.txt")
    client.containers.files.create("cntr_1", file_id="file-9")
    assert f.path == "/mnt/data/notes/a.txt"
    assert seen[0].url.path == "/v1/containers/cntr_1/files"
    assert seen[0].headers["content-type"].startswith("multipart/form-data")
    assert b'name="file"; filename="a.txt"' in seen[0].content
    assert json.loads(seen[1].content) == {"file_id": "file-9"}
    with pytest.raises(ValueError):
        client.containers.files.create("cntr_1")
    with pytest.raises(ValueError):
        client.containers.files.create("cntr_1", b"x", file_id="file-9", filename="x")


def test_container_file_content_and_download(tmp_path):
    def answer(r):
        if r.url.path.endswith("/content"):
            return httpx.Response(200, content=b"hello")
        if r.method == "DELETE":
            return httpx.Response(
                200, json={"id": "cfile_1", "object": "container.file.deleted", "deleted": True}
            )
        if r.url.path.endswith("/files"):
            return httpx.Response(200, json={"object": "list", "data": [CFILE], "has_more": False})
        return httpx.Response(200, json=CFILE)

    seen = []
    files = make_client(recording(seen, answer)).containers.files
    assert files.content("cntr_1", "cfile_1") == b"hello"
    assert seen[0].url.path == "/v1/containers/cntr_1/files/cfile_1/content"
    assert files.download("cntr_1", "cfile_1", tmp_path) == tmp_path / "notes" / "a.txt"
    assert (tmp_path / "notes" / "a.txt").read_bytes() == b"hello"
    assert [f.id for f in files.list("cntr_1")] == ["cfile_1"]
    assert files.delete("cntr_1", "cfile_1").deleted


def test_a_run_in_a_container_names_it():
    seen = []
    client = make_client(recording(seen, lambda r: httpx.Response(200, json=run_json())))
    client.runs.create("python", "x = 41", container="cntr_1")
    client.runs.create("python", "x += 1", container=Container.from_dict(CONTAINER))
    assert [json.loads(r.content)["container"] for r in seen] == ["cntr_1", "cntr_1"]
