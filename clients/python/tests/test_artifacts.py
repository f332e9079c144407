import httpx
import pytest
from conftest import make_client

from codeinterp import Artifact, PermissionDeniedError

SIGNED = "http://public.test/v1/files/file-out/content?expires=1900000000&signature=abc123"


def artifact(filename="x.txt", url=SIGNED):
    return Artifact(id="file-out", filename=filename, bytes=5, url=url, expires_at=1900000000)


def signed_server(seen, body=b"hello"):
    def handler(request):
        seen.append(request)
        return httpx.Response(200, content=body)

    return handler


def test_a_signed_download_sends_no_authorization_header(tmp_path):
    seen = []
    client = make_client(signed_server(seen))
    target = client.download_artifact(artifact(), tmp_path)
    assert target.read_bytes() == b"hello" and target == tmp_path / "x.txt"
    assert "authorization" not in seen[0].headers
    assert str(seen[0].url) == SIGNED


def test_not_even_an_authorization_header_the_callers_own_client_adds(tmp_path):
    seen = []
    from codeinterp import Client

    http = httpx.Client(
        transport=httpx.MockTransport(signed_server(seen)),
        headers={"Authorization": "Bearer leaked"},
    )
    Client(api_key="k", base_url="http://api.test", http_client=http).download_artifact(
        artifact().to_dict(), tmp_path
    )
    assert "authorization" not in seen[0].headers


def test_an_artifact_in_a_subdirectory_keeps_it_but_never_climbs_out(tmp_path):
    client = make_client(signed_server([]))
    assert (
        client.download_artifact(artifact("plots/a.png"), tmp_path) == tmp_path / "plots" / "a.png"
    )
    assert client.download_artifact(artifact("../../etc/passwd"), tmp_path) == tmp_path / "passwd"


def test_an_artifact_goes_to_an_explicit_file_path(tmp_path):
    target = make_client(signed_server([])).download_artifact(artifact(), tmp_path / "renamed.txt")
    assert target == tmp_path / "renamed.txt"


def test_an_expired_link_is_permission_denied(tmp_path):
    body = {
        "error": {
            "message": "This link has expired.",
            "type": "invalid_request_error",
            "param": None,
            "code": "url_expired",
        }
    }
    client = make_client(lambda r: httpx.Response(403, json=body))
    with pytest.raises(PermissionDeniedError) as caught:
        client.download_artifact(artifact(), tmp_path)
    assert caught.value.code == "url_expired"
    assert list(tmp_path.iterdir()) == []
