"""Python client for the codeinterp service: run untrusted Python, Node.js, Ruby and PHP.

from codeinterp import Client
run = Client().runs.create("python", "print(1+1)")
print(run.stdout)
"""

__version__ = "0.1.0"

from .client import AsyncClient, Client
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
)
from .models import (
    Artifact,
    ArtifactEvent,
    Container,
    ContainerFile,
    DeletedObject,
    ExpiresAfter,
    FileObject,
    OutputDeltaEvent,
    Run,
    RunCreatedEvent,
    RunErrorInfo,
    RunEvent,
    RunFinishedEvent,
    RunInProgressEvent,
    RunQueuedEvent,
    RunUsage,
)
from .pagination import AsyncPage, Page
from .runs import AsyncRunStream, RunLimits, RunStream

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "APIError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitError",
    "InternalServerError",
    "APIConnectionError",
    "APITimeoutError",
    "Run",
    "RunUsage",
    "RunErrorInfo",
    "Artifact",
    "FileObject",
    "DeletedObject",
    "Container",
    "ContainerFile",
    "ExpiresAfter",
    "RunEvent",
    "RunCreatedEvent",
    "RunQueuedEvent",
    "RunInProgressEvent",
    "OutputDeltaEvent",
    "ArtifactEvent",
    "RunFinishedEvent",
    "Page",
    "AsyncPage",
    "RunStream",
    "AsyncRunStream",
    "RunLimits",
]
