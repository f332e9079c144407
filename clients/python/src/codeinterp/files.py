"""``/v1/files``: upload inputs, read outputs. Also the upload and download plumbing that
container files and artifacts share: multipart uploads that report progress, and downloads
streamed to a ``.part`` file renamed into place once whole."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterator,
    Optional,
    Tuple,
    Union,
)

import httpx

from ._transport import AsyncTransport, RequestSpec, SyncTransport, TimeoutTypes, json_of
from .models import DeletedObject, FileObject
from .pagination import AsyncPage, Page

FileInput = Union[str, "os.PathLike[str]", bytes, bytearray, IO[bytes]]
Progress = Callable[[int, Optional[int]], None]
"""Called as bytes move: ``progress(done, total)`` (``total`` is None when unknown)."""

PathLike = Union[str, "os.PathLike[str]"]


class _CountingReader:
    """A file object that reports how much of it has been read. httpx seeks it back to the
    start before each attempt, and the count follows."""

    def __init__(self, raw: IO[bytes], progress: Progress, total: Optional[int]) -> None:
        self._raw = raw
        self._progress = progress
        self._total = total
        self._done = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        if chunk:
            self._done += len(chunk)
            self._progress(self._done, self._total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._raw.seek(offset, whence)
        self._done = self._raw.tell()
        return position

    def tell(self) -> int:
        return self._raw.tell()

    def fileno(self) -> int:
        return self._raw.fileno()


def _length(stream: IO[bytes]) -> Optional[int]:
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        pass
    try:
        here = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(here)
        return end
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def open_upload(
    file: FileInput, filename: Optional[str], progress: Optional[Progress]
) -> Iterator[Tuple[str, Callable[[], Dict[str, Any]]]]:
    """(filename, a factory of the multipart ``files`` for one attempt). A path is opened
    here and closed at the end; a caller's file object is read from its start, not closed."""
    owned: Optional[IO[bytes]] = None
    if isinstance(file, (bytes, bytearray, memoryview)):
        if not filename:
            raise ValueError("filename= is required when uploading bytes")
        owned = io.BytesIO(bytes(file))
    elif isinstance(file, (str, os.PathLike)):
        path = Path(file)
        filename = filename or path.name
        owned = open(path, "rb")
    elif hasattr(file, "read"):
        if isinstance(file, io.TextIOBase):
            raise TypeError("open the file in binary mode ('rb') to upload it")
        filename = filename or os.path.basename(str(getattr(file, "name", "") or ""))
        if not filename:
            raise ValueError("filename= is required for a file object without a name")
    else:
        raise TypeError(
            f"cannot upload a {type(file).__name__}: give a path, bytes or a binary file"
        )
    stream: IO[bytes] = owned if owned is not None else file  # type: ignore[assignment]
    try:
        body: Any = (
            stream if progress is None else _CountingReader(stream, progress, _length(stream))
        )
        name = filename
        yield name, lambda: {"file": (name, body, "application/octet-stream")}
    finally:
        if owned is not None:
            owned.close()


