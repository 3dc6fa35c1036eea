"""The response reader against every recorded and hand-made Overpass response, and at scale."""

from __future__ import annotations

import json
import logging
import math
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrichment_actors import overpass_responses
from enrichment_actors.overpass_responses import (
    BadResponse,
    ClientTimeout,
    ConnectionFailed,
    DuplicateQuery,
    OverpassError,
    Poi,
    QueryFailed,
    QueryOutOfMemory,
    QueryRejected,
    QueryTimedOut,
    QueryTooLarge,
    RateLimited,
    ServerBusy,
    ServerDown,
    ServerProtocolError,
    ServerUnwell,
    UnexpectedStatus,
    UserAgentRejected,
    classify,
    read_response,
)
from tests.fixture_manifest import OWN_ROOT, ROOTS, SHARED_ROOT, FixtureCase, case_params, load_cases

# label -> (retryable, trips_breaker); unexpected_status depends on the status.
FLAGS = {
    "query_timeout": (False, False),
    "query_out_of_memory": (False, False),
    "query_error": (False, False),
    "bad_response": (True, True),
    "bad_query": (False, False),
    "user_agent_rejected": (False, False),
    "rate_limited": (True, False),
    "server_busy": (True, True),
    "server_down": (True, True),
    "connection_error": (True, True),
    "client_timeout": (True, True),
    "server_unwell": (True, True),
    "protocol_error": (True, True),
    "duplicate_query": (True, False),
}
SUCCESS_LABELS = {"ok", "ok_with_remark"}

needs_shared = pytest.mark.skipif(
    not SHARED_ROOT.is_dir(),
    reason=f"{SHARED_ROOT} is absent: the recorded Overpass responses live outside this repository",
)


def expected_flags(label: str, status: int) -> tuple[bool, bool]:
    if label == "unexpected_status":
        return (status >= 500, status >= 500)
    return FLAGS[label]


@pytest.mark.parametrize("case", case_params("interpreter"))
def test_manifest_response_is_classified_as_expected(case: FixtureCase) -> None:
    status, body = case.http_status, case.body()

    assert classify(status, body) == case.expected, case.what
    if case.expected in SUCCESS_LABELS:
        parsed = read_response(status, body)
        assert (parsed.remark is not None) == (case.expected == "ok_with_remark")
        for poi in parsed.pois:
            assert poi.element_type in {"node", "way", "relation"}
            assert isinstance(poi.osm_id, int)
            assert -90 <= poi.lat <= 90 and -180 <= poi.lon <= 180
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in poi.tags.items())
    else:
        with pytest.raises(OverpassError) as raised:
            read_response(status, body)
        error = raised.value
        assert error.label == case.expected
        assert (error.retryable, error.trips_breaker) == expected_flags(case.expected, status)
        assert error.status == status
        assert len(str(error)) > 60, "the message must say what happened and what to do next"


