"""The answer reader alone: what it decodes, what it refuses, and the cap, on bodies given as they come over
the wire (the HTTP tests are tests/unit/test_hostile_server.py and test_overpass_client.py)."""

from __future__ import annotations

import gzip

import pytest

from enrichment_actors.overpass_answer import AnswerBody, read_body
from enrichment_actors.overpass_responses import AnswerTooLarge, BadResponse

DOCUMENT = b'{"elements": []}' * 64
PACKED = gzip.compress(DOCUMENT)


def read(chunks: list[bytes], encoding: str | None, max_bytes: int = 1 << 20) -> AnswerBody:
    body = AnswerBody(bytearray())
    read_body(iter(chunks), encoding=encoding, max_bytes=max_bytes, url="http://x.example", body=body)
    return body


@pytest.mark.parametrize(
    ("chunks", "encoding"),
    [
        pytest.param([DOCUMENT], None, id="plain"),
        pytest.param([DOCUMENT], "identity", id="identity"),
        pytest.param([PACKED], "gzip", id="gzip"),
        pytest.param([PACKED[:7], PACKED[7:]], "gzip", id="gzip in pieces"),
        pytest.param([PACKED[:20], PACKED[20:]], " GZIP ", id="gzip, spelt loosely"),
    ],
)
def test_a_body_is_read_decoded_and_counted_as_it_came(chunks: list[bytes], encoding: str | None) -> None:
    body = read(chunks, encoding)
    assert bytes(body.data) == DOCUMENT
    assert body.wire_bytes == sum(len(chunk) for chunk in chunks)


@pytest.mark.parametrize(
    ("chunks", "encoding", "why"),
    [
        pytest.param([PACKED], "deflate", "did not ask for", id="an encoding we did not ask for"),
        pytest.param([PACKED], "gzip, gzip", "did not ask for", id="gzip twice"),
        pytest.param(
            [PACKED[:-8]], "gzip", "before the end of its gzip stream", id="gzip without its trailer"
        ),
        pytest.param([PACKED[:-4] + b"\0\0\0\0"], "gzip", "corrupt", id="gzip with a wrong size"),
        pytest.param([b"not gzip at all"], "gzip", "corrupt", id="not gzip"),
    ],
)
def test_a_body_that_cannot_be_trusted_is_a_bad_response(
    chunks: list[bytes], encoding: str, why: str
) -> None:
    with pytest.raises(BadResponse, match=why):
        read(chunks, encoding)


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_the_cap_counts_decoded_bytes(encoding: str | None) -> None:
    chunks = [PACKED] if encoding else [DOCUMENT]
    assert bytes(read(chunks, encoding, max_bytes=len(DOCUMENT)).data) == DOCUMENT
    with pytest.raises(AnswerTooLarge):
        read(chunks, encoding, max_bytes=len(DOCUMENT) - 1)
