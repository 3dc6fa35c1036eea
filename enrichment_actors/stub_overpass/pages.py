"""Response bodies, laid out byte for byte like Overpass API 0.7.62 behind lighttpd.

JSON documents (with an optional remark), the OSM3S error pages (400, 429,
504 and the pages a 0.7.62 server sends with HTTP 200: ``protocol_error``,
``duplicate_query``), lighttpd's own pages and the status text of a server
that is down.
"""

from __future__ import annotations

import json
import re
import time

_COPYRIGHT = (
    "The data included in this document is from www.openstreetmap.org. The data is made available under ODbL."
)
#: What ``osm3s.timestamp_osm_base`` says unless the stub is told another state of the data.
OSM_BASE = "2025-01-01T21:21:00Z"
_JSON_HEAD = (
    "{{\n"
    '  "version": 0.6,\n'
    '  "generator": "Overpass API 0.7.62 7c32a7d5",\n'
    '  "osm3s": {{\n'
    '    "timestamp_osm_base": "{osm_base}",\n'
    f'    "copyright": "{_COPYRIGHT}"\n'
    "  }},\n"
    '  "elements": [\n\n'
)
TIMEOUT_REMARK = 'runtime error: Query timed out in "query" at line 3 after 25 seconds.'
OOM_REMARK = (
    'runtime error: Query ran out of memory in "query" at line 3. '
    "It would need at least 0 MB of RAM to continue."
)
#: The server itself short of memory (not the query over its [maxsize]).
ENOMEM_REMARK = (
    "runtime error: open64: 12 Cannot allocate memory /osm3s_osm_base "
    "Dispatcher_Client::request_read_and_idx::shm_open"
)
#: The server's database files mid-update.
BLOCKS_REMARK = (
    "runtime error: open64: 0 Success /srv/osm3s/db/nodes.map "
    "File_Blocks_Index: Data file size does not match block size"
)


def json_document(elements: list[str], remark: str | None = None, *, osm_base: str = OSM_BASE) -> bytes:
    tail = "\n\n  ]\n}\n" if remark is None else f'\n\n  ],\n"remark": {json_string(remark)}\n}}\n'
    return (_JSON_HEAD.format(osm_base=osm_base) + ",\n".join(elements) + tail).encode("utf-8")


_XML_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<osm version="0.6" generator="Overpass API 0.7.62 7c32a7d5">\n'
    f"<note>{_COPYRIGHT}</note>\n"
    '<meta osm_base="{osm_base}"/>\n\n'
)


def xml_document(blocks: list[str], *, osm_base: str = OSM_BASE) -> bytes:
    """An ``[out:xml]`` document of ``blocks`` (elements or an augmented diff's actions)."""
    return (_XML_HEAD.format(osm_base=osm_base) + "".join(blocks) + "\n</osm>\n").encode("utf-8")


def xml_attribute(text: str) -> str:
    """An XML attribute value in double quotes, escaped as Overpass escapes it."""
    escaped = text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    return f'"{escaped}"'


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')


def json_string(text: str) -> str:
    # Most tag values need no escaping; skipping json.dumps for them halves formatting time.
    return json.dumps(text, ensure_ascii=False) if _NEEDS_ESCAPE.search(text) else f'"{text}"'


def _xhtml_escape(text: str) -> str:
    # Overpass escapes & < > and double quotes, and leaves single quotes alone.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def error_page(*errors: str) -> bytes:
    """The OSM3S error page: one ``Error:`` paragraph per message."""
    paragraphs = "".join(
        f'<p><strong style="color:#FF0000">Error</strong>: {_xhtml_escape(e)} </p>\n' for e in errors
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"\n'
        '    "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        "<head>\n"
        '  <meta http-equiv="content-type" content="text/html; charset=utf-8" lang="en"/>\n'
        "  <title>OSM3S Response</title>\n"
        "</head>\n"
        "<body>\n\n"
        f"<p>{_COPYRIGHT}</p>\n"
        f"{paragraphs}\n"
        "</body>\n"
        "</html>\n"
    ).encode()


def lighttpd_page(status: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '         "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        " <head>\n"
        f"  <title>{status}</title>\n"
        " </head>\n"
        " <body>\n"
        f"  <h1>{status}</h1>\n"
        " </body>\n"
        "</html>\n"
    ).encode("ascii")


HTML = "text/html; charset=utf-8"
_DISPATCHER = "/osm3s_osm_base Dispatcher_Client"
ERROR_RESPONSES: dict[str, tuple[int, str, bytes]] = {
    "429": (
        429,
        HTML,
        error_page(
            f"runtime error: open64: 0 Success {_DISPATCHER}::request_read_and_idx::rate_limited. "
            "Please check /api/status for the quota of your IP address."
        ),
    ),
    "504": (
        504,
        HTML,
        error_page(
            f"runtime error: open64: 0 Success {_DISPATCHER}::request_read_and_idx::timeout. "
            "The server is probably too busy to handle your request."
        ),
    ),
    "504-down": (
        504,
        HTML,
        error_page(f"runtime error: open64: 2 No such file or directory {_DISPATCHER}::1"),
    ),
    "504-down:turned-off": (
        504,
        HTML,
        error_page("runtime error: The dispatcher (i.e. the database management system) is turned off."),
    ),
    "400": (
        400,
        HTML,
        error_page("line 1: parse error: ']' expected - '(' found."),
    ),
    "406": (
        406,
        "text/html; charset=iso-8859-1",
        b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
        b"<title>406 Not Acceptable</title>\n</head><body>\n<h1>Not Acceptable</h1>\n"
        b"<p>An appropriate representation of the requested resource could not be found on this server.</p>\n"
        b"</body></html>\n",
    ),
    "500": (500, "text/html", lighttpd_page("500 Internal Server Error")),
    "protocol-error": (
        200,
        HTML,
        error_page(f"runtime error: open64: 0 Success {_DISPATCHER}::request_read_and_idx::protocol_error"),
    ),
    # Byte for byte the page of shared/recordings/overpass-0.7.62/32_duplicate_query.body.html.
    "duplicate": (
        200,
        HTML,
        error_page(f"runtime error: open64: 0 Success {_DISPATCHER}::request_read_and_idx::duplicate_query"),
    ),
}
STATUS_SERVER_DOWN = f"open64: 2 No such file or directory {_DISPATCHER}::1. Probably the server is down.\n"


def iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))
