"""The clients: ``Client`` (sync) and ``AsyncClient``, each a set of resources over one
httpx connection pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import httpx

from ._transport import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_WAIT,
    AsyncTransport,
    RequestSpec,
    SyncTransport,
    TimeoutTypes,
)
from .containers import AsyncContainers, Containers
from .files import AsyncFiles, Files, PathLike, Progress, asave_response, destination, save_response
from .models import Artifact
from .runs import AsyncRuns, Runs

ArtifactLike = Union[Artifact, Mapping[str, Any]]


def _artifact(artifact: ArtifactLike) -> Artifact:
    return artifact if isinstance(artifact, Artifact) else Artifact.from_dict(artifact)


def _artifact_spec(artifact: Artifact, timeout: TimeoutTypes) -> RequestSpec:
    if not artifact.url:
        raise ValueError(f"artifact {artifact.id or artifact.filename!r} has no url")
    # The URL's signature is the credential: the API key is not sent.
    return RequestSpec("GET", artifact.url, headers={"Accept": "*/*"}, auth=False, timeout=timeout)


class Client:
    """The service's API. ``base_url`` and ``api_key`` default to the environment's
    ``CODEINTERP_URL`` (else ``http://localhost:8080``) and ``CODEINTERP_API_KEY``.

    ``timeout`` (seconds, or an ``httpx.Timeout``) applies to every request unless a call
    gives its own; a waiting ``runs.create`` reads for as long as its run may take.
    ``max_retries`` bounds how often a refused (429) or, when safe, failed request is
    repeated, and ``max_retry_wait`` the seconds spent waiting between attempts."""

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        default_headers: Optional[Mapping[str, str]] = None,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        self._transport = SyncTransport(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
            default_headers=default_headers,
            http_client=http_client,
        )
        self.runs = Runs(self._transport)
        self.files = Files(self._transport)
        self.containers = Containers(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    def download_artifact(
        self,
        artifact: ArtifactLike,
        path: Optional[PathLike] = None,
        progress: Optional[Progress] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Path:
        """Stream a run's output file from its signed URL to ``path`` (a directory, or None
        for the current one, gets it under its filename). No API key is sent."""
        artifact = _artifact(artifact)
        target = destination(path, artifact.filename or artifact.id)
        with self._transport.stream(_artifact_spec(artifact, timeout)) as response:
            return save_response(response, target, progress, artifact.bytes or None)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient:
    """The async twin of :class:`Client`: the same resources, each method awaited (and
    ``async for`` over streams and pages)."""

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        default_headers: Optional[Mapping[str, str]] = None,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self._transport = AsyncTransport(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
            default_headers=default_headers,
            http_client=http_client,
        )
        self.runs = AsyncRuns(self._transport)
        self.files = AsyncFiles(self._transport)
        self.containers = AsyncContainers(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    async def download_artifact(
        self,
        artifact: ArtifactLike,
        path: Optional[PathLike] = None,
        progress: Optional[Progress] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Path:
        artifact = _artifact(artifact)
        target = destination(path, artifact.filename or artifact.id)
        async with self._transport.stream(_artifact_spec(artifact, timeout)) as response:
            return await asave_response(response, target, progress, artifact.bytes or None)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