def destination(path: Optional[PathLike], filename: str) -> Path:
    """Where a download goes: ``path`` itself, or ``filename`` inside it when it is a
    directory (or None: the current one). ``filename`` may hold subdirectories but never
    climbs out of the directory."""
    if path is not None and not Path(path).is_dir() and not str(path).endswith(("/", os.sep)):
        return Path(path)
    parts = [p for p in Path(filename.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." for p in parts) or Path(filename).is_absolute():
        safe = os.path.basename(filename.rstrip("/")) or "download"
        parts = [safe if safe != ".." else "download"]
    return Path(path or ".").joinpath(*parts)


def _total(response: httpx.Response, hint: Optional[int]) -> Optional[int]:
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else hint


def save_response(
    response: httpx.Response,
    target: Path,
    progress: Optional[Progress],
    size_hint: Optional[int] = None,
) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    total, done = _total(response, size_hint), 0
    try:
        with open(partial, "wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return target


async def asave_response(
    response: httpx.Response,
    target: Path,
    progress: Optional[Progress],
    size_hint: Optional[int] = None,
) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    total, done = _total(response, size_hint), 0
    try:
        with open(partial, "wb") as out:
            async for chunk in response.aiter_bytes():
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return target


def content_spec(path: str, timeout: TimeoutTypes) -> RequestSpec:
    """A download of a file's bytes, whatever their type."""
    return RequestSpec("GET", path, headers={"Accept": "*/*"}, timeout=timeout)


def _upload_spec(
    path: str,
    files: Callable[[], Dict[str, Any]],
    data: Optional[Dict[str, Any]],
    timeout: TimeoutTypes,
) -> RequestSpec:
    return RequestSpec("POST", path, files=files, data=data, timeout=timeout)


class Files:
    def __init__(self, transport: SyncTransport) -> None:
        self._t = transport

    def create(
        self,
        file: FileInput,
        purpose: str = "assistants",
        filename: Optional[str] = None,
        progress: Optional[Progress] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> FileObject:
        """Upload a path, bytes (with ``filename``) or a binary file object."""
        with open_upload(file, filename, progress) as (_, files):
            response = self._t.request(
                _upload_spec("/v1/files", files, {"purpose": purpose}, timeout)
            )
        return FileObject.from_dict(json_of(response))

    def list(
        self,
        purpose: Optional[str] = None,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        order: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Page[FileObject]:
        def fetch(cursor: Optional[str]) -> Page[FileObject]:
            params = {"purpose": purpose, "limit": limit, "after": cursor, "order": order}
            response = self._t.request(
                RequestSpec("GET", "/v1/files", params=params, timeout=timeout)
            )
            return Page(json_of(response), FileObject, fetch)

        return fetch(after)

    def retrieve(self, file_id: str, *, timeout: TimeoutTypes = None) -> FileObject:
        response = self._t.request(RequestSpec("GET", f"/v1/files/{file_id}", timeout=timeout))
        return FileObject.from_dict(json_of(response))

    def content(self, file_id: str, *, timeout: TimeoutTypes = None) -> bytes:
        return self._t.request(content_spec(f"/v1/files/{file_id}/content", timeout)).content

    def download(
        self,
        file_id: str,
        path: Optional[PathLike] = None,
        progress: Optional[Progress] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Path:
        """Stream the file to ``path`` (a directory, or None for the current one, gets it
        under its own filename). Returns where it went."""
        meta = self.retrieve(file_id, timeout=timeout) if _needs_name(path) else None
        target = destination(path, meta.filename if meta else "")
        spec = content_spec(f"/v1/files/{file_id}/content", timeout)
        with self._t.stream(spec) as response:
            return save_response(response, target, progress, meta.bytes if meta else None)

    def delete(self, file_id: str, *, timeout: TimeoutTypes = None) -> DeletedObject:
        response = self._t.request(RequestSpec("DELETE", f"/v1/files/{file_id}", timeout=timeout))
        return DeletedObject.from_dict(json_of(response))


class AsyncFiles:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        file: FileInput,
        purpose: str = "assistants",
        filename: Optional[str] = None,
        progress: Optional[Progress] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> FileObject:
        with open_upload(file, filename, progress) as (_, files):
            response = await self._t.request(
                _upload_spec("/v1/files", files, {"purpose": purpose}, timeout)
            )
        return FileObject.from_dict(json_of(response))

    async def list(
        self,
        purpose: Optional[str] = None,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        order: Optional[str] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> AsyncPage[FileObject]:
        async def fetch(cursor: Optional[str]) -> AsyncPage[FileObject]:
            params = {"purpose": purpose, "limit": limit, "after": cursor, "order": order}
            response = await self._t.request(
                RequestSpec("GET", "/v1/files", params=params, timeout=timeout)
            )
            return AsyncPage(json_of(response), FileObject, fetch)

        return await fetch(after)

    async def retrieve(self, file_id: str, *, timeout: TimeoutTypes = None) -> FileObject:
        response = await self._t.request(
            RequestSpec("GET", f"/v1/files/{file_id}", timeout=timeout)
        )
        return FileObject.from_dict(json_of(response))

    async def content(self, file_id: str, *, timeout: TimeoutTypes = None) -> bytes:
        spec = content_spec(f"/v1/files/{file_id}/content", timeout)
        return (await self._t.request(spec)).content

    async def download(
        self,
        file_id: str,
        path: Optional[PathLike] = None,
        progress: Optional[Progress] = None,
        *,
        timeout: TimeoutTypes = None,
    ) -> Path:
        meta = await self.retrieve(file_id, timeout=timeout) if _needs_name(path) else None
        target = destination(path, meta.filename if meta else "")
        spec = content_spec(f"/v1/files/{file_id}/content", timeout)
        async with self._t.stream(spec) as response:
            return await asave_response(response, target, progress, meta.bytes if meta else None)

    async def delete(self, file_id: str, *, timeout: TimeoutTypes = None) -> DeletedObject:
        response = await self._t.request(
            RequestSpec("DELETE", f"/v1/files/{file_id}", timeout=timeout)
        )
        return DeletedObject.from_dict(json_of(response))


def _needs_name(path: Optional[PathLike]) -> bool:
    return path is None or Path(path).is_dir() or str(path).endswith(("/", os.sep))