@pytest.mark.parametrize("case", case_params("interpreter"))
def test_parsing_in_pieces_gives_what_parsing_whole_gives(
    case: FixtureCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny pieces push every fixture through the piecewise reader of large bodies.
    status, body = case.http_status, case.body()
    whole = _outcome(status, body)
    monkeypatch.setattr(overpass_responses, "_PIECE_BYTES", 8)

    assert _outcome(status, body) == whole


def _outcome(status: int, body: bytes) -> object:
    try:
        parsed = read_response(status, body)
    except OverpassError as exc:
        return (type(exc), str(exc))
    return (parsed.pois, parsed.skipped, parsed.dropped, parsed.kept, parsed.remark)


# file -> POIs as (type, id, lat, lon), skipped (not POIs), dropped (no usable position), remark
OWN_PARSES = {
    "success/nodes-ways-relations.json": (
        [
            ("node", 1001, 46.5101, 6.6302),
            ("node", 1002, -33.8601, -151.2102),
            ("way", 2001, 46.51205, 6.633025),
            ("relation", 3001, 46.515, 6.64),
        ],
        0,
        0,
        None,
    ),
    "success/way-without-center.json": ([("node", 1101, 46.5, 6.6)], 0, 1, None),
    "success/same-id-node-and-way.json": (
        [("node", 4242, 46.52, 6.65), ("way", 4242, 46.521, 6.651), ("relation", 4242, 46.522, 6.652)],
        0,
        0,
        None,
    ),
    "success/empty-result.json": ([], 0, 0, None),
    "success/area-elements.json": ([("node", 1201, 46.53, 6.66)], 1, 0, None),
    "success/compact-one-line.json": (
        [("node", 1301, 46.54, 6.67), ("relation", 3301, 46.55, 6.68), ("way", 2301, 46.56, 6.69)],
        0,
        0,
        None,
    ),
    "success/old-element-separator.json": (
        [("node", 1401, 46.57, 6.7), ("way", 2401, 46.571, 6.701)],
        0,
        0,
        None,
    ),
    "edge/empty-center.json": ([("node", 1501, 46.58, 6.71)], 0, 2, None),
    "edge/malformed-element.json": ([], 0, 1, None),
    "remark/informational.json": (
        [("node", 1801, 46.61, 6.74)],
        0,
        0,
        "runtime remark: Timeout is 25 seconds, which is below the recommended minimum.",
    ),
    "remark/unknown-prefix.json": ([], 0, 0, "Data older than usual: the replication is catching up."),
}


@pytest.mark.parametrize(("file", "expected"), OWN_PARSES.items(), ids=list(OWN_PARSES))
def test_own_fixture_parses_to_exact_pois(
    file: str, expected: tuple[list[tuple[object, ...]], int, int, str]
) -> None:
    pois, skipped, dropped, remark = expected

    parsed = read_response(200, (OWN_ROOT / file).read_bytes())

    assert [(p.element_type, p.osm_id, p.lat, p.lon) for p in parsed.pois] == pois
    assert (parsed.skipped, parsed.dropped, parsed.remark) == (skipped, dropped, remark)


def test_tags_are_kept_as_printed_and_missing_tags_are_empty() -> None:
    parsed = read_response(200, (OWN_ROOT / "success/nodes-ways-relations.json").read_bytes())

    cafe, no_tags, bakery, park = parsed.pois
    assert cafe.tags == {"amenity": "cafe", "name": "Café du Lac"}
    assert no_tags.tags == {}
    assert bakery == Poi("way", 2001, 46.51205, 6.633025, {"building": "yes", "shop": "bakery"})
    assert park.tags["name"] == 'Parc <Test> & "Jardin"'


# Shared files whose counts pin the parse down: file -> (POIs, skipped areas, dropped
# elements without a usable position). Each dropped one has a readable key: kept.
SHARED_COUNTS = {
    "success/osm2geojson-issue-16.json": (4, 0, 3),
    "success/overpy-area-01.json": (0, 4, 0),
    "success/overpy-way-02.json": (6, 0, 1),
    "success/aio-way-out-geom.json": (0, 0, 1),
    "success/mvexel-example-mapquery.json": (409, 0, 26),
    "edge/overpy-way-04-empty-center.json": (0, 0, 1),
    "local-server/05_area_query_shops.body.json": (215, 0, 0),
}


@needs_shared
@pytest.mark.parametrize(("file", "counts"), SHARED_COUNTS.items(), ids=list(SHARED_COUNTS))
def test_shared_fixture_counts(file: str, counts: tuple[int, int, int]) -> None:
    parsed = read_response(200, (SHARED_ROOT / file).read_bytes())

    assert (len(parsed.pois), parsed.skipped, parsed.dropped) == counts
    assert len(parsed.kept) == parsed.dropped


@needs_shared
def test_same_id_as_node_and_way_gives_two_keys() -> None:
    parsed = read_response(200, (SHARED_ROOT / "success/osm2geojson-issue-16.json").read_bytes())

    keys = {(p.element_type, p.osm_id) for p in parsed.pois}
    assert ("node", 26763057) in keys
    assert ("way", 26763057) not in keys  # printed without center: dropped, not merged
    assert ("way", 26763057) in parsed.kept


@needs_shared
def test_elements_before_an_error_remark_are_not_a_success() -> None:
    body = (SHARED_ROOT / "local-server/20_runtime_error_after_output.body.json").read_bytes()
    assert json.loads(body)["elements"], "the fixture prints elements before its remark"

    with pytest.raises(QueryTimedOut) as raised:
        read_response(200, body)
    assert raised.value.detail.startswith("runtime error: Query timed out")


REJECTION_MESSAGES = [
    (
        "own",
        "http/400-several-escaped-errors.html",
        [
            'line 1: parse error: Unknown type "nod"',
            "line 1: parse error: <Key> expected - '&' found.",
            'line 2: static error: For the attribute "k" of the element "has-kv" the only allowed values are '
            "non-empty strings.",
        ],
    ),
    ("own", "http/400-encoding-error.html", ["encoding error: Your input contains only whitespace."]),
    ("shared", "http/overpy-400-bad-request.html", ["line 2: parse error: ';' expected - 'out' found."]),
    (
        "shared",
        "http/quickosm-400-bad-query.html",
        ['line 10: parse error: Invalid parameter for print: "centre"'],
    ),
]


@pytest.mark.parametrize(
    ("source", "file", "messages"), REJECTION_MESSAGES, ids=[r[1] for r in REJECTION_MESSAGES]
)
def test_bad_query_lists_each_error_unescaped(source: str, file: str, messages: list[str]) -> None:
    if not (ROOTS[source] / file).exists():
        pytest.skip(f"{ROOTS[source]} is absent")

    with pytest.raises(QueryRejected) as raised:
        read_response(400, (ROOTS[source] / file).read_bytes())

    assert raised.value.messages == messages
    assert raised.value.detail == "\n".join(messages)
    assert messages[0].rstrip(".") in str(raised.value)


@needs_shared
@pytest.mark.parametrize(
    ("file", "count"), [("http/aio-400-many-errors.html", 15), ("local-server/12_parse_error.body.html", 6)]
)
def test_bad_query_keeps_every_error(file: str, count: int) -> None:
    with pytest.raises(QueryRejected) as raised:
        read_response(400, (SHARED_ROOT / file).read_bytes())

    assert len(raised.value.messages) == count
    assert all(m.startswith("line 1: ") for m in raised.value.messages)
    assert f"and {count - 1} more errors" in str(raised.value)


@pytest.mark.parametrize(
    ("error_class", "label", "retryable", "trips_breaker"),
    [
        (QueryTimedOut, "query_timeout", False, False),
        (QueryOutOfMemory, "query_out_of_memory", False, False),
        (QueryFailed, "query_error", False, False),
        (BadResponse, "bad_response", True, True),
        (QueryRejected, "bad_query", False, False),
        (UserAgentRejected, "user_agent_rejected", False, False),
        (RateLimited, "rate_limited", True, False),
        (ServerBusy, "server_busy", True, True),
        (ServerDown, "server_down", True, True),
        (ConnectionFailed, "connection_error", True, True),
        (ClientTimeout, "client_timeout", True, True),
        (ServerUnwell, "server_unwell", True, True),
        (ServerProtocolError, "protocol_error", True, True),
        (DuplicateQuery, "duplicate_query", True, False),
    ],
)
def test_error_classes_declare_their_classification(
    error_class: type[OverpassError], label: str, retryable: bool, trips_breaker: bool
) -> None:
    assert (error_class.label, error_class.retryable, error_class.trips_breaker) == (
        label,
        retryable,
        trips_breaker,
    )


def test_timeout_and_memory_can_be_caught_as_too_large() -> None:
    assert issubclass(QueryTimedOut, QueryTooLarge) and issubclass(QueryOutOfMemory, QueryTooLarge)
    assert not issubclass(QueryFailed, QueryTooLarge)


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (500, True),
        (502, True),
        (503, True),
        (599, True),
        (403, False),
        (404, False),
        (418, False),
        (301, False),
    ],
)
def test_unexpected_status_is_transient_only_for_5xx(status: int, transient: bool) -> None:
    with pytest.raises(UnexpectedStatus) as raised:
        read_response(status, b"<html><body><h1>Something</h1></body></html>")

    error = raised.value
    assert (error.retryable, error.trips_breaker, error.status) == (transient, transient, status)
    assert f"HTTP {status}" in str(error) and "Something" in str(error)


