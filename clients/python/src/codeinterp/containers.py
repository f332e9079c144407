"""``/v1/containers``: sessions that keep state between runs (OpenAI's Containers API shapes),
and the files in them (``container.file``, paths under ``/mnt/data/``). A run goes into a
container with ``runs.create(..., container=id)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Dict, Iterator, Optional, Sequence

from ._transport import AsyncTransport, RequestSpec, SyncTransport, TimeoutTypes, json_of
from .files import (
    FileInput,
    PathLike,
    Progress,
    asave_response,
    content_spec,
    destination,
    open_upload,
    save_response,
)
from .models import Container, ContainerFile, DeletedObject
from .pagination import AsyncPage, Page

DATA_DIR = "/mnt/data/"


def create_body(
    name: str,
    expires_after_minutes: Optional[int],
    file_ids: Optional[Sequence[str]],
    memory_limit: Optional[str],
) -> Dict[str, Any]:
    body: Dict[str, Any] = {"name": name}
    if expires_after_minutes is not None:
        body["expires_after"] = {"anchor": "last_active_at", "minutes": expires_after_minutes}
    if file_ids:
        body["file_ids"] = list(file_ids)
    if memory_limit is not None:
        body["memory_limit"] = memory_limit
    return body


def local_name(file: ContainerFile) -> str:
    """A container file's path relative to /mnt/data (its name when saved locally)."""
    path = file.path or file.id
    return path[len(DATA_DIR) :] if path.startswith(DATA_DIR) else path.lstrip("/")


def _check_one_source(file: Optional[FileInput], file_id: Optional[str]) -> None:
    if (file is None) == (file_id is None):
        raise ValueError("give exactly one of file= (to upload) or file_id= (an uploaded file)")


def _params(limit: Optional[int], after: Optional[str], order: Optional[str]) -> Dict[str, Any]:
    return {"limit": limit, "after": after, "order": order}


