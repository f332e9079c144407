import json

import httpx
import pytest
from conftest import error_json, event_stream, make_client, run_json, sse_event

from codeinterp.cli import detect_language, exit_code_for, main
from codeinterp.models import Run


@pytest.mark.parametrize(
    "name, language",
    [
        ("a.py", "python"),
        ("b.js", "node"),
        ("c.mjs", "node"),
        ("d.cjs", "node"),
        ("e.rb", "ruby"),
        ("f.php", "php"),
        ("G.PY", "python"),
        ("h.txt", None),
        ("noext", None),
    ],
)
def test_the_language_comes_from_the_extension(name, language):
    assert detect_language(name) == language


@pytest.mark.parametrize(
    "status, exit_code, signal, expected",
    [
        ("completed", 0, None, 0),
        ("completed", 3, None, 3),
        ("completed", 256, None, 1),
        ("completed", None, 9, 137),
        ("timed_out", None, None, 124),
        ("cancelled", None, None, 130),
        ("failed", None, None, 125),
    ],
)
def test_exit_codes_stand_for_how_the_run_ended(status, exit_code, signal, expected):
    assert exit_code_for(Run(status=status, exit_code=exit_code, signal=signal)) == expected


class FakeServer:
    """Files and a streaming run: the terminal run is `final`."""

    def __init__(self, final, deltas=(("stdout", "out\n"), ("stderr", "err\n"))):
        self.final = final
        self.deltas = deltas
        self.requests = []
        self.uploads = []

    def __call__(self, request):
        request.read()
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/v1/files":
            self.uploads.append(request.content)
            return httpx.Response(
                200,
                json={
                    "id": f"file-{len(self.uploads)}",
                    "object": "file",
                    "bytes": 1,
                    "created_at": 1,
                    "filename": "data.csv",
                    "purpose": "assistants",
                },
            )
        if request.method == "DELETE" and path.startswith("/v1/files/"):
            return httpx.Response(
                200, json={"id": path.rsplit("/", 1)[1], "object": "file", "deleted": True}
            )
        if request.method == "POST" and path == "/v1/runs":
            events = [
                sse_event(
                    {
                        "type": "run.created",
                        "sequence_number": 0,
                        "run": run_json(self.final["id"], "queued"),
                    },
                    id="1.0.0.0",
                )
            ]
            for i, (stream, delta) in enumerate(self.deltas, start=1):
                events.append(
                    sse_event(
                        {
                            "type": "run.output.delta",
                            "sequence_number": i,
                            "run_id": "run-1",
                            "stream": stream,
                            "delta": delta,
                        },
                        id=f"{i + 1}.0.0.0",
                    )
                )
            n = len(self.deltas) + 1
            events.append(
                sse_event(
                    {
                        "type": "run." + self.final["status"],
                        "sequence_number": n,
                        "run": self.final,
                    },
                    id=f"{n + 1}.0.0.0",
                )
            )
            return event_stream(events)
        if path.startswith("/signed/"):
            assert "authorization" not in request.headers
            return httpx.Response(200, content=b"artifact bytes")
        return httpx.Response(404, json=error_json("Unknown request URL"))

    def run_body(self):
        return next(json.loads(r.content) for r in self.requests if r.url.path == "/v1/runs")


def cli(server, argv):
    return main(argv, client=make_client(server))


def test_run_streams_output_and_exits_with_the_programs_code(tmp_path, capsys):
    script = tmp_path / "job.py"
    script.write_text("import sys; print('out'); sys.exit(3)")
    server = FakeServer(run_json(status="completed", exit_code=3, stdout="out\n", stderr="err\n"))
    assert (
        cli(server, ["run", "--timeout-ms", "5000", "--memory-mb", "128", str(script), "a1", "--b"])
        == 3
    )
    out, err = capsys.readouterr()
    assert out == "out\n" and err == "err\n"
    body = server.run_body()
    assert body["language"] == "python" and body["stream"] is True
    assert body["code"] == "import sys; print('out'); sys.exit(3)"
    assert body["args"] == ["a1", "--b"] and body["limits"] == {
        "timeout_ms": 5000,
        "memory_mb": 128,
    }


def test_run_uploads_input_files_passes_their_ids_and_removes_them(tmp_path, capsys):
    script = tmp_path / "job.rb"
    script.write_text("puts File.read('data.csv')")
    data = tmp_path / "data.csv"
    data.write_text("a,b\n")
    stdin = tmp_path / "in.txt"
    stdin.write_text("typed")
    server = FakeServer(run_json(status="completed", language="ruby"))
    assert (
        cli(
            server,
            [
                "run",
                "--file",
                str(data),
                "--file-id",
                "file-old",
                "--stdin",
                str(stdin),
                "--container",
                "cntr_1",
                str(script),
            ],
        )
        == 0
    )
    body = server.run_body()
    assert body["language"] == "ruby" and body["files"] == ["file-1", "file-old"]
    assert body["stdin"] == "typed" and body["container"] == "cntr_1"
    assert b"a,b\n" in server.uploads[0]
    deletes = [r.url.path for r in server.requests if r.method == "DELETE"]
    assert deletes == ["/v1/files/file-1"]