def test_xml_remark_text_is_unescaped() -> None:
    with pytest.raises(QueryTimedOut) as raised:
        read_response(200, (OWN_ROOT / "remark/timeout.xml").read_bytes())

    assert raised.value.detail == 'runtime error: Query timed out in "query" at line 2 after 31 seconds.'


# Large bodies: the piecewise reader (its own code path above 4 pieces).


def _element(i: int) -> str:
    if i % 10 == 9:
        return (
            f'{{\n  "type": "way",\n  "id": {i},\n  "center": {{\n    "lat": 46.5,\n    "lon": 6.6\n  }},\n'
            f'  "nodes": [\n    1,\n    2\n  ],\n  "tags": {{\n    "shop": "bäckerei"\n  }}\n}}'
        )
    return (
        f'{{\n  "type": "node",\n  "id": {i},\n  "lat": 46.{i:07d},\n  "lon": 6.{i:07d},\n'
        f'  "tags": {{\n    "amenity": "café",\n    "name": "Café n° {i}"\n  }}\n}}'
    )


def _large_body(count: int, *, remark: str | None = None, separator: str = ",\n") -> bytes:
    head = (OWN_ROOT / "success/empty-result.json").read_text().split('"elements": [', 1)[0]
    # OSM ids start at 1: an id of 0 is dropped as unusable.
    elements = separator.join(_element(i) for i in range(1, count + 1))
    tail = "\n\n  ]\n}\n" if remark is None else f'\n\n  ],\n"remark": {json.dumps(remark)}\n}}\n'
    return (head + '"elements": [\n\n' + elements + tail).encode()


