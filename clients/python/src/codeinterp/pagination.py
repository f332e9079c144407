"""Cursor pages: ``{object: "list", data, first_id, last_id, has_more}``, where the next page
is asked for with ``after=<last_id>``. Iterating a page goes on through the pages after it;
``page.data`` is this page alone."""

from __future__ import annotations

from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Generic,
    Iterator,
    List,
    Mapping,
    Optional,
    Type,
    TypeVar,
)

from .models import Model

T = TypeVar("T", bound=Model)


class _PageBase(Generic[T]):
    def __init__(self, data: Mapping[str, Any], item: Type[T]) -> None:
        self.object: str = data.get("object", "list")
        self.data: List[T] = [item.from_dict(d) for d in data.get("data") or []]
        self.has_more: bool = bool(data.get("has_more", False))
        self.first_id: Optional[str] = data.get("first_id")
        self.last_id: Optional[str] = data.get("last_id")
        self.extra: Dict[str, Any] = {
            k: v
            for k, v in data.items()
            if k not in ("object", "data", "has_more", "first_id", "last_id")
        }

    @property
    def next_cursor(self) -> Optional[str]:
        """The ``after`` of the next page, or None on the last one."""
        if not self.has_more or not self.data:
            return None
        return self.last_id or getattr(self.data[-1], "id", None)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "object": self.object,
            "data": [d.to_dict() for d in self.data],
            "first_id": self.first_id,
            "last_id": self.last_id,
            "has_more": self.has_more,
            **self.extra,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(data=<{len(self.data)} items>, "
            f"has_more={self.has_more}, last_id={self.last_id!r})"
        )


class Page(_PageBase[T]):
    def __init__(
        self, data: Mapping[str, Any], item: Type[T], fetch: Callable[[str], Page[T]]
    ) -> None:
        super().__init__(data, item)
        self._fetch = fetch

    def has_next_page(self) -> bool:
        return self.next_cursor is not None

    def next_page(self) -> Page[T]:
        cursor = self.next_cursor
        if cursor is None:
            raise RuntimeError("no next page: check has_next_page() first")
        return self._fetch(cursor)

    def iter_pages(self) -> Iterator[Page[T]]:
        page: Page[T] = self
        seen = set()
        while True:
            yield page
            cursor = page.next_cursor
            if cursor is None or cursor in seen:  # a cursor met twice would loop forever
                return
            seen.add(cursor)
            page = page._fetch(cursor)

    def iter_all(self) -> Iterator[T]:
        """Every item of this page and of the pages after it, fetched as needed."""
        for page in self.iter_pages():
            yield from page.data

    __iter__ = iter_all


class AsyncPage(_PageBase[T]):
    def __init__(
        self,
        data: Mapping[str, Any],
        item: Type[T],
        fetch: Callable[[str], Awaitable[AsyncPage[T]]],
    ) -> None:
        super().__init__(data, item)
        self._fetch = fetch

    def has_next_page(self) -> bool:
        return self.next_cursor is not None

    async def next_page(self) -> AsyncPage[T]:
        cursor = self.next_cursor
        if cursor is None:
            raise RuntimeError("no next page: check has_next_page() first")
        return await self._fetch(cursor)

    async def iter_pages(self) -> AsyncIterator[AsyncPage[T]]:
        page: AsyncPage[T] = self
        seen = set()
        while True:
            yield page
            cursor = page.next_cursor
            if cursor is None or cursor in seen:
                return
            seen.add(cursor)
            page = await page._fetch(cursor)

    async def iter_all(self) -> AsyncIterator[T]:
        async for page in self.iter_pages():
            for item in page.data:
                yield item

    def __aiter__(self) -> AsyncIterator[T]:
        return self.iter_all()