@pytest.mark.parametrize(
    "status, code, expected",
    [
        ("timed_out", "timed_out", 124),
        ("failed", "oom_killed", 125),
        ("cancelled", "cancelled", 130),
    ],
)
def test_a_run_that_did_not_complete_exits_with_its_code_and_says_why(
    tmp_path, capsys, status, code, expected
):
    script = tmp_path / "x.js"
    script.write_text("while(true){}")
    final = run_json(status=status, exit_code=None, error={"code": code, "message": "the reason"})
    assert cli(FakeServer(final, deltas=()), ["run", str(script)]) == expected
    err = capsys.readouterr().err
    assert f"run run-1 {status} ({code}): the reason" in err


def test_run_with_json_prints_the_run_instead_of_the_output(tmp_path, capsys):
    script = tmp_path / "x.php"
    script.write_text("<?php echo 1;")
    final = run_json(status="completed", exit_code=0, stdout="out\n", language="php")
    assert cli(FakeServer(final), ["run", "--json", str(script)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["id"] == "run-1" and printed["stdout"] == "out\n"


def test_run_out_downloads_every_artifact(tmp_path, capsys):
    script = tmp_path / "x.py"
    script.write_text("...")
    artifacts = [
        {
            "id": "file-o",
            "filename": name,
            "bytes": 14,
            "url": f"http://api.test/signed/{name}",
            "expires_at": 1,
        }
        for name in ("x.txt", "sub/y.txt")
    ]
    final = run_json(status="completed", artifacts=artifacts)
    out_dir = tmp_path / "out"
    assert cli(FakeServer(final), ["run", "--out", str(out_dir), str(script)]) == 0
    assert (out_dir / "x.txt").read_bytes() == b"artifact bytes"
    assert (out_dir / "sub" / "y.txt").read_bytes() == b"artifact bytes"


def test_run_of_an_unknown_extension_is_a_usage_error(tmp_path, capsys):
    script = tmp_path / "x.txt"
    script.write_text("print(1)")
    assert cli(FakeServer(run_json()), ["run", str(script)]) == 2
    assert "--language" in capsys.readouterr().err


def test_run_reads_the_code_from_stdin_with_a_language(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("print(7)"))
    server = FakeServer(run_json())
    assert cli(server, ["run", "--language", "python", "-"]) == 0
    assert server.run_body()["code"] == "print(7)"


def test_an_api_error_during_run_exits_125(tmp_path, capsys):
    script = tmp_path / "x.py"
    script.write_text("print(1)")
    client = make_client(
        lambda r: httpx.Response(401, json=error_json("Incorrect API key provided"))
    )
    assert main(["run", str(script)], client=client) == 125
    assert "Incorrect API key provided" in capsys.readouterr().err


def test_runs_list_prints_a_table_or_json(capsys):
    page = {
        "object": "list",
        "data": [run_json("run-a"), run_json("run-b", "failed", exit_code=None)],
        "has_more": False,
        "first_id": "run-a",
        "last_id": "run-b",
    }
    client = make_client(lambda r: httpx.Response(200, json=page))
    assert main(["runs", "list"], client=client) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "LANGUAGE", "EXIT", "CREATED"]
    assert lines[1].startswith("run-a") and "failed" in lines[2]
    assert main(["runs", "list", "--json"], client=client) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["run-a", "run-b"]


def test_runs_get_of_an_unknown_run_fails_with_exit_1(capsys):
    client = make_client(
        lambda r: httpx.Response(404, json=error_json("No such run: run-x", param="id"))
    )
    assert main(["runs", "get", "run-x"], client=client) == 1
    assert "No such run: run-x" in capsys.readouterr().err


def test_global_options_go_before_or_after_the_command(monkeypatch):
    from codeinterp import cli as cli_module

    made = []

    class Recorder:
        def __init__(self, api_key=None, base_url=None, timeout=None):
            made.append((api_key, base_url, timeout))
            raise SystemExit(0)

    monkeypatch.setattr(cli_module, "Client", Recorder)
    for argv in (
        ["--url", "http://u", "--api-key", "k", "files", "list"],
        ["files", "list", "--url", "http://u", "--api-key", "k"],
    ):
        with pytest.raises(SystemExit):
            main(argv)
    assert made == [("k", "http://u", None), ("k", "http://u", None)]


def test_the_progress_bar_shows_only_for_transfers_over_4_mib():
    import io

    from codeinterp.cli import TextProgress

    small, big = io.StringIO(), io.StringIO()
    bar = TextProgress("upload a", small)
    bar(100, 1000)
    bar.finish()
    assert small.getvalue() == ""
    bar = TextProgress("upload b", big)
    bar(8 * 1024 * 1024, 8 * 1024 * 1024)
    bar.finish()
    assert "100%" in big.getvalue() and big.getvalue().endswith("\n")


def test_ctrl_c_cancels_the_run_and_exits_130(tmp_path, capsys):
    from conftest import Chunks

    script = tmp_path / "x.py"
    script.write_text("import time; time.sleep(60)")
    requests = []

    def handler(request):
        requests.append(request)
        if request.url.path == "/v1/runs":
            created = sse_event(
                {"type": "run.created", "sequence_number": 0, "run": run_json(status="queued")},
                id="1.0.0.0",
            )
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=Chunks([created], then_raise=KeyboardInterrupt()),
            )
        return httpx.Response(200, json=run_json(status="cancelled"))

    assert main(["run", str(script)], client=make_client(handler)) == 130
    assert [(r.method, r.url.path) for r in requests][-1] == ("POST", "/v1/runs/run-1/cancel")
    assert "cancelled run run-1" in capsys.readouterr().err