def test_body_above_four_pieces_is_read_in_pieces_like_json_loads() -> None:
    body = _large_body(30_000)
    assert len(body) > 4 * overpass_responses._PIECE_BYTES, "must take the piecewise path"

    parsed = read_response(200, body)

    elements = json.loads(body)["elements"]
    assert [(p.osm_id, p.tags) for p in parsed.pois] == [(e["id"], e["tags"]) for e in elements]
    assert (len(parsed.pois), parsed.skipped) == (30_000, 0)
    assert overpass_responses._read_in_pieces(body, []) is not None


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces as small against a 1.7 MB body as the real ones are against a 50 MB body."""
    monkeypatch.setattr(overpass_responses, "_PIECE_BYTES", 16 * 1024)


@pytest.fixture(scope="module")
def large_body() -> bytes:
    return _large_body(10_000)


@pytest.mark.usefixtures("small_pieces")
def test_large_body_peaks_below_four_times_its_size(large_body: bytes) -> None:
    tracemalloc.start()
    try:
        parsed = read_response(200, large_body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(parsed.pois) == 10_000
    assert peak < 4 * len(large_body), f"peak {peak / len(large_body):.2f}x the body"


@pytest.mark.usefixtures("small_pieces")
def test_large_body_cut_off_is_a_bad_response(large_body: bytes) -> None:
    assert classify(200, large_body[: len(large_body) * 2 // 3]) == "bad_response"


@pytest.mark.usefixtures("small_pieces")
def test_large_body_with_error_remark_after_output_is_not_a_success() -> None:
    body = _large_body(
        10_000, remark='runtime error: Query timed out in "query" at line 1 after 180 seconds.'
    )

    with pytest.raises(QueryTimedOut):
        read_response(200, body)


@pytest.mark.usefixtures("small_pieces")
def test_large_body_keeps_informational_remark() -> None:
    body = _large_body(10_000, remark="runtime remark: informational")

    parsed = read_response(200, body)

    assert (len(parsed.pois), parsed.remark) == (10_000, "runtime remark: informational")


@pytest.mark.parametrize(
    "indent",
    [pytest.param(None, id="compact"), pytest.param(2, id="indent-2"), pytest.param(0, id="indent-0")],
)
@pytest.mark.usefixtures("small_pieces")
def test_large_body_in_other_layouts_is_read_in_pieces_alike(
    large_body: bytes, indent: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = json.loads(large_body)
    # Relation members look like elements ("}, {"type": ...) but have no "id".
    document["elements"][5] = {
        "type": "relation",
        "id": 5,
        "center": {"lat": 1.0, "lon": 2.0},
        "members": [{"type": "way", "ref": r, "role": "outer"} for r in range(5_000)],
    }
    body = json.dumps(document, indent=indent, ensure_ascii=False).encode()
    pois: list[Poi] = []

    assert overpass_responses._read_in_pieces(body, pois) is not None
    monkeypatch.setattr(overpass_responses, "_PIECE_BYTES", len(body))  # parse whole
    assert pois == read_response(200, body).pois
    assert len(pois) == 10_000


@pytest.mark.parametrize(("lookalikes", "in_pieces"), [(3, True), (20, False)])
def test_objects_that_look_like_elements_cost_retries_not_correctness(
    lookalikes: int, in_pieces: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Objects nested in an element that start like elements ("type", "id")
    # are wrong boundaries: a few are skipped, many make it parse the body whole.
    fakes = ", ".join(f'{{"type": "node", "id": {i}}}' for i in range(lookalikes))
    body = _large_body(3_000).replace(
        b'"id": 1500,', b'"id": 1500,\n  "nested": [' + fakes.encode() + b"],", 1
    )
    monkeypatch.setattr(overpass_responses, "_PIECE_BYTES", 1)
    pois: list[Poi] = []

    assert (overpass_responses._read_in_pieces(body, pois) is not None) is in_pieces
    parsed = read_response(200, body)
    assert [p.osm_id for p in parsed.pois] == list(range(1, 3_001))


@pytest.mark.usefixtures("small_pieces")
def test_an_elements_array_nested_before_the_real_one_is_not_taken_for_it() -> None:
    decoy = _large_body(10_000).split(b'"elements": [', 1)[1].rsplit(b"]", 1)[0]
    body = b'{"decoy": {"elements": [' + decoy + b']},\n"elements": [\n' + _element(42).encode() + b"\n]\n}"

    parsed = read_response(200, body)

    assert [p.osm_id for p in parsed.pois] == [42]


# -- one unusable element costs only itself (issue 16, finding 7) ---------------------------------

_FIRST = {"type": "node", "id": 1, "lat": 46.5, "lon": 6.6, "tags": {"amenity": "cafe"}}
_LAST = {"type": "way", "id": 2, "center": {"lat": 46.51, "lon": 6.61}, "tags": {"shop": "bakery"}}


@pytest.fixture(params=["whole", "in-pieces"])
def whole_or_in_pieces(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each answer read whole, then by the piecewise reader of large bodies (tiny pieces)."""
    if request.param == "in-pieces":
        monkeypatch.setattr(overpass_responses, "_PIECE_BYTES", 8)


