import io

import httpx
import pytest
from conftest import make_client

FILE = {
    "id": "file-abc",
    "object": "file",
    "bytes": 11,
    "created_at": 1700000000,
    "filename": "data.csv",
    "purpose": "assistants",
    "status": "processed",
}


def multipart_parts(request):
    """The form fields of a multipart request: name -> (filename, content)."""
    kind = request.headers["content-type"]
    boundary = kind.split("boundary=")[1].encode()
    parts = {}
    for chunk in request.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        head = head.decode()
        name = head.split('name="')[1].split('"')[0]
        filename = head.split('filename="')[1].split('"')[0] if 'filename="' in head else None
        parts[name] = (filename, body[:-2])
    return parts


def upload_server(seen):
    def handler(request):
        request.read()
        seen.append(request)
        return httpx.Response(200, json=FILE)

    return handler


def test_upload_of_a_path_sends_the_file_and_purpose(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,b\n1,2\n")
    seen = []
    meta = make_client(upload_server(seen)).files.create(path)
    assert meta.id == "file-abc"
    assert multipart_parts(seen[0]) == {
        "file": ("data.csv", b"a,b\n1,2\n"),
        "purpose": (None, b"assistants"),
    }


def test_upload_of_bytes_needs_a_filename():
    seen = []
    client = make_client(upload_server(seen))
    with pytest.raises(ValueError):
        client.files.create(b"xyz")
    client.files.create(b"xyz", filename="x.bin", purpose="user_data")
    assert multipart_parts(seen[0]) == {"file": ("x.bin", b"xyz"), "purpose": (None, b"user_data")}


def test_upload_of_a_file_object_reads_it_from_the_start_and_reports_progress():
    data = b"0123456789" * 1000
    stream = io.BytesIO(data)
    stream.name = "/somewhere/digits.txt"
    stream.seek(500)
    progress = []
    seen = []
    make_client(upload_server(seen)).files.create(
        stream, progress=lambda done, total: progress.append((done, total))
    )
    assert multipart_parts(seen[0])["file"] == ("digits.txt", data)
    assert progress[-1] == (len(data), len(data))
    assert not stream.closed


def test_a_text_mode_file_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("x")
    with open(path) as text, pytest.raises(TypeError):
        make_client(upload_server([])).files.create(text)


def content_server(body, filename="data.csv"):
    def handler(request):
        if request.url.path.endswith("/content"):
            return httpx.Response(200, content=body, headers={"content-length": str(len(body))})
        return httpx.Response(200, json={**FILE, "filename": filename, "bytes": len(body)})

    return handler


def test_download_streams_to_the_path_and_leaves_no_part_file(tmp_path):
    body = b"x" * 100_000
    progress = []
    target = make_client(content_server(body)).files.download(
        "file-abc", tmp_path / "out.bin", progress=lambda d, t: progress.append((d, t))
    )
    assert target == tmp_path / "out.bin" and target.read_bytes() == body
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert progress[-1] == (len(body), len(body))


def test_download_into_a_directory_uses_the_files_name(tmp_path):
    target = make_client(content_server(b"abc", "report.txt")).files.download("file-abc", tmp_path)
    assert target == tmp_path / "report.txt" and target.read_bytes() == b"abc"


def test_content_list_retrieve_delete():
    def handler(request):
        if request.method == "DELETE":
            return httpx.Response(200, json={"id": "file-abc", "object": "file", "deleted": True})
        if request.url.path == "/v1/files":
            assert request.url.params["purpose"] == "assistants"
            return httpx.Response(200, json={"object": "list", "data": [FILE], "has_more": False})
        return content_server(b"hello")(request)

    client = make_client(handler)
    assert client.files.content("file-abc") == b"hello"
    assert [f.id for f in client.files.list(purpose="assistants").data] == ["file-abc"]
    assert client.files.retrieve("file-abc").filename == "data.csv"
    assert client.files.delete("file-abc").deleted is True