class ContainerFiles:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def create(
        self,
        container_id: str,
        file: Optional[FileInput] = None,
        *,
        file_id: Optional[str] = None,
        filename: Optional[str] = None,
        progress: Optional[Progress] = None,
        timeout: TimeoutTypes = None,
    ) -> ContainerFile:
        """Upload a file into the container (``file=``), or copy an uploaded one (``file_id=``)."""
        _check_one_source(file, file_id)
        path = f"/v1/containers/{container_id}/files"
        if file_id is not None:
            response = self._t.request(
                RequestSpec("POST", path, json={"file_id": file_id}, timeout=timeout)
            )
        else:
            with open_upload(file, filename, progress) as (_, files):
                response = self._t.request(RequestSpec("POST", path, files=files, timeout=timeout))
        return ContainerFile.from_dict(json_of(response))

    def list(
        self,
        container_id: str,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        order: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Page[ContainerFile]:
        def fetch(cursor: Optional[str]) -> Page[ContainerFile]:
            spec = RequestSpec(
                "GET",
                f"/v1/containers/{container_id}/files",
                params=_params(limit, cursor, order),
                timeout=timeout,
            )
            return Page(json_of(self._t.request(spec)), ContainerFile, fetch)

        return fetch(after)

    def retrieve(
        self, container_id: str, file_id: str, *, timeout: TimeoutTypes = None
    ) -> ContainerFile:
        spec = RequestSpec("GET", f"/v1/containers/{container_id}/files/{file_id}", timeout=timeout)
        return ContainerFile.from_dict(json_of(self._t.request(spec)))

    def content(self, container_id: str, file_id: str, *, timeout: TimeoutTypes = None) -> bytes:
        spec = content_spec(f"/v1/containers/{container_id}/files/{file_id}/content", timeout)
        return self._t.request(spec).content

    def download(
        self,
        container_id: str,
        file_id: str,
        path: Optional[PathLike] = None,
        progress: Optional[Progress] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Path:
        """Stream the file to ``path`` (a directory, or None for the current one, gets it
        under its path relative to /mnt/data)."""
        meta = self.retrieve(container_id, file_id, timeout=timeout)
        target = destination(path, local_name(meta))
        spec = content_spec(f"/v1/containers/{container_id}/files/{file_id}/content", timeout)
        with self._t.stream(spec) as response:
            return save_response(response, target, progress, meta.bytes)

    def delete(
        self, container_id: str, file_id: str, *, timeout: TimeoutTypes = None
    ) -> DeletedObject:
        spec = RequestSpec(
            "DELETE", f"/v1/containers/{container_id}/files/{file_id}", timeout=timeout
        )
        return DeletedObject.from_dict(json_of(self._t.request(spec)))


class Containers:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport
        self.files = ContainerFiles(transport)

    def create(
        self,
        name: str,
        expires_after_minutes: Optional[int] = None,
        file_ids: Optional[Sequence[str]] = None,
        memory_limit: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Container:
        body = create_body(name, expires_after_minutes, file_ids, memory_limit)
        return Container.from_dict(
            json_of(
                self._t.request(RequestSpec("POST", "/v1/containers", json=body, timeout=timeout))
            )
        )

    def list(
        self,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        order: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Page[Container]:
        def fetch(cursor: Optional[str]) -> Page[Container]:
            spec = RequestSpec(
                "GET", "/v1/containers", params=_params(limit, cursor, order), timeout=timeout
            )
            return Page(json_of(self._t.request(spec)), Container, fetch)

        return fetch(after)

    def list_all(
        self, limit: Optional[int] = None, *, timeout: TimeoutTypes = None
    ) -> Iterator[Container]:
        return self.list(limit=limit, timeout=timeout).iter_all()

    def retrieve(self, container_id: str, *, timeout: TimeoutTypes = None) -> Container:
        spec = RequestSpec("GET", f"/v1/containers/{container_id}", timeout=timeout)
        return Container.from_dict(json_of(self._t.request(spec)))

    def delete(self, container_id: str, *, timeout: TimeoutTypes = None) -> DeletedObject:
        spec = RequestSpec("DELETE", f"/v1/containers/{container_id}", timeout=timeout)
        return DeletedObject.from_dict(json_of(self._t.request(spec)))


class AsyncContainerFiles:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        container_id: str,
        file: Optional[FileInput] = None,
        *,
        file_id: Optional[str] = None,
        filename: Optional[str] = None,
        progress: Optional[Progress] = None,
        timeout: TimeoutTypes = None,
    ) -> ContainerFile:
        _check_one_source(file, file_id)
        path = f"/v1/containers/{container_id}/files"
        if file_id is not None:
            response = await self._t.request(
                RequestSpec("POST", path, json={"file_id": file_id}, timeout=timeout)
            )
        else:
            with open_upload(file, filename, progress) as (_, files):
                response = await self._t.request(
                    RequestSpec("POST", path, files=files, timeout=timeout)
                )
        return ContainerFile.from_dict(json_of(response))

    async def list(
        self,
        container_id: str,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        order: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> AsyncPage[ContainerFile]:
        async def fetch(cursor: Optional[str]) -> AsyncPage[ContainerFile]:
            spec = RequestSpec(
                "GET",
                f"/v1/containers/{container_id}/files",
                params=_params(limit, cursor, order),
                timeout=timeout,
            )
            return AsyncPage(json_of(await self._t.request(spec)), ContainerFile, fetch)

        return await fetch(after)

    async def retrieve(
        self, container_id: str, file_id: str, *, timeout: TimeoutTypes = None
    ) -> ContainerFile:
        spec = RequestSpec("GET", f"/v1/containers/{container_id}/files/{file_id}", timeout=timeout)
        return ContainerFile.from_dict(json_of(await self._t.request(spec)))

    async def content(
        self, container_id: str, file_id: str, *, timeout: TimeoutTypes = None
    ) -> bytes:
        spec = content_spec(f"/v1/containers/{container_id}/files/{file_id}/content", timeout)
        return (await self._t.request(spec)).content

    async def download(
        self,
        container_id: str,
        file_id: str,
        path: Optional[PathLike] = None,
        progress: Optional[Progress] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Path:
        meta = await self.retrieve(container_id, file_id, timeout=timeout)
        target = destination(path, local_name(meta))
        spec = content_spec(f"/v1/containers/{container_id}/files/{file_id}/content", timeout)
        async with self._t.stream(spec) as response:
            return await asave_response(response, target, progress, meta.bytes)

    async def delete(
        self, container_id: str, file_id: str, *, timeout: TimeoutTypes = None
    ) -> DeletedObject:
        spec = RequestSpec(
            "DELETE", f"/v1/containers/{container_id}/files/{file_id}", timeout=timeout
        )
        return DeletedObject.from_dict(json_of(await self._t.request(spec)))


class AsyncContainers:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport
        self.files = AsyncContainerFiles(transport)

    async def create(
        self,
        name: str,
        expires_after_minutes: Optional[int] = None,
        file_ids: Optional[Sequence[str]] = None,
        memory_limit: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Container:
        body = create_body(name, expires_after_minutes, file_ids, memory_limit)
        spec = RequestSpec("POST", "/v1/containers", json=body, timeout=timeout)
        return Container.from_dict(json_of(await self._t.request(spec)))

    async def list(
        self,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        order: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> AsyncPage[Container]:
        async def fetch(cursor: Optional[str]) -> AsyncPage[Container]:
            spec = RequestSpec(
                "GET", "/v1/containers", params=_params(limit, cursor, order), timeout=timeout
            )
            return AsyncPage(json_of(await self._t.request(spec)), Container, fetch)

        return await fetch(after)

    async def list_all(
        self, limit: Optional[int] = None, *, timeout: TimeoutTypes = None
    ) -> AsyncIterator[Container]:
        page = await self.list(limit=limit, timeout=timeout)
        async for container in page.iter_all():
            yield container

    async def retrieve(self, container_id: str, *, timeout: TimeoutTypes = None) -> Container:
        spec = RequestSpec("GET", f"/v1/containers/{container_id}", timeout=timeout)
        return Container.from_dict(json_of(await self._t.request(spec)))

    async def delete(self, container_id: str, *, timeout: TimeoutTypes = None) -> DeletedObject:
        spec = RequestSpec("DELETE", f"/v1/containers/{container_id}", timeout=timeout)
        return DeletedObject.from_dict(json_of(await self._t.request(spec)))