def _answer_around(*elements: object) -> bytes:
    """An answer of two good POIs around ``elements`` (NaN and Infinity printed as Python's json does)."""
    document = {
        "version": 0.6,
        "osm3s": {"timestamp_osm_base": "2026-01-15T08:00:00Z"},
        "elements": [_FIRST, *elements, _LAST],
    }
    return json.dumps(document, indent=1).encode()


def _node(**fields: object) -> dict[str, object]:
    return {"type": "node", "id": 9, "lat": 46.52, "lon": 6.62, "tags": {"amenity": "bench"}, **fields}


_WAY = {"type": "way", "id": 9, "tags": {"shop": "florist"}}
_KEPT = (("node", 9),)
_KEPT_WAY = (("way", 9),)


@pytest.mark.parametrize(
    ("element", "kept", "said"),
    [
        # The id: unreadable, so no key to keep.
        pytest.param(_node(id="12a"), (), "'12a'", id="id-text"),
        pytest.param(_node(id=True), (), "True", id="id-bool"),
        pytest.param(_node(id=0), (), "id 0", id="id-zero"),
        pytest.param(_node(id=-5), (), "id -5", id="id-negative"),
        pytest.param(_node(id=2**63), (), "9223372036854775808", id="id-above-bigint"),
        pytest.param(_node(id=12.0), (), "12.0", id="id-float"),
        pytest.param(_node(id=None), (), "None", id="id-null"),
        pytest.param({k: v for k, v in _node().items() if k != "id"}, (), "None", id="id-missing"),
        # The type.
        pytest.param(_node(type="nod"), (), "'nod'", id="type-unknown"),
        pytest.param(_node(type=5), (), "5", id="type-number"),
        pytest.param(_node(type=["node"]), (), "['node']", id="type-a-list"),
        pytest.param(_node(type={"node": 1}), (), "{'node': 1}", id="type-an-object"),
        pytest.param(_node(id=[9]), (), "[9]", id="id-a-list"),
        pytest.param({k: v for k, v in _node().items() if k != "type"}, (), "None", id="type-missing"),
        # The position: the key is readable, so the old row is kept.
        pytest.param(_node(lat=math.nan), _KEPT, "lat nan", id="lat-nan"),
        pytest.param(_node(lon=math.inf), _KEPT, "inf", id="lon-infinite"),
        pytest.param(_node(lat=90.5), _KEPT, "90.5", id="lat-above-90"),
        pytest.param(_node(lon=-180.01), _KEPT, "-180.01", id="lon-below-180"),
        pytest.param(_node(lat="46.52"), _KEPT, "'46.52'", id="lat-text"),
        pytest.param(_node(lat=True), _KEPT, "True", id="lat-bool"),
        pytest.param(_node(lat=10**400), _KEPT, "lat 1000", id="lat-huge-int"),
        pytest.param({k: v for k, v in _node().items() if k != "lon"}, _KEPT, "lon None", id="lon-missing"),
        pytest.param(_WAY, _KEPT_WAY, "no center", id="center-missing"),
        pytest.param({**_WAY, "center": {}}, _KEPT_WAY, "{}", id="center-empty"),
        pytest.param({**_WAY, "center": [46.5, 6.6]}, _KEPT_WAY, "[46.5", id="center-a-list"),
        pytest.param({**_WAY, "center": {"lat": math.nan, "lon": 6.6}}, _KEPT_WAY, "nan", id="center-nan"),
        # The tags.
        pytest.param(_node(tags=["amenity", "bench"]), _KEPT, "not an object", id="tags-a-list"),
        pytest.param(_node(tags="amenity=bench"), _KEPT, "not an object", id="tags-text"),
        # The element itself.
        pytest.param("node 9 at 46.52,6.62", (), "not a JSON object", id="a-string"),
        pytest.param(None, (), "not a JSON object", id="null"),
        pytest.param([9, 46.52, 6.62], (), "not a JSON object", id="a-list"),
    ],
)
@pytest.mark.usefixtures("whole_or_in_pieces")
def test_an_unusable_element_is_dropped_and_counted_and_its_neighbours_kept(
    element: object, kept: tuple[tuple[str, int], ...], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        parsed = read_response(200, _answer_around(element))

    assert [(p.element_type, p.osm_id) for p in parsed.pois] == [("node", 1), ("way", 2)]
    assert (parsed.dropped, parsed.kept, parsed.skipped) == (1, kept, 0)
    assert parsed.osm_base == "2026-01-15T08:00:00Z"
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Dropped 1 unusable element" in line and said in line
    assert len(line) <= 400


def test_areas_are_skipped_not_dropped() -> None:
    parsed = read_response(200, _answer_around({"type": "area", "id": 3600000001, "tags": {"name": "x"}}))

    assert (len(parsed.pois), parsed.skipped, parsed.dropped, parsed.kept) == (2, 1, 0, ())


def test_many_dropped_elements_make_one_short_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        parsed = read_response(200, _answer_around(*(_node(id=i, lat=math.nan) for i in range(10, 1010))))

    assert (len(parsed.pois), parsed.dropped, len(parsed.kept)) == (2, 1000, 1000)
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Dropped 1000" in line and "first 5: node 10 " in line
    assert len(line) <= 400


def _answer_with_tags(tags: bytes) -> bytes:
    return b'{"elements": [{"type": "node", "id": 1, "lat": 1.5, "lon": 2.5, "tags": ' + tags + b"}]}"


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        pytest.param(rb'{"name": "Caf\u0000e"}', {"name": "Caf\ufffde"}, id="nul-in-value"),
        pytest.param(rb'{"na\u0000me": "x"}', {"na\ufffdme": "x"}, id="nul-in-key"),
        pytest.param(rb'{"name": "\ud800x"}', {"name": "\ufffdx"}, id="high-surrogate-in-value"),
        pytest.param(rb'{"\udfff": "x"}', {"\ufffd": "x"}, id="low-surrogate-in-key"),
        pytest.param(rb'{"name": "a\udc00\ud800b"}', {"name": "a\ufffd\ufffdb"}, id="pair-in-wrong-order"),
        # Surrogates printed as UTF-8 bytes (json.loads reads bytes with surrogatepass).
        pytest.param(b'{"name": "\xed\xa0\x80"}', {"name": "\ufffd"}, id="surrogate-as-utf8-bytes"),
        pytest.param(
            b'{"name": "\xed\xa0\xbd\xed\xb8\x80"}', {"name": "\U0001f600"}, id="pair-as-utf8-bytes"
        ),
        # Left as they are: an escaped pair is one character; an escaped backslash is text.
        pytest.param(rb'{"name": "\ud83d\ude00"}', {"name": "\U0001f600"}, id="escaped-pair"),
        pytest.param(rb'{"note": "C:\\u0000"}', {"note": "C:\\u0000"}, id="escaped-backslash"),
        # Values printed as other JSON types: their JSON text (OSM values are text).
        pytest.param(
            b'{"level": 2, "fee": true, "width": 2.5, "note": null, "x": [1, "\\u0000"]}',
            {"level": "2", "fee": "true", "width": "2.5", "note": "null", "x": '[1, "\\u0000"]'},
            id="values-not-strings",
        ),
    ],
)
@pytest.mark.usefixtures("whole_or_in_pieces")
def test_tags_are_repaired_into_text_postgresql_takes(tags: bytes, expected: dict[str, str]) -> None:
    parsed = read_response(200, _answer_with_tags(tags))

    ((poi),) = parsed.pois
    assert poi.tags == expected
    assert parsed.dropped == 0
    for key, value in poi.tags.items():
        assert "\x00" not in key + value
        (key + value).encode("utf-8")  # no lone surrogate left


