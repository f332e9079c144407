"""The service's objects as dataclasses. ``from_dict`` keeps every field the client does not
know in ``extra``, and ``to_dict`` gives them back, so a newer server never breaks an older
client and nothing it sent is lost."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type, TypeVar

M = TypeVar("M", bound="Model")

TERMINAL_STATUSES = frozenset({"completed", "failed", "timed_out", "cancelled"})


@dataclass
class Model:
    extra: Dict[str, Any] = field(default_factory=dict, repr=False)

    # Field name -> (model class, is a list of them).
    _nested: ClassVar[Dict[str, Tuple[Type[Model], bool]]] = {}

    @classmethod
    def from_dict(cls: Type[M], data: Mapping[str, Any]) -> M:
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict needs a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                extra[key] = value
                continue
            nested = cls._nested.get(key)
            if nested is not None and value is not None:
                model, many = nested
                if many:
                    value = [model.from_dict(v) if isinstance(v, Mapping) else v for v in value]
                elif isinstance(value, Mapping):
                    value = model.from_dict(value)
            known[key] = value
        return cls(**known, extra=extra)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            out[f.name] = _plain(getattr(self, f.name))
        out.update(self.extra)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Model):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass
class Artifact(Model):
    """An output file of a run. ``url`` is signed: it needs no API key until ``expires_at``."""

    id: str = ""
    filename: str = ""
    bytes: int = 0
    url: str = ""
    expires_at: Optional[int] = None


@dataclass
class RunUsage(Model):
    wall_ms: int = 0
    cpu_ms: int = 0
    memory_peak_bytes: int = 0


@dataclass
class RunErrorInfo(Model):
    """Why a run did not complete: ``code`` is a reason code (``timed_out``, ``oom_killed``...)."""

    code: str = ""
    message: str = ""


@dataclass
class Run(Model):
    id: str = ""
    object: str = "run"
    status: str = ""
    language: str = ""
    created_at: Optional[int] = None
    started_at: Optional[int] = None
    completed_at: Optional[int] = None
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    usage: Optional[RunUsage] = None
    artifacts: List[Artifact] = field(default_factory=list)
    error: Optional[RunErrorInfo] = None
    queue_position: Optional[int] = None

    _nested = {
        "usage": (RunUsage, False),
        "artifacts": (Artifact, True),
        "error": (RunErrorInfo, False),
    }

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class FileObject(Model):
    id: str = ""
    object: str = "file"
    bytes: int = 0
    created_at: Optional[int] = None
    filename: str = ""
    purpose: str = ""
    status: Optional[str] = None


@dataclass
class DeletedObject(Model):
    """What a delete answers: ``object`` is ``file``, ``container.deleted``, ..."""

    id: str = ""
    object: str = ""
    deleted: bool = False


@dataclass
class ExpiresAfter(Model):
    anchor: str = "last_active_at"
    minutes: Optional[int] = None


@dataclass
class Container(Model):
    id: str = ""
    object: str = "container"
    name: str = ""
    status: str = ""
    created_at: Optional[int] = None
    last_active_at: Optional[int] = None
    expires_after: Optional[ExpiresAfter] = None
    memory_limit: Optional[str] = None

    _nested = {"expires_after": (ExpiresAfter, False)}


@dataclass
class ContainerFile(Model):
    id: str = ""
    object: str = "container.file"
    container_id: str = ""
    created_at: Optional[int] = None
    bytes: Optional[int] = None
    path: str = ""
    source: str = ""


# Events of a run's stream. `id` is the server-sent event's id (the resume cursor), not a
# field of its data.


@dataclass
class RunEvent(Model):
    """An event of a run's stream; also the class of event types this client does not know."""

    type: str = ""
    sequence_number: int = -1
    run_id: Optional[str] = None
    id: Optional[str] = None

    @property
    def is_terminal(self) -> bool:
        return False


@dataclass
class RunCreatedEvent(RunEvent):
    run: Optional[Run] = None
    _nested = {"run": (Run, False)}


@dataclass
class RunQueuedEvent(RunEvent):
    queue_position: Optional[int] = None


@dataclass
class RunInProgressEvent(RunEvent):
    run: Optional[Run] = None
    _nested = {"run": (Run, False)}


@dataclass
class OutputDeltaEvent(RunEvent):
    """``stream`` is ``stdout`` or ``stderr``."""

    stream: str = ""
    delta: str = ""


@dataclass
class ArtifactEvent(RunEvent):
    artifact: Optional[Artifact] = None
    _nested = {"artifact": (Artifact, False)}


@dataclass
class RunFinishedEvent(RunEvent):
    """``run.completed``, ``run.failed``, ``run.timed_out`` or ``run.cancelled``."""

    run: Optional[Run] = None
    _nested = {"run": (Run, False)}

    @property
    def is_terminal(self) -> bool:
        return True


EVENT_TYPES: Dict[str, Type[RunEvent]] = {
    "run.created": RunCreatedEvent,
    "run.queued": RunQueuedEvent,
    "run.in_progress": RunInProgressEvent,
    "run.output.delta": OutputDeltaEvent,
    "run.artifact": ArtifactEvent,
    "run.completed": RunFinishedEvent,
    "run.failed": RunFinishedEvent,
    "run.timed_out": RunFinishedEvent,
    "run.cancelled": RunFinishedEvent,
}


def event_from_dict(
    data: Mapping[str, Any], *, event_id: Optional[str] = None, event_type: Optional[str] = None
) -> RunEvent:
    """The typed event of a server-sent event's data (its ``type``, else the SSE event name)."""
    data = dict(data)
    data.setdefault("type", event_type or "")
    event = EVENT_TYPES.get(data["type"], RunEvent).from_dict(data)
    event.id = event_id
    run = getattr(event, "run", None)
    if event.run_id is None and isinstance(run, Run):
        event.run_id = run.id
    return event
