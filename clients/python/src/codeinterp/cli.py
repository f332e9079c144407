"""The ``codeinterp`` command.

``codeinterp run script.py [args...]`` streams the program's output to this terminal's
stdout and stderr and exits with the program's exit code; a run that did not complete
exits 124 (timed out), 130 (cancelled) or 125 (any other failure of the platform, the
API's errors included), with the reason on stderr. The other commands manage runs, files
and containers; each takes ``--json`` for scripts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from . import __version__
from .client import Client
from .errors import APIError
from .models import Model, OutputDeltaEvent, Run

EXIT_TIMED_OUT = 124
EXIT_PLATFORM = 125
EXIT_CANCELLED = 130
EXIT_USAGE = 2
EXIT_ERROR = 1

PROGRESS_THRESHOLD = 4 * 1024 * 1024

LANGUAGES_BY_EXTENSION = {
    ".py": "python",
    ".js": "node",
    ".mjs": "node",
    ".cjs": "node",
    ".rb": "ruby",
    ".php": "php",
}


class UsageError(Exception):
    """A mistake in how the command was called (exit 2)."""


def detect_language(script: str) -> Optional[str]:
    return LANGUAGES_BY_EXTENSION.get(Path(script).suffix.lower())


def exit_code_for(run: Run) -> int:
    """The exit code that stands for a finished run."""
    if run.status == "completed":
        if run.exit_code is not None:
            code = run.exit_code & 0xFF
            return code if code or not run.exit_code else 1
        return 128 + run.signal if run.signal else 0
    if run.status == "timed_out":
        return EXIT_TIMED_OUT
    if run.status == "cancelled":
        return EXIT_CANCELLED
    return EXIT_PLATFORM


def reason_of(run: Run) -> str:
    reason = f"run {run.id} {run.status}"
    if run.error is not None:
        reason += (
            f" ({run.error.code}): {run.error.message}"
            if run.error.message
            else f" ({run.error.code})"
        )
    return reason


class TextProgress:
    """A one-line progress bar on stderr, drawn only for transfers over 4 MiB."""

    def __init__(self, label: str, stream: Any = None, threshold: int = PROGRESS_THRESHOLD) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.threshold = threshold
        self.drawn = False
        self._last = 0.0
        self._width = 0

    def __call__(self, done: int, total: Optional[int]) -> None:
        size = total if total is not None else done
        if size <= self.threshold:
            return
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - self._last < 0.1:
            return
        self._last = now
        mib = 1024 * 1024
        if total:
            filled = int(30 * done / total)
            line = (
                f"\r{self.label}  [{'#' * filled}{'.' * (30 - filled)}] {100 * done // total:3d}%  "
                f"{done / mib:.1f}/{total / mib:.1f} MiB"
            )
        else:
            line = f"\r{self.label}  {done / mib:.1f} MiB"
        self.stream.write(line.ljust(self._width))  # cover what a longer line left
        self._width = len(line)
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


class Output:
    """Where the command writes, and whether it shows progress."""

    def __init__(self, show_progress: bool) -> None:
        self.show_progress = show_progress

    @property
    def out(self) -> Any:
        return sys.stdout

    @property
    def err(self) -> Any:
        return sys.stderr

    def progress(self, label: str) -> Optional[TextProgress]:
        return TextProgress(label, self.err) if self.show_progress else None

    def note(self, message: str) -> None:
        self.err.write(f"codeinterp: {message}\n")
        self.err.flush()

    def json(self, value: Any) -> None:
        if isinstance(value, Model):
            value = value.to_dict()
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        self.out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        cells = [[str(h) for h in headers]] + [
            ["" if c is None else str(c) for c in row] for row in rows
        ]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for row in cells:
            self.out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def _when(ts: Optional[int]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _with_progress(io: Output, label: str, call: Callable[[Any], Any]) -> Any:
    bar = io.progress(label)
    try:
        return call(bar)
    finally:
        if bar is not None:
            bar.finish()


# --- run ---------------------------------------------------------------------------------


def cmd_run(client: Client, args: argparse.Namespace, io: Output) -> int:
    language = args.language or (None if args.script == "-" else detect_language(args.script))
    if not language:
        raise UsageError(
            f"cannot tell the language of {args.script!r}: use --language python|node|ruby|php"
        )
    if args.script == "-":
        code = sys.stdin.read()
    else:
        code = Path(args.script).read_text(encoding="utf-8")
    stdin = None
    if args.stdin is not None:
        if args.stdin == "-":
            if args.script == "-":
                raise UsageError("the code already comes from stdin: give --stdin a file")
            stdin = sys.stdin.read()
        else:
            stdin = Path(args.stdin).read_text(encoding="utf-8")
    limits = {"timeout_ms": args.timeout_ms, "memory_mb": args.memory_mb}
    limits = {k: v for k, v in limits.items() if v is not None}

    uploaded: List[str] = []
    try:
        for path in args.file:
            meta = _with_progress(
                io,
                f"upload {Path(path).name}",
                lambda bar, p=path: client.files.create(p, progress=bar),
            )
            uploaded.append(meta.id)
        run = _stream_run(
            client, args, io, language, code, stdin, uploaded + list(args.file_id), limits
        )
    finally:
        if not args.keep_files:
            for file_id in uploaded:
                try:
                    client.files.delete(file_id)
                except APIError:
                    pass
    if run is None:
        return EXIT_CANCELLED
    if args.json:
        io.json(run)
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        for artifact in run.artifacts:
            saved = _with_progress(
                io,
                f"download {artifact.filename}",
                lambda bar, a=artifact: client.download_artifact(a, out_dir, progress=bar),
            )
            io.note(f"saved {saved}")
    if run.status != "completed":
        io.note(reason_of(run))
    return exit_code_for(run)


def _stream_run(
    client: Client,
    args: argparse.Namespace,
    io: Output,
    language: str,
    code: str,
    stdin: Optional[str],
    file_ids: List[str],
    limits: Dict[str, int],
) -> Optional[Run]:
    with client.runs.stream(
        language,
        code,
        stdin=stdin,
        args=args.args,
        files=file_ids or None,
        limits=limits or None,
        container=args.container,
    ) as stream:
        try:
            for event in stream:
                if isinstance(event, OutputDeltaEvent) and not args.json:
                    target = io.out if event.stream == "stdout" else io.err
                    target.write(event.delta)
                    target.flush()
        except KeyboardInterrupt:
            if stream.run_id:
                client.runs.cancel(stream.run_id)
                io.note(f"cancelled run {stream.run_id}")
            return None
        if stream.run is None:
            raise APIError(f"the event stream of run {stream.run_id} ended without the run")
        return stream.run


# --- runs, files, containers ---------------------------------------------------------------


def _run_line(run: Run) -> str:
    parts = [run.id, run.status, run.language]
    if run.exit_code is not None:
        parts.append(f"exit={run.exit_code}")
    if run.usage is not None:
        parts.append(f"wall={run.usage.wall_ms}ms")
    if run.error is not None:
        parts.append(f"error={run.error.code}")
    return "  ".join(parts)


def cmd_runs(client: Client, args: argparse.Namespace, io: Output) -> int:
    if args.action == "list":
        if args.all:
            runs = list(client.runs.list_all(limit=args.limit))
        else:
            runs = client.runs.list(limit=args.limit, after=args.after).data
        if args.json:
            io.json([r.to_dict() for r in runs])
        else:
            io.table(
                ["ID", "STATUS", "LANGUAGE", "EXIT", "CREATED"],
                [[r.id, r.status, r.language, r.exit_code, _when(r.created_at)] for r in runs],
            )
        return 0
    run = client.runs.get(args.id) if args.action == "get" else client.runs.cancel(args.id)
    if args.json:
        io.json(run)
    else:
        io.out.write(_run_line(run) + "\n")
        for a in run.artifacts:
            io.out.write(f"  artifact {a.filename} ({a.bytes} bytes) {a.url}\n")
    return 0


def _file_row(f: Any) -> List[Any]:
    return [f.id, f.bytes, _when(f.created_at), f.filename, f.purpose]


def cmd_files(client: Client, args: argparse.Namespace, io: Output) -> int:
    if args.action == "upload":
        meta = _with_progress(
            io,
            f"upload {Path(args.path).name}",
            lambda bar: client.files.create(args.path, purpose=args.purpose, progress=bar),
        )
        io.json(meta) if args.json else io.out.write(f"{meta.id}  {meta.bytes}  {meta.filename}\n")
    elif args.action == "list":
        files = client.files.list(purpose=args.purpose).data
        if args.json:
            io.json([f.to_dict() for f in files])
        else:
            io.table(
                ["ID", "BYTES", "CREATED", "FILENAME", "PURPOSE"], [_file_row(f) for f in files]
            )
    elif args.action == "get":
        meta = client.files.retrieve(args.id)
        io.json(meta) if args.json else io.table(
            ["ID", "BYTES", "CREATED", "FILENAME", "PURPOSE"], [_file_row(meta)]
        )
    elif args.action == "download":
        saved = _with_progress(
            io,
            f"download {args.id}",
            lambda bar: client.files.download(args.id, args.path, progress=bar),
        )
        io.json({"id": args.id, "path": str(saved)}) if args.json else io.out.write(f"{saved}\n")
    elif args.action == "delete":
        gone = client.files.delete(args.id)
        io.json(gone) if args.json else io.out.write(f"{gone.id}  deleted\n")
    return 0


def _container_row(c: Any) -> List[Any]:
    minutes = c.expires_after.minutes if c.expires_after else None
    return [c.id, c.status, c.name, _when(c.last_active_at), minutes]


CONTAINER_HEADERS = ["ID", "STATUS", "NAME", "LAST ACTIVE", "EXPIRES AFTER (MIN)"]


def cmd_containers(client: Client, args: argparse.Namespace, io: Output) -> int:
    if args.action == "files":
        return cmd_container_files(client, args, io)
    if args.action == "create":
        c = client.containers.create(
            args.name,
            expires_after_minutes=args.expires_after_minutes,
            file_ids=args.file_id or None,
            memory_limit=args.memory_limit,
        )
        io.json(c) if args.json else io.out.write(f"{c.id}  {c.status}  {c.name}\n")
    elif args.action == "list":
        items = (
            list(client.containers.list_all())
            if args.all
            else client.containers.list(limit=args.limit).data
        )
        if args.json:
            io.json([c.to_dict() for c in items])
        else:
            io.table(CONTAINER_HEADERS, [_container_row(c) for c in items])
    elif args.action == "get":
        c = client.containers.retrieve(args.id)
        io.json(c) if args.json else io.table(CONTAINER_HEADERS, [_container_row(c)])
    elif args.action == "delete":
        gone = client.containers.delete(args.id)
        io.json(gone) if args.json else io.out.write(f"{gone.id}  deleted\n")
    return 0


def cmd_container_files(client: Client, args: argparse.Namespace, io: Output) -> int:
    files = client.containers.files
    if args.files_action == "upload":
        f = _with_progress(
            io,
            f"upload {Path(args.path).name}",
            lambda bar: files.create(args.container_id, args.path, progress=bar),
        )
        io.json(f) if args.json else io.out.write(f"{f.id}  {f.bytes}  {f.path}\n")
    elif args.files_action == "list":
        items = files.list(args.container_id).data
        if args.json:
            io.json([f.to_dict() for f in items])
        else:
            io.table(
                ["ID", "BYTES", "SOURCE", "PATH"],
                [[f.id, f.bytes, f.source, f.path] for f in items],
            )
    elif args.files_action == "download":
        saved = _with_progress(
            io,
            f"download {args.file_id}",
            lambda bar: files.download(args.container_id, args.file_id, args.path, progress=bar),
        )
        io.json({"id": args.file_id, "path": str(saved)}) if args.json else io.out.write(
            f"{saved}\n"
        )
    elif args.files_action == "delete":
        gone = files.delete(args.container_id, args.file_id)
        io.json(gone) if args.json else io.out.write(f"{gone.id}  deleted\n")
    return 0


# --- arguments -----------------------------------------------------------------------------


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name."""
    default: Any = None if defaults else argparse.SUPPRESS
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--url",
        default=default,
        help="the API's base URL (default: $CODEINTERP_URL or http://localhost:8080)",
    )
    p.add_argument("--api-key", default=default, help="the API key (default: $CODEINTERP_API_KEY)")
    p.add_argument(
        "--timeout", type=float, default=default, metavar="SECONDS", help="per-request timeout"
    )
    p.add_argument(
        "--progress",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="show a progress bar for transfers over 4 MiB even when stderr is not a terminal",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="codeinterp",
        parents=[_global_options(defaults=True)],
        description="Run code on a codeinterp service and manage its runs, files and containers.",
    )
    parser.add_argument("--version", action="version", version=f"codeinterp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        parent: Any, name: str, help: str, json_flag: bool = True
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help, parents=[common])
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON for scripts")
        return p

    run = command(
        commands, "run", "run a script; options go before the script, its arguments after it"
    )
    run.add_argument(
        "-l",
        "--language",
        choices=["python", "node", "ruby", "php"],
        help="the language (default: from the extension: .py .js .mjs .cjs .rb .php)",
    )
    run.add_argument(
        "--stdin", metavar="FILE", help="the program's standard input ('-' for this one's)"
    )
    run.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="upload an input file into the working directory (repeatable)",
    )
    run.add_argument(
        "--file-id",
        action="append",
        default=[],
        metavar="ID",
        help="an uploaded file to place in the working directory (repeatable)",
    )
    run.add_argument("--keep-files", action="store_true", help="keep the files --file uploaded")
    run.add_argument("--timeout-ms", type=int, help="wall-clock limit of the program")
    run.add_argument("--memory-mb", type=int, help="memory limit of the program")
    run.add_argument("--container", metavar="ID", help="run in this container (state is kept)")
    run.add_argument("--out", metavar="DIR", help="download every output file into DIR")
    run.add_argument("script", help="the script, or - to read the code from stdin")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the program")

    runs = command(commands, "runs", "list, show or cancel runs", json_flag=False)
    runs_actions = runs.add_subparsers(dest="action", metavar="ACTION", required=True)
    runs_list = command(runs_actions, "list", "list runs, newest first")
    runs_list.add_argument("--limit", type=int, help="runs per page (1-100)")
    runs_list.add_argument("--after", help="the id of the last run of the previous page")
    runs_list.add_argument("--all", action="store_true", help="follow every page")
    for name, text in [("get", "show a run"), ("cancel", "cancel a run")]:
        command(runs_actions, name, text).add_argument("id")

    files = command(commands, "files", "upload, list, download or delete files", json_flag=False)
    files_actions = files.add_subparsers(dest="action", metavar="ACTION", required=True)
    upload = command(files_actions, "upload", "upload a file")
    upload.add_argument("path")
    upload.add_argument("--purpose", default="assistants")
    command(files_actions, "list", "list files").add_argument("--purpose")
    command(files_actions, "get", "show a file").add_argument("id")
    download = command(
        files_actions, "download", "download a file (to PATH, or under its name here)"
    )
    download.add_argument("id")
    download.add_argument("path", nargs="?")
    command(files_actions, "delete", "delete a file").add_argument("id")

    containers = command(
        commands, "containers", "sessions that keep state between runs", json_flag=False
    )
    c_actions = containers.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = command(c_actions, "create", "create a container")
    create.add_argument("name")
    create.add_argument(
        "--expires-after-minutes", type=int, metavar="N", help="idle minutes before it expires"
    )
    create.add_argument("--memory-limit", help="e.g. 1g")
    create.add_argument(
        "--file-id", action="append", default=[], metavar="ID", help="an uploaded file to copy in"
    )
    c_list = command(c_actions, "list", "list containers")
    c_list.add_argument("--limit", type=int)
    c_list.add_argument("--all", action="store_true", help="follow every page")
    command(c_actions, "get", "show a container").add_argument("id")
    command(c_actions, "delete", "delete a container").add_argument("id")

    c_files = command(c_actions, "files", "files in a container (under /mnt/data)", json_flag=False)
    cf_actions = c_files.add_subparsers(dest="files_action", metavar="ACTION", required=True)
    cf_upload = command(cf_actions, "upload", "upload a file into a container")
    cf_upload.add_argument("container_id")
    cf_upload.add_argument("path")
    command(cf_actions, "list", "list a container's files").add_argument("container_id")
    cf_download = command(cf_actions, "download", "download a container's file")
    cf_download.add_argument("container_id")
    cf_download.add_argument("file_id")
    cf_download.add_argument("path", nargs="?")
    cf_delete = command(cf_actions, "delete", "delete a container's file")
    cf_delete.add_argument("container_id")
    cf_delete.add_argument("file_id")
    return parser


COMMANDS = {"run": cmd_run, "runs": cmd_runs, "files": cmd_files, "containers": cmd_containers}


def main(argv: Optional[Sequence[str]] = None, *, client: Optional[Client] = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    io = Output(show_progress=args.progress or _is_tty(sys.stderr))
    failure = EXIT_PLATFORM if args.command == "run" else EXIT_ERROR
    own = client is None
    try:
        if client is None:
            client = Client(api_key=args.api_key, base_url=args.url, timeout=args.timeout)
        return COMMANDS[args.command](client, args, io)
    except UsageError as exc:
        io.note(f"error: {exc}")
        return EXIT_USAGE
    except APIError as exc:
        io.note(f"error: {exc}")
        return failure
    except OSError as exc:
        io.note(f"error: {exc}")
        return failure
    except KeyboardInterrupt:
        return EXIT_CANCELLED
    finally:
        if own and client is not None:
            client.close()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