_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=8)  # NUL and surrogates included
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
    max_leaves=6,
)
_COORDINATE = st.floats() | st.integers(-200, 200) | _ANY_JSON
_ANY_ELEMENT = _ANY_JSON | st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["node", "way", "relation", "area"]) | _ANY_JSON,
        "id": st.integers(-2, 2**64) | _ANY_JSON,
        "lat": _COORDINATE,
        "lon": _COORDINATE,
        "center": st.fixed_dictionaries({}, optional={"lat": _COORDINATE, "lon": _COORDINATE}) | _ANY_JSON,
        "tags": st.dictionaries(_ANY_TEXT, _ANY_TEXT | _ANY_JSON, max_size=4) | _ANY_JSON,
    },
)


@given(elements=st.lists(_ANY_ELEMENT, max_size=6))
def test_any_element_becomes_a_poi_postgresql_takes_or_is_counted(elements: list[object]) -> None:
    parsed = read_response(200, json.dumps({"elements": elements}).encode())

    assert len(parsed.pois) + parsed.skipped + parsed.dropped == len(elements)
    assert len(parsed.kept) <= parsed.dropped
    for kind, osm_id, lat, lon, tags in parsed.pois:
        assert kind in {"node", "way", "relation"}
        assert type(osm_id) is int and 0 < osm_id < 2**63
        assert type(lat) is float and -90 <= lat <= 90 and type(lon) is float and -180 <= lon <= 180
        for text in (*tags, *tags.values()):
            assert isinstance(text, str) and "\x00" not in text
            text.encode("utf-8")


