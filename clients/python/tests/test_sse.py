from codeinterp.sse import ServerSentEvent, SSEDecoder, iter_sse


def parse(*chunks: bytes):
    return list(iter_sse(chunks))


def test_comment_lines_are_ignored():
    events = parse(b": ping\n\n: another\nevent: x\ndata: 1\n\n:\n\n")
    assert events == [ServerSentEvent(event="x", data="1")]


def test_several_data_lines_join_with_newlines():
    (event,) = parse(b"data: first\ndata:second\ndata:  third\n\n")
    assert event.data == "first\nsecond\n third"


def test_the_id_persists_until_a_new_one_comes():
    events = parse(b"id: 1.0.0.0\ndata: a\n\ndata: b\n\nid: 2.1.0.0\ndata: c\n\n")
    assert [e.id for e in events] == ["1.0.0.0", "1.0.0.0", "2.1.0.0"]


def test_an_id_with_a_nul_is_ignored():
    (event,) = parse(b"id: 1\n\nid: a\x00b\ndata: x\n\n")
    assert event.id == "1"


def test_crlf_and_cr_line_endings():
    events = parse(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n")
    assert [e.data for e in events] == ["a", "b", "c"]


def test_any_split_of_the_bytes_gives_the_same_events():
    raw = (
        'event: run.output.delta\r\nid: 7.3.0.0\r\ndata: {"delta": "naïve ☃"}\r\n\r\n'
        ": keep\r\n\r\ndata: z\r\n\r\n"
    ).encode()
    whole = parse(raw)
    assert len(whole) == 2 and whole[0].data == '{"delta": "naïve ☃"}'
    assert parse(*[raw[i : i + 1] for i in range(len(raw))]) == whole
    for cut in range(len(raw)):
        assert parse(raw[:cut], raw[cut:]) == whole


def test_an_event_without_data_is_not_dispatched():
    assert parse(b"event: nothing\n\n") == []


def test_an_unfinished_event_at_the_end_is_dropped():
    assert parse(b"data: whole\n\ndata: cut off") == [ServerSentEvent(data="whole")]


def test_a_leading_byte_order_mark_is_skipped():
    (event,) = parse(b"\xef\xbb\xbfdata: x\n\n")
    assert event.data == "x"


def test_a_field_without_a_colon_and_retry():
    (event,) = parse(b"data\nretry: 3000\n\n")
    assert event.data == "" and event.retry == 3000


def test_the_decoder_keeps_the_last_event_id():
    decoder = SSEDecoder()
    decoder.feed(b"id: 5.0.0.0\ndata: 1\n\n")
    assert decoder.last_event_id == "5.0.0.0"
