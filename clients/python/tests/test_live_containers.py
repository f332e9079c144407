"""Containers against a real server (the same ``CODEINTERP_URL`` / ``CODEINTERP_API_KEY``
rules as ``test_live.py``: missing settings fail the tests)."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from codeinterp import Client, Container, NotFoundError

QUICK = {"timeout_ms": 20_000}


@pytest.fixture
def container(live_client: Client) -> Iterator[Container]:
    created = live_client.containers.create(f"live-{uuid.uuid4().hex[:8]}", expires_after_minutes=5)
    try:
        yield created
    finally:
        try:
            live_client.containers.delete(created.id)
        except NotFoundError:
            pass


def test_a_new_container_is_running_and_listed(live_client, container):
    assert container.object == "container" and container.status == "running"
    assert container.expires_after is not None and container.expires_after.minutes == 5
    assert live_client.containers.retrieve(container.id).name == container.name
    assert any(c.id == container.id for c in live_client.containers.list_all())


def test_state_is_kept_between_two_runs(live_client, container):
    first = live_client.runs.create("python", "x = 41", container=container.id, limits=QUICK)
    assert first.status == "completed", first
    second = live_client.runs.create(
        "python", "x += 1; print(x)", container=container.id, limits=QUICK
    )
    assert second.status == "completed", second
    assert second.stdout == "42\n"


def test_a_file_uploaded_to_the_container_is_read_by_a_run(live_client, container):
    uploaded = live_client.containers.files.create(
        container.id, b"hello container", filename="in.txt"
    )
    assert uploaded.object == "container.file" and uploaded.path == "/mnt/data/in.txt"
    assert uploaded.source == "user"
    run = live_client.runs.create(
        "python",
        "print(open('/mnt/data/in.txt').read(), end='')",
        container=container.id,
        limits=QUICK,
    )
    assert run.status == "completed", run
    assert run.stdout == "hello container"


def test_a_file_a_run_writes_to_mnt_data_can_be_downloaded(live_client, container, tmp_path):
    run = live_client.runs.create(
        "python",
        "open('/mnt/data/out.txt', 'w').write('from the run')",
        container=container.id,
        limits=QUICK,
    )
    assert run.status == "completed", run
    files = {f.path: f for f in live_client.containers.files.list(container.id).iter_all()}
    written = files["/mnt/data/out.txt"]
    assert written.source == "assistant"
    assert live_client.containers.files.content(container.id, written.id) == b"from the run"
    saved = live_client.containers.files.download(container.id, written.id, tmp_path)
    assert saved == tmp_path / "out.txt" and saved.read_bytes() == b"from the run"


def test_a_file_copied_in_by_id_is_there(live_client, container):
    meta = live_client.files.create(b"copied", filename="copied.txt")
    try:
        copied = live_client.containers.files.create(container.id, file_id=meta.id)
        assert copied.path == "/mnt/data/copied.txt"
        assert live_client.containers.files.content(container.id, copied.id) == b"copied"
        assert live_client.containers.files.delete(container.id, copied.id).deleted is True
    finally:
        live_client.files.delete(meta.id)


def test_a_deleted_container_is_gone(live_client):
    created = live_client.containers.create(f"live-{uuid.uuid4().hex[:8]}")
    gone = live_client.containers.delete(created.id)
    assert (gone.id, gone.object, gone.deleted) == (created.id, "container.deleted", True)
    with pytest.raises(NotFoundError):
        live_client.containers.retrieve(created.id)