# The fixture folders themselves.


@pytest.mark.parametrize("source", ["shared", "own"])
def test_every_fixture_file_is_in_its_manifest(source: str) -> None:
    root = ROOTS[source]
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    cases = load_cases(source)
    listed = {c.path for c in cases} | {p for c in cases for p in c.companions()}
    on_disk = {p for p in root.rglob("*") if p.is_file() and p.name not in {"manifest.json", "README.md"}}

    assert on_disk - listed == set()
    assert listed - on_disk == set()


def test_own_fixtures_cover_every_label() -> None:
    labels = {c.expected for c in load_cases("own") if c.endpoint == "interpreter"}

    # Connection errors, client timeouts and unsendable queries have no body: the client tests cover them.
    assert labels == SUCCESS_LABELS | set(FLAGS) - {"connection_error", "client_timeout"} | {
        "unexpected_status"
    }


@needs_shared
def test_own_fixtures_cover_every_shared_label() -> None:
    shared = {c.expected for c in load_cases("shared") if c.endpoint == "interpreter"}
    own = {c.expected for c in load_cases("own") if c.endpoint == "interpreter"}

    assert shared <= own


def test_fixture_roots_are_where_the_readme_says() -> None:
    assert Path(__file__).resolve().parents[1] / "fixtures" / "overpass" == OWN_ROOT
    assert (OWN_ROOT / "manifest.json").is_file()


# Faults of the server and refusals of its dispatcher, sent with HTTP 200 (finding 15).

