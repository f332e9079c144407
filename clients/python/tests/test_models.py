from conftest import run_json

from codeinterp.models import (
    ArtifactEvent,
    Container,
    ContainerFile,
    FileObject,
    OutputDeltaEvent,
    Run,
    RunEvent,
    RunFinishedEvent,
    RunQueuedEvent,
    event_from_dict,
)


def test_a_run_parses_with_its_usage_artifacts_and_error():
    run = Run.from_dict(
        run_json(
            status="failed",
            exit_code=None,
            artifacts=[
                {
                    "id": "file-a",
                    "filename": "x.txt",
                    "bytes": 3,
                    "url": "http://h/x",
                    "expires_at": 9,
                }
            ],
            error={"code": "oom_killed", "message": "out of memory"},
        )
    )
    assert run.status == "failed" and run.is_terminal
    assert run.usage.wall_ms == 12
    assert run.artifacts[0].filename == "x.txt" and run.artifacts[0].bytes == 3
    assert run.error.code == "oom_killed"


def test_unknown_fields_are_kept_at_every_level_and_given_back():
    data = run_json(
        new_top={"a": 1}, usage={"wall_ms": 1, "cpu_ms": 2, "memory_peak_bytes": 3, "gpu_ms": 4}
    )
    run = Run.from_dict(data)
    assert run.extra == {"new_top": {"a": 1}}
    assert run.usage.extra == {"gpu_ms": 4}
    assert run.to_dict() == data


def test_missing_optional_fields_take_defaults():
    run = Run.from_dict({"id": "run-x", "status": "queued"})
    assert run.artifacts == [] and run.error is None and run.exit_code is None
    assert not run.is_terminal


def test_events_are_typed_by_their_type():
    delta = event_from_dict(
        {
            "type": "run.output.delta",
            "sequence_number": 3,
            "run_id": "run-1",
            "stream": "stderr",
            "delta": "oops",
        },
        event_id="4.0.4.0",
    )
    assert isinstance(delta, OutputDeltaEvent)
    assert (delta.stream, delta.delta, delta.id, delta.sequence_number) == (
        "stderr",
        "oops",
        "4.0.4.0",
        3,
    )
    done = event_from_dict(
        {"type": "run.timed_out", "sequence_number": 5, "run": run_json(status="timed_out")}
    )
    assert isinstance(done, RunFinishedEvent) and done.is_terminal
    assert done.run_id == "run-1" and done.run.status == "timed_out"
    assert isinstance(
        event_from_dict(
            {"type": "run.queued", "sequence_number": 1, "run_id": "r", "queue_position": 2}
        ),
        RunQueuedEvent,
    )
    art = event_from_dict(
        {
            "type": "run.artifact",
            "sequence_number": 4,
            "run_id": "r",
            "artifact": {
                "id": "file-1",
                "filename": "a.png",
                "bytes": 1,
                "url": "u",
                "expires_at": 1,
            },
        }
    )
    assert isinstance(art, ArtifactEvent) and art.artifact.filename == "a.png"


def test_an_event_type_this_client_does_not_know_is_still_an_event():
    event = event_from_dict(
        {"type": "run.heartbeat", "sequence_number": 7, "run_id": "r", "load": 0.5}
    )
    assert type(event) is RunEvent and not event.is_terminal
    assert event.extra == {"load": 0.5}


def test_files_and_containers_parse():
    f = FileObject.from_dict(
        {
            "id": "file-1",
            "object": "file",
            "bytes": 5,
            "created_at": 1,
            "filename": "d.csv",
            "purpose": "assistants",
            "status": "processed",
        }
    )
    assert f.filename == "d.csv" and f.extra == {}
    c = Container.from_dict(
        {
            "id": "cntr_1",
            "object": "container",
            "name": "n",
            "status": "running",
            "created_at": 1,
            "last_active_at": 2,
            "expires_after": {"anchor": "last_active_at", "minutes": 20},
            "memory_limit": "1g",
            "region": "x",
        }
    )
    assert c.expires_after.minutes == 20 and c.extra == {"region": "x"}
    cf = ContainerFile.from_dict(
        {
            "id": "cfile_1",
            "object": "container.file",
            "container_id": "cntr_1",
            "created_at": 1,
            "bytes": 3,
            "path": "/mnt/data/a.txt",
            "source": "user",
        }
    )
    assert cf.path == "/mnt/data/a.txt" and cf.source == "user"
