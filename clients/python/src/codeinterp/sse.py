"""A small server-sent events parser (the WHATWG ``text/event-stream`` rules).

Bytes go in as they arrive, in chunks of any size (a line, or a UTF-8 character, may be cut
anywhere); complete events come out. Lines starting with ``:`` are comments (the server's
keep-alives); several ``data:`` lines join with newlines; an event is dispatched at a blank
line, and only if it has data; ``id`` persists from event to event, as a browser's
``lastEventId`` does."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator, List, Optional


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: Optional[str] = None
    retry: Optional[int] = None


class SSEDecoder:
    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._scan = 0
        self._started = False
        self._event = ""
        self._data: List[str] = []
        self._retry: Optional[int] = None
        self.last_event_id: Optional[str] = None

    def feed(self, chunk: bytes) -> List[ServerSentEvent]:
        """The events that ``chunk`` completes."""
        text = self._text.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        buf = self._buffer + text
        pos = 0
        # Up to `scan` the buffer is known to hold no line end: a long line arriving in many
        # chunks is searched once, not once per chunk.
        scan = self._scan
        events: List[ServerSentEvent] = []
        while True:
            lf = buf.find("\n", scan)
            cr = buf.find("\r", scan, lf if lf >= 0 else len(buf))
            if cr >= 0:
                if cr + 1 == len(buf):
                    scan = cr  # a CR last: the next chunk may begin with its LF
                    break
                end, line_end = (cr + 2 if buf[cr + 1] == "\n" else cr + 1), cr
            elif lf >= 0:
                end, line_end = lf + 1, lf
            else:
                scan = len(buf)
                break
            event = self._line(buf[pos:line_end])
            pos = scan = end
            if event is not None:
                events.append(event)
        self._buffer = buf[pos:]
        self._scan = scan - pos
        return events

    def close(self) -> None:
        """End of stream: an event without its blank line is dropped, as the standard says."""
        self._text.decode(b"", final=True)
        self._buffer, self._scan = "", 0
        self._event, self._data, self._retry = "", [], None

    def _line(self, line: str) -> Optional[ServerSentEvent]:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> Optional[ServerSentEvent]:
        if not self._data:
            self._event, self._retry = "", None
            return None
        event = ServerSentEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self.last_event_id,
            retry=self._retry,
        )
        self._event, self._data, self._retry = "", [], None
        return event


def iter_sse(
    chunks: Iterable[bytes], decoder: Optional[SSEDecoder] = None
) -> Iterator[ServerSentEvent]:
    decoder = decoder or SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.close()


async def aiter_sse(
    chunks: AsyncIterable[bytes], decoder: Optional[SSEDecoder] = None
) -> AsyncIterator[ServerSentEvent]:
    decoder = decoder or SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    decoder.close()
