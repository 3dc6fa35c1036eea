"""Read one answer's body within a bound: decoded bytes capped, only an encoding we asked for decoded.

``[maxsize:N]`` limits the memory the server may use for a query, not the
size of what it sends back, and a gzip body of 0.4 MB can inflate to
hundreds of MB. urllib3 decodes whatever encoding the server declares, so
the body is read as it came over the wire and decoded here: gzip (the one
encoding we ask for; see docs/architecture.md, "Bounded answers") through
an inflater that never produces more than the cap allows, anything else
refused. An answer over the cap raises :class:`AnswerTooLarge`, which the
fetch splits like a query that ran out of memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .overpass_responses import AnswerTooLarge, BadResponse, cut

__all__ = ["ACCEPT_ENCODING", "AnswerBody", "read_body"]

#: What we ask for: gzip shrinks Overpass JSON 6-9 times on the wire (and in the download quota).
ACCEPT_ENCODING = "gzip"
_GZIP = frozenset({"gzip", "x-gzip"})
_IDENTITY = frozenset({"", "identity"})


@dataclass
class AnswerBody:
    """The body of one answer as it is read: the decoded bytes, and what crossed the wire for them.

    Parameters:
      data: The decoded body so far.
      wire_bytes: Body bytes read from the connection (before decoding).
    """

    data: bytearray
    wire_bytes: int = 0


def read_body(
    chunks: Iterator[bytes], *, encoding: str | None, max_bytes: int, url: str, body: AnswerBody
) -> None:
    """Append the decoded body that ``chunks`` (raw, as received) carry to ``body``; at most ``max_bytes``.

    Raises :class:`AnswerTooLarge` as soon as the decoded body would exceed
    ``max_bytes`` (nothing beyond the cap is ever decoded), and
    :class:`BadResponse` for an encoding we did not ask for or a corrupt one.
    ``url`` (its password masked) names the server in their messages.
    """
    declared = (encoding or "").strip().lower()
    if declared not in _GZIP and declared not in _IDENTITY:
        raise BadResponse(
            f"{url} sent its answer with Content-Encoding {cut(declared, 40)!r}, which we did not ask for "
            f"(we ask for {ACCEPT_ENCODING} or none): it is not decoded. A proxy in between may rewrite the "
            "answer; retry later, or call the server without it.",
            status=200,
            detail=f"content-encoding {cut(declared, 40)}",
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if declared in _GZIP else None
    for chunk in chunks:
        body.wire_bytes += len(chunk)
        if inflater is None:
            _append(body, chunk, max_bytes, url)
            continue
        pending = chunk
        try:
            while pending:
                # Never more than one byte past the cap, however much this chunk inflates to.
                room = max_bytes - len(body.data) + 1
                _append(body, inflater.decompress(pending, room), max_bytes, url)
                pending = inflater.unconsumed_tail
                if inflater.eof and inflater.unused_data:
                    # A body of several gzip members: each is inflated in turn.
                    pending = inflater.unused_data
                    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as exc:
            raise _corrupt(url, str(exc)) from None
    if inflater is not None and not inflater.eof:
        # Without its trailer (CRC and size) a gzip body is cut off, however well what came parses.
        raise _corrupt(url, "the body ends before the end of its gzip stream")


def _corrupt(url: str, why: str) -> BadResponse:
    return BadResponse(
        f"The gzip answer from {url} is corrupt ({why}): retry the query later.",
        status=200,
        detail=f"gzip: {cut(why, 200)}",
    )


def _append(body: AnswerBody, data: bytes, max_bytes: int, url: str) -> None:
    if len(body.data) + len(data) > max_bytes:
        raise AnswerTooLarge(
            f"The answer from {url} is larger than OVERPASS_MAX_ANSWER_BYTES={max_bytes} bytes decoded: "
            "reading stopped there. The box is split into smaller boxes; raise the setting only if the "
            "workers have the memory for such answers.",
            status=200,
            detail=f"answer over {max_bytes} bytes",
        )
    body.data += data
