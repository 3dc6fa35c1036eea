"""A stand-in Overpass API server on loopback, for tests, the demo, benchmarks and chaos runs.

It answers ``/api/interpreter``, ``/api/status`` and ``/api/kill_my_queries`` with the byte layouts
of Overpass API 0.7.62 (recorded in ``shared/fixtures/overpass/local-server``), serves deterministic
POIs from a global lattice, and can be told, call by call, to fail the ways the real server fails:
429 and 504 pages, runtime-error remarks in a 200, bodies cut off mid-document, stalls.

Standard library only, so it starts in milliseconds; one thread per connection, keep-alive on.

Outcomes a script can name (``name`` or ``name:arg``):

=================== ============================================================================
``ok``              200 JSON with the POIs of the query's boxes and filters
``429``             the real ``rate_limited`` page
``504``             the real "server is probably too busy" page
``504-down``        the real "Dispatcher_Client::1" page (dispatcher down); while it is the
                    default outcome, ``/api/status`` answers the real "server is down" 504 too.
                    ``504-down:turned-off`` gives the 0.7.62 "dispatcher ... is turned off" page
``400``             a 400 page with one parse error paragraph
``406``             a 406 page (the public server's answer to a missing or generic User-Agent)
``500``             lighttpd's generic 500 page
``timeout-remark``  200, no elements, a "Query timed out" remark
``oom-remark``      200, no elements, a "Query ran out of memory" remark
``partial-remark``  200, the first half of the elements, then a "Query timed out" remark
``enomem-remark``   200, no elements, ``runtime error: open64: 12 Cannot allocate memory ...``
                    (the server itself short of memory)
``blocks-remark``   200, no elements, ``... File_Blocks_Index: Data file size does not match block
                    size`` (the database mid-update)
``protocol-error``  200 with the error page ``Dispatcher_Client::request_read_and_idx::protocol_error``
``duplicate``       200 with the real ``duplicate_query`` page (see ``refuse_duplicates``)
``cutoff``          200 without Content-Length, about half of the document, then the socket closes
``stall:S``         wait S seconds, then ``ok``; ends early (no answer) on stop or kill_my_queries
``trickle:S``       ``ok`` with its Content-Length, sent a few bytes at a time, S seconds apart (each
                    read of the client gets bytes long before its read timeout); ends early on stop
                    or kill_my_queries
=================== ============================================================================

Like a real 0.7.62 server, it can also hold queries and refuse duplicates (constructor options):
with ``hold_s`` and a rate limit (``slots``), a query over the limit waits up to ``hold_s`` seconds
for a slot and then runs (its ``[timeout]`` starts only then), or gets a 429 when none came free; a
429 comes at once only when more than twice the limit are already waiting. With
``refuse_duplicates``, the same query text a third time within its ``[timeout]`` gets the 200
``duplicate_query`` page. ``requests`` records each request's arrival and, for a held query, when it
got its slot.

As on a real server, the status line and headers of a query leave only when it is done (after its
latency, a stall or the hold for a slot), so a client sees the server's time as the time from its
request to the status line. The stub measures that time itself, from the request's arrival to its
status line: ``server_s`` on each recorded request (None when none was sent: killed, stopped), summed
in ``stats().server_s``. Tests compare what the quota charged with it.

Besides the scripted outcomes the stub answers like the real server: a blank query is a 400
"encoding error", a box with north < south or out-of-range coordinates a 400 "static error", a box
of more than 200,000 lattice cells an out-of-memory remark. Output is always JSON.

The package, one module per job: :mod:`.outcomes` (what a script can name),
:mod:`.pages` (the bodies), :mod:`.queries` (the QL it understands),
:mod:`.lattice` (the POIs) and :mod:`.server` (HTTP, slots, records).
"""

from __future__ import annotations

from .lattice import MAX_CELLS_PER_BOX
from .outcomes import DUPLICATES_ACCEPTED, OUTCOMES, TRICKLE_BYTES
from .pages import BLOCKS_REMARK, ENOMEM_REMARK, OOM_REMARK, TIMEOUT_REMARK
from .server import RecordedRequest, StubOverpass, StubStats, serve_forever

__all__ = [
    "BLOCKS_REMARK",
    "DUPLICATES_ACCEPTED",
    "ENOMEM_REMARK",
    "MAX_CELLS_PER_BOX",
    "OOM_REMARK",
    "OUTCOMES",
    "TIMEOUT_REMARK",
    "TRICKLE_BYTES",
    "RecordedRequest",
    "StubOverpass",
    "StubStats",
    "serve_forever",
]