RECORDINGS = Path(__file__).resolve().parents[3] / "shared" / "recordings" / "overpass-0.7.62"


@pytest.mark.parametrize(
    ("remark", "label"),
    [
        (
            "runtime error: open64: 12 Cannot allocate memory /osm3s_osm_base Dispatcher_Client::1",
            "server_unwell",
        ),
        (
            "runtime error: open64: 0 Success /db/ways.map File_Blocks_Index: Data file size does not match block size",
            "server_unwell",
        ),
        # Older servers print the File_Blocks_Index message without the prefix.
        ("File_Blocks_Index: Data file size does not match block size", "server_unwell"),
        (
            'runtime error: Query ran out of memory in "query" at line 1. It would need at least 0 MB of RAM to continue.',
            "query_out_of_memory",
        ),
        ('runtime error: Query timed out in "query" at line 3 after 25 seconds.', "query_timeout"),
        (
            "runtime error: open64: 0 Success /osm3s_osm_base Dispatcher_Client::request_read_and_idx::duplicate_query",
            "duplicate_query",
        ),
        (
            "runtime error: open64: 0 Success /osm3s_osm_base Dispatcher_Client::request_read_and_idx::protocol_error",
            "protocol_error",
        ),
        (
            "runtime error: Tried to use museum file but no museum files available on this instance.",
            "query_error",
        ),
    ],
)
def test_a_remark_says_whose_fault_it_is(remark: str, label: str) -> None:
    body = json.dumps({"version": 0.6, "elements": [], "remark": remark}).encode()

    with pytest.raises(OverpassError) as raised:
        read_response(200, body)

    assert raised.value.label == label
    assert (raised.value.retryable, raised.value.trips_breaker) == FLAGS[label]
    assert raised.value.response_bytes == len(body)


def test_a_server_short_of_memory_is_not_a_query_too_large() -> None:
    body = (OWN_ROOT / "remark/server-cannot-allocate-memory.json").read_bytes()

    with pytest.raises(ServerUnwell, match="unwell, not the query") as raised:
        read_response(200, body)

    assert not isinstance(raised.value, QueryTooLarge | QueryFailed)


def test_a_protocol_error_page_says_what_it_is() -> None:
    body = (OWN_ROOT / "edge/protocol-error-page.html").read_bytes()

    with pytest.raises(ServerProtocolError) as raised:
        read_response(200, body)

    assert "[out:json]" not in str(raised.value)
    assert "protocol_error" in str(raised.value) and "dispatcher" in str(raised.value)


def test_an_unknown_error_page_with_200_quotes_the_page() -> None:
    body = (
        (OWN_ROOT / "edge/protocol-error-page.html")
        .read_bytes()
        .replace(
            b"runtime error: open64: 0 Success /osm3s_osm_base Dispatcher_Client::request_read_and_idx::protocol_error",
            b"something else went wrong",
        )
    )

    with pytest.raises(BadResponse, match="something else went wrong") as raised:
        read_response(200, body)

    assert "[out:json]" not in str(raised.value)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(OWN_ROOT / "local-server/32_duplicate_query.body.html", id="own-copy"),
        pytest.param(
            RECORDINGS / "32_duplicate_query.body.html",
            id="shared-recording",
            marks=pytest.mark.skipif(
                not (RECORDINGS / "32_duplicate_query.body.html").exists(),
                reason=f"{RECORDINGS} is absent: the 0.7.62 recordings live outside this repository",
            ),
        ),
    ],
)
def test_the_recorded_duplicate_query_page_is_a_duplicate_not_a_bad_response(path: Path) -> None:
    body = path.read_bytes()

    with pytest.raises(DuplicateQuery, match="already running") as raised:
        read_response(200, body)

    assert raised.value.retryable and not raised.value.trips_breaker
    assert raised.value.response_bytes == len(body) == 646


@pytest.mark.skipif(not RECORDINGS.is_dir(), reason=f"{RECORDINGS} is absent")
def test_own_copy_of_the_recording_is_byte_for_byte_the_same() -> None:
    for suffix in ("body.html", "headers.txt", "request.txt"):
        name = f"32_duplicate_query.{suffix}"
        assert (OWN_ROOT / "local-server" / name).read_bytes() == (RECORDINGS / name).read_bytes()
